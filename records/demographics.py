"""The front desk's corrections of demographics: correct a patient or a study, merge two patients, undo.

Each function is one transaction: it locks the rows it changes (SELECT FOR UPDATE,
patients before studies), checks every value, updates the index, writes one
``Correction`` (the audit record), the ``PatientAlias`` rows that keep late images
with the old values under the corrected patient (imaging/ingest.py), and the
``RewriteJob`` that brings the stored files in line (imaging/rewrite.py), queued on
the worker once the transaction commits. Nothing is changed when a check fails:

- ``InvalidCorrection`` (an API answers 400): a value DICOM cannot carry (a person
  name, a date, a sex), a field we do not correct, no reason, nothing to change;
- ``ConflictingCorrection`` (409): a merge of a patient into itself, a patient ID
  (with its issuer) that another patient holds, an undo of what was undone already.

Each error names the field it is about (``field``), as a form or an API shows it.
"""

import datetime as dt
import logging
import re

from django.db import transaction
from django.db.models import Count, Q
from django.utils import timezone
from django.utils.translation import gettext as _

from imaging import rewrite
from imaging.charsets import _join_groups, _person_name_groups
from records.models import CorrectedStudy, Correction, Instance, Patient, PatientAlias, Study

log = logging.getLogger(__name__)

Kind = Correction.Kind

# What the front desk corrects, named as the models name them.
PATIENT_FIELDS = ("patient_id", "issuer", "name", "birth_date", "sex")
STUDY_FIELDS = ("accession_number", "description", "referring_physician")
SEXES = ("M", "F", "O")


class CorrectionError(ValueError):
    status = 400

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class InvalidCorrection(CorrectionError):
    status = 400


class ConflictingCorrection(CorrectionError):
    status = 409


# --- checks: each returns the value as the index keeps it, or raises InvalidCorrection ----------


def _check_text(field: str, value, *, max_length: int, required: bool = False) -> str:
    """A DICOM LO/SH value: one value (no backslash), no control characters, at most ``max_length``."""
    if value is None:
        value = ""
    if not isinstance(value, str):
        raise InvalidCorrection(field, _("must be text"))
    value = value.strip()
    if required and not value:
        raise InvalidCorrection(field, _("must not be empty"))
    if "\\" in value:
        raise InvalidCorrection(field, _("must not contain a backslash (DICOM's value separator)"))
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise InvalidCorrection(field, _("must not contain control characters"))
    if len(value) > max_length:
        raise InvalidCorrection(field, _("is longer than %(n)d characters") % {"n": max_length})
    return value


def check_person_name(field: str, value) -> str:
    """A DICOM Person Name (PS3.5 6.2): up to three groups "alphabetic=ideographic=phonetic",
    each up to five components "family^given^middle^prefix^suffix" and 64 characters.

    Returned as ingest would index it: components stripped, trailing empty ones dropped.
    """
    value = _check_text(field, value, max_length=3 * 64 + 2)
    groups = value.split("=")
    if len(groups) > 3:
        raise InvalidCorrection(field, _("has more than three groups (alphabetic=ideographic=phonetic)"))
    for group in groups:
        if len(group.split("^")) > 5:
            raise InvalidCorrection(field, _("has more than five components (family^given^middle^prefix^suffix)"))
        if len(group) > 64:
            raise InvalidCorrection(field, _("has a group longer than 64 characters"))
    alphabetic, ideographic, phonetic = _person_name_groups(value)
    if alphabetic and not alphabetic.isascii():
        raise InvalidCorrection(field, _("the first (alphabetic) group must be in Latin letters, e.g. Zhang^Wei=张^伟"))
    return _join_groups([alphabetic, ideographic, phonetic])


def check_date(field: str, value) -> dt.date | None:
    """An ISO date (2026-12-01), a date, or empty (no date); never in the future."""
    if value in (None, ""):
        return None
    if isinstance(value, dt.datetime):
        raise InvalidCorrection(field, _("must be a date, not a date and time"))
    if not isinstance(value, dt.date):
        if not isinstance(value, str):
            raise InvalidCorrection(field, _("must be a date such as 1970-01-31"))
        try:
            if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", value.strip()):
                raise ValueError(value)  # Python also reads 19800101: only the form a form sends
            value = dt.date.fromisoformat(value.strip())
        except ValueError:
            raise InvalidCorrection(field, _("must be a date such as 1970-01-31")) from None
    if value > timezone.localdate():
        raise InvalidCorrection(field, _("is in the future"))
    if value.year < 1850:
        raise InvalidCorrection(field, _("is before 1850"))
    return value


def check_sex(field: str, value) -> str:
    value = _check_text(field, value, max_length=16).upper()
    if value not in ("", *SEXES):
        raise InvalidCorrection(field, _("must be M, F, O or empty"))
    return value


def check_reason(reason) -> str:
    if not isinstance(reason, str) or not reason.strip():
        raise InvalidCorrection("reason", _("a reason is required"))
    reason = reason.strip()
    if len(reason) > 500:
        raise InvalidCorrection("reason", _("is longer than %(n)d characters") % {"n": 500})
    return reason


_CHECKS = {
    "patient_id": lambda f, v: _check_text(f, v, max_length=64, required=True),
    "issuer": lambda f, v: _check_text(f, v, max_length=64),
    "name": check_person_name,
    "birth_date": check_date,
    "sex": check_sex,
    "accession_number": lambda f, v: _check_text(f, v, max_length=16),  # SH
    "description": lambda f, v: _check_text(f, v, max_length=64),  # LO
    "referring_physician": check_person_name,
}


def check_changes(changes, allowed: tuple[str, ...]) -> dict:
    """The changes as the index keeps them; InvalidCorrection for an unknown field or a bad value."""
    if not isinstance(changes, dict):
        raise InvalidCorrection("changes", _("must name the fields to change"))
    unknown = sorted(set(changes) - set(allowed))
    if unknown:
        raise InvalidCorrection(unknown[0], _("cannot be corrected here"))
    return {field: _CHECKS[field](field, value) for field, value in changes.items()}


# --- reading ---------------------------------------------------------------------------------------


def _json(value):
    return value.isoformat() if isinstance(value, dt.date) else value


def _unjson(field: str, value):
    return dt.date.fromisoformat(value) if field == "birth_date" and value else value


def _diff(row, cleaned: dict) -> tuple[dict, dict]:
    before, after = {}, {}
    for field, value in cleaned.items():
        if getattr(row, field) != value:
            before[field], after[field] = _json(getattr(row, field)), _json(value)
    return before, after


def affected(*, patient: Patient | None = None, study: Study | None = None) -> tuple[int, int]:
    """(studies, images) a correction of ``patient`` or ``study`` touches: what the form's preview shows."""
    studies = Study.objects.filter(patient=patient) if patient is not None else Study.objects.filter(pk=study.pk)
    counts = studies.aggregate(studies=Count("pk", distinct=True), images=Count("series__instances"))
    return counts["studies"], counts["images"]


def preview_patient(*, patient: Patient, changes) -> dict:
    """What ``correct_patient`` would change, without changing anything: {before, after, studies, images}."""
    before, after = _diff(patient, check_changes(changes, PATIENT_FIELDS))
    studies, images = affected(patient=patient)
    return {"before": before, "after": after, "studies": studies, "images": images}


def preview_study(*, study: Study, changes) -> dict:
    before, after = _diff(study, check_changes(changes, STUDY_FIELDS))
    return {"before": before, "after": after, "studies": 1, "images": affected(study=study)[1]}


def preview_merge(*, keep: Patient, duplicate: Patient) -> dict:
    """What ``merge_patients`` would do, without doing it.

    {duplicate, keep: each patient's values; studies: the duplicate's studies, which
    move; images: how many images they hold; other_ids: the (PatientID, issuer) that
    become other IDs of ``keep``, the duplicate's own first}. ConflictingCorrection for
    a merge of a patient into itself, as the merge answers.
    """
    if keep.pk == duplicate.pk:
        raise ConflictingCorrection("duplicate", _("a patient cannot be merged into itself"))
    studies = list(Study.objects.filter(patient=duplicate).order_by("-study_date", "-pk"))
    return {
        "duplicate": _patient_values(duplicate),
        "keep": _patient_values(keep),
        "studies": studies,
        "images": Instance.objects.filter(series__study__patient=duplicate).count(),
        "other_ids": [(duplicate.patient_id, duplicate.issuer), *other_ids(duplicate)],
    }


def other_ids(patient: Patient) -> list[tuple[str, str]]:
    """The patient's other (PatientID, issuer): of merged duplicates, or corrected away."""
    return [
        key
        for key in patient.aliases.order_by("pk").values_list("dicom_patient_id", "dicom_issuer")
        if key != (patient.patient_id, patient.issuer)
    ]


def history(patient: Patient):
    """The patient's audit records, newest first."""
    return Correction.objects.filter(Q(patient=patient) | Q(study__patient=patient)).select_related("undone_by")


# --- writing ---------------------------------------------------------------------------------------


def _set_patient_fields(patient: Patient, values: dict) -> None:
    for field, value in values.items():
        setattr(patient, field, value)
        if field == "name":
            patient.name_alphabetic, patient.name_ideographic, patient.name_phonetic = _person_name_groups(value)


def _check_key_free(key: tuple[str, str], patient: Patient) -> None:
    """409 when another patient holds (PatientID, issuer), as its own or as an other ID."""
    patient_id, issuer = key
    if Patient.objects.filter(patient_id=patient_id, issuer=issuer).exclude(pk=patient.pk).exists():
        raise ConflictingCorrection("patient_id", _("another patient already has this patient ID"))
    if PatientAlias.objects.filter(dicom_patient_id=patient_id, dicom_issuer=issuer).exclude(patient=patient).exists():
        raise ConflictingCorrection("patient_id", _("this patient ID is an other ID of another patient"))


def _alias(key: tuple[str, str], patient: Patient, record: Correction) -> None:
    PatientAlias.objects.update_or_create(
        dicom_patient_id=key[0], dicom_issuer=key[1], defaults={"patient": patient, "correction": record}
    )


def _record(*, kind, patient, study=None, before, after, reason, user, address, detail=None, undoes=None):
    studies, images = affected(patient=patient) if study is None else affected(study=study)
    return Correction.objects.create(
        at=timezone.now(),
        user=user if user is not None and user.is_authenticated else None,
        username=user.get_username() if user is not None and user.is_authenticated else "",
        address=address or None,
        reason=reason,
        kind=kind,
        patient=patient,
        study=study,
        dicom_patient_id=patient.patient_id,
        dicom_issuer=patient.issuer,
        before=before,
        after=after,
        detail=detail or {},
        studies_affected=studies,
        images_affected=images,
        undoes=undoes,
    )


def _plan_rewrite(record: Correction, instances) -> None:
    job = rewrite.plan(correction=record, instance_ids=instances.values_list("pk", flat=True))
    if job is not None:
        transaction.on_commit(lambda: rewrite.queue(job.pk))


def _lock_patient(patient: Patient | int) -> Patient:
    pk = patient.pk if isinstance(patient, Patient) else patient
    try:
        return Patient.objects.select_for_update().get(pk=pk)
    except Patient.DoesNotExist:
        raise InvalidCorrection("patient", _("no such patient")) from None


def _apply_patient(patient: Patient, cleaned: dict, record_kwargs: dict) -> Correction:
    """Change the locked ``patient`` to ``cleaned``; the record, the aliases and the rewrite. Caller holds the lock."""
    before, after = _diff(patient, cleaned)
    if not after:
        raise InvalidCorrection("changes", _("nothing would change"))
    old_key = (patient.patient_id, patient.issuer)
    new_key = (cleaned.get("patient_id", patient.patient_id), cleaned.get("issuer", patient.issuer))
    if new_key != old_key:
        _check_key_free(new_key, patient)
    _set_patient_fields(patient, {field: cleaned[field] for field in after})
    patient.save()
    record = _record(patient=patient, before=before, after=after, **record_kwargs)
    _alias(old_key, patient, record)
    _alias(new_key, patient, record)
    _plan_rewrite(record, Instance.objects.filter(series__study__patient=patient))
    return record


def correct_patient(*, patient: Patient, changes: dict, reason: str, user, address: str | None) -> Correction:
    """Correct a patient's ID, issuer, name, birth date or sex; returns the audit record."""
    reason = check_reason(reason)
    cleaned = check_changes(changes, PATIENT_FIELDS)
    with transaction.atomic():
        patient = _lock_patient(patient)
        return _apply_patient(
            patient, cleaned, {"kind": Kind.PATIENT, "reason": reason, "user": user, "address": address}
        )


def _apply_study(study: Study, cleaned: dict, record_kwargs: dict) -> Correction:
    before, after = _diff(study, cleaned)
    if not after:
        raise InvalidCorrection("changes", _("nothing would change"))
    for field in after:
        setattr(study, field, cleaned[field])
    study.save()
    pinned, _created = CorrectedStudy.objects.get_or_create(
        study=study, defaults={"study_instance_uid": study.study_instance_uid}
    )
    pinned.fields = sorted(set(pinned.fields) | set(after))
    pinned.save(update_fields=["fields"])
    record = _record(patient=study.patient, study=study, before=before, after=after, **record_kwargs)
    _plan_rewrite(record, Instance.objects.filter(series__study=study))
    return record


def correct_study(*, study: Study, changes: dict, reason: str, user, address: str | None) -> Correction:
    """Correct a study's accession number, description or referring physician; returns the audit record."""
    reason = check_reason(reason)
    cleaned = check_changes(changes, STUDY_FIELDS)
    with transaction.atomic():
        _lock_patient(study.patient_id)
        try:
            study = Study.objects.select_for_update().select_related("patient").get(pk=study.pk)
        except Study.DoesNotExist:
            raise InvalidCorrection("study", _("no such study")) from None
        return _apply_study(study, cleaned, {"kind": Kind.STUDY, "reason": reason, "user": user, "address": address})


def _patient_values(patient: Patient) -> dict:
    return {field: _json(getattr(patient, field)) for field in PATIENT_FIELDS}


def merge_patients(*, keep: Patient, duplicate: Patient, reason: str, user, address: str | None) -> Correction:
    """Move every study of ``duplicate`` to ``keep`` and delete ``duplicate``; its ID becomes an other ID of ``keep``.

    The record's ``before`` holds the duplicate's values, ``after`` those of the patient
    who stays, ``detail`` the studies moved (what the undo moves back).
    """
    reason = check_reason(reason)
    if keep.pk == duplicate.pk:
        raise ConflictingCorrection("duplicate", _("a patient cannot be merged into itself"))
    with transaction.atomic():
        # Always in pk order: two merges of the same pair cannot deadlock.
        locked = {p.pk: p for p in Patient.objects.select_for_update().filter(pk__in=[keep.pk, duplicate.pk])}
        if keep.pk not in locked:
            raise InvalidCorrection("patient", _("no such patient"))
        if duplicate.pk not in locked:
            raise InvalidCorrection("duplicate", _("no such patient"))
        keep, duplicate = locked[keep.pk], locked[duplicate.pk]
        studies = list(Study.objects.select_for_update().filter(patient=duplicate).order_by("pk"))
        study_ids = [s.pk for s in studies]
        duplicate_key = (duplicate.patient_id, duplicate.issuer)
        before = _patient_values(duplicate)
        Study.objects.filter(pk__in=study_ids).update(patient=keep, updated_at=timezone.now())
        # The duplicate's aliases (its own other IDs) now lead to the patient who stays.
        PatientAlias.objects.filter(patient=duplicate).update(patient=keep)
        duplicate.delete()
        record = _record(
            kind=Kind.MERGE,
            patient=keep,
            before=before,
            after=_patient_values(keep),
            reason=reason,
            user=user,
            address=address,
            detail={"duplicate": before, "studies": study_ids},
        )
        # Images of the moved studies are counted, not all of the patient's.
        record.studies_affected = len(study_ids)
        record.images_affected = Instance.objects.filter(series__study_id__in=study_ids).count()
        record.save(update_fields=["studies_affected", "images_affected"])
        _alias(duplicate_key, keep, record)
        _alias((keep.patient_id, keep.issuer), keep, record)
        _plan_rewrite(record, Instance.objects.filter(series__study_id__in=study_ids))
        return record


def undo(*, record: Correction, user, address: str | None, reason: str) -> Correction:
    """Undo ``record`` (a correction or a merge): itself an audited correction, of kind UNDO, returned.

    A patient or study correction is undone only while the values it wrote are still
    there (a later correction must be undone first: 409 naming the field); a merge is
    undone by recreating the duplicate with its values and moving its studies back.
    An undo is not undone (correct again instead).
    """
    reason = check_reason(reason)
    with transaction.atomic():
        try:
            record = Correction.objects.select_for_update().get(pk=record.pk)
        except Correction.DoesNotExist:
            raise InvalidCorrection("record", _("no such correction")) from None
        if record.kind == Kind.UNDO:
            raise ConflictingCorrection("record", _("an undo cannot be undone; correct again instead"))
        if Correction.objects.filter(undoes=record).exists():
            raise ConflictingCorrection("record", _("this correction has already been undone"))
        if record.patient_id is None:
            raise ConflictingCorrection("record", _("its patient no longer exists"))
        common = {"kind": Kind.UNDO, "reason": reason, "user": user, "address": address, "undoes": record}
        if record.kind == Kind.MERGE:
            return _undo_merge(record, common)
        if record.kind == Kind.STUDY:
            if record.study_id is None:
                raise ConflictingCorrection("record", _("its study no longer exists"))
            _lock_patient(record.patient_id)
            study = Study.objects.select_for_update().select_related("patient").get(pk=record.study_id)
            _check_unchanged_since(study, record)
            return _apply_study(study, {f: _unjson(f, v) for f, v in record.before.items()}, common)
        patient = _lock_patient(record.patient_id)
        _check_unchanged_since(patient, record)
        return _apply_patient(patient, {f: _unjson(f, v) for f, v in record.before.items()}, common)


def _check_unchanged_since(row, record: Correction) -> None:
    for field, value in record.after.items():
        if _json(getattr(row, field)) != value:
            raise ConflictingCorrection(field, _("changed again since; undo the later correction first"))


def _undo_merge(record: Correction, common: dict) -> Correction:
    keep = _lock_patient(record.patient_id)
    values = {f: _unjson(f, v) for f, v in record.detail["duplicate"].items()}
    key = (values["patient_id"], values["issuer"])
    if Patient.objects.filter(patient_id=key[0], issuer=key[1]).exists():
        raise ConflictingCorrection("patient_id", _("another patient already has the duplicate's patient ID"))
    duplicate = Patient(patient_id=key[0], issuer=key[1])
    _set_patient_fields(duplicate, {f: v for f, v in values.items() if f not in ("patient_id", "issuer")})
    duplicate.save()
    study_ids = list(
        Study.objects.select_for_update()
        .filter(pk__in=record.detail["studies"], patient=keep)
        .values_list("pk", flat=True)
    )
    Study.objects.filter(pk__in=study_ids).update(patient=duplicate, updated_at=timezone.now())
    # The duplicate's ID leads to it again; its other IDs stay with the patient who stays.
    PatientAlias.objects.filter(dicom_patient_id=key[0], dicom_issuer=key[1]).delete()
    undo_record = _record(
        patient=duplicate,
        before=record.after,
        after=record.before,
        detail={"kept": record.patient_id, "studies": study_ids},
        **common,
    )
    undo_record.studies_affected = len(study_ids)
    undo_record.images_affected = Instance.objects.filter(series__study_id__in=study_ids).count()
    undo_record.save(update_fields=["studies_affected", "images_affected"])
    _alias(key, duplicate, undo_record)
    _plan_rewrite(undo_record, Instance.objects.filter(series__study_id__in=study_ids))
    return undo_record
