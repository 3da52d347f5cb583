"""``manage.py runscp``: the DICOM SCP (C-ECHO, C-STORE)."""

from django.conf import settings
from django.core.management.base import BaseCommand

from imaging import storage
from network import scp


class Command(BaseCommand):
    help = "Run the DICOM SCP until SIGTERM or Ctrl-C (in-flight associations finish first)."

    def add_arguments(self, parser):
        parser.add_argument("--port", type=int, default=None, help=f"default {settings.DICOM_PORT}")
        parser.add_argument("--ae-title", default=None, help=f"default {settings.DICOM_AE_TITLE}")
        parser.add_argument("--host", default=None, help=f"listen address, default {settings.DICOM_HOST}")

    def handle(self, *args, port, ae_title, host, **options):
        storage.root().mkdir(parents=True, exist_ok=True)
        scp.serve(port=port, ae_title=ae_title, host=host)
