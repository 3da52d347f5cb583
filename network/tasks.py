"""Thin Celery tasks of the network app."""

from celery import shared_task
from django.conf import settings

from network import access


@shared_task(name="network.tasks.prune_association_log")
def prune_association_log() -> int:
    return access.prune_log(older_than_days=settings.ASSOCIATION_LOG_RETENTION_DAYS)
