"""Administrators unlock sign-ins: they see django-axes' lockouts and delete them, and read its sign-in log.

The lockout page tells a locked-out user to ask an administrator; without these
permissions only a superuser could help.
"""

from django.db import migrations

from records.permissions import grant

AXES_PERMISSIONS = {"axes": {"accessattempt": ("view", "delete"), "accesslog": ("view",)}}


def grant_axes(apps, schema_editor):
    grant(apps, schema_editor, "Administrator", AXES_PERMISSIONS)


class Migration(migrations.Migration):
    dependencies = [
        ("records", "0005_indexing_failures_and_conflicts"),
        ("axes", "0010_accessattemptexpiration"),
    ]

    operations = [migrations.RunPython(grant_axes, migrations.RunPython.noop)]
