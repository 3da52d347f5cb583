"""``manage.py reindex``: index stored files that have no row (or all with --all)."""

from django.core.management.base import BaseCommand

from imaging.reindex import reindex


class Command(BaseCommand):
    help = "Rebuild the index from the files under STORAGE_DIR (for a day the broker was down)."

    def add_arguments(self, parser):
        parser.add_argument("--all", action="store_true", help="re-read every file, not only unindexed ones")

    def handle(self, *args, all, **options):
        result = reindex(missing_only=not all)
        for error in result.errors[:20]:
            self.stderr.write(error)
        self.stdout.write(f"{result.seen} file(s) seen, {result.indexed} indexed, {result.failed} failed")
