"""WADO-RS (PS3.18 10.4): instances, metadata, bulk data, frames, rendered and thumbnail; refusals."""

import io
import json

import numpy as np
import pydicom
import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from PIL import Image
from pydicom.encaps import generate_frames
from pydicom.uid import generate_uid

from imaging import render, storage
from network.dicomweb import multipart
from tests import dicomgen
from tests.dicomweb_data import PASSWORD, client_for, fresh_uids, pydicom_file, store

pytestmark = pytest.mark.django_db

EXPLICIT = "1.2.840.10008.1.2.1"
DICOM_PARTS = 'multipart/related; type="application/dicom"'
OCTET_PARTS = 'multipart/related; type="application/octet-stream"'


def parts(response) -> list[tuple[dict, bytes]]:
    """A multipart/related body as (headers, content) pairs, read independently of our writer."""
    content_type = response["Content-Type"]
    assert content_type.startswith("multipart/related"), content_type
    boundary = next(p.strip()[9:] for p in content_type.split(";") if p.strip().startswith("boundary="))
    body = b"".join(response.streaming_content) if response.streaming else response.content
    marker = b"--" + boundary.encode()
    assert body.startswith(marker) and body.rstrip().endswith(marker + b"--")
    out = []
    for chunk in _split(body, marker):
        head, _, content = chunk.partition(b"\r\n\r\n")
        headers = dict(line.split(": ", 1) for line in head.decode().split("\r\n") if line)
        out.append((headers, content))
    return out


def _split(body: bytes, marker: bytes):
    pieces = body.split(b"\r\n" + marker)
    first = pieces[0]
    assert first.startswith(marker + b"\r\n")
    chunks = [first[len(marker) + 2 :]]
    for piece in pieces[1:]:
        if piece.startswith(b"--"):
            break
        chunks.append(piece[2:])  # the CRLF after the boundary
    return chunks


@pytest.fixture
def archive():
    """A study of a signed CT (Explicit VR LE) and a JPEG-lossless CT; a multi-frame MR study (native and
    JPEG-LS); a MONOCHROME1 CR and an RGB image."""
    study_uid = generate_uid(dicomgen.PYNETDICOM_ROOT)
    ct = fresh_uids(pydicom_file("CT_small.dcm"), study=study_uid)
    ct.SeriesNumber = 1
    ct.add_new(0x00282000, "OB", bytes(range(256)) * 8)  # ICC Profile, 2 KiB: bulk data
    ct.add_new(0x00189315, "OB", b"\x01\x02")  # a small OB value: inline
    jpeg = fresh_uids(pydicom_file("bad_sequence.dcm"), study=study_uid)
    jpeg.SeriesNumber = 2
    mr_uid = generate_uid(dicomgen.PYNETDICOM_ROOT)
    native = fresh_uids(pydicom_file("emri_small.dcm"), study=mr_uid)
    jls = fresh_uids(pydicom_file("emri_small_jpeg_ls_lossless.dcm"), study=mr_uid)
    cr = fresh_uids(pydicom_file("RG3_UNCR.dcm"))
    rgb = fresh_uids(pydicom_file("SC_rgb.dcm"))
    items = {"ct": ct, "jpeg": jpeg, "native": native, "jls": jls, "cr": cr, "rgb": rgb}
    for ds in items.values():
        store(ds)
    return items


@pytest.fixture
def doctor():
    return client_for("Doctor")


def url(ds, tail=""):
    return f"/dicomweb/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}{tail}"


def stored_bytes(ds) -> bytes:
    return storage.absolute(storage.instance_relpath(ds.SOPInstanceUID)).read_bytes()


# Instances


def test_an_instance_comes_back_byte_for_byte_as_stored(doctor, archive):
    for accept in (DICOM_PARTS, DICOM_PARTS + "; transfer-syntax=*", "multipart/related;type=application/dicom", "*/*"):
        response = doctor.get(url(archive["jpeg"]), HTTP_ACCEPT=accept)
        assert response.status_code == 200, response.content
        assert response.streaming
        [(headers, content)] = parts(response)
        assert content == stored_bytes(archive["jpeg"])
        assert headers["Content-Type"] == "application/dicom; transfer-syntax=1.2.840.10008.1.2.4.70"
        assert headers["Content-Location"].startswith("http://testserver/dicomweb/studies/")


def test_a_study_and_a_series_stream_every_instance(doctor, archive):
    ct, jpeg = archive["ct"], archive["jpeg"]
    study = parts(doctor.get(f"/dicomweb/studies/{ct.StudyInstanceUID}", HTTP_ACCEPT=DICOM_PARTS))
    assert [content for _, content in study] == [stored_bytes(ct), stored_bytes(jpeg)]
    series = parts(doctor.get(f"/dicomweb/studies/{ct.StudyInstanceUID}/series/{jpeg.SeriesInstanceUID}"))
    assert [content for _, content in series] == [stored_bytes(jpeg)]


def test_transcoded_to_explicit_vr_little_endian_when_asked(doctor, archive):
    jpeg = archive["jpeg"]
    response = doctor.get(url(jpeg), HTTP_ACCEPT=f"{DICOM_PARTS}; transfer-syntax={EXPLICIT}")
    assert response.status_code == 200
    [(headers, content)] = parts(response)
    assert headers["Content-Type"] == f"application/dicom; transfer-syntax={EXPLICIT}"
    sent = pydicom.dcmread(io.BytesIO(content))
    assert sent.file_meta.TransferSyntaxUID == EXPLICIT
    assert sent.SOPInstanceUID == jpeg.SOPInstanceUID
    assert np.array_equal(
        sent.pixel_array, pydicom.dcmread(pydicom.data.get_testdata_file("bad_sequence.dcm")).pixel_array
    )
    # Stored in Explicit VR LE already: as it is.
    [(_, same)] = parts(doctor.get(url(archive["ct"]), HTTP_ACCEPT=f"{DICOM_PARTS}; transfer-syntax={EXPLICIT}"))
    assert same == stored_bytes(archive["ct"])


def test_a_syntax_we_cannot_give_is_406(doctor, archive):
    response = doctor.get(url(archive["jpeg"]), HTTP_ACCEPT=f"{DICOM_PARTS}; transfer-syntax=1.2.840.10008.1.2.4.80")
    assert response.status_code == 406
    assert "1.2.840.10008.1.2.4.70" in response.json()["detail"]
    assert doctor.get(url(archive["jpeg"]), HTTP_ACCEPT="application/zip").status_code == 406
    # One instance of the study that cannot be given refuses the study, before anything is sent.
    study = f"/dicomweb/studies/{archive['ct'].StudyInstanceUID}"
    assert doctor.get(study, HTTP_ACCEPT=f"{DICOM_PARTS}; transfer-syntax=1.2.840.10008.1.2").status_code == 406


# Metadata and bulk data


def test_instance_metadata_with_bulk_data_uris_back_to_the_server(doctor, archive, settings):
    settings.ALLOWED_HOSTS = [*settings.ALLOWED_HOSTS, "pacs.example"]
    ct = archive["ct"]
    response = doctor.get(url(ct, "/metadata"), HTTP_ACCEPT="application/dicom+json", HTTP_HOST="pacs.example:8443")
    assert response.status_code == 200
    assert response["Content-Type"] == "application/dicom+json"
    [meta] = response.json() if not response.streaming else json.loads(b"".join(response.streaming_content))
    base = f"http://pacs.example:8443/dicomweb/studies/{ct.StudyInstanceUID}/series/{ct.SeriesInstanceUID}"
    assert meta["7FE00010"] == {"vr": "OW", "BulkDataURI": f"{base}/instances/{ct.SOPInstanceUID}/bulkdata/7FE00010"}
    assert meta["00282000"]["BulkDataURI"].endswith("/bulkdata/00282000")
    assert meta["00189315"] == {"vr": "OB", "InlineBinary": "AQI="}
    assert meta["00280008"] == {"vr": "IS", "Value": [1]}  # NumberOfFrames, absent from the file
    assert meta["00100010"] == {"vr": "PN", "Value": [{"Alphabetic": "CompressedSamples^CT1"}]}
    assert meta["00280010"] == {"vr": "US", "Value": [128]}
    assert meta["00080016"] == {"vr": "UI", "Value": [ct.SOPClassUID]}
    assert meta["00280030"]["Value"] == [0.661468, 0.661468]


def test_metadata_names_in_iso_2022_come_with_their_three_groups(doctor):
    ds = fresh_uids(pydicom_file("chrH31.dcm"))
    store(ds)
    [meta] = json.loads(b"".join(doctor.get(url(ds, "/metadata")).streaming_content))
    assert meta["00100010"] == {
        "vr": "PN",
        "Value": [{"Alphabetic": "Yamada^Tarou", "Ideographic": "山田^太郎", "Phonetic": "やまだ^たろう"}],
    }
    assert "00020001" not in meta and "00080005" in meta


def test_metadata_of_a_series_and_a_study_in_one_query(doctor, archive):
    native, jls = archive["native"], archive["jls"]
    study = f"/dicomweb/studies/{native.StudyInstanceUID}"
    with CaptureQueriesContext(connection) as queries:
        response = doctor.get(study + "/metadata")
        body = json.loads(b"".join(response.streaming_content))
    assert sorted(m["00080018"]["Value"][0] for m in body) == sorted([native.SOPInstanceUID, jls.SOPInstanceUID])
    assert all(m["00280008"]["Value"] == [10] for m in body)
    assert len([q for q in queries.captured_queries if "records_instance" in q["sql"]]) == 1
    series = json.loads(b"".join(doctor.get(f"{study}/series/{jls.SeriesInstanceUID}/metadata").streaming_content))
    assert [m["00020010"]["Value"] for m in series] == [["1.2.840.10008.1.2.4.80"]]


def metadata_of(client, ds, **headers) -> dict:
    [meta] = json.loads(b"".join(client.get(url(ds, "/metadata"), **headers).streaming_content))
    return meta


@pytest.fixture
def header_reads(monkeypatch):
    """How many DICOM headers the metadata views parse (the cost the metadata cache saves)."""
    from imaging import dicomfile

    reads = []
    read_header = dicomfile.read_header
    monkeypatch.setattr(dicomfile, "read_header", lambda path: reads.append(path) or read_header(path))
    return reads


def test_metadata_is_built_once_then_served_from_the_cache_with_each_clients_host(doctor, settings, header_reads):
    settings.ALLOWED_HOSTS = [*settings.ALLOWED_HOSTS, "pacs.example"]
    ct = fresh_uids(pydicom_file("CT_small.dcm"))
    store(ct)
    header_reads.clear()  # indexing read it too
    first = metadata_of(doctor, ct)
    again = metadata_of(doctor, ct)
    elsewhere = metadata_of(doctor, ct, HTTP_HOST="pacs.example:8443")
    assert len(header_reads) == 1
    assert again == first
    assert first["7FE00010"]["BulkDataURI"].startswith("http://testserver/dicomweb/studies/")
    assert elsewhere["7FE00010"]["BulkDataURI"] == first["7FE00010"]["BulkDataURI"].replace(
        "http://testserver", "http://pacs.example:8443"
    )


def test_a_rewritten_file_gets_fresh_metadata(doctor, header_reads):
    ct = fresh_uids(pydicom_file("CT_small.dcm"))
    relpath = store(ct)
    header_reads.clear()
    assert metadata_of(doctor, ct)["00100010"]["Value"] == [{"Alphabetic": "CompressedSamples^CT1"}]
    ct.PatientName = "ZHANG^WEI"
    buffer = io.BytesIO()
    ct.save_as(buffer, enforce_file_format=True)
    storage.write_atomic(relpath, [buffer.getvalue()])  # as a correction rewrites it: a new file in place
    assert metadata_of(doctor, ct)["00100010"]["Value"] == [{"Alphabetic": "ZHANG^WEI"}]
    assert len(header_reads) == 2


def test_a_broken_or_switched_off_cache_only_costs_time(doctor, settings, header_reads, tmp_path):
    settings.DICOMWEB_METADATA_CACHE_DIR = str(tmp_path / "cache")
    ct = fresh_uids(pydicom_file("CT_small.dcm"))
    store(ct)
    header_reads.clear()
    expected = metadata_of(doctor, ct)
    [entry] = (tmp_path / "cache").glob("*/*.json")
    entry.write_bytes(b'{"version": 1, "stamp": ')  # half-written, as after a crash
    assert metadata_of(doctor, ct) == expected
    assert len(header_reads) == 2
    settings.DICOMWEB_METADATA_CACHE_DIR = ""
    assert metadata_of(doctor, ct) == metadata_of(doctor, ct) == expected
    assert len(header_reads) == 4


def test_bulk_data_serves_the_values_the_metadata_points_to(doctor, archive):
    ct = archive["ct"]
    [(headers, icc)] = parts(doctor.get(url(ct, "/bulkdata/00282000")))
    assert headers["Content-Type"] == "application/octet-stream"
    assert icc == bytes(range(256)) * 8
    [(headers, pixels)] = parts(doctor.get(url(ct, "/bulkdata/7FE00010")))
    assert pixels == pydicom.dcmread(pydicom.data.get_testdata_file("CT_small.dcm")).PixelData
    assert doctor.get(url(ct, "/bulkdata/00100010x")).status_code == 400
    assert doctor.get(url(ct, "/bulkdata/00420011")).status_code == 404


# Frames


def test_frames_of_an_uncompressed_multiframe_as_raw_little_endian(doctor, archive):
    native = archive["native"]
    expected = pydicom.dcmread(pydicom.data.get_testdata_file("emri_small.dcm")).pixel_array
    for accept in (
        OCTET_PARTS,
        "multipart/related; type=application/octet-stream",
        f"{OCTET_PARTS}; transfer-syntax=*",
    ):
        response = doctor.get(url(native, "/frames/1,3,10"), HTTP_ACCEPT=accept)
        assert response.status_code == 200, response.content
        got = parts(response)
        assert [h["Content-Type"] for h, _ in got] == [f"application/octet-stream; transfer-syntax={EXPLICIT}"] * 3
        for (_, content), index in zip(got, (0, 2, 9), strict=True):
            assert content == expected[index].astype("<u2").tobytes()


def test_frames_of_a_jpeg_ls_file_decoded_or_as_stored(doctor, archive):
    jls = archive["jls"]
    source = pydicom.dcmread(pydicom.data.get_testdata_file("emri_small_jpeg_ls_lossless.dcm"))
    decoded = parts(doctor.get(url(jls, "/frames/2,4"), HTTP_ACCEPT=OCTET_PARTS))
    assert [c for _, c in decoded] == [source.pixel_array[i].astype("<u2").tobytes() for i in (1, 3)]
    stored = parts(doctor.get(url(jls, "/frames/2,4"), HTTP_ACCEPT='multipart/related; type="image/jls"'))
    frames = list(generate_frames(source.PixelData, number_of_frames=10))
    assert [c for _, c in stored] == [frames[1], frames[3]]
    assert {h["Content-Type"] for h, _ in stored} == {"image/jls; transfer-syntax=1.2.840.10008.1.2.4.80"}
    anything = parts(doctor.get(url(jls, "/frames/2"), HTTP_ACCEPT="*/*"))
    assert anything[0][1] == frames[1]


def test_a_jpeg_lossless_ct_frame_matches_pydicoms_pixels(doctor, archive):
    jpeg = archive["jpeg"]
    source = pydicom.dcmread(pydicom.data.get_testdata_file("bad_sequence.dcm"))
    [(headers, raw)] = parts(doctor.get(url(jpeg, "/frames/1"), HTTP_ACCEPT=OCTET_PARTS))
    assert raw == source.pixel_array.astype("<u2").tobytes()
    [(headers, as_stored)] = parts(
        doctor.get(
            url(jpeg, "/frames/1"),
            HTTP_ACCEPT='multipart/related; type="image/jpeg"; transfer-syntax=1.2.840.10008.1.2.4.70',
        )
    )
    assert headers["Content-Type"] == "image/jpeg; transfer-syntax=1.2.840.10008.1.2.4.70"
    assert as_stored == next(generate_frames(source.PixelData, number_of_frames=1))


def test_frame_refusals(doctor, archive):
    native, jls = archive["native"], archive["jls"]
    assert doctor.get(url(native, "/frames/11")).status_code == 404
    for bad in ("0", "a", "1,,2", "-1"):
        response = doctor.get(url(native, f"/frames/{bad}"))
        assert response.status_code == 400, bad
        assert response.json()["detail"]
    assert doctor.get(url(jls, "/frames/1"), HTTP_ACCEPT='multipart/related; type="image/jp2"').status_code == 406
    assert doctor.get(url(jls, "/frames/1"), HTTP_ACCEPT="application/dicom+json").status_code == 406


# Rendered and thumbnail


def decode(response):
    assert response.status_code == 200, response.content
    return Image.open(io.BytesIO(response.content))


def test_rendered_jpeg_and_png_of_the_right_size(doctor, archive):
    ct = archive["ct"]
    jpeg = decode(doctor.get(url(ct, "/rendered"), HTTP_ACCEPT="image/jpeg"))
    assert (jpeg.format, jpeg.size) == ("JPEG", (128, 128))
    png = decode(doctor.get(url(ct, "/rendered"), {"window": "40,400"}, HTTP_ACCEPT="image/png"))
    assert png.format == "PNG"
    expected = render.render_frame(storage.absolute(storage.instance_relpath(ct.SOPInstanceUID)), 0, (40, 400))
    assert np.array_equal(np.asarray(png), np.asarray(expected))
    small = decode(doctor.get(url(ct, "/rendered"), {"viewport": "64,32", "quality": "50"}))
    assert small.size == (32, 32)
    sigmoid = decode(doctor.get(url(ct, "/rendered"), {"window": "40,400,sigmoid"}, HTTP_ACCEPT="image/png"))
    assert not np.array_equal(np.asarray(sigmoid), np.asarray(png))


def test_rendered_monochrome1_color_and_compressed(doctor, archive):
    cr = archive["cr"]
    path = storage.absolute(storage.instance_relpath(cr.SOPInstanceUID))
    png = decode(doctor.get(url(cr, "/rendered"), HTTP_ACCEPT="image/png"))
    assert np.array_equal(np.asarray(png), np.asarray(render.render_frame(path, 0)))
    rgb = decode(doctor.get(url(archive["rgb"], "/rendered"), HTTP_ACCEPT="image/png"))
    assert (rgb.mode, rgb.size) == ("RGB", (100, 100))
    jls = decode(doctor.get(url(archive["jls"], "/frames/7/rendered"), HTTP_ACCEPT="image/png"))
    jls_path = storage.absolute(storage.instance_relpath(archive["jls"].SOPInstanceUID))
    assert np.array_equal(np.asarray(jls), np.asarray(render.render_frame(jls_path, 6)))
    jpeg = decode(doctor.get(url(archive["jpeg"], "/rendered")))
    assert jpeg.size == (512, 512) and np.asarray(jpeg).std() > 10


def test_thumbnails_at_every_level(doctor, archive, settings):
    settings.THUMBNAIL_SIZE = 64
    ct, native = archive["ct"], archive["native"]
    study = f"/dicomweb/studies/{ct.StudyInstanceUID}"
    assert decode(doctor.get(study + "/thumbnail")).size == (64, 64)
    assert decode(doctor.get(f"{study}/series/{archive['jpeg'].SeriesInstanceUID}/thumbnail")).size == (64, 64)
    assert decode(doctor.get(url(archive["rgb"], "/thumbnail"))).size == (64, 64)
    assert decode(doctor.get(url(native, "/frames/3/thumbnail"), {"viewport": "32,32"})).size == (32, 32)
    settings.THUMBNAIL_SIZE = 256
    assert decode(doctor.get(url(ct, "/thumbnail"))).size == (128, 128)  # never enlarged by default
    assert decode(doctor.get(url(ct, "/rendered"), {"viewport": "256,256"})).size == (256, 256)
    assert decode(doctor.get(study + "/rendered")).size == (128, 128)


@pytest.mark.parametrize(
    "params",
    [
        {"window": "40"},
        {"window": "40,-1"},
        {"window": "a,b"},
        {"viewport": "0,10"},
        {"quality": "101"},
        {"window": "1,2,cubic"},
        {"zoom": "2"},
    ],
)
def test_bad_rendered_parameters_are_400(doctor, archive, params):
    response = doctor.get(url(archive["ct"], "/rendered"), params)
    assert response.status_code == 400
    assert response.json()["detail"]


def test_rendered_refuses_what_it_cannot_give(doctor, archive):
    assert doctor.get(url(archive["ct"], "/rendered"), HTTP_ACCEPT="image/gif").status_code == 406
    assert doctor.get(url(archive["native"], "/frames/1,2/rendered")).status_code == 400


# Refusals and roles


ENDPOINTS = ("", "/metadata", "/rendered", "/thumbnail", "/frames/1", "/bulkdata/7FE00010")


def test_malformed_uids_are_400_everywhere(doctor, archive):
    ct = archive["ct"]
    bad = {"StudyInstanceUID": "1.2.x", "SeriesInstanceUID": "9" * 65, "SOPInstanceUID": "..1"}
    for keyword, uid in bad.items():
        ds = pydicom.Dataset()
        for k in bad:
            setattr(ds, k, uid if k == keyword else ct.get(k))
        for tail in ENDPOINTS:
            response = doctor.get(url(ds, tail))
            assert response.status_code == 400, (keyword, tail)
            assert "not a valid DICOM UID" in response.json()["detail"]
    assert doctor.get("/dicomweb/studies/1.2.x/metadata").status_code == 400


def test_unknown_resources_are_404(doctor, archive):
    ct = archive["ct"]
    for level_url in (
        "/dicomweb/studies/1.2.3.4",
        f"/dicomweb/studies/{ct.StudyInstanceUID}/series/1.2.3.4",
        f"/dicomweb/studies/{ct.StudyInstanceUID}/series/{ct.SeriesInstanceUID}/instances/1.2.3.4",
        # An instance under another study's UID is not found either.
        f"/dicomweb/studies/{archive['native'].StudyInstanceUID}/series/{ct.SeriesInstanceUID}/instances/{ct.SOPInstanceUID}",
    ):
        for tail in ("", "/metadata", "/rendered"):
            response = doctor.get(level_url + tail)
            assert response.status_code == 404, level_url + tail
            assert "no " in response.json()["detail"]


@pytest.mark.parametrize("who", ["frontdesk", "norole", "anonymous"])
def test_images_and_metadata_refused_to_other_roles(archive, who):
    client = {"frontdesk": lambda: client_for("Front desk"), "norole": lambda: client_for(), "anonymous": Client}[who]()
    for tail in ENDPOINTS:
        response = client.get(url(archive["ct"], tail))
        if who == "anonymous":
            assert response.status_code == 401, tail
            assert response["WWW-Authenticate"].startswith("Basic")
        else:
            assert response.status_code == 403, tail
        assert response.json()["detail"]
    assert client_for("Administrator", username="admin2").get(url(archive["ct"], "/metadata")).status_code == 200


def test_multipart_writer_round_trip():
    body = b"".join(
        multipart.stream("b0", [multipart.Part("application/dicom", [b"ab", b"cd"]), multipart.Part("x/y", [b""])])
    )
    assert (
        body
        == b"--b0\r\nContent-Type: application/dicom\r\n\r\nabcd\r\n--b0\r\nContent-Type: x/y\r\n\r\n\r\n--b0--\r\n"
    )


# End to end: the real dicomweb-client against a live server


@pytest.fixture
def web_server(transactional_db, logs_dir):
    """``manage.py runserver`` on a free 127.0.0.1 port, over the test database and store."""
    from tests.conftest import runserver

    with runserver(logs_dir, "runserver") as url:
        yield url


def dicomweb_client(server: str, *roles: str, username: str, basic: bool = True):
    """dicomweb-client signed in as a new user with ``roles``: HTTP Basic, or the session cookie of a browser."""
    from dicomweb_client.api import DICOMwebClient
    from dicomweb_client.session_utils import create_session, create_session_from_user_pass
    from django.conf import settings

    if basic:
        client_for(*roles, username=username)
        session = create_session_from_user_pass(username, PASSWORD)
    else:
        session = create_session()
        browser = client_for(*roles, username=username)
        session.cookies.set(settings.SESSION_COOKIE_NAME, browser.cookies[settings.SESSION_COOKIE_NAME].value)
    return DICOMwebClient(url=f"{server}/dicomweb", session=session)


@pytest.mark.e2e
def test_dicomweb_client_against_a_live_server(web_server):
    import requests

    study_uid = generate_uid(dicomgen.PYNETDICOM_ROOT)
    name = {"SpecificCharacterSet": "ISO_IR 192", "PatientName": "WANG^XIAODONG=王^小東", "PatientID": "E2E"}
    ct = store_file(fresh_uids(pydicom_file("CT_small.dcm", **name), study=study_uid))
    jpeg = store_file(fresh_uids(pydicom_file("bad_sequence.dcm", **name), study=study_uid))
    other = store_file(fresh_uids(pydicom_file("SC_rgb.dcm")))
    client = dicomweb_client(web_server, "Doctor", username="e2e-doctor")

    # QIDO-RS: studies, series, instances, with filters and includefield.
    studies = client.search_for_studies(search_filters={"PatientName": "wang^xiao*"}, fields=["StudyDescription"])
    assert [s["0020000D"]["Value"][0] for s in studies] == [study_uid]
    assert studies[0]["00100010"]["Value"] == [{"Alphabetic": "WANG^XIAODONG", "Ideographic": "王^小東"}]
    assert studies[0]["00201208"]["Value"] == [2]  # NumberOfStudyRelatedInstances
    assert "00081030" in studies[0]  # StudyDescription, asked for
    assert {s["0020000D"]["Value"][0] for s in client.search_for_studies()} == {study_uid, other.StudyInstanceUID}
    series = client.search_for_series(study_uid, search_filters={"Modality": "CT"})
    assert {s["0020000E"]["Value"][0] for s in series} == {ct.SeriesInstanceUID, jpeg.SeriesInstanceUID}
    instances = client.search_for_instances(
        study_uid, ct.SeriesInstanceUID, fields=["NumberOfFrames"], search_filters={"Rows": 128}
    )
    assert [i["00080018"]["Value"][0] for i in instances] == [ct.SOPInstanceUID]
    assert client.search_for_instances(search_filters={"SOPInstanceUID": jpeg.SOPInstanceUID})[0]["00280010"] == {
        "vr": "US",
        "Value": [512],
    }

    # WADO-RS: an instance byte for byte, through the client's own multipart reader.
    instance_url = web_server + url(jpeg)
    response = client._session.get(instance_url, headers={"Accept": DICOM_PARTS}, stream=True)
    assert response.status_code == 200
    [sent] = list(client._decode_multipart_message(response, stream=True))
    assert sent == stored_bytes(jpeg)
    retrieved = client.retrieve_instance(study_uid, jpeg.SeriesInstanceUID, jpeg.SOPInstanceUID)
    source = pydicom.dcmread(pydicom.data.get_testdata_file("bad_sequence.dcm"))
    assert np.array_equal(retrieved.pixel_array, source.pixel_array)

    # Series metadata, BulkDataURI back to this server.
    [meta] = client.retrieve_series_metadata(study_uid, ct.SeriesInstanceUID)
    assert meta["00280008"] == {"vr": "IS", "Value": [1]}
    # dicomweb-client sends "Host: 127.0.0.1", without the port: the URI names the server as that header does.
    assert meta["7FE00010"]["BulkDataURI"] == f"http://127.0.0.1{url(ct)}/bulkdata/7FE00010"
    [bulk] = client.retrieve_bulkdata(meta["7FE00010"]["BulkDataURI"].replace("http://127.0.0.1", web_server))
    assert bulk == pydicom.dcmread(pydicom.data.get_testdata_file("CT_small.dcm")).PixelData

    # Frames: uncompressed, and a JPEG-lossless CT decoded or as stored.
    ct_pixels = pydicom.dcmread(pydicom.data.get_testdata_file("CT_small.dcm")).pixel_array
    [frame] = client.retrieve_instance_frames(study_uid, ct.SeriesInstanceUID, ct.SOPInstanceUID, [1])
    assert np.array_equal(np.frombuffer(frame, "<i2").reshape(128, 128), ct_pixels)
    [frame] = client.retrieve_instance_frames(
        study_uid,
        jpeg.SeriesInstanceUID,
        jpeg.SOPInstanceUID,
        [1],
        media_types=(("application/octet-stream", EXPLICIT),),
    )
    assert np.array_equal(np.frombuffer(frame, "<u2").reshape(512, 512), source.pixel_array)
    as_stored = next(generate_frames(source.PixelData, number_of_frames=1))
    # The client's default is type="*/*": the frame as stored.
    [default] = client.retrieve_instance_frames(study_uid, jpeg.SeriesInstanceUID, jpeg.SOPInstanceUID, [1])
    [compressed] = client.retrieve_instance_frames(
        study_uid,
        jpeg.SeriesInstanceUID,
        jpeg.SOPInstanceUID,
        [1],
        media_types=(("image/jpeg", "1.2.840.10008.1.2.4.70"),),
    )
    assert default == compressed == as_stored

    # Rendered and thumbnail decode as images of the right size.
    png = client.retrieve_instance_rendered(
        study_uid, ct.SeriesInstanceUID, ct.SOPInstanceUID, media_types=("image/png",), params={"window": "40,400"}
    )
    assert Image.open(io.BytesIO(png)).size == (128, 128)
    jpg = client.retrieve_instance_rendered(
        study_uid,
        jpeg.SeriesInstanceUID,
        jpeg.SOPInstanceUID,
        media_types=("image/jpeg",),
        params={"viewport": "256,256"},
    )
    assert Image.open(io.BytesIO(jpg)).format == "JPEG" and Image.open(io.BytesIO(jpg)).size == (256, 256)
    series_thumb = f"{web_server}/dicomweb/studies/{study_uid}/series/{jpeg.SeriesInstanceUID}/thumbnail"
    thumb = client._session.get(series_thumb, headers={"Accept": "image/png"})
    assert thumb.status_code == 200 and Image.open(io.BytesIO(thumb.content)).size == (256, 256)  # THUMBNAIL_SIZE
    thumb = client._session.get(web_server + url(ct, "/thumbnail"), headers={"Accept": "image/jpeg"})
    assert Image.open(io.BytesIO(thumb.content)).size == (128, 128)  # never enlarged

    # Refusals over the wire: anonymous, wrong role, malformed UID, unknown study, unservable Accept.
    anonymous = requests.get(instance_url, timeout=10)
    assert anonymous.status_code == 401 and anonymous.headers["WWW-Authenticate"].startswith("Basic")
    wrong = requests.get(instance_url, auth=("e2e-doctor", "not the password"), timeout=10)
    assert wrong.status_code == 401
    front_desk = dicomweb_client(web_server, "Front desk", username="e2e-frontdesk", basic=False)
    assert len(front_desk.search_for_studies()) == 2
    assert front_desk._session.get(instance_url, timeout=10).status_code == 403
    assert client._session.get(f"{web_server}/dicomweb/studies/1.2.x", timeout=10).status_code == 400
    assert client._session.get(f"{web_server}/dicomweb/studies/1.2.3.4", timeout=10).status_code == 404
    refused = client._session.get(instance_url, headers={"Accept": "application/pdf"}, timeout=10)
    assert refused.status_code == 406 and refused.json()["detail"]


def store_file(ds):
    store(ds)
    return ds


@pytest.mark.parametrize(
    "name", ["CT_small.dcm", "MR_small_implicit.dcm", "emri_small.dcm", "rtplan.dcm", "waveform_ecg.dcm", "chrX2.dcm"]
)
def test_the_fast_formatter_agrees_with_pydicoms_conversion(name):
    from imaging import dicomfile
    from network.dicomweb import formatter

    path = pydicom.data.get_testdata_file(name) or pydicom.data.get_charset_files(name)[0]
    fast = formatter.dataset(dicomfile.read_header(path).ds, lambda p: "/".join(map(str, p)))
    original, formatter._fast = formatter._fast, lambda *args: None
    try:
        converted = formatter.dataset(pydicom.dcmread(path, stop_before_pixels=True), lambda p: "/".join(map(str, p)))
    finally:
        formatter._fast = original
    assert fast == converted
    assert len(fast) > 20


def test_a_file_missing_behind_the_index_is_a_404_with_its_reason(doctor, archive):
    ct, jpeg = archive["ct"], archive["jpeg"]
    storage.absolute(storage.instance_relpath(ct.SOPInstanceUID)).unlink()
    for tail in ("", "/frames/1", "/rendered", "/bulkdata/00282000"):
        response = doctor.get(url(ct, tail))
        assert response.status_code == 404, tail
        assert "missing" in response.json()["detail"]
    # The study goes out without it.
    study = parts(doctor.get(f"/dicomweb/studies/{ct.StudyInstanceUID}"))
    assert [content for _, content in study] == [stored_bytes(jpeg)]


@pytest.mark.parametrize("name", ["MR_small_implicit.dcm", "image_dfl.dcm"])
def test_implicit_and_deflated_files_transcoded_to_explicit_vr_little_endian(doctor, name):
    ds = fresh_uids(pydicom_file(name))
    store(ds)
    [(headers, content)] = parts(doctor.get(url(ds), HTTP_ACCEPT=f"{DICOM_PARTS}; transfer-syntax={EXPLICIT}"))
    assert headers["Content-Type"] == f"application/dicom; transfer-syntax={EXPLICIT}"
    sent = pydicom.dcmread(io.BytesIO(content))
    assert sent.file_meta.TransferSyntaxUID == EXPLICIT
    assert not sent.original_encoding[0]  # explicit VR indeed
    assert np.array_equal(sent.pixel_array, pydicom.dcmread(pydicom.data.get_testdata_file(name)).pixel_array)
    [(_, as_stored)] = parts(doctor.get(url(ds)))
    assert as_stored == stored_bytes(ds)


def test_a_large_instance_is_streamed_in_bounded_chunks(doctor, archive):
    from network.dicomweb import wado

    cr = archive["cr"]  # 1760 x 1760 x 16 bits: 6 MB
    response = doctor.get(url(cr), HTTP_ACCEPT=DICOM_PARTS)
    assert response.streaming
    chunks = list(response.streaming_content)
    assert max(len(c) for c in chunks) <= wado.CHUNK
    assert sum(len(c) for c in chunks) > 6_000_000
    assert len(chunks) >= 6
