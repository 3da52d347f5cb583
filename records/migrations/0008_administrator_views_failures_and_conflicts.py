"""Administrators read indexing failures and instance conflicts in the admin (view only: both are records)."""

from django.db import migrations

from records.permissions import grant


def grant_views(apps, schema_editor):
    grant(
        apps,
        schema_editor,
        "Administrator",
        {"records": {"indexingfailure": ("view",), "instanceconflict": ("view",)}},
    )


class Migration(migrations.Migration):
    dependencies = [
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
        ("records", "0007_indexing_failure_category"),
    ]

    operations = [migrations.RunPython(grant_views, migrations.RunPython.noop)]
