"""Administrators read the access record in the admin (view only: it is a record)."""

from django.db import migrations

from records.permissions import grant


def grant_view(apps, schema_editor):
    grant(apps, schema_editor, "Administrator", {"records": {"accessrecord": ("view",)}})


class Migration(migrations.Migration):
    dependencies = [
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
        ("records", "0010_access_record"),
    ]

    operations = [migrations.RunPython(grant_view, migrations.RunPython.noop)]
