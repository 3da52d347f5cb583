"""``manage.py preparestorage``: make the storage's shard folders now (storage.prepare_folders)."""

import time

from django.core.management.base import BaseCommand, CommandError

from imaging import storage


class Command(BaseCommand):
    help = (
        "Make the 65,536 shard folders of the instance layout that are missing (runscp does it in the "
        "background at its first start when STORAGE_PREPARE_FOLDERS=1). Safe to run again."
    )

    def handle(self, *args, **options):
        started = time.monotonic()
        try:
            made = storage.prepare_folders()
        except OSError as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(
            f"{made} folders made in {time.monotonic() - started:.1f} s; "
            f"all {storage.SHARD_FOLDERS} are in {storage.root() / storage.INSTANCES}"
        )
