"""The DICOM information model as an index: Patient -> Study -> Series -> Instance.

The stored files are the source of truth; every row here can be rebuilt from them
(``manage.py reindex``). Text is stored as proper Unicode whatever character set
the modality used.
"""

from django.conf import settings
from django.db import models
from django.db.models.functions import Upper
from django.utils.translation import gettext_lazy as _
from django.utils.translation import pgettext_lazy

from records import pinyin
from records.names import display_name

NAME_GROUPS = ("name_alphabetic", "name_ideographic", "name_phonetic")
NAME_KEYS = ("name_search", "name_pinyin", "name_initials")
_KEY_LENGTHS = {"name_search": 600, "name_pinyin": 400, "name_initials": 200}


def name_keys(alphabetic: str, ideographic: str = "", phonetic: str = "") -> dict[str, str]:
    """The Patient search keys of a name's groups, cut to their columns (for create() and update() alike)."""
    keys = pinyin.name_keys(alphabetic, ideographic, phonetic)
    return {field: value[: _KEY_LENGTHS[field]] for field, value in keys.items()}


class Patient(models.Model):
    # (PatientID, IssuerOfPatientID) identifies a patient; two hospitals may
    # (the unique constraint below also serves lookups by patient ID alone)
    # reuse the same ID, which the issuer tells apart. Empty issuer = local.
    patient_id = models.CharField(_("patient ID"), max_length=64)
    issuer = models.CharField(_("issuer of patient ID"), max_length=64, blank=True, default="")
    # The full Person Name as DICOM writes it ("alphabetic=ideographic=phonetic"),
    # and each group apart so that searches can match any of them.
    # "person": Django translates a plain "name" (a group's, a permission's) otherwise.
    name = models.CharField(
        pgettext_lazy("person", "name"), max_length=200, blank=True, default="", help_text=_("As DICOM writes it.")
    )
    name_alphabetic = models.CharField(_("name (alphabetic)"), max_length=200, blank=True, default="", db_index=True)
    name_ideographic = models.CharField(_("name (ideographic)"), max_length=200, blank=True, default="", db_index=True)
    name_phonetic = models.CharField(_("name (phonetic)"), max_length=200, blank=True, default="", db_index=True)
    # Search keys derived from the name groups (records/pinyin.py, records/search.py):
    # every group normalised ("zhangwei 张伟"), the full pinyin of names in characters
    # ("zhangwei", first the reading the list sorts by) and initials ("zw"). Kept in
    # step by save() and by the indexer, which writes them with the name.
    name_search = models.CharField(max_length=600, blank=True, default="", editable=False)
    name_pinyin = models.CharField(max_length=400, blank=True, default="", editable=False)
    name_initials = models.CharField(max_length=200, blank=True, default="", editable=False)
    birth_date = models.DateField(_("birth date"), null=True, blank=True)
    sex = models.CharField(_("sex"), max_length=16, blank=True, default="")
    created_at = models.DateTimeField(_("created"), auto_now_add=True)
    updated_at = models.DateTimeField(_("updated"), auto_now=True)

    class Meta:
        ordering = ["name_alphabetic", "patient_id"]
        verbose_name = _("patient")
        verbose_name_plural = _("patients")
        constraints = [
            models.UniqueConstraint(fields=["patient_id", "issuer"], name="patient_id_issuer_unique"),
            # The study list sorted by name (records/search.py: ORDER BY name_pinyin, patient_id,
            # issuer) and the front desk's list, in that order too. Implied by the constraint
            # above; declared unique so that SQLite knows the order is total and reads the
            # first page of 100,000 studies from this index instead of sorting them all.
            models.UniqueConstraint(fields=["name_pinyin", "patient_id", "issuer"], name="patient_name_pinyin_order"),
        ]
        # C-FIND/QIDO PatientName matching, case-insensitive on any name group
        # (network/query.py: UPPER(name_*) = ? or, on SQLite, a prefix range for "WANG^XI*").
        # PostgreSQL's UPPER(name_*) LIKE 'WANG^XI%' needs text_pattern_ops twins, and
        # PatientID=P12* a varchar_pattern_ops index: migration 0004, PostgreSQL only.
        indexes = [
            models.Index(Upper("name_alphabetic"), name="patient_name_alpha_upper"),
            models.Index(Upper("name_ideographic"), name="patient_name_ideo_upper"),
            models.Index(Upper("name_phonetic"), name="patient_name_phon_upper"),
            # The name search's index (the keys) is SQLite's only: migration 0013.
        ]

    # Patient's Sex (0010,0040) is M, F or O (PS3.3 C.7.1.1): a word in the reader's language on pages.
    SEX_LABELS = {"M": _("male"), "F": _("female"), "O": _("other")}

    def __str__(self) -> str:
        return f"{display_name(self) or _('(no name)')} [{self.patient_id}]"

    def save(self, *args, **kwargs):
        # The search keys follow the name wherever a patient is saved (admin, API, code);
        # queryset.update() writers pass name_keys() themselves, as the indexer does.
        self.__dict__.update(name_keys(self.name_alphabetic, self.name_ideographic, self.name_phonetic))
        update_fields = kwargs.get("update_fields")
        if update_fields is not None and set(update_fields) & set(NAME_GROUPS):
            kwargs["update_fields"] = {*update_fields, *NAME_KEYS}
        super().save(*args, **kwargs)

    def sex_display(self) -> str:
        """男 / male for M; a value DICOM does not define is shown as sent."""
        return str(self.SEX_LABELS.get(self.sex.strip().upper(), self.sex))


class Study(models.Model):
    patient = models.ForeignKey(Patient, on_delete=models.PROTECT, related_name="studies", verbose_name=_("patient"))
    study_instance_uid = models.CharField(_("Study Instance UID"), max_length=64, unique=True)
    study_id = models.CharField(_("study ID"), max_length=16, blank=True, default="")
    accession_number = models.CharField(_("accession number"), max_length=64, blank=True, default="", db_index=True)
    study_date = models.DateField(_("study date"), null=True, blank=True, db_index=True)
    study_time = models.TimeField(_("study time"), null=True, blank=True)
    description = models.CharField(_("description"), max_length=200, blank=True, default="")
    referring_physician = models.CharField(_("referring physician"), max_length=200, blank=True, default="")
    # Backslash-separated, sorted, as DICOM's ModalitiesInStudy: "CT\SR".
    modalities_in_study = models.CharField(_("modalities"), max_length=200, blank=True, default="")
    number_of_series = models.PositiveIntegerField(_("number of series"), default=0)
    number_of_instances = models.PositiveIntegerField(_("number of images"), default=0)
    created_at = models.DateTimeField(_("created"), auto_now_add=True)
    updated_at = models.DateTimeField(_("updated"), auto_now=True)

    class Meta:
        verbose_name = _("study")
        verbose_name_plural = _("studies")
        ordering = ["-study_date", "-study_time"]

    def __str__(self) -> str:
        return f"{self.study_date or ''} {self.description or self.study_instance_uid}".strip()


class Series(models.Model):
    study = models.ForeignKey(Study, on_delete=models.CASCADE, related_name="series", verbose_name=_("study"))
    series_instance_uid = models.CharField(_("Series Instance UID"), max_length=64, unique=True)
    modality = models.CharField(_("modality"), max_length=16, blank=True, default="", db_index=True)
    series_number = models.IntegerField(_("series number"), null=True, blank=True)
    description = models.CharField(_("description"), max_length=200, blank=True, default="")
    body_part = models.CharField(_("body part examined"), max_length=64, blank=True, default="")
    number_of_instances = models.PositiveIntegerField(_("number of images"), default=0)
    # Thumbnail path relative to STORAGE_DIR, and the instance it was made from
    # (so a later, better representative replaces it).
    thumbnail = models.CharField(_("thumbnail"), max_length=255, blank=True, default="")
    thumbnail_sop_instance_uid = models.CharField(
        _("thumbnail from SOP Instance UID"), max_length=64, blank=True, default=""
    )
    created_at = models.DateTimeField(_("created"), auto_now_add=True)
    updated_at = models.DateTimeField(_("updated"), auto_now=True)

    class Meta:
        verbose_name = _("series")
        verbose_name_plural = _("series")
        ordering = ["series_number", "id"]

    def __str__(self) -> str:
        return f"{self.modality} #{self.series_number} {self.description}".strip()


class Instance(models.Model):
    series = models.ForeignKey(Series, on_delete=models.CASCADE, related_name="instances", verbose_name=_("series"))
    sop_instance_uid = models.CharField(_("SOP Instance UID"), max_length=64, unique=True)
    sop_class_uid = models.CharField(_("SOP Class UID"), max_length=64, db_index=True)
    instance_number = models.IntegerField(_("instance number"), null=True, blank=True)
    transfer_syntax_uid = models.CharField(_("transfer syntax UID"), max_length=64)
    rows = models.PositiveIntegerField(_("rows"), null=True, blank=True)
    columns = models.PositiveIntegerField(_("columns"), null=True, blank=True)
    number_of_frames = models.PositiveIntegerField(_("frames"), default=1)
    specific_character_set = models.CharField(_("specific character set"), max_length=128, blank=True, default="")
    # Path relative to STORAGE_DIR; unique so that reindex can ask "is this file known?".
    file_path = models.CharField(_("file path"), max_length=255, unique=True, help_text=_("Relative to STORAGE_DIR."))
    file_size = models.BigIntegerField(_("file size (bytes)"))
    checksum = models.CharField("SHA-256", max_length=64)
    received_at = models.DateTimeField(_("received"), db_index=True)
    source_ae = models.CharField(_("from AE title"), max_length=16, blank=True, default="")
    indexed_at = models.DateTimeField(_("indexed"), auto_now=True)

    class Meta:
        ordering = ["instance_number", "id"]
        verbose_name = _("instance")
        verbose_name_plural = _("instances")

    def __str__(self) -> str:
        return self.sop_instance_uid


class IndexingFailure(models.Model):
    """A stored file the indexer could not index fully, and why: one row per file.

    The file stays on disk (nothing a device sent is thrown away); the row lets an
    administrator see it in the admin, and /health counts the rows. What a problem
    does to the file:

    - left unindexed (``indexed`` False, the file is in no study): it cannot be
      parsed as DICOM (``unreadable``), it lacks a valid Study, Series or SOP
      Instance UID (``no-uids``), or it is a deflate bomb, a deflated data set that
      inflates past DICOM_MAX_INFLATED_BYTES (``deflate-bomb``);
    - indexed, with the problem recorded (``indexed`` True, the instance is
      findable and can be sent on as stored): an unknown Specific Character Set,
      read with the node's fallback, then DICOM_FALLBACK_CHARSET (``charset``);
      pixel data that is truncated or whose Rows x Columns x Frames x Bits is over
      DICOM_MAX_PIXEL_BYTES (``pixels``): no thumbnail is rendered from it.

    Indexing the file again updates the row (``attempts``); once the file is
    indexed without a problem, the row is deleted.
    """

    class Category(models.TextChoices):
        UNREADABLE = "unreadable", _("cannot be parsed (not indexed)")
        NO_UIDS = "no-uids", _("missing or invalid UIDs (not indexed)")
        DEFLATE_BOMB = "deflate-bomb", _("inflates past the limit (not indexed)")
        CHARSET = "charset", _("unknown character set (indexed with a fallback)")
        PIXELS = "pixels", _("unusable pixel data (indexed, no thumbnail)")

    file_path = models.CharField(_("file path"), max_length=255, unique=True, help_text=_("Relative to STORAGE_DIR."))
    sop_instance_uid = models.CharField(_("SOP Instance UID"), max_length=64, blank=True, default="")
    source_ae = models.CharField(_("from AE title"), max_length=16, blank=True, default="")
    category = models.CharField(_("category"), max_length=16, choices=Category.choices, default=Category.UNREADABLE)
    indexed = models.BooleanField(_("header indexed"), default=False)
    reason = models.CharField(_("reason"), max_length=500)
    first_failed_at = models.DateTimeField(_("first failed"), auto_now_add=True)
    last_failed_at = models.DateTimeField(
        _("last failed"), auto_now=True, db_index=True
    )  # the admin's list goes by date
    attempts = models.PositiveIntegerField(_("attempts"), default=1)

    class Meta:
        ordering = ["-last_failed_at"]
        verbose_name = _("indexing failure")
        verbose_name_plural = _("indexing failures")

    def __str__(self) -> str:
        return f"{self.file_path}: {self.reason}"


class InstanceConflict(models.Model):
    """An instance arrived with a SOP Instance UID we hold under another study or patient.

    Written where the conflict is seen (the store path, or the indexer for files
    already on disk) with what was decided (settings.DICOM_UID_CONFLICT_POLICY);
    never edited afterwards.
    """

    class Resolution(models.TextChoices):
        KEPT_STORED = "kept-stored", _("kept the stored instance, refused the new one")
        REPLACED = "replaced", _("replaced the stored instance")
        KEPT_STUDY_PATIENT = "kept-study-patient", _("kept the study with its patient")

    detected_at = models.DateTimeField(_("detected"), auto_now_add=True, db_index=True)
    sop_instance_uid = models.CharField(_("SOP Instance UID"), max_length=64, db_index=True)
    source_ae = models.CharField(_("from AE title"), max_length=16, blank=True, default="")
    stored_study_uid = models.CharField(_("stored Study Instance UID"), max_length=64, blank=True, default="")
    incoming_study_uid = models.CharField(_("incoming Study Instance UID"), max_length=64, blank=True, default="")
    stored_patient_id = models.CharField(_("stored patient ID"), max_length=64, blank=True, default="")
    incoming_patient_id = models.CharField(_("incoming patient ID"), max_length=64, blank=True, default="")
    resolution = models.CharField(_("resolution"), max_length=32, choices=Resolution.choices)
    detail = models.CharField(_("detail"), max_length=500, blank=True, default="")

    class Meta:
        ordering = ["-detected_at"]
        verbose_name = _("instance conflict")
        verbose_name_plural = _("instance conflicts")

    def __str__(self) -> str:
        return f"{self.sop_instance_uid}: {self.get_resolution_display()}"


class AccessRecord(models.Model):
    """Someone opened a patient's study: once per session (or token/Basic user per day), study and action.

    Written by ``records.access.record_access`` only, never edited (the admin reads it)
    and pruned after settings.ACCESS_RECORD_RETENTION_DAYS. The patient's and study's
    identifiers are copied, so a record still says whom it was about after the study
    is deleted, corrected or merged.
    """

    class Action(models.TextChoices):
        STUDY_PAGE = "study-page", _("study page")
        VIEWER = "viewer", _("viewer")
        DOWNLOAD = "download", _("download (ZIP)")
        WADO_RETRIEVE = "wado-retrieve", _("DICOMweb retrieve")
        WADO_METADATA = "wado-metadata", _("DICOMweb metadata")
        WADO_FRAMES = "wado-frames", _("DICOMweb frames")
        WADO_BULKDATA = "wado-bulkdata", _("DICOMweb bulk data")
        WADO_RENDERED = "wado-rendered", _("DICOMweb rendered")
        WADO_THUMBNAIL = "wado-thumbnail", _("DICOMweb thumbnail")
        API_INSTANCE = "api-instance", _("API instance")

    at = models.DateTimeField(_("when"), db_index=True)  # the admin's date filter and the pruning
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, verbose_name=_("user"), null=True, on_delete=models.SET_NULL, related_name="+"
    )
    username = models.CharField(_("user name"), max_length=150)
    # A digest of the session key (or of the token, or "user:<id>:<day>"): what "once per
    # session" is counted on; the key itself is a credential and is never stored.
    session = models.CharField(_("session"), max_length=64)
    action = models.CharField(_("action"), max_length=16, choices=Action.choices)
    study = models.ForeignKey(
        Study, verbose_name=_("study"), null=True, on_delete=models.SET_NULL, related_name="access_records"
    )
    study_instance_uid = models.CharField(_("Study Instance UID"), max_length=64)
    accession_number = models.CharField(_("accession number"), max_length=64, blank=True, default="")
    patient_id = models.CharField(_("patient ID"), max_length=64, blank=True, default="")
    patient_name = models.CharField(_("patient name"), max_length=200, blank=True, default="")
    address = models.GenericIPAddressField(_("from address"), null=True, blank=True)

    class Meta:
        ordering = ["-at", "-id"]
        verbose_name = _("access record")
        verbose_name_plural = _("access records")
        constraints = [
            # Once per session, study and action: a second insert from another web
            # process is a no-op (INSERT ... ON CONFLICT DO NOTHING).
            models.UniqueConstraint(
                fields=["session", "study_instance_uid", "action"], name="access_record_once_per_session"
            ),
        ]
        indexes = [
            # The admin's filter by patient (patient_id exact or contains).
            models.Index(fields=["patient_id", "at"], name="access_record_patient"),
        ]

    def __str__(self) -> str:
        return f"{self.at:%Y-%m-%d %H:%M} {self.username} {self.action} {self.study_instance_uid}"


class Correction(models.Model):
    """One correction or merge of demographics by the front desk, or the undo of one: who, when, why, what.

    Written by ``records.demographics`` only, in the transaction that changes the rows,
    and never edited afterwards (the admin reads it), except ``undone_by``, set once by
    the undo. ``before`` and ``after`` hold each changed field's value as JSON (dates as
    ISO text); a merge also names the duplicate and the studies it moved (``detail``),
    which is what its undo needs. The patient's identifiers are copied, so a record
    still says whom it was about after a merge deleted the patient row.
    """

    class Kind(models.TextChoices):
        PATIENT = "patient", _("patient correction")
        STUDY = "study", _("study correction")
        MERGE = "merge", _("patient merge")
        UNDO = "undo", _("undo")

    at = models.DateTimeField(_("when"), db_index=True)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, verbose_name=_("user"), null=True, on_delete=models.SET_NULL, related_name="+"
    )
    username = models.CharField(_("user name"), max_length=150)
    address = models.GenericIPAddressField(_("from address"), null=True, blank=True)
    reason = models.CharField(_("reason"), max_length=500)
    kind = models.CharField(_("kind"), max_length=16, choices=Kind.choices)
    patient = models.ForeignKey(
        Patient, verbose_name=_("patient"), null=True, on_delete=models.SET_NULL, related_name="corrections"
    )
    study = models.ForeignKey(
        Study, verbose_name=_("study"), null=True, blank=True, on_delete=models.SET_NULL, related_name="corrections"
    )
    # The patient's (PatientID, issuer) when the record was written ("patient_id" is the foreign key's).
    dicom_patient_id = models.CharField(_("patient ID"), max_length=64, blank=True, default="")
    dicom_issuer = models.CharField(_("issuer of patient ID"), max_length=64, blank=True, default="")
    before = models.JSONField(_("before"), default=dict)
    after = models.JSONField(_("after"), default=dict)
    detail = models.JSONField(_("detail"), default=dict, blank=True)
    studies_affected = models.PositiveIntegerField(_("studies affected"), default=0)
    images_affected = models.PositiveIntegerField(_("images affected"), default=0)
    undoes = models.OneToOneField(
        "self", verbose_name=_("undoes"), null=True, blank=True, on_delete=models.PROTECT, related_name="undone_by"
    )

    class Meta:
        ordering = ["-at", "-id"]
        verbose_name = _("correction")
        verbose_name_plural = _("corrections")

    def __str__(self) -> str:
        return f"{self.at:%Y-%m-%d %H:%M} {self.username} {self.get_kind_display()} {self.dicom_patient_id}"


class PatientAlias(models.Model):
    """A patient ID (with its issuer) the front desk has ruled on: images that arrive with it go to ``patient``.

    Every correction and merge writes one for the patient's key before and after it,
    so that a late image carrying an old ID, or the current ID with the old name, is
    indexed under ``patient`` with ``patient``'s values (imaging/ingest.py). An alias
    whose key differs from the patient's own is one of the patient's other IDs (a
    merged duplicate's, or an ID that was corrected).
    """

    dicom_patient_id = models.CharField(_("patient ID"), max_length=64)
    dicom_issuer = models.CharField(_("issuer of patient ID"), max_length=64, blank=True, default="")
    patient = models.ForeignKey(Patient, verbose_name=_("patient"), on_delete=models.CASCADE, related_name="aliases")
    correction = models.ForeignKey(
        Correction, verbose_name=_("correction"), on_delete=models.PROTECT, related_name="aliases"
    )

    class Meta:
        verbose_name = _("patient alias")
        verbose_name_plural = _("patient aliases")
        constraints = [
            # Ingest's lookup of an incoming (PatientID, issuer), once per batch and key.
            models.UniqueConstraint(fields=["dicom_patient_id", "dicom_issuer"], name="patient_alias_key_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.dicom_patient_id} [{self.dicom_issuer}] -> {self.patient_id}"


class CorrectedStudy(models.Model):
    """A study whose fields the front desk corrected: ingest keeps these fields as they are now.

    One row per study, its Study Instance UID copied (the lookup of ingest, and a study
    merged away and back keeps it); ``fields`` lists the study fields corrected.
    """

    study = models.OneToOneField(Study, verbose_name=_("study"), on_delete=models.CASCADE, related_name="+")
    study_instance_uid = models.CharField(_("Study Instance UID"), max_length=64, unique=True)
    fields = models.JSONField(_("corrected fields"), default=list)

    class Meta:
        verbose_name = _("corrected study")
        verbose_name_plural = _("corrected studies")

    def __str__(self) -> str:
        return self.study_instance_uid


class RewriteJob(models.Model):
    """The rewrite of the stored files a correction touched (imaging/rewrite.py), with per-file progress.

    One item per instance; a file is marked done after it is in place, so a job killed
    halfway is resumed by running it again (a file already carrying the index's values
    is left as it is).
    """

    class State(models.TextChoices):
        PENDING = "pending", _("pending")
        RUNNING = "running", _("running")
        DONE = "done", _("done")
        FAILED = "failed", _("failed")

    correction = models.ForeignKey(
        Correction, verbose_name=_("correction"), on_delete=models.PROTECT, related_name="rewrite_jobs"
    )
    state = models.CharField(_("state"), max_length=16, choices=State.choices, default=State.PENDING)
    created_at = models.DateTimeField(_("created"), auto_now_add=True)
    started_at = models.DateTimeField(_("started"), null=True, blank=True)
    finished_at = models.DateTimeField(_("finished"), null=True, blank=True)
    total = models.PositiveIntegerField(_("files"), default=0)
    done = models.PositiveIntegerField(_("files rewritten"), default=0)
    failed = models.PositiveIntegerField(_("files failed"), default=0)
    error = models.CharField(_("last error"), max_length=500, blank=True, default="")

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name = _("rewrite job")
        verbose_name_plural = _("rewrite jobs")

    def __str__(self) -> str:
        return f"{self.correction_id}: {self.done}/{self.total} {self.state}"


class RewriteItem(models.Model):
    job = models.ForeignKey(RewriteJob, verbose_name=_("rewrite job"), on_delete=models.CASCADE, related_name="items")
    instance = models.ForeignKey(Instance, verbose_name=_("instance"), on_delete=models.CASCADE, related_name="+")
    # None until the file is rewritten (or found already right); the job's next files.
    done_at = models.DateTimeField(_("rewritten"), null=True, blank=True)
    changed = models.BooleanField(_("file changed"), default=False)
    error = models.CharField(_("error"), max_length=500, blank=True, default="")

    class Meta:
        verbose_name = _("rewrite item")
        verbose_name_plural = _("rewrite items")
        constraints = [models.UniqueConstraint(fields=["job", "instance"], name="rewrite_item_once_per_job")]
        # The job's files still to do, in order.
        indexes = [models.Index(fields=["job", "done_at", "id"], name="rewrite_item_todo")]

    def __str__(self) -> str:
        return f"{self.job_id}/{self.instance_id}"
