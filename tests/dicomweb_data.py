"""Test data for the DICOMweb tests: files put in the store and indexed, users of each role."""

import datetime as dt

import pydicom
from django.contrib.auth.models import Group, User
from django.test import Client
from django.utils import timezone
from pydicom.data import get_charset_files, get_testdata_file
from pydicom.uid import generate_uid

from imaging import ingest, storage
from records.roles import ADMINISTRATOR, DOCTOR, FRONT_DESK
from tests import dicomgen

PASSWORD = "a long test password 42"  # noqa: S105 - a test user's


def store(ds) -> str:
    """Put a data set in the store as the SCP would, index it, and return its relative path."""
    relpath = storage.instance_relpath(ds.SOPInstanceUID)
    path = storage.absolute(relpath)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    done, failed = ingest.index_files([relpath])
    assert not failed, failed
    return relpath


def index_study(tmp_path, name: str, accession: str, *, date: dt.date | None = None, modality: str = "MR") -> str:
    """One image of a new study for a patient named ``name``, stored and indexed; returns the Study UID."""
    study_uid = generate_uid(dicomgen.PYNETDICOM_ROOT)
    series_uid = generate_uid(dicomgen.PYNETDICOM_ROOT)
    path = dicomgen.small_image(tmp_path, f"{accession}.dcm", study_uid, series_uid, 1)
    ds = pydicom.dcmread(path)
    ds.PatientName, ds.PatientID, ds.AccessionNumber, ds.Modality = name, f"ID-{accession}", accession, modality
    ds.StudyDate = (date or timezone.localdate()).strftime("%Y%m%d")
    store(ds)
    return study_uid


def pydicom_file(name: str, **changes):
    """One of pydicom's test files (or its character set files), optionally with attributes changed."""
    path = get_testdata_file(name) or get_charset_files(name)[0]
    ds = pydicom.dcmread(path)
    for keyword, value in changes.items():
        setattr(ds, keyword, value)
    if "SOPInstanceUID" in changes:
        ds.file_meta.MediaStorageSOPInstanceUID = changes["SOPInstanceUID"]
    return ds


def fresh_uids(ds, study=None, series=None):
    """Give a data set new UIDs (several tests use the same pydicom file)."""
    ds.StudyInstanceUID = study or generate_uid(dicomgen.PYNETDICOM_ROOT)
    ds.SeriesInstanceUID = series or generate_uid(dicomgen.PYNETDICOM_ROOT)
    ds.SOPInstanceUID = generate_uid(dicomgen.PYNETDICOM_ROOT)
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds


def make_user(username: str, *roles: str) -> User:
    user = User.objects.create_user(username, password=PASSWORD)
    # get_or_create: a transactional test earlier in the run empties the database,
    # the role groups of the data migration included.
    user.groups.add(*(Group.objects.get_or_create(name=role)[0] for role in roles))
    return user


def client_for(*roles: str, username: str | None = None) -> Client:
    client = Client()
    client.force_login(make_user(username or ("user-" + "-".join(roles) if roles else "nobody"), *roles))
    return client


ROLES = {"doctor": (DOCTOR,), "admin": (ADMINISTRATOR,), "frontdesk": (FRONT_DESK,), "norole": ()}


def store_generated(paths, **changes) -> list:
    """Store files written by tests.dicomgen, with attributes changed, indexed; returns their data sets."""
    stored = []
    for path in paths:
        ds = pydicom.dcmread(path)
        for keyword, value in changes.items():
            setattr(ds, keyword, value)
        store(ds)
        stored.append(ds)
    return stored
