"""Administrators issue API tokens in the admin (rest_framework.authtoken): see, add and revoke them.

No "change": a token is not edited, it is revoked and another one issued.
"""

from django.db import migrations

from records.permissions import grant

TOKEN_PERMISSIONS = {"authtoken": {"tokenproxy": ("view", "add", "delete")}}


def grant_tokens(apps, schema_editor):
    grant(apps, schema_editor, "Administrator", TOKEN_PERMISSIONS)


class Migration(migrations.Migration):
    dependencies = [
        ("records", "0008_administrator_views_failures_and_conflicts"),
        ("authtoken", "0004_alter_tokenproxy_options"),
    ]

    operations = [migrations.RunPython(grant_tokens, migrations.RunPython.noop)]
