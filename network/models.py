"""Remote DICOM nodes (modalities, workstations, other PACS) and the association log."""

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models
from django.utils.translation import gettext_lazy as _
from django.utils.translation import pgettext_lazy


def normalize_ae_title(value: str) -> str:
    """Leading and trailing spaces are not significant in an AE title (PS3.5 6.2)."""
    return (value or "").strip()


def validate_ae_title(value: str) -> None:
    """PS3.5 6.2, VR AE: 1-16 characters of the default repertoire, no backslash, no control characters."""
    title = normalize_ae_title(value)
    if not 1 <= len(title) <= 16:
        raise ValidationError(_("An AE title has 1 to 16 characters (not counting leading or trailing spaces)."))
    if "\\" in title:
        raise ValidationError(_("An AE title cannot contain a backslash."))
    if any(ord(c) < 32 or ord(c) == 127 for c in title):
        raise ValidationError(_("An AE title cannot contain control characters."))
    if any(ord(c) > 127 for c in title):
        raise ValidationError(_("An AE title uses only the DICOM default character repertoire (ASCII)."))


FALLBACK_CHARSETS = [
    ("", _("Server default (DICOM_FALLBACK_CHARSET)")),
    ("GB18030", _("GB18030 (Chinese)")),
    ("GBK", _("GBK (Chinese)")),
    ("ISO_IR 192", "UTF-8"),
    ("ISO_IR 100", "Latin-1"),
    ("ISO 2022 IR 58", "GB2312 (ISO 2022 IR 58)"),
]


class ModalityNode(models.Model):
    ae_title = models.CharField(
        _("AE title"),
        max_length=16,
        unique=True,
        validators=[validate_ae_title],
        help_text=_("As configured on the device (1-16 characters, case-sensitive)."),
    )
    host = models.CharField(_("host"), help_text=_("IP address or host name of the device."), max_length=255)
    port = models.PositiveIntegerField(
        _("port"),
        default=104,
        help_text=_("Where the device listens (for C-ECHO, C-MOVE destinations and sending to it)."),
    )
    description = models.CharField(_("description"), max_length=200, blank=True, default="")
    location = models.CharField(_("location"), max_length=200, blank=True, default="")
    active = models.BooleanField(
        pgettext_lazy("modality node", "active"),
        default=True,
        help_text=_("Inactive nodes are refused like unknown ones."),
    )
    may_store = models.BooleanField(_("may store to us"), default=True, help_text=_("C-STORE: send images to us."))
    may_query = models.BooleanField(_("may query us"), default=True, help_text=_("C-FIND: search our archive."))
    may_retrieve = models.BooleanField(
        _("may retrieve from us"), default=True, help_text=_("C-MOVE destination, or C-GET: receive images from us.")
    )
    fallback_charset = models.CharField(
        _("fallback character set"),
        max_length=32,
        blank=True,
        default="",
        choices=FALLBACK_CHARSETS,
        help_text=_("For names in data sets that declare no Specific Character Set."),
    )
    created_at = models.DateTimeField(_("created"), auto_now_add=True)
    updated_at = models.DateTimeField(_("updated"), auto_now=True)

    class Meta:
        ordering = ["ae_title"]
        verbose_name = _("modality node")
        verbose_name_plural = _("modality nodes")

    def __str__(self) -> str:
        return f"{self.ae_title} ({self.host}:{self.port})"

    def save(self, *args, **kwargs):
        self.ae_title = normalize_ae_title(self.ae_title)
        super().save(*args, **kwargs)

    def clean(self):
        self.ae_title = normalize_ae_title(self.ae_title)
        if self.port and not 1 <= self.port <= 65535:
            raise ValidationError({"port": _("A TCP port is between 1 and 65535.")})


class AssociationLog(models.Model):
    class Outcome(models.TextChoices):
        RELEASED = "released", _("released")
        ABORTED = "aborted", _("aborted")
        REJECTED = "rejected", _("rejected")

    started_at = models.DateTimeField(_("started"), db_index=True)  # the admin's list and the pruning go by date
    ended_at = models.DateTimeField(_("ended"), null=True, blank=True)
    calling_ae = models.CharField(_("calling AE"), max_length=16, db_index=True)
    called_ae = models.CharField(_("called AE"), max_length=16)
    peer_host = models.CharField(_("peer address"), max_length=64)
    peer_port = models.PositiveIntegerField(_("peer port"), null=True, blank=True)
    node = models.ForeignKey(ModalityNode, null=True, blank=True, on_delete=models.SET_NULL, verbose_name=_("node"))
    # Written when the association ends (or is rejected): one row, never updated.
    outcome = models.CharField(_("outcome"), max_length=16, choices=Outcome.choices, db_index=True)
    reason = models.CharField(_("reason"), max_length=200, blank=True, default="")
    services = models.CharField(
        _("services"), max_length=200, blank=True, default="", help_text=_("DIMSE services used.")
    )
    images_received = models.PositiveIntegerField(_("images received"), default=0)
    images_sent = models.PositiveIntegerField(_("images sent"), default=0)
    failures = models.PositiveIntegerField(_("failed images"), default=0)

    class Meta:
        ordering = ["-started_at"]
        verbose_name = _("association log entry")
        verbose_name_plural = _("association log")

    def __str__(self) -> str:
        outcome = self.get_outcome_display()
        return f"{self.started_at:%Y-%m-%d %H:%M:%S} {self.calling_ae} -> {self.called_ae} ({outcome})"


class SendJob(models.Model):
    """One study sent to one node: what was asked, by whom, and what became of each image."""

    class State(models.TextChoices):
        QUEUED = "queued", _("queued")
        RUNNING = "running", _("running")
        SUCCEEDED = "succeeded", _("succeeded")
        PARTIAL = "partial", _("partly failed")
        FAILED = "failed", _("failed")

    # SET_NULL and the UID/AE copies below: the record of what left the archive outlives the rows.
    study = models.ForeignKey(
        "records.Study", null=True, blank=True, on_delete=models.SET_NULL, verbose_name=_("study")
    )
    study_instance_uid = models.CharField(_("Study Instance UID"), max_length=64)
    node = models.ForeignKey(ModalityNode, null=True, blank=True, on_delete=models.SET_NULL, verbose_name=_("node"))
    destination = models.CharField(
        _("destination"), max_length=300, help_text=_("AE title, host and port when the job was queued.")
    )
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, verbose_name=_("requested by")
    )
    created_at = models.DateTimeField(_("created"), auto_now_add=True, db_index=True)  # the admin's list goes by date
    started_at = models.DateTimeField(_("started"), null=True, blank=True)
    finished_at = models.DateTimeField(_("finished"), null=True, blank=True)
    state = models.CharField(_("state"), max_length=16, choices=State.choices, default=State.QUEUED, db_index=True)
    total = models.PositiveIntegerField(_("images in total"), default=0)
    sent = models.PositiveIntegerField(_("images sent"), default=0)
    failed = models.PositiveIntegerField(_("images failed"), default=0)
    error = models.CharField(
        _("error"), max_length=500, blank=True, default="", help_text=_("Why the job as a whole failed.")
    )
    # [{"sop_instance_uid": ..., "status": "0xA700" or "", "error": ...}], one per image not stored.
    failures = models.JSONField(_("images not stored"), default=list, blank=True)

    class Meta:
        ordering = ["-created_at"]
        verbose_name = _("send job")
        verbose_name_plural = _("send jobs")

    def __str__(self) -> str:
        return f"{self.study_instance_uid} -> {self.destination} ({self.get_state_display()})"
