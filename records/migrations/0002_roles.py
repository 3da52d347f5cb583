"""The three roles as groups, and the model permissions the Administrator needs in the admin.

Doctor and Front desk get no model permissions: their pages check the group
(records/roles.py), and the admin is closed to them. Records are read-only
(the index is rebuilt from the files), so Administrators may only view them.
"""

from django.db import migrations

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
    from django.contrib.auth.management import create_permissions

    # Permissions are normally created after all migrations (post_migrate); create
    # them now so that the groups can be given them on a fresh database.
    for label in ADMINISTRATOR_PERMISSIONS:
        app_config = apps.get_app_config(label)
        app_config.models_module = True
        create_permissions(app_config, verbosity=0, using=schema_editor.connection.alias, apps=apps)
        app_config.models_module = None

    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    for name in ("Doctor", "Front desk"):
        Group.objects.get_or_create(name=name)
    administrator, _ = Group.objects.get_or_create(name="Administrator")
    for app_label, models in ADMINISTRATOR_PERMISSIONS.items():
        for model, actions in models.items():
            codenames = [f"{action}_{model}" for action in actions]
            permissions = Permission.objects.filter(content_type__app_label=app_label, codename__in=codenames)
            if permissions.count() != len(codenames):
                raise RuntimeError(f"missing permissions for {app_label}.{model}: {codenames}")
            # add, not set: keeps what an administrator later gave the group.
            administrator.permissions.add(*permissions)


class Migration(migrations.Migration):
    dependencies = [
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
        ("records", "0001_initial"),
        ("network", "0001_initial"),
    ]

    operations = [migrations.RunPython(create_roles, migrations.RunPython.noop)]
