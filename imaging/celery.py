"""The Celery app: ``celery -A imaging worker``."""

import os

from celery import Celery
from celery.signals import worker_init, worker_process_init, worker_ready

# The one place besides settings that touches the environment: Celery's own
# bootstrap needs to know which settings module to load.
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "imaging.settings")

app = Celery("imaging")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks(["imaging", "network"])


@worker_init.connect
def _warm_up(**kwargs):
    """Build once, before the pool forks, what each child would build on its first image.

    The pinyin syllable table behind the name search keys took each indexing child
    about half a second on its first patient (py-spy, docs/fastindex.md).
    """
    from records import pinyin

    pinyin.split_pinyin("warmup")


@worker_process_init.connect
def _lower_priority(**kwargs):
    """Indexing and thumbnails yield the CPU to the SCP: a modality waits on every
    C-STORE answer, while the index may lag a second behind."""
    from django.conf import settings

    if settings.WORKER_NICENESS:
        os.nice(settings.WORKER_NICENESS)


@worker_ready.connect
def _resume_rewrites(sender, **kwargs):
    """A worker that starts carries on the file rewrites a killed one left (imaging/rewrite.py)."""
    from django.conf import settings

    if settings.REWRITE_RESUME_ON_START:
        sender.app.send_task("imaging.tasks.resume_rewrite_jobs")


@app.on_after_finalize.connect
def _schedule_periodic(sender, **kwargs):
    from django.conf import settings

    sender.add_periodic_task(
        24 * 3600, sender.signature("network.tasks.prune_association_log"), name="prune the association log"
    )
    sender.add_periodic_task(
        24 * 3600,
        sender.signature("imaging.tasks.prune_access_records"),
        name="prune access records past ACCESS_RECORD_RETENTION_DAYS",
    )
    if settings.INDEX_SPOOL_INTERVAL_SECONDS > 0:
        sender.add_periodic_task(
            settings.INDEX_SPOOL_INTERVAL_SECONDS,
            sender.signature("imaging.tasks.drain_index_spool"),
            name="index what the SCP spooled while the broker was down",
        )
    if settings.REINDEX_INTERVAL_SECONDS > 0:
        sender.add_periodic_task(
            settings.REINDEX_INTERVAL_SECONDS,
            sender.signature("imaging.tasks.reindex_missing"),
            name="index stored files that have no row",
        )
    if settings.REWRITE_RESUME_INTERVAL_SECONDS > 0:
        sender.add_periodic_task(
            settings.REWRITE_RESUME_INTERVAL_SECONDS,
            sender.signature(
                "imaging.tasks.resume_rewrite_jobs",
                kwargs={"pending_older_than_seconds": settings.REWRITE_RESUME_INTERVAL_SECONDS},
            ),
            name="carry on the file rewrites whose worker died",
        )
