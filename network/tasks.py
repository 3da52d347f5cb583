"""Thin Celery tasks of the network app."""

from celery import shared_task
from django.conf import settings

from network import access, scu


@shared_task(name="network.tasks.prune_association_log")
def prune_association_log() -> int:
    return access.prune_log(older_than_days=settings.ASSOCIATION_LOG_RETENTION_DAYS)


@shared_task(name="network.tasks.send_study")
def send_study(study_id: int, node_id: int, job_id: int) -> str:
    # No automatic retry: the job records each image's outcome, and sending again
    # is the administrator's decision (the action can be run again).
    return scu.send_study(study_id, node_id, job_id).state
