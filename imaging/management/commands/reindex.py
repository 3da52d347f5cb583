"""``manage.py reindex``: index stored files that have no row (or all with --all)."""

from django.core.management.base import BaseCommand, CommandError

from imaging.reindex import Busy, reindex


class Command(BaseCommand):
    help = "Rebuild the index from the files under STORAGE_DIR (for a day the broker was down)."

    def add_arguments(self, parser):
        parser.add_argument("--all", action="store_true", help="re-read every file, not only unindexed ones")

    def handle(self, *args, all, **options):
        try:
            result = reindex(missing_only=not all)
        except Busy as exc:
            raise CommandError(f"another reindex is running ({exc}); not starting a second one") from exc
        for error in result.errors[:20]:
            self.stderr.write(error)
        if result.spooled:
            self.stdout.write(f"{result.spooled} path(s) read from the index spool")
        self.stdout.write(f"{result.seen} file(s) seen, {result.indexed} indexed, {result.failed} failed")
