"""The three roles as groups, and the model permissions the Administrator needs in the admin.

Doctor and Front desk get no model permissions: their pages check the group
(records/roles.py), and the admin is closed to them. Records are read-only
(the index is rebuilt from the files), so Administrators may only view them.
"""

from django.db import migrations

from records.permissions import grant

ADMINISTRATOR_PERMISSIONS = {
    "auth": {
        "user": ("view", "add", "change", "delete"),
        "group": ("view", "add", "change", "delete"),
        "permission": ("view",),
    },
    "records": {
        "patient": ("view",),
        "study": ("view",),
        "series": ("view",),
        "instance": ("view",),
    },
    "network": {
        "modalitynode": ("view", "add", "change", "delete"),
        "associationlog": ("view",),
    },
}


def create_roles(apps, schema_editor):
    Group = apps.get_model("auth", "Group")
    for name in ("Doctor", "Front desk"):
        Group.objects.get_or_create(name=name)
    grant(apps, schema_editor, "Administrator", ADMINISTRATOR_PERMISSIONS)


class Migration(migrations.Migration):
    dependencies = [
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
        ("records", "0001_initial"),
        ("network", "0001_initial"),
    ]

    operations = [migrations.RunPython(create_roles, migrations.RunPython.noop)]
