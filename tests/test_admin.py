"""The index is readable in the Django admin, thumbnails included."""

import pydicom
import pytest
from django.urls import reverse

from imaging import ingest, storage, thumbnails
from records.models import Series
from tests import dicomgen

pytestmark = pytest.mark.django_db


@pytest.fixture
def indexed_series(tmp_path, settings):
    settings.DICOM_FALLBACK_CHARSET = "GB18030"
    relpaths = []
    for path in dicomgen.ct_series(tmp_path, 3, size=64, patient_id="CN0001"):
        ds = pydicom.dcmread(path)
        del ds.SpecificCharacterSet
        ds["PatientName"].value = "张^伟".encode("gb18030")
        relpath = storage.instance_relpath(ds.SOPInstanceUID)
        storage.absolute(relpath).parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(storage.absolute(relpath))
        relpaths.append(relpath)
    done, _ = ingest.index_files(relpaths)
    thumbnails.update_series_thumbnail(done[0].series_id)
    return Series.objects.get(pk=done[0].series_id)


@pytest.mark.parametrize("model", ["patient", "study", "series", "instance"])
def test_every_level_is_listed_for_an_administrator(admin_client, indexed_series, model, django_assert_max_num_queries):
    with django_assert_max_num_queries(12):
        response = admin_client.get(reverse(f"admin:records_{model}_changelist"))
    assert response.status_code == 200
    if model in ("patient", "study"):
        assert "张伟" in response.content.decode()  # as records/names.py shows a name


def test_the_series_list_shows_each_thumbnail(admin_client, indexed_series):
    response = admin_client.get(reverse("admin:records_series_changelist"))
    url = reverse("series-thumbnail", args=[indexed_series.pk])
    assert f'src="{url}"' in response.content.decode()
    image = admin_client.get(url)
    assert image.status_code == 200 and image["Content-Type"] == "image/png"
    assert b"".join(image.streaming_content).startswith(b"\x89PNG")


def test_thumbnails_need_a_login(client, indexed_series):
    response = client.get(reverse("series-thumbnail", args=[indexed_series.pk]))
    assert response.status_code == 302


def test_the_index_cannot_be_edited_in_the_admin(admin_client, indexed_series):
    response = admin_client.get(reverse("admin:records_series_change", args=[indexed_series.pk]))
    assert response.status_code == 200
    assert 'name="_save"' not in response.content.decode()
