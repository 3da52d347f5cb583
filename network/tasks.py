"""Thin Celery tasks of the network app, and the functions that queue them."""

import logging

from celery import shared_task
from django.conf import settings
from django.db import transaction

from network import access, scu
from network.models import ModalityNode, SendJob

log = logging.getLogger(__name__)


@shared_task(name="network.tasks.prune_association_log")
def prune_association_log() -> int:
    return access.prune_log(older_than_days=settings.ASSOCIATION_LOG_RETENTION_DAYS)


@shared_task(name="network.tasks.send_study")
def send_study(study_id: int, node_id: int, job_id: int) -> str:
    # No automatic retry: the job records each image's outcome, and sending again
    # is the administrator's decision (the action can be run again).
    return scu.send_study(study_id, node_id, job_id).state


def send_destinations():
    """The nodes a study may be sent to: active ones that may receive images from us."""
    return ModalityNode.objects.filter(active=True, may_retrieve=True)


def send_job_create(*, study, node, requested_by=None, on_queued=None) -> SendJob:
    """Record a job sending ``study`` to ``node`` and queue it once the row is committed.

    The admin's action and the API's POST both come here. ``on_queued(job, error)``
    is called after the queueing (``error`` "" or why the broker refused); a job that
    cannot be queued is marked failed with the reason, instead of waiting for ever.
    Outside a transaction the job is queued before this returns.
    """
    job = SendJob.objects.create(
        study=study,
        study_instance_uid=study.study_instance_uid,
        node=node,
        destination=f"{node.ae_title} at {node.host}:{node.port}",
        requested_by=requested_by,
        total=study.number_of_instances,
    )

    def queue():
        error = send_job_queue(job)
        if on_queued is not None:
            on_queued(job, error)

    transaction.on_commit(queue)
    return job


def send_job_queue(job: SendJob) -> str:
    """Hand ``job`` to the worker; returns "" or why it could not be queued (the job then says so)."""
    try:
        send_study.delay(job.study_id, job.node_id, job.pk)
        return ""
    except Exception as exc:  # broker down: the job says so instead of waiting forever
        log.exception("cannot queue send job %s", job.pk)
        error = f"could not be queued: {exc}"[:500]
        SendJob.objects.filter(pk=job.pk).update(state=SendJob.State.FAILED, error=error)
        job.state, job.error = SendJob.State.FAILED, error
        return str(exc)
