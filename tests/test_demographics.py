"""The front desk's corrections as domain functions: checks that name the field, one audit record each,
merges, undo (itself audited), and late arrivals with the old values indexed with the corrected ones."""

import datetime as dt

import pydicom
import pytest

from imaging import ingest, storage
from records import demographics
from records.demographics import ConflictingCorrection, InvalidCorrection
from records.models import CorrectedStudy, Correction, Patient, PatientAlias, RewriteJob, Study
from records.roles import FRONT_DESK
from tests import dicomgen
from tests.dicomweb_data import make_user, store, store_generated

pytestmark = pytest.mark.django_db

ADDRESS = "192.0.2.7"


@pytest.fixture
def clerk():
    return make_user("clerk", FRONT_DESK)


@pytest.fixture
def zhang(tmp_path):
    """A 3-slice CT of a patient typed in as ZHANG^WEI, wrong birth date and sex."""
    return store_generated(
        dicomgen.ct_series(tmp_path / "zhang", 3, 32, patient_id="CT7001"),
        PatientName="ZHANG^WEI",
        PatientBirthDate="19800101",
        PatientSex="F",
    )


@pytest.fixture
def temporary(tmp_path):
    """The same patient the day after, under a temporary ID: 2 slices."""
    return store_generated(
        dicomgen.ct_series(tmp_path / "tmp", 2, 32, patient_id="TMP0042"),
        PatientName="ZHANG^WEI",
        PatientBirthDate="19800101",
        PatientSex="M",
    )


def patient(pid="CT7001") -> Patient:
    return Patient.objects.get(patient_id=pid)


def correct(changes, *, reason="typed wrongly at the CT", who=None, pid="CT7001"):
    return demographics.correct_patient(patient=patient(pid), changes=changes, reason=reason, user=who, address=ADDRESS)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("name", "A^B^C^D^E^F"),
        ("name", "Zhang^Wei=张^伟=zhang^wei=extra"),
        ("name", "张^伟"),  # characters belong in the ideographic group
        ("name", "Zhang\\Wei"),
        ("birth_date", "1980-13-01"),
        ("birth_date", "19800101"),
        ("birth_date", "2999-01-01"),
        ("sex", "X"),
        ("patient_id", ""),
        ("patient_id", "A" * 65),
        ("color", "blue"),
    ],
)
def test_it_rejects_a_value_dicom_cannot_carry_naming_the_field(zhang, clerk, field, value):
    with pytest.raises(InvalidCorrection) as caught:
        correct({field: value}, who=clerk)
    assert caught.value.field == field
    assert caught.value.status == 400
    assert patient().name == "ZHANG^WEI"
    assert not Correction.objects.exists()


def test_it_requires_a_reason(zhang, clerk):
    with pytest.raises(InvalidCorrection) as caught:
        correct({"name": "Zhang^Wei=张^伟"}, reason="  ", who=clerk)
    assert caught.value.field == "reason"
    assert not Correction.objects.exists()


def test_it_refuses_a_patient_id_another_patient_has(zhang, temporary, clerk):
    with pytest.raises(ConflictingCorrection) as caught:
        correct({"patient_id": "TMP0042"}, who=clerk)
    assert (caught.value.field, caught.value.status) == ("patient_id", 409)
    assert patient().patient_id == "CT7001"


def test_it_refuses_nothing_to_change(zhang, clerk):
    with pytest.raises(InvalidCorrection) as caught:
        correct({"name": "ZHANG^WEI", "sex": "F"}, who=clerk)
    assert caught.value.field == "changes"


def test_a_correction_changes_the_index_and_writes_one_audit_record(zhang, clerk):
    preview = demographics.preview_patient(patient=patient(), changes={"name": "Zhang^Wei=张^伟", "sex": "m"})
    assert preview == {
        "before": {"name": "ZHANG^WEI", "sex": "F"},
        "after": {"name": "Zhang^Wei=张^伟", "sex": "M"},
        "studies": 1,
        "images": 3,
    }
    record = correct({"name": "Zhang^Wei=张^伟", "birth_date": "1979-03-08", "sex": "m"}, who=clerk)

    p = patient()
    assert (p.name, p.name_alphabetic, p.name_ideographic) == ("Zhang^Wei=张^伟", "Zhang^Wei", "张^伟")
    assert (p.birth_date, p.sex) == (dt.date(1979, 3, 8), "M")
    assert Correction.objects.count() == 1
    assert record.kind == Correction.Kind.PATIENT
    assert (record.user, record.username, record.address) == (clerk, "clerk", ADDRESS)
    assert record.reason == "typed wrongly at the CT"
    assert record.before == {"name": "ZHANG^WEI", "birth_date": "1980-01-01", "sex": "F"}
    assert record.after == {"name": "Zhang^Wei=张^伟", "birth_date": "1979-03-08", "sex": "M"}
    assert (record.studies_affected, record.images_affected) == (1, 3)
    job = RewriteJob.objects.get(correction=record)
    assert (job.state, job.total, job.items.count()) == ("pending", 3, 3)
    assert list(demographics.history(p)) == [record]


def test_a_patient_id_correction_keeps_the_old_id_as_an_other_id(zhang, clerk):
    correct({"patient_id": "H123456", "issuer": "HOSP"}, who=clerk)
    p = patient("H123456")
    assert p.issuer == "HOSP"
    assert demographics.other_ids(p) == [("CT7001", "")]
    assert not Patient.objects.filter(patient_id="CT7001").exists()


def test_a_study_correction_is_audited_and_checked(zhang, clerk):
    study = Study.objects.get()
    with pytest.raises(InvalidCorrection) as caught:
        demographics.correct_study(
            study=study, changes={"accession_number": "A" * 17}, reason="x", user=clerk, address=ADDRESS
        )
    assert caught.value.field == "accession_number"
    record = demographics.correct_study(
        study=study,
        changes={"description": "CT 胸部", "referring_physician": "Li^Na=李^娜"},
        reason="wrong order",
        user=clerk,
        address=ADDRESS,
    )
    study.refresh_from_db()
    assert (study.description, study.referring_physician) == ("CT 胸部", "Li^Na=李^娜")
    assert record.before == {"description": "Generated test study", "referring_physician": ""}
    assert (record.kind, record.study, record.images_affected) == ("study", study, 3)
    assert CorrectedStudy.objects.get(study=study).fields == ["description", "referring_physician"]


def test_undo_restores_and_is_itself_audited(zhang, clerk):
    record = correct({"name": "Zhang^Wei=张^伟", "birth_date": "1979-03-08"}, who=clerk)
    undo = demographics.undo(record=record, user=clerk, address=ADDRESS, reason="wrong patient")
    p = patient()
    assert (p.name, p.name_ideographic, p.birth_date) == ("ZHANG^WEI", "", dt.date(1980, 1, 1))
    assert undo.kind == Correction.Kind.UNDO
    assert undo.undoes == record
    record.refresh_from_db()
    assert record.undone_by == undo
    assert undo.before == record.after and undo.after == record.before
    assert RewriteJob.objects.filter(correction=undo).count() == 1
    with pytest.raises(ConflictingCorrection):
        demographics.undo(record=record, user=clerk, address=ADDRESS, reason="again")
    with pytest.raises(ConflictingCorrection):
        demographics.undo(record=undo, user=clerk, address=ADDRESS, reason="undo the undo")


def test_undo_refuses_when_corrected_again_since(zhang, clerk):
    first = correct({"name": "Zhang^Wei=张^伟"}, who=clerk)
    correct({"name": "Zhang^Wei=张^维"}, who=clerk)
    with pytest.raises(ConflictingCorrection) as caught:
        demographics.undo(record=first, user=clerk, address=ADDRESS, reason="r")
    assert caught.value.field == "name"
    assert patient().name == "Zhang^Wei=张^维"


def test_a_merge_moves_every_study_and_the_duplicate_disappears(zhang, temporary, clerk):
    keep, duplicate = patient(), patient("TMP0042")
    with pytest.raises(ConflictingCorrection) as caught:
        demographics.merge_patients(keep=keep, duplicate=keep, reason="r", user=clerk, address=ADDRESS)
    assert caught.value.field == "duplicate"

    record = demographics.merge_patients(
        keep=keep, duplicate=duplicate, reason="temporary ID at the ER", user=clerk, address=ADDRESS
    )
    assert not Patient.objects.filter(patient_id="TMP0042").exists()
    assert Study.objects.filter(patient=keep).count() == 2
    assert demographics.other_ids(keep) == [("TMP0042", "")]
    assert (record.kind, record.studies_affected, record.images_affected) == ("merge", 2 - 1, 2)
    assert record.before["patient_id"] == "TMP0042" and record.after["patient_id"] == "CT7001"
    assert RewriteJob.objects.get(correction=record).total == 2

    undo = demographics.undo(record=record, user=clerk, address=ADDRESS, reason="not the same person")
    back = patient("TMP0042")
    assert (back.name, back.sex) == ("ZHANG^WEI", "M")
    assert Study.objects.filter(patient=back).count() == 1
    assert Study.objects.filter(patient=keep).count() == 1
    assert undo.undoes == record and undo.patient == back


def test_a_merge_preview_shows_what_moves_and_changes_nothing(zhang, temporary, clerk):
    keep, duplicate = patient(), patient("TMP0042")
    with pytest.raises(ConflictingCorrection) as caught:
        demographics.preview_merge(keep=keep, duplicate=keep)
    assert caught.value.field == "duplicate"
    preview = demographics.preview_merge(keep=keep, duplicate=duplicate)
    assert (preview["duplicate"]["patient_id"], preview["keep"]["patient_id"]) == ("TMP0042", "CT7001")
    assert [s.pk for s in preview["studies"]] == list(duplicate.studies.values_list("pk", flat=True))
    assert preview["images"] == 1 * 2
    assert preview["other_ids"] == [("TMP0042", "")]
    assert Patient.objects.filter(patient_id="TMP0042").exists() and not Correction.objects.exists()

    # What the preview announced is what the merge does.
    record = demographics.merge_patients(keep=keep, duplicate=duplicate, reason="ER", user=clerk, address=ADDRESS)
    assert (record.studies_affected, record.images_affected) == (len(preview["studies"]), preview["images"])
    assert demographics.other_ids(keep) == preview["other_ids"]


def _resend(ds, **changes) -> ingest.Indexed:
    """Store a copy of ``ds`` (same UIDs) with attributes changed, as a modality re-sending it."""
    copy = pydicom.dcmread(storage.absolute(storage.instance_relpath(ds.SOPInstanceUID)))
    for keyword, value in changes.items():
        setattr(copy, keyword, value)
    relpath = storage.instance_relpath(copy.SOPInstanceUID)
    copy.save_as(storage.absolute(relpath), enforce_file_format=True)
    done, failed = ingest.index_files([relpath])
    assert not failed
    return done[0]


@pytest.mark.usefixtures("ingest_bulk")
def test_a_late_arrival_with_the_old_name_is_indexed_with_the_corrected_one(zhang, clerk):
    correct({"name": "Zhang^Wei=张^伟", "sex": "M"}, who=clerk)
    indexed = _resend(zhang[0], PatientName="ZHANG^WEI", PatientSex="F")
    p = patient()
    assert (p.name, p.sex) == ("Zhang^Wei=张^伟", "M")
    assert indexed.coerced


@pytest.mark.usefixtures("ingest_bulk")
def test_a_late_arrival_under_a_merged_id_goes_to_the_patient_who_stays(zhang, temporary, clerk, tmp_path):
    keep = patient()
    demographics.merge_patients(keep=keep, duplicate=patient("TMP0042"), reason="r", user=clerk, address=ADDRESS)
    # A new image of the temporary ID, in a new study: the ER's modality keeps sending it.
    late = store_generated(dicomgen.ct_series(tmp_path / "late", 1, 32, patient_id="TMP0042"))[0]
    assert not Patient.objects.filter(patient_id="TMP0042").exists()
    assert Study.objects.get(study_instance_uid=late.StudyInstanceUID).patient == keep
    assert PatientAlias.objects.get(dicom_patient_id="TMP0042").patient == keep


@pytest.mark.usefixtures("ingest_bulk")
def test_a_late_arrival_keeps_a_corrected_study_description(zhang, clerk):
    study = Study.objects.get()
    demographics.correct_study(study=study, changes={"description": "CT 胸部"}, reason="r", user=clerk, address=None)
    assert _resend(zhang[1], StudyDescription="Generated test study").coerced
    study.refresh_from_db()
    assert study.description == "CT 胸部"


@pytest.mark.usefixtures("ingest_bulk")
def test_an_uncorrected_resend_is_not_coerced(zhang):
    assert not _resend(zhang[0]).coerced
    assert store(zhang[1])  # indexed as before


def test_a_batch_that_began_before_the_correction_does_not_overwrite_it(zhang, clerk):
    # A worker's batch read the corrections (none) before the front desk saved.
    cache = ingest.RowCache()
    relpath = storage.instance_relpath(zhang[0].SOPInstanceUID)
    ingest.index_file(relpath, cache=cache)
    study = Study.objects.get()
    correct({"name": "Zhang^Wei=张^伟"}, who=clerk)
    demographics.correct_study(study=study, changes={"description": "CT 胸部"}, reason="r", user=clerk, address=None)
    # The next slice of the same batch carries other old values (the cache has not seen them).
    late = pydicom.dcmread(storage.absolute(storage.instance_relpath(zhang[1].SOPInstanceUID)))
    late.PatientName, late.StudyDescription = "ZHANG^W", "CT"
    late.save_as(storage.absolute(storage.instance_relpath(late.SOPInstanceUID)), enforce_file_format=True)
    ingest.index_file(storage.instance_relpath(late.SOPInstanceUID), cache=cache)
    assert patient().name == "Zhang^Wei=张^伟"
    study.refresh_from_db()
    assert study.description == "CT 胸部"


def test_the_audit_record_is_read_in_the_admin_and_never_edited(zhang, clerk, admin_client):
    record = correct({"name": "Zhang^Wei=张^伟"}, who=clerk)
    listing = admin_client.get("/admin/records/correction/")
    assert listing.status_code == 200 and "CT7001" in listing.content.decode()
    assert admin_client.get(f"/admin/records/correction/{record.pk}/change/").status_code == 200  # a superuser reads
    response = admin_client.post(f"/admin/records/correction/{record.pk}/change/", {"reason": "edited"})
    assert response.status_code == 403
    assert admin_client.post(f"/admin/records/correction/{record.pk}/delete/", {"post": "yes"}).status_code == 403
    assert admin_client.get("/admin/records/correction/add/").status_code == 403
    record.refresh_from_db()
    assert record.reason == "typed wrongly at the CT"
