"""Ingest benchmark: our runscp + Celery worker against DCMTK storescp and Orthanc.

    .venv/bin/python bench/ingest.py [--slices 300] [--small 4000] [--repeat 3]
                                     [--only ours,storescp,orthanc] [--json out.json]

Self-contained: it generates its own test data with pydicom, starts its own Redis,
Celery worker, runscp, storescp and Orthanc on free ports of 127.0.0.1 (temporary
directories for everything), sends the same files to each receiver with DCMTK's
storescu, prints a table and stops every process it started, even on Ctrl-C.

"stored" is images / wall time of the storescu run(s) (first start to last exit).
For ours, "indexed" is images / time from the start of sending until the database
has every Instance row and every Series has a thumbnail; "idx delay" is the time
from the exit of the last storescu to that moment (target: under 3 s for the CT).
Every (repeat, case) gets freshly generated UIDs, so every receiver stores new
images each time. The clients run with TCP_NODELAY=1 (Debian's DCMTK otherwise
leaves Nagle's algorithm on and crawls at ~20 images/s), and so does Orthanc.
Each run's line also gives the CPU per image of the storescu clients and of this
process (the poller), and how busy the whole machine was (/proc/stat) while storing
and from the last storescu's exit until findable. With BENCH_PERF_DIR=dir, each run
is recorded system-wide by ``perf record -a -g`` from the first C-STORE to findable
(started disabled and enabled through its control FIFO, so its own start stays out)
(``perf report -i dir/ours-*.data --sort comm,dso``). Ours gets its storage's shard
folders made before the clock (``manage.py preparestorage``, as runscp does at its
first start); ``--no-prepare`` leaves each folder to its first image, as Orthanc does.
"""

import argparse
import contextlib
import json
import os
import platform
import select
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import orthanc  # noqa: E402 - bench/orthanc.py, beside this script

from tests.procs import tree_cpu  # noqa: E402

PYTHON = sys.executable
RECEIVERS = ("ours", "storescp", "orthanc")
CASES = {
    # name: (data set, number of parallel associations)
    "ct1": ("ct", 1),
    "ct4": ("ct", 4),
    "small1": ("small", 1),
    "small4": ("small", 4),
}
CASE_LABELS = {"ct1": "CT, 1 assoc", "ct4": "CT, 4 assoc", "small1": "small, 1 assoc", "small4": "small, 4 assoc"}
# Measured before on this kind of machine (2 cores, images/s, median of 3): the issue's figures.
REFERENCE = {
    "storescp": {"ct1": 470, "ct4": 470, "small1": 1240, "small4": 1240},
    "orthanc": {"ct1": 150, "ct4": 220, "small1": 310, "small4": 450},
    "pynetdicom": {"ct1": 130, "ct4": 80, "small1": 220, "small4": 280},
}
INDEX_TARGET_SECONDS = 3.0
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
CLIENT_ENV = {"TCP_NODELAY": "1"}


class BenchError(RuntimeError):
    pass


# --- test data ---------------------------------------------------------------------


def ct_phantom(n_slices: int, rng: np.random.Generator) -> list[bytes]:
    """Pixel data of an N-slice 512x512 CT: body, bone ring, lungs, spine, noise.

    Stored values are HU + 1024 (RescaleIntercept -1024), signed 16-bit. The noise
    (sigma 15 HU) keeps the data as incompressible as a real scan.
    """
    size = 512
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    cx = cy = size / 2
    slices = []
    for i in range(n_slices):
        z = i / max(n_slices - 1, 1)  # 0 (feet) .. 1 (head)
        scale = 0.75 + 0.25 * np.sin(np.pi * z)
        a, b = 210 * scale, 150 * scale
        hu = np.full((size, size), -1000.0, dtype=np.float32)  # air
        body = ((x - cx) / a) ** 2 + ((y - cy) / b) ** 2 <= 1
        hu[body] = 40  # soft tissue
        ring = body & (((x - cx) / (a - 12)) ** 2 + ((y - cy) / (b - 12)) ** 2 > 1)
        hu[ring] = 700  # ribs / skull
        for side in (-1, 1):
            lung = ((x - cx - side * 0.45 * a) / (0.3 * a)) ** 2 + ((y - cy + 0.05 * b) / (0.55 * b)) ** 2 <= 1
            hu[lung & body] = -820
        spine = (x - cx) ** 2 + (y - cy - 0.7 * b) ** 2 <= (18 * scale) ** 2
        hu[spine] = 900
        hu += rng.normal(0, 15, size=(size, size)).astype(np.float32)
        stored = np.clip(hu + 1024, -1024, 3071).astype("<i2")
        slices.append(stored.tobytes())
    return slices


def mr_images(count: int, size: int, rng: np.random.Generator) -> list[bytes]:
    """A few distinct MR-like 12-bit images (a bright disc with noise), reused round robin."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    images = []
    for i in range(min(count, 50)):
        r = size * (0.3 + 0.1 * np.sin(i))
        disc = ((x - size / 2) ** 2 + (y - size / 2) ** 2 <= r * r) * 1200.0
        img = disc + 200 + rng.normal(0, 60, size=(size, size))
        images.append(np.clip(img, 0, 4095).astype("<u2").tobytes())
    return images


def _base_dataset(sop_class: str, sop_uid: str) -> tuple[FileMetaDataset, Dataset]:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    return meta, ds


def write_ct(directory: Path, pixels: list[bytes], parts: int, tag: str) -> int:
    """One CT series, split into ``parts`` contiguous ranges of slices (part0, part1...)."""
    study_uid, series_uid, frame_uid = generate_uid(), generate_uid(), generate_uid()
    n = len(pixels)
    dirs = _part_dirs(directory, parts)
    for i, pixel_bytes in enumerate(pixels):
        sop_uid = generate_uid()
        _meta, ds = _base_dataset(CT_IMAGE_STORAGE, sop_uid)
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = "20240315"
        ds.StudyTime = "101500"
        ds.ContentTime = f"1016{i % 60:02d}.{i:06d}"
        ds.AccessionNumber = f"A{tag}"[:16]
        ds.Modality = "CT"
        ds.Manufacturer = "BENCH"
        ds.InstitutionName = "Bench Hospital"
        ds.ReferringPhysicianName = "Doe^Jane"
        ds.StudyDescription = "CT CHEST ABDOMEN"
        ds.SeriesDescription = "AXIAL 1.0 B30f"
        ds.PatientName = f"Bench^CT^{tag}"
        ds.PatientID = f"CT{tag}"[:64]
        ds.PatientBirthDate = "19600101"
        ds.PatientSex = "F"
        ds.BodyPartExamined = "CHEST"
        ds.SliceThickness = "1.0"
        ds.KVP = "120"
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.StudyID = "1"
        ds.SeriesNumber = 2
        ds.AcquisitionNumber = 1
        ds.InstanceNumber = i + 1
        z = -(n - 1) * 1.0 / 2 + i * 1.0
        ds.ImagePositionPatient = [-250.0, -250.0, round(z, 2)]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.FrameOfReferenceUID = frame_uid
        ds.PositionReferenceIndicator = ""
        ds.SliceLocation = round(z, 2)
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows = ds.Columns = 512
        ds.PixelSpacing = [0.9765625, 0.9765625]
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1
        ds.WindowCenter = 40
        ds.WindowWidth = 400
        ds.RescaleIntercept = -1024
        ds.RescaleSlope = 1
        ds.RescaleType = "HU"
        ds.PixelData = pixel_bytes
        ds["PixelData"].VR = "OW"
        part = min(i * parts // n, parts - 1)
        ds.save_as(dirs[part] / f"ct{i:05d}.dcm", enforce_file_format=True)
    return n


def write_small(
    directory: Path, pixels: list[bytes], count: int, size: int, parts: int, tag: str, per_series: int, per_study: int
) -> int:
    """``count`` small MR images: studies of ``per_study`` series of ``per_series`` images.

    With several parts, whole studies go to one part each (as several modalities
    would send their own studies).
    """
    dirs = _part_dirs(directory, parts)
    per_study_images = per_series * per_study
    n_studies = max((count + per_study_images - 1) // per_study_images, 1)
    written = 0
    for s in range(n_studies):
        study_uid = generate_uid()
        part_dir = dirs[s * parts // n_studies]
        for k in range(per_study):
            series_uid, frame_uid = generate_uid(), generate_uid()
            for j in range(per_series):
                if written >= count:
                    return written
                sop_uid = generate_uid()
                _meta, ds = _base_dataset(MR_IMAGE_STORAGE, sop_uid)
                ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND"]
                ds.StudyDate = ds.SeriesDate = ds.ContentDate = "20240316"
                ds.StudyTime = f"{8 + s % 10:02d}{s % 60:02d}00"
                ds.AccessionNumber = f"M{tag}{s}"[:16]
                ds.Modality = "MR"
                ds.Manufacturer = "BENCH"
                ds.StudyDescription = "MR KNEE"
                ds.SeriesDescription = f"T{1 + k % 2} SE"
                ds.PatientName = f"Bench^MR{s // 2}^{tag}"
                ds.PatientID = f"MR{tag}-{s // 2}"[:64]
                ds.PatientBirthDate = "19750505"
                ds.PatientSex = "M"
                ds.BodyPartExamined = "KNEE"
                ds.StudyInstanceUID = study_uid
                ds.SeriesInstanceUID = series_uid
                ds.StudyID = str(s + 1)
                ds.SeriesNumber = k + 1
                ds.InstanceNumber = j + 1
                ds.ImagePositionPatient = [-100.0, -100.0, float(j * 4)]
                ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
                ds.FrameOfReferenceUID = frame_uid
                ds.SliceThickness = "4.0"
                ds.SamplesPerPixel = 1
                ds.PhotometricInterpretation = "MONOCHROME2"
                ds.Rows = ds.Columns = size
                ds.PixelSpacing = [200 / size, 200 / size]
                ds.BitsAllocated = 16
                ds.BitsStored = 12
                ds.HighBit = 11
                ds.PixelRepresentation = 0
                ds.WindowCenter = 700
                ds.WindowWidth = 1400
                ds.PixelData = pixels[written % len(pixels)]
                ds["PixelData"].VR = "OW"
                ds.save_as(part_dir / f"mr{written:06d}.dcm", enforce_file_format=True)
                written += 1
    return written


def _part_dirs(directory: Path, parts: int) -> list[Path]:
    dirs = [directory / f"part{p}" for p in range(parts)]
    for d in dirs:
        d.mkdir(parents=True)
    return dirs


def uids_in(directory: Path) -> tuple[set[str], set[str]]:
    """(series UIDs, SOP instance UIDs) of the files generated for one case."""
    series, sops = set(), set()
    for path in directory.rglob("*.dcm"):
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SeriesInstanceUID", "SOPInstanceUID"])
        series.add(str(ds.SeriesInstanceUID))
        sops.add(str(ds.SOPInstanceUID))
    return series, sops


# --- processes -----------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(what: str, condition, timeout: float, procs=()) -> None:
    """Poll ``condition`` until true; fail early if one of ``procs`` died."""
    deadline = time.monotonic() + timeout
    delay = 0.05
    while True:
        if condition():
            return
        for proc in procs:
            if proc.poll() is not None:
                raise BenchError(f"{what}: {proc.name} exited with {proc.returncode}; see {proc.log}")
        if time.monotonic() > deadline:
            raise BenchError(f"{what}: not ready after {timeout:.0f}s")
        time.sleep(delay)
        delay = min(delay * 1.5, 0.5)


class Processes:
    """Every long-running process we start, each in its own session, stopped by its id."""

    def __init__(self, logdir: Path):
        self.logdir = logdir
        self.procs: list[subprocess.Popen] = []

    def start(self, name: str, argv: list[str], env: dict, cwd: Path = REPO) -> subprocess.Popen:
        log = self.logdir / f"{name}.log"
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                argv,
                cwd=cwd,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        proc.name, proc.log = name, log
        self.procs.append(proc)
        return proc

    def stop_all(self, grace: float = 15.0) -> None:
        # The process group is the one created for this process (start_new_session):
        # it holds its forked children (runscp's associations, Celery's pool) and nothing else.
        for proc in reversed(self.procs):
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for proc in reversed(self.procs):
            try:
                proc.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                pass
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)
        self.procs.clear()


def echo_ok(aet: str, port: int) -> bool:
    result = subprocess.run(
        ["echoscu", "-to", "2", "-aec", aet, "127.0.0.1", str(port)],
        env={**os.environ, **CLIENT_ENV},
        capture_output=True,
        timeout=20,
    )
    return result.returncode == 0


def redis_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def http_json(url: str, timeout: float = 5.0):
    with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - our own 127.0.0.1 Orthanc
        return json.loads(response.read())


def own_cpu(pid: int) -> float:
    """CPU seconds of one process alone (user + system), its children not counted."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(f) for f in fields[11:13]) / os.sysconf("SC_CLK_TCK")


def count_files(directory: Path, suffix: str = "") -> int:
    n = 0
    for _dirpath, _dirnames, filenames in os.walk(directory):
        n += sum(1 for f in filenames if f.endswith(suffix))
    return n


# --- receivers -----------------------------------------------------------------------


@dataclass
class Receiver:
    name: str
    aet: str
    port: int = 0
    indexes: bool = False
    info: dict = field(default_factory=dict)

    def stored_count(self) -> int:
        raise NotImplementedError

    def after_case(self) -> None:
        """Free the disk the case used (not timed)."""


class Ours(Receiver):
    def __init__(self, procs: Processes, root: Path, fsync: bool, workers: int, prepare: bool = True):
        super().__init__("ours", "OURS", indexes=True)
        var = root / "ours"
        self.storage = var / "storage"
        self.db_path = var / "db.sqlite3"
        var.mkdir()
        redis_port, self.port = free_port(), free_port()
        env = {
            **os.environ,
            "VAR_DIR": str(var),
            "DATABASE_URL": f"sqlite:///{self.db_path}",
            "CELERY_BROKER_URL": f"redis://127.0.0.1:{redis_port}/0",
            "STORAGE_DIR": str(self.storage),
            "DICOM_AE_TITLE": self.aet,
            "DICOM_PORT": str(self.port),
            "STORAGE_FSYNC": "1" if fsync else "0",
            "STORAGE_PREPARE_FOLDERS": "1" if prepare else "0",
            "LOG_LEVEL": "WARNING",
        }
        env.pop("DJANGO_SETTINGS_MODULE", None)
        self.env = env
        self.info = {
            "fsync": fsync,
            "prepared_folders": prepare,
            "celery_concurrency": workers,
            "redis_port": redis_port,
        }
        redis = procs.start(
            "redis",
            ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            env,
            cwd=var,
        )
        migrate = subprocess.run(
            [PYTHON, "manage.py", "migrate", "--noinput", "-v", "0"], cwd=REPO, env=env, capture_output=True, text=True
        )
        if migrate.returncode != 0:
            raise BenchError(f"migrate failed:\n{migrate.stdout}\n{migrate.stderr}")
        if prepare:
            # What runscp does in the background at its first start (STORAGE_PREPARE_FOLDERS):
            # done here, before the clock, as in any archive started once before its first study.
            subprocess.run(
                [PYTHON, "manage.py", "preparestorage"], cwd=REPO, env=env, capture_output=True, text=True, check=True
            )
        # The SCP refuses unknown callers: register the benchmark's storescu (and echoscu).
        for calling in ("BENCH", "ECHOSCU"):
            subprocess.run(
                [PYTHON, "manage.py", "modality", "add", calling, "127.0.0.1", "0"],
                cwd=REPO,
                env=env,
                capture_output=True,
                text=True,
                check=True,
            )
        wait_for("redis", lambda: redis_ping(redis_port), 20, [redis])
        self.worker = procs.start(
            "celery",
            [
                PYTHON,
                "-m",
                "celery",
                "-A",
                "imaging",
                "worker",
                "-c",
                str(workers),
                "--without-mingle",
                "--without-gossip",
                "-n",
                "bench@%h",
                "-l",
                "WARNING",
            ],
            env,
        )
        self.scp = procs.start(
            "runscp",
            [PYTHON, "manage.py", "runscp", "--port", str(self.port), "--ae-title", self.aet, "--host", "127.0.0.1"],
            env,
        )
        wait_for("runscp", lambda: echo_ok(self.aet, self.port), 60, [self.scp])
        wait_for("celery worker", self._worker_ready, 90, [self.worker])
        self._db = sqlite3.connect(self.db_path, timeout=30, isolation_level=None)
        self._db.execute("CREATE TEMP TABLE want_series (uid TEXT PRIMARY KEY)")

    def _worker_ready(self) -> bool:
        result = subprocess.run(
            [PYTHON, "-m", "celery", "-A", "imaging", "inspect", "ping", "--timeout", "2"],
            cwd=REPO,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        return result.returncode == 0 and "pong" in result.stdout

    def stored_count(self) -> int:
        return count_files(self.storage, ".dcm")

    def cpu(self) -> dict[str, float]:
        """CPU seconds so far of the Celery worker (all its processes) and of runscp (with its associations')."""
        return {
            "worker": tree_cpu(self.worker.pid),
            "worker_main": own_cpu(self.worker.pid),  # Celery's consumer: takes the tasks, feeds the pool
            "scp": tree_cpu(self.scp.pid),
        }

    def expect(self, series_uids: set[str], n_images: int) -> None:
        self._db.execute("DELETE FROM want_series")
        self._db.executemany("INSERT INTO want_series (uid) VALUES (?)", [(u,) for u in series_uids])
        # Every case sends new UIDs: its Instance rows are the ones after these. Counting them
        # by primary key costs the poller little while the store runs (it competes for the CPU).
        (self._last_instance,) = self._db.execute("SELECT COALESCE(MAX(id), 0) FROM records_instance").fetchone()
        self._images = n_images

    def index_state(self) -> tuple[int, int, int]:
        """(Instance rows, Series rows, Series with a thumbnail) of the expected series (0, 0 till every instance)."""
        (new,) = self._db.execute(
            "SELECT COUNT(*) FROM records_instance WHERE id > ?", (self._last_instance,)
        ).fetchone()
        if new < self._images:
            return new, 0, 0
        series, with_thumb = self._db.execute(
            "SELECT COUNT(s.id), COALESCE(SUM(s.thumbnail != ''), 0) FROM want_series w "
            "JOIN records_series s ON s.series_instance_uid = w.uid"
        ).fetchone()
        (instances,) = self._db.execute(
            "SELECT COUNT(*) FROM records_instance i JOIN records_series s ON s.id = i.series_id "
            "JOIN want_series w ON w.uid = s.series_instance_uid"
        ).fetchone()
        return instances, series, with_thumb


class StoreSCP(Receiver):
    def __init__(self, procs: Processes, root: Path):
        super().__init__("storescp", "STORESCP")
        self.out = root / "storescp"
        self.out.mkdir()
        self.port = free_port()
        # Defaults otherwise: one process (no --fork), files written as received.
        argv = ["storescp", "-aet", self.aet, "-od", str(self.out), str(self.port)]
        self.info = {"argv": argv}
        self.proc = procs.start("storescp", argv, {**os.environ, **CLIENT_ENV}, cwd=root)
        wait_for("storescp", lambda: echo_ok(self.aet, self.port), 30, [self.proc])

    def stored_count(self) -> int:
        return count_files(self.out)

    def after_case(self) -> None:
        for entry in os.scandir(self.out):
            if entry.is_file():
                os.unlink(entry.path)


class Orthanc(Receiver):
    def __init__(self, procs: Processes, root: Path):
        super().__init__("orthanc", "ORTHANC")
        home = root / "orthanc"
        home.mkdir()
        self.port, self.http_port = free_port(), free_port()
        config = {
            "Name": "bench",
            "StorageDirectory": str(home / "storage"),
            "IndexDirectory": str(home / "index"),
            "DicomAet": self.aet,
            "DicomPort": self.port,
            "HttpPort": self.http_port,
            "DicomCheckCalledAet": False,
            "RemoteAccessAllowed": False,
        }
        (home / "orthanc.json").write_text(json.dumps(config, indent=2))
        self.info = {"config": config}
        self.proc = procs.start(
            "orthanc", ["Orthanc", str(home / "orthanc.json")], {**os.environ, **CLIENT_ENV}, cwd=home
        )
        wait_for("orthanc http", self._http_ok, 60, [self.proc])
        wait_for("orthanc dicom", lambda: echo_ok(self.aet, self.port), 30, [self.proc])
        self.info["version"] = http_json(f"http://127.0.0.1:{self.http_port}/system").get("Version")

    def _http_ok(self) -> bool:
        try:
            http_json(f"http://127.0.0.1:{self.http_port}/system", timeout=1)
            return True
        except OSError:
            return False

    def stored_count(self) -> int:
        return int(http_json(f"http://127.0.0.1:{self.http_port}/statistics")["CountInstances"])

    def cpu(self) -> dict[str, float]:
        # One process stores and indexes (before it answers): its CPU per image, beside ours.
        return {"orthanc": tree_cpu(self.proc.pid)}


# --- one measurement --------------------------------------------------------------------


def machine_ticks() -> tuple[int, int, int]:
    """(busy, idle, stolen) clock ticks of all CPUs so far, from /proc/stat (iowait counts as idle)."""
    with open("/proc/stat") as f:
        user, nice, system, idle, iowait, irq, softirq, steal = (int(v) for v in f.readline().split()[1:9])
    return user + nice + system + irq + softirq, idle + iowait, steal


def busy_share(start: tuple[int, int, int], end: tuple[int, int, int]) -> float | None:
    """Share of the machine's CPU time busy between two ``machine_ticks`` (stolen time counts as busy)."""
    busy, idle, steal = (b - a for a, b in zip(start, end, strict=True))
    total = busy + idle + steal
    return (busy + steal) / total if total else None


PERF_DIR = os.environ.get("BENCH_PERF_DIR")  # set: a system-wide `perf record` of each run, start to findable


def start_perf(receiver: Receiver) -> subprocess.Popen | None:
    """A system-wide ``perf record`` that samples from its return on (it starts disabled, then is enabled)."""
    if not PERF_DIR:
        return None
    stem = Path(PERF_DIR) / f"{type(receiver).__name__.lower()}-{time.strftime('%H%M%S')}"
    control, ack = Path(f"{stem}.ctl"), Path(f"{stem}.ack")
    for fifo in (control, ack):
        fifo.unlink(missing_ok=True)
        os.mkfifo(fifo)
    argv = ["perf", "record", "-a", "-g", "-F", "999", "-o", f"{stem}.data"]
    proc = subprocess.Popen(
        [*argv, "-D", "-1", f"--control=fifo:{control},{ack}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    # perf's own start (reading /proc) stays out of the run: sampling begins once it acknowledges "enable".
    with open(control, "w") as ctl, open(ack) as answer:
        ctl.write("enable\n")
        ctl.flush()
        if not select.select([answer], [], [], 30)[0] or answer.readline().strip() != "ack":
            proc.kill()
            raise BenchError("perf did not acknowledge enabling its events")
    for fifo in (control, ack):
        fifo.unlink()  # perf holds both open
    return proc


def stop_perf(proc: subprocess.Popen | None) -> None:
    if proc is not None and proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        proc.wait(30)


def run_case(receiver: Receiver, parts: list[Path], n_images: int, series_uids: set[str], timeout: float) -> dict:
    """Send every part over its own association at once; time storing (and indexing)."""
    before = receiver.stored_count()
    if receiver.indexes:
        receiver.expect(series_uids, n_images)
    cpu_before = receiver.cpu() if hasattr(receiver, "cpu") else {}
    perf = start_perf(receiver)
    clients_before = os.times()
    ticks_start = machine_ticks()
    env = {**os.environ, **CLIENT_ENV}
    ended: dict[int, float] = {}
    procs = []
    t0 = time.monotonic()
    for part in parts:
        argv = [
            "storescu",
            "-q",
            "-aet",
            "BENCH",
            "-aec",
            receiver.aet,
            "+sd",
            "127.0.0.1",
            str(receiver.port),
            str(part),
        ]
        procs.append(subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))

    ticks_sent = None

    def reap(k, proc):
        nonlocal ticks_sent
        proc.wait()
        ended[k] = time.monotonic()
        if len(ended) == len(procs):
            ticks_sent = machine_ticks()

    threads = [threading.Thread(target=reap, args=(k, p), daemon=True) for k, p in enumerate(procs)]
    for t in threads:
        t.start()

    indexed_at = findable_at = None
    state = (0, 0, 0)
    deadline = t0 + timeout
    while True:
        senders_done = all(not t.is_alive() for t in threads)
        if receiver.indexes and indexed_at is None:
            state = receiver.index_state()
            instances, series, with_thumb = state
            if findable_at is None and instances >= n_images:
                findable_at = time.monotonic()  # C-FIND and the study list see every image
                ticks_findable = machine_ticks()
                stop_perf(perf)
            if instances >= n_images and series == len(series_uids) and with_thumb == series:
                indexed_at = time.monotonic()
        if senders_done and (indexed_at is not None or not receiver.indexes):
            break
        if time.monotonic() > deadline:
            for p in procs:
                if p.poll() is None:
                    p.kill()
            break
        time.sleep(0.02 if receiver.indexes else 0.005)
    for t in threads:
        t.join(5)
    t_sent = max(ended.values()) if ended else time.monotonic()
    errors = []
    for k, p in enumerate(procs):
        if p.returncode != 0:
            err = (p.stderr.read() or b"").decode(errors="replace")[-500:]
            errors.append(f"storescu part {k} exited {p.returncode}: {err}")
        p.stderr.close()
    stop_perf(perf)
    clients_after = os.times()
    # After the clock and the CPU counts: a walk over 65,536 folders takes a second.
    stored = receiver.stored_count() - before
    if stored != n_images:
        errors.append(f"{stored} of {n_images} images arrived")
    ticks_sent = ticks_sent or machine_ticks()
    result = {
        "images": n_images,
        "stored_seconds": t_sent - t0,
        "stored_ips": n_images / (t_sent - t0),
        "arrived": stored,
        "errors": errors,
        # this process's own (polling the index), storescu's (the only children reaped meanwhile),
        # and how busy the machine was while storing
        "poller_cpu_ms": ((clients_after.user + clients_after.system) - (clients_before.user + clients_before.system))
        * 1000
        / n_images,
        "clients_cpu_ms": (
            (clients_after.children_user + clients_after.children_system)
            - (clients_before.children_user + clients_before.children_system)
        )
        * 1000
        / n_images,
        "busy_storing": busy_share(ticks_start, ticks_sent),
    }
    if receiver.indexes:
        if indexed_at is None:
            errors.append(f"index not complete after {timeout:.0f}s: (instances, series, thumbnails) = {state}")
        else:
            result["indexed_seconds"] = indexed_at - t0
            result["indexed_ips"] = n_images / (indexed_at - t0)
            result["index_delay"] = max(indexed_at - t_sent, 0.0)
            result["findable_ips"] = n_images / (findable_at - t0)
            result["findable_delay"] = max(findable_at - t_sent, 0.0)
            if findable_at > t_sent:  # how busy the machine was from the last storescu's exit to findable
                result["busy_to_findable"] = busy_share(ticks_sent, ticks_findable)
    if cpu_before:
        # Per image, until indexed (thumbnails included): what each process spent on it.
        for name, seconds in receiver.cpu().items():
            result[f"{name}_cpu_ms"] = (seconds - cpu_before[name]) * 1000 / n_images
    receiver.after_case()
    return result


# --- report ---------------------------------------------------------------------------------


def code_revision() -> str:
    """HEAD of the repository, with "+dirty" when files differ from it (the code measured)."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, capture_output=True, text=True
        )
    except OSError:
        return "unknown"
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "") if head.returncode == 0 else "unknown"


def median_of(runs: list[dict], key: str):
    values = [r[key] for r in runs if key in r and not r["errors"]]
    return statistics.median(values) if values else None


def fmt(value, spec: str = ".0f", missing: str = "-") -> str:
    return missing if value is None else format(value, spec)


def report(summary: dict, receivers: list[str], cases: list[str], args) -> str:
    lines = []
    lines.append(
        f"Ingest benchmark: {args.slices}-slice 512x512 CT, {args.small} small {args.small_size}x{args.small_size} MR "
        f"images; median of {args.repeat}; images/s; storescu clients and Orthanc with TCP_NODELAY=1; "
        f"ours with STORAGE_FSYNC={'1' if args.fsync else '0'}, "
        f"STORAGE_PREPARE_FOLDERS={'1' if args.prepare else '0'}, Celery -c {args.workers}; {os.cpu_count()} CPUs; "
        f"code {args.revision}"
    )
    head = f"{'case':<16}"
    if "ours" in receivers:
        head += f"{'ours stored':>12}{'ours findable':>14}{'fnd delay s':>12}{'ours indexed':>13}{'idx delay s':>12}"
        head += f"{'worker ms/img':>14}{'scp ms/img':>11}"
    for r in receivers:
        if r != "ours":
            head += f"{r:>10}"
    if "orthanc" in receivers:
        head += f"{'Orthanc ms/img':>15}"
    if "ours" in receivers and "orthanc" in receivers:
        head += f"{'ours/Orthanc':>13}"
    if "ours" in receivers and "storescp" in receivers:
        head += f"{'ours/storescp':>14}"
    head += f"{'ref Orthanc':>12}{'ref storescp':>13}{'ref pynetdicom':>15}"
    lines.append(head)
    lines.append("-" * len(head))
    for case in cases:
        row = summary[case]
        line = f"{CASE_LABELS[case]:<16}"
        ours = row.get("ours", {}).get("stored_ips")
        if "ours" in receivers:
            o = row["ours"]
            line += f"{fmt(ours):>12}{fmt(o.get('findable_ips')):>14}{fmt(o.get('findable_delay'), '.2f'):>12}"
            line += f"{fmt(o.get('indexed_ips')):>13}{fmt(o.get('index_delay'), '.2f'):>12}"
            line += f"{fmt(o.get('worker_cpu_ms'), '.1f'):>14}{fmt(o.get('scp_cpu_ms'), '.1f'):>11}"
        for r in receivers:
            if r != "ours":
                line += f"{fmt(row[r].get('stored_ips')):>10}"
        if "orthanc" in receivers:
            line += f"{fmt(row['orthanc'].get('orthanc_cpu_ms'), '.1f'):>15}"
        for other, width in (("orthanc", 13), ("storescp", 14)):
            if "ours" in receivers and other in receivers:
                theirs = row[other].get("stored_ips")
                ratio = ours / theirs if ours and theirs else None
                line += f"{fmt(ratio, '.2f'):>{width}}"
        line += f"{REFERENCE['orthanc'][case]:>12}{REFERENCE['storescp'][case]:>13}{REFERENCE['pynetdicom'][case]:>15}"
        lines.append(line)
    if "ours" in receivers and "ct1" in cases:
        delays = [summary[c]["ours"].get("index_delay") for c in ("ct1", "ct4") if c in cases]
        worst = max((d for d in delays if d is not None), default=None)
        verdict = "met" if worst is not None and worst <= INDEX_TARGET_SECONDS else "NOT met"
        lines.append(
            f"CT index complete after the last C-STORE: worst median {fmt(worst, '.2f')} s "
            f"(target <= {INDEX_TARGET_SECONDS:.0f} s): {verdict}"
        )
    lines.append(
        "stored = images / wall time of the storescu run(s); findable = images / time until every Instance row "
        "exists (C-FIND sees every image); indexed = until every Series has a thumbnail too; "
        "fnd/idx delay = last storescu exit -> that moment; ms/img = CPU time of the Celery worker's processes "
        "and of runscp's (associations included) per image, until indexed; Orthanc's, until it counts every image."
    )
    return "\n".join(lines)


# --- main -----------------------------------------------------------------------------------


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--slices", type=int, default=300, help="CT slices (512x512), default 300")
    p.add_argument("--small", type=int, default=4000, help="small MR images, default 4000")
    p.add_argument("--small-size", type=int, default=64, help="rows = columns of a small image, default 64")
    p.add_argument("--per-series", type=int, default=5, help="small images per series, default 5")
    p.add_argument("--series-per-study", type=int, default=2, help="series per small study, default 2")
    p.add_argument("--repeat", type=int, default=3, help="runs per measurement; the median is reported")
    p.add_argument("--only", default=",".join(RECEIVERS), help="receivers, default ours,storescp,orthanc")
    p.add_argument("--cases", default=",".join(CASES), help="default ct1,ct4,small1,small4")
    p.add_argument("--workers", type=int, default=2, help="Celery worker concurrency, default 2")
    p.add_argument(
        "--no-fsync",
        dest="fsync",
        action="store_false",
        help="run ours with STORAGE_FSYNC=0 (storescp does not fsync; Orthanc 1.10 fsyncs files by default)",
    )
    p.add_argument(
        "--no-prepare",
        dest="prepare",
        action="store_false",
        help="run ours with STORAGE_PREPARE_FOLDERS=0: each shard folder made by its first image, as Orthanc does",
    )
    p.add_argument("--timeout", type=float, default=600, help="seconds allowed per measurement")
    p.add_argument("--json", type=Path, help="write every run and the medians to this file")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, data, storage)")
    args = p.parse_args(argv)
    args.receivers = [r.strip() for r in args.only.split(",") if r.strip()]
    args.case_list = [c.strip() for c in args.cases.split(",") if c.strip()]
    for r in args.receivers:
        if r not in RECEIVERS:
            p.error(f"unknown receiver {r!r}; choose from {', '.join(RECEIVERS)}")
    for c in args.case_list:
        if c not in CASES:
            p.error(f"unknown case {c!r}; choose from {', '.join(CASES)}")
    return args


def _raise_keyboard_interrupt(signum, frame):
    raise KeyboardInterrupt


def main(argv=None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    if "orthanc" in args.receivers:
        orthanc.ensure_installed()
    wanted = {"storescp": "storescp", "orthanc": "Orthanc"}
    tools = ["storescu", "echoscu", "redis-server"] + [wanted[r] for r in args.receivers if r in wanted]
    for tool in tools:
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not on PATH")
    args.revision = code_revision()
    root = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    logdir = root / "logs"
    logdir.mkdir()
    procs = Processes(logdir)
    rng = np.random.default_rng(20240315)
    runs: dict[str, dict[str, list[dict]]] = {c: {r: [] for r in args.receivers} for c in args.case_list}
    failed = False
    try:
        print(f"work dir {root}", flush=True)
        t = time.monotonic()
        ct_pixels = ct_phantom(args.slices, rng) if any(CASES[c][0] == "ct" for c in args.case_list) else []
        mr_pixels = mr_images(args.small, args.small_size, rng)
        print(f"pixel data ready in {time.monotonic() - t:.1f}s; starting receivers", flush=True)
        receivers: dict[str, Receiver] = {}
        builders = {
            "ours": lambda: Ours(procs, root, args.fsync, args.workers, args.prepare),
            "storescp": lambda: StoreSCP(procs, root),
            "orthanc": lambda: Orthanc(procs, root),
        }
        for name in args.receivers:
            t = time.monotonic()
            receivers[name] = builders[name]()
            print(f"  {name} ready on port {receivers[name].port} in {time.monotonic() - t:.1f}s", flush=True)
        for rep in range(args.repeat):
            for case in args.case_list:
                kind, n_parts = CASES[case]
                data = root / "data" / f"r{rep}-{case}"
                tag = f"{rep}{case}"
                if kind == "ct":
                    n = write_ct(data, ct_pixels, n_parts, tag)
                else:
                    n = write_small(
                        data,
                        mr_pixels,
                        args.small,
                        args.small_size,
                        n_parts,
                        tag,
                        args.per_series,
                        args.series_per_study,
                    )
                series_uids, _sops = uids_in(data)
                parts = sorted(data.iterdir())
                # Rotate the order of receivers so none always goes first (cold caches, timers...).
                order = args.receivers[rep % len(args.receivers) :] + args.receivers[: rep % len(args.receivers)]
                for name in order:
                    result = run_case(receivers[name], parts, n, series_uids, args.timeout)
                    runs[case][name].append(result)
                    extra = ""
                    if "indexed_ips" in result:
                        extra = (
                            f", findable {result['findable_ips']:.0f}/s, delay {result['findable_delay']:.2f}s"
                            f", indexed {result['indexed_ips']:.0f}/s, delay {result['index_delay']:.2f}s"
                            f"; CPU per image: worker {result['worker_cpu_ms']:.1f} ms"
                            f" (its consumer {result['worker_main_cpu_ms']:.2f})"
                            f", scp {result['scp_cpu_ms']:.1f} ms"
                        )
                    if "orthanc_cpu_ms" in result:
                        extra = f"; CPU per image {result['orthanc_cpu_ms']:.1f} ms"
                    extra += f"; poller {result['poller_cpu_ms']:.2f} ms"
                    extra += f"; storescu {result['clients_cpu_ms']:.1f} ms; machine busy {result['busy_storing']:.0%}"
                    if result.get("busy_to_findable") is not None:
                        extra += f" storing, {result['busy_to_findable']:.0%} until findable"
                    status = "ok" if not result["errors"] else "ERROR " + "; ".join(result["errors"])
                    print(
                        f"  run {rep + 1}/{args.repeat} {CASE_LABELS[case]:<15} {name:<9} "
                        f"stored {result['stored_ips']:.0f}/s{extra} {status}",
                        flush=True,
                    )
                    failed = failed or bool(result["errors"])
                shutil.rmtree(data)
        summary = {
            case: {
                name: {
                    key: median_of(runs[case][name], key)
                    for key in (
                        "stored_ips",
                        "findable_ips",
                        "findable_delay",
                        "worker_cpu_ms",
                        "scp_cpu_ms",
                        "orthanc_cpu_ms",
                        "clients_cpu_ms",
                        "busy_storing",
                        "busy_to_findable",
                        "indexed_ips",
                        "index_delay",
                        "stored_seconds",
                    )
                }
                for name in args.receivers
            }
            for case in args.case_list
        }
        print()
        print(report(summary, args.receivers, args.case_list, args))
        if args.json:
            args.json.write_text(
                json.dumps(
                    {
                        "command": [sys.argv[0], *(argv if argv is not None else sys.argv[1:])],
                        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                        "machine": {
                            "cpus": os.cpu_count(),
                            "platform": platform.platform(),
                            "python": platform.python_version(),
                            "pydicom": pydicom.__version__,
                        },
                        "receivers": {name: {"aet": r.aet, **r.info} for name, r in receivers.items()},
                        "reference": REFERENCE,
                        "median": summary,
                        "runs": runs,
                    },
                    indent=2,
                    default=str,
                )
            )
            print(f"wrote {args.json}")
    except KeyboardInterrupt:
        print("interrupted; stopping everything", file=sys.stderr)
        failed = True
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        failed = True
    finally:
        procs.stop_all()
        if args.keep or failed:
            print(f"kept {root} (logs in {logdir})", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
