"""A study as a ZIP of its stored DICOM files, streamed as it is written.

``zip_chunks`` is a generator: each file is read 1 MiB at a time and each piece
goes out as soon as zipfile has framed it, so a 2 GB study never sits in memory.
The standard library's zipfile writes to an unseekable stream (sizes and CRC in a
data descriptor after each file), does ZIP64 where a file or the archive passes
4 GiB, and stores without compressing (DICOM pixel data hardly compresses, and
deflating costs the CPU the SCP needs): no streaming zip package is needed.

Folder layout, without a DICOMDIR: ``<patient>/<study>/<series>/<instance>.dcm``.
Every name is made here from index values through ``safe_name`` (letters, digits,
``-``, ``_`` and ``.``), never a UID or a name taken as a path.
"""

import datetime as dt
import io
import logging
import os
import re
import time
import unicodedata
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from django.db.models import F

from imaging import rewrite, storage
from records.models import Instance, Series, Study

log = logging.getLogger(__name__)

CHUNK = 1024 * 1024
MAX_NAME = 64
_UNSAFE = re.compile(r"[^\w.-]+")  # \w is Unicode: 张伟 stays, "/", "\", ":" and controls go
_DOTS = re.compile(r"\.{2,}")  # no ".." anywhere in a name
_UNDERSCORES = re.compile(r"_{2,}")
# Names Windows refuses as a file or folder, whatever the extension.
_RESERVED = {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(10)), *(f"LPT{i}" for i in range(10))}


def safe_name(text: str, fallback: str) -> str:
    """``text`` as one path component any unzip tool writes where it should: no separators, no "..", no
    leading dot, no device names, at most MAX_NAME characters; ``fallback`` when nothing is left."""
    text = unicodedata.normalize("NFC", str(text or ""))
    text = _UNDERSCORES.sub("_", _DOTS.sub("_", _UNSAFE.sub("_", text)))
    text = text.strip("._-")[:MAX_NAME].rstrip("._-")
    if not text:
        return fallback
    if text.split(".")[0].upper() in _RESERVED:
        text = "_" + text
    return text


class _Names:
    """Unique names within one folder (case-insensitively, for Windows and macOS): "CT", "CT_2", ..."""

    def __init__(self):
        self._taken: set[str] = set()

    def add(self, name: str, suffix: str = "") -> str:
        candidate, n = name, 1
        while (candidate + suffix).lower() in self._taken:
            n += 1
            candidate = f"{name}_{n}"
        self._taken.add((candidate + suffix).lower())
        return candidate + suffix


@dataclass(frozen=True)
class Entry:
    name: str  # the path inside the archive
    path: Path  # the stored file
    # Set while a correction's job has not rewritten the file: the time of that
    # correction, and the instance, whose corrected bytes go out instead (imaging/rewrite.py).
    corrected_at: dt.datetime | None = None
    instance_id: int | None = None


def _patient_folder(study: Study) -> str:
    patient = study.patient
    name = " ".join(p for p in patient.name_alphabetic.split("^") if p) or "".join(patient.name_ideographic.split("^"))
    return safe_name(f"{patient.patient_id} {name}", "patient")


def _study_folder(study: Study) -> str:
    date = study.study_date.strftime("%Y%m%d") if study.study_date else ""
    return safe_name(f"{date} {study.accession_number} {study.description}", "study")


def _series_folder(series: Series) -> str:
    number = "" if series.series_number is None else str(series.series_number)
    return safe_name(f"{number} {series.modality} {series.description}", "series")


def archive_name(study: Study) -> str:
    """The download's file name: ``<patient ID>_<date>_<accession>.zip``."""
    date = study.study_date.strftime("%Y%m%d") if study.study_date else ""
    return safe_name(f"{study.patient.patient_id}_{date}_{study.accession_number}", "study") + ".zip"


def study_entries(study: Study) -> list[Entry]:
    """The study's instances as archive entries, in series then instance order (two queries)."""
    root = f"{_patient_folder(study)}/{_study_folder(study)}"
    series_names = _Names()
    folders: dict[int, tuple[str, _Names, list[Entry]]] = {}
    for series in study.series.order_by(F("series_number").asc(nulls_last=True), "id"):
        folders[series.pk] = (f"{root}/{series_names.add(_series_folder(series))}", _Names(), [])
    instances = Instance.objects.filter(series__study=study).order_by("series_id", "instance_number", "id")
    rows = list(instances.values_list("series_id", "instance_number", "file_path", "pk"))
    waiting = rewrite.pending(pk for *_rest, pk in rows)
    for position, (series_id, number, relpath, pk) in enumerate(rows, start=1):
        folder, names, entries = folders[series_id]
        stem = f"{number:05d}" if number is not None and number >= 0 else f"x{position:05d}"
        name = f"{folder}/{names.add(stem, '.dcm')}"
        entries.append(Entry(name, storage.absolute(relpath), waiting.get(pk), pk if pk in waiting else None))
    return [entry for _folder, _names, entries in folders.values() for entry in entries]


class _Sink:
    """The unseekable file zipfile writes into; the generator hands on what was written."""

    def __init__(self):
        self._pieces: list[bytes] = []

    def write(self, data) -> int:
        self._pieces.append(bytes(data))
        return len(data)

    def flush(self) -> None:
        pass

    def take(self) -> bytes:
        data = b"".join(self._pieces)
        self._pieces.clear()
        return data


def _corrected(entry: Entry) -> io.BytesIO | None:
    """The file with the corrected values while its rewrite is pending, None when the stored file is right."""
    if entry.corrected_at is None:
        return None
    data = rewrite.outgoing_file(entry.instance_id, at=entry.corrected_at)
    return io.BytesIO(data) if data is not None else None


def zip_chunks(entries: list[Entry]) -> Iterator[bytes]:
    """The ZIP of ``entries``, piece by piece; a file gone since the listing is left out (and logged)."""
    sink = _Sink()
    with zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        for entry in entries:
            try:
                f = _corrected(entry) or entry.path.open("rb")
            except OSError as exc:
                log.warning("ZIP download: %s left out: %s", entry.path, exc)
                continue
            with f:
                if isinstance(f, io.BytesIO):
                    mtime, size = time.time(), len(f.getbuffer())
                else:
                    stat = os.fstat(f.fileno())  # the file being read (a rewrite renames another into place)
                    mtime, size = stat.st_mtime, stat.st_size
                # ZIP dates start in 1980 (315619200 is 1980-01-02, whatever the time zone).
                info = zipfile.ZipInfo(entry.name, date_time=time.localtime(max(mtime, 315619200))[:6])
                info.file_size = size  # so that zipfile writes ZIP64 headers for a file past 4 GiB
                info.external_attr = 0o644 << 16
                with archive.open(info, "w") as out:
                    while chunk := f.read(CHUNK):
                        out.write(chunk)
                        if data := sink.take():
                            yield data
            if data := sink.take():
                yield data
    yield sink.take()  # the central directory
