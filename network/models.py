"""Remote DICOM nodes (modalities, workstations, other PACS) and the association log."""

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models


def normalize_ae_title(value: str) -> str:
    """Leading and trailing spaces are not significant in an AE title (PS3.5 6.2)."""
    return (value or "").strip()


def validate_ae_title(value: str) -> None:
    """PS3.5 6.2, VR AE: 1-16 characters of the default repertoire, no backslash, no control characters."""
    title = normalize_ae_title(value)
    if not 1 <= len(title) <= 16:
        raise ValidationError("An AE title has 1 to 16 characters (not counting leading or trailing spaces).")
    if "\\" in title:
        raise ValidationError("An AE title cannot contain a backslash.")
    if any(ord(c) < 32 or ord(c) == 127 for c in title):
        raise ValidationError("An AE title cannot contain control characters.")
    if any(ord(c) > 127 for c in title):
        raise ValidationError("An AE title uses only the DICOM default character repertoire (ASCII).")


FALLBACK_CHARSETS = [
    ("", "Server default (DICOM_FALLBACK_CHARSET)"),
    ("GB18030", "GB18030 (Chinese)"),
    ("GBK", "GBK (Chinese)"),
    ("ISO_IR 192", "UTF-8"),
    ("ISO_IR 100", "Latin-1"),
    ("ISO 2022 IR 58", "GB2312 (ISO 2022 IR 58)"),
]


class ModalityNode(models.Model):
    ae_title = models.CharField(
        "AE title",
        max_length=16,
        unique=True,
        validators=[validate_ae_title],
        help_text="As configured on the device (1-16 characters, case-sensitive).",
    )
    host = models.CharField(help_text="IP address or host name of the device.", max_length=255)
    port = models.PositiveIntegerField(
        default=104, help_text="Where the device listens (for C-ECHO, C-MOVE destinations and sending to it)."
    )
    description = models.CharField(max_length=200, blank=True, default="")
    location = models.CharField(max_length=200, blank=True, default="")
    active = models.BooleanField(default=True, help_text="Inactive nodes are refused like unknown ones.")
    may_store = models.BooleanField("may store to us", default=True, help_text="C-STORE: send images to us.")
    may_query = models.BooleanField("may query us", default=True, help_text="C-FIND: search our archive.")
    may_retrieve = models.BooleanField(
        "may retrieve from us", default=True, help_text="C-MOVE destination, or C-GET: receive images from us."
    )
    fallback_charset = models.CharField(
        "fallback character set",
        max_length=32,
        blank=True,
        default="",
        choices=FALLBACK_CHARSETS,
        help_text="For names in data sets that declare no Specific Character Set.",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["ae_title"]
        verbose_name = "modality node"

    def __str__(self) -> str:
        return f"{self.ae_title} ({self.host}:{self.port})"

    def save(self, *args, **kwargs):
        self.ae_title = normalize_ae_title(self.ae_title)
        super().save(*args, **kwargs)

    def clean(self):
        self.ae_title = normalize_ae_title(self.ae_title)
        if self.port and not 1 <= self.port <= 65535:
            raise ValidationError({"port": "A TCP port is between 1 and 65535."})


class AssociationLog(models.Model):
    class Outcome(models.TextChoices):
        RELEASED = "released"
        ABORTED = "aborted"
        REJECTED = "rejected"

    started_at = models.DateTimeField(db_index=True)  # the admin's list and the pruning go by date
    ended_at = models.DateTimeField(null=True, blank=True)
    calling_ae = models.CharField("calling AE", max_length=16, db_index=True)
    called_ae = models.CharField("called AE", max_length=16)
    peer_host = models.CharField(max_length=64)
    peer_port = models.PositiveIntegerField(null=True, blank=True)
    node = models.ForeignKey(ModalityNode, null=True, blank=True, on_delete=models.SET_NULL)
    # Written when the association ends (or is rejected): one row, never updated.
    outcome = models.CharField(max_length=16, choices=Outcome.choices, db_index=True)
    reason = models.CharField(max_length=200, blank=True, default="")
    services = models.CharField(max_length=200, blank=True, default="", help_text="DIMSE services used.")
    images_received = models.PositiveIntegerField(default=0)
    images_sent = models.PositiveIntegerField(default=0)
    failures = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["-started_at"]

    def __str__(self) -> str:
        return f"{self.started_at:%Y-%m-%d %H:%M:%S} {self.calling_ae} -> {self.called_ae} ({self.outcome})"


class SendJob(models.Model):
    """One study sent to one node: what was asked, by whom, and what became of each image."""

    class State(models.TextChoices):
        QUEUED = "queued"
        RUNNING = "running"
        SUCCEEDED = "succeeded"
        PARTIAL = "partial", "partly failed"
        FAILED = "failed"

    # SET_NULL and the UID/AE copies below: the record of what left the archive outlives the rows.
    study = models.ForeignKey("records.Study", null=True, blank=True, on_delete=models.SET_NULL)
    study_instance_uid = models.CharField("Study Instance UID", max_length=64)
    node = models.ForeignKey(ModalityNode, null=True, blank=True, on_delete=models.SET_NULL)
    destination = models.CharField(max_length=300, help_text="AE title, host and port when the job was queued.")
    requested_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)  # the admin's list goes by date
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    state = models.CharField(max_length=16, choices=State.choices, default=State.QUEUED, db_index=True)
    total = models.PositiveIntegerField(default=0)
    sent = models.PositiveIntegerField(default=0)
    failed = models.PositiveIntegerField(default=0)
    error = models.CharField(max_length=500, blank=True, default="", help_text="Why the job as a whole failed.")
    # [{"sop_instance_uid": ..., "status": "0xA700" or "", "error": ...}], one per image not stored.
    failures = models.JSONField(default=list, blank=True)

    class Meta:
        ordering = ["-created_at"]
        verbose_name = "send job"

    def __str__(self) -> str:
        return f"{self.study_instance_uid} -> {self.destination} ({self.state})"
