"""``manage.py ohif_install``: the pinned OHIF Viewer into OHIF_DIR (make run, make test, the Dockerfile).

Does nothing when that version is installed already, or when OHIF_ENABLED=0.
"""

import shutil
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from imaging.ohif import install


class Command(BaseCommand):
    help = "Install the pinned @ohif/app (imaging/ohif/package.json) into OHIF_DIR with npm pack."

    def add_arguments(self, parser):
        parser.add_argument("--tarball", type=Path, help="an already fetched npm tarball (docker's build stage)")

    def handle(self, *args, tarball=None, **options):
        version, _integrity = install.pinned()
        if not settings.OHIF_ENABLED:
            self.stdout.write("OHIF_ENABLED=0: the OHIF Viewer is not installed")
            return
        if install.is_installed(version):
            self.stdout.write(f"OHIF Viewer {version} is installed in {install.dist_dir(version)}")
            return
        npm = shutil.which("npm")
        if tarball is None and npm is None:
            raise CommandError("npm is not installed (make run installs Debian's npm), or set OHIF_ENABLED=0")
        self.stdout.write(f"installing the OHIF Viewer {version} (npm pack {install.PACKAGE}@{version})...")
        try:
            folder = install.install(tarball=tarball, npm=npm or "npm")
        except install.InstallError as e:
            raise CommandError(str(e)) from e
        self.stdout.write(f"OHIF Viewer {version} installed in {folder}")
