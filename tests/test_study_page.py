"""A study's page (/studies/<uid>/) and its ZIP download: header, series, priors, links, roles, safe paths."""

import io
import zipfile
from pathlib import PurePosixPath

import pydicom
import pytest
from django.test import Client
from django.urls import reverse

from imaging import storage, thumbnails
from records import download
from records.models import Series, Study
from tests import dicomgen
from tests.dicomweb_data import client_for, store_generated

pytestmark = pytest.mark.django_db

NAME = "Zhang^Wei=张^伟=ジャン^ウェイ"


@pytest.fixture
def patient_studies(tmp_path):
    """A CT (2 series, 3 + 2 images, thumbnails) of 张伟 today, and two priors of the same patient."""
    study_uid = pydicom.uid.generate_uid(dicomgen.PYNETDICOM_ROOT)
    common = {"PatientName": NAME, "PatientSex": "M", "PatientBirthDate": "19800215", "ReferringPhysicianName": "Li^Na"}
    chest = store_generated(
        dicomgen.ct_series(tmp_path / "a", 3, 64, patient_id="SP0001", study_uid=study_uid),
        SeriesNumber=2,
        SeriesDescription="Chest 1.25mm",
        StudyDescription="CT chest",
        AccessionNumber="A1001",
        StudyDate="20250601",
        **common,
    )
    scout = store_generated(
        dicomgen.ct_series(tmp_path / "b", 2, 64, patient_id="SP0001", study_uid=study_uid, seed=7),
        SeriesNumber=1,
        SeriesDescription="Scout",
        StudyDescription="CT chest",
        AccessionNumber="A1001",
        StudyDate="20250601",
        **common,
    )
    last_year = store_generated(
        dicomgen.ct_series(tmp_path / "c", 1, 64, patient_id="SP0001"),
        StudyDescription="CT chest (last year)",
        AccessionNumber="A0900",
        StudyDate="20240510",
        **common,
    )
    older = store_generated(
        dicomgen.ct_series(tmp_path / "d", 1, 64, patient_id="SP0001"),
        StudyDescription="CT head",
        AccessionNumber="A0500",
        StudyDate="20200101",
        **common,
    )
    for series in Series.objects.filter(study__study_instance_uid=study_uid):
        thumbnails.update_series_thumbnail(series.pk)
    return {
        "study": Study.objects.get(study_instance_uid=study_uid),
        "chest": chest,
        "scout": scout,
        "last_year": Study.objects.get(study_instance_uid=last_year[0].StudyInstanceUID),
        "older": Study.objects.get(study_instance_uid=older[0].StudyInstanceUID),
    }


def page_url(study) -> str:
    return reverse("records:study", args=[study.study_instance_uid])


def zip_url(study) -> str:
    return reverse("records:study-download", args=[study.study_instance_uid])


def test_a_doctor_sees_header_series_thumbnails_and_priors(patient_studies, django_assert_max_num_queries):
    doctor = client_for("Doctor")
    study = patient_studies["study"]
    with django_assert_max_num_queries(12):
        response = doctor.get(page_url(study))
    assert response.status_code == 200
    html = response.content.decode()
    for text in ("Zhang^Wei", "张^伟", "ジャン^ウェイ", "SP0001", "1980-02-15", "45 years", "A1001", "2025-06-01"):
        assert text in html, text
    assert "CT chest" in html and "Li^Na" in html
    series = list(Series.objects.filter(study=study).order_by("series_number"))
    assert [s.description for s in series] == ["Scout", "Chest 1.25mm"]
    # Thumbnails in series order, each opening the viewer on its series, with its image count.
    thumbs = [reverse("series-thumbnail", args=[s.pk]) for s in series]
    assert html.index(thumbs[0]) < html.index(thumbs[1])
    for s in series:
        assert f"/viewer/?study={study.study_instance_uid}&amp;series={s.series_instance_uid}" in html
    assert "2 images" in html and "3 images" in html
    assert doctor.get(thumbs[0])["Content-Type"] == "image/png"
    # Priors newest first, each linking to its own page.
    last_year, older = page_url(patient_studies["last_year"]), page_url(patient_studies["older"])
    assert html.index(last_year) < html.index(older)
    assert doctor.get(last_year).status_code == 200
    assert f'href="{zip_url(study)}"' in html
    assert f"/ohif/viewer?StudyInstanceUIDs={study.study_instance_uid}" in html


def test_the_study_list_links_to_the_study_page(patient_studies):
    html = client_for("Doctor").get(reverse("records:study-list")).content.decode()
    for key in ("study", "last_year", "older"):
        assert f'href="{page_url(patient_studies[key])}"' in html


def test_the_front_desk_reads_the_header_and_series_but_no_images(patient_studies):
    front_desk = client_for("Front desk")
    study = patient_studies["study"]
    response = front_desk.get(page_url(study))
    assert response.status_code == 200
    html = response.content.decode()
    assert "SP0001" in html and "Chest 1.25mm" in html and "Scout" in html
    assert "<img" not in html and "/viewer/" not in html and "download.zip" not in html and "/ohif/" not in html
    assert front_desk.get(zip_url(study)).status_code == 403
    series = Series.objects.filter(study=study).first()
    assert front_desk.get(reverse("series-thumbnail", args=[series.pk])).status_code == 403


def test_anonymous_users_and_users_without_a_role_are_kept_out(patient_studies):
    study = patient_studies["study"]
    no_role = client_for()
    for url in (page_url(study), zip_url(study)):
        response = Client().get(url)
        assert response.status_code == 302 and response["Location"].startswith("/accounts/login/"), url
        assert no_role.get(url).status_code == 403


@pytest.mark.parametrize("uid", ["1.2.826.0.1.3680043.8.498.999999", "not-a-uid", "1.2.3." + "4" * 70, "01.2.3"])
def test_unknown_and_malformed_studies_are_404(patient_studies, uid):
    doctor = client_for("Doctor")
    assert doctor.get(f"/studies/{uid}/").status_code == 404
    assert doctor.get(f"/studies/{uid}/download.zip").status_code == 404


def unzip(response) -> zipfile.ZipFile:
    assert response.status_code == 200
    assert response.streaming
    assert response["Content-Type"] == "application/zip"
    return zipfile.ZipFile(io.BytesIO(b"".join(response.streaming_content)))


def test_the_zip_holds_every_stored_file_byte_for_byte_in_a_folder_per_series(patient_studies):
    study = patient_studies["study"]
    response = client_for("Doctor").get(zip_url(study))
    assert 'attachment; filename="SP0001_20250601_A1001.zip"' == response["Content-Disposition"]
    archive = unzip(response)
    assert archive.testzip() is None
    names = archive.namelist()
    root = "SP0001_Zhang_Wei/20250601_A1001_CT_chest"
    assert names == [f"{root}/1_CT_Scout/{n:05d}.dcm" for n in (1, 2)] + [
        f"{root}/2_CT_Chest_1.25mm/{n:05d}.dcm" for n in (1, 2, 3)
    ]
    stored = patient_studies["scout"] + patient_studies["chest"]
    for name, ds in zip(names, stored, strict=True):
        assert archive.read(name) == storage.absolute(storage.instance_relpath(ds.SOPInstanceUID)).read_bytes()
        assert archive.getinfo(name).compress_type == zipfile.ZIP_STORED


def test_the_zip_is_streamed_in_pieces_never_the_study_at_once(tmp_path):
    [ds, *_] = store_generated(dicomgen.ct_series(tmp_path, 4, 512, patient_id="BIG1"))
    study = Study.objects.get(study_instance_uid=ds.StudyInstanceUID)
    response = client_for("Doctor").get(zip_url(study))
    pieces = [len(piece) for piece in response.streaming_content]
    total = sum(study.series.get().instances.values_list("file_size", flat=True))
    assert sum(pieces) > total  # the files and the zip's headers
    assert max(pieces) <= download.CHUNK + 4096
    assert len([p for p in pieces if p]) >= 4


def test_the_zip_goes_zip64_past_the_limits(patient_studies, monkeypatch):
    # Files and offsets past 4 GiB, without writing 4 GiB: zipfile reads its limit at run time.
    monkeypatch.setattr(zipfile, "ZIP64_LIMIT", 4096)
    response = client_for("Doctor").get(zip_url(patient_studies["study"]))
    body = b"".join(response.streaming_content)
    assert b"PK\x06\x06" in body  # the ZIP64 end of central directory record
    monkeypatch.undo()
    archive = zipfile.ZipFile(io.BytesIO(body))
    assert archive.testzip() is None and len(archive.namelist()) == 5


HOSTILE = {
    "PatientID": "../../etc",
    "PatientName": "../..^CON",
    "AccessionNumber": "C:\\Windows",
    "StudyDescription": "/absolute/../../x",
    "SeriesDescription": "..",
    "StudyDate": "20250102",
}


def test_hostile_names_make_safe_paths(tmp_path):
    stored = store_generated(dicomgen.ct_series(tmp_path / "in", 2, 64), **HOSTILE)
    # A second series with the same number and description: its folder is another one.
    store_generated(
        dicomgen.ct_series(tmp_path / "in2", 1, 64, study_uid=stored[0].StudyInstanceUID), **HOSTILE, SeriesNumber=1
    )
    study = Study.objects.get(study_instance_uid=stored[0].StudyInstanceUID)
    archive = unzip(client_for("Doctor").get(zip_url(study)))
    names = archive.namelist()
    assert len(names) == len(set(names)) == 3
    for name in names:
        path = PurePosixPath(name)
        assert not path.is_absolute() and "\\" not in name and ":" not in name
        assert all(part not in ("", ".", "..") and not part.startswith(".") for part in path.parts), name
        assert len(path.parts) == 4
    assert len({PurePosixPath(n).parent for n in names}) == 2
    out = tmp_path / "out"
    archive.extractall(out)
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.dcm")) == sorted(names)
    assert names[0].startswith("etc_CON/20250102_C_Windows_absolute_x/1_CT/")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("../../etc/passwd", "etc_passwd"),
        ("..", "fallback"),
        ("a..b//c", "a_b_c"),
        ("", "fallback"),
        ("CON", "_CON"),
        ("lpt1.txt", "_lpt1.txt"),
        ("张伟 CT", "张伟_CT"),
        (".hidden", "hidden"),
        ("a\x00b\nc", "a_b_c"),
        ("x" * 100, "x" * download.MAX_NAME),
    ],
)
def test_safe_name(text, expected):
    assert download.safe_name(text, "fallback") == expected
