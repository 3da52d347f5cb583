"""Administrators may send studies to nodes and read the send jobs."""

from django.db import migrations

from records.permissions import grant


def grant_send(apps, schema_editor):
    grant(apps, schema_editor, "Administrator", {"network": {"sendjob": ("view", "add")}})


class Migration(migrations.Migration):
    dependencies = [
        ("network", "0002_sendjob"),
        ("records", "0002_roles"),
    ]

    operations = [migrations.RunPython(grant_send, migrations.RunPython.noop)]
