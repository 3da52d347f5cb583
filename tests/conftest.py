"""Shared fixtures: a real Redis, a real Celery worker and a real runscp process."""

import contextlib
import dataclasses
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from django.conf import settings

from network.scp import SPARE_NAME
from tests import procs

_STORAGE = Path(tempfile.mkdtemp(prefix="imaging-test-storage-"))


def pytest_configure(config):
    # The SQLite test database lives in VAR_DIR, which a fresh clone does not have yet.
    settings.VAR_DIR.mkdir(parents=True, exist_ok=True)
    Path(settings.STATIC_ROOT).mkdir(parents=True, exist_ok=True)
    # Tests never touch the developer's ./var/storage.
    settings.STORAGE_DIR = _STORAGE
    settings.INDEX_SPOOL_DIR = _STORAGE / "spool"
    # A developer's disk may be fuller than production's watermark allows.
    settings.STORAGE_MIN_FREE_MB = 1

    _retry_flush_on_deadlock()


def _retry_flush_on_deadlock():
    """Empty the database after a transactional test again if PostgreSQL chose the flush as a deadlock's victim.

    The worker may still be making a thumbnail (THUMBNAIL_DELAY_SECONDS after the
    last image), or retrying a task, when a test ends. Its transaction and the
    flush's TRUNCATE of every table can wait on each other; PostgreSQL then aborts
    one of them (the task retries itself, see imaging/tasks.py), and the flush
    must be run again, not fail the test and leave rows for the next one.
    """
    from django.core.management.base import CommandError
    from django.db.utils import OperationalError
    from django.test import TransactionTestCase

    flush = TransactionTestCase._fixture_teardown

    def _fixture_teardown(self):
        for attempt in range(5):
            try:
                return flush(self)
            except CommandError as exc:
                cause = exc.__cause__
                driver = getattr(cause, "__cause__", None)
                deadlock = isinstance(cause, OperationalError) and getattr(driver, "sqlstate", "") == "40P01"
                if not deadlock or attempt == 4:
                    raise

    TransactionTestCase._fixture_teardown = _fixture_teardown


def pytest_unconfigure(config):
    shutil.rmtree(_STORAGE, ignore_errors=True)


@pytest.fixture(scope="session")
def logs_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("logs")


@pytest.fixture(scope="session")
def redis_url(logs_dir):
    if not shutil.which("redis-server"):
        pytest.fail("redis-server is not installed (make test installs it)")
    port = procs.free_port()
    proc = procs.start(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        dict(os.environ),
        logs_dir / "redis.log",
    )
    procs.wait_for(lambda: procs.port_open(port), 20, "redis-server")
    url = f"redis://127.0.0.1:{port}/0"
    from imaging.celery import app

    app.conf.broker_url = url
    settings.CELERY_BROKER_URL = url
    yield url
    procs.stop(proc)


def database_url() -> str:
    """The URL of the test database, for the worker and SCP subprocesses."""
    from django.db import connection

    cfg = connection.settings_dict
    if cfg["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{cfg['NAME']}"
    if cfg["ENGINE"].endswith("postgresql"):
        auth = cfg["USER"] + (f":{cfg['PASSWORD']}" if cfg["PASSWORD"] else "")
        return f"postgres://{auth}@{cfg['HOST'] or 'localhost'}:{cfg['PORT'] or 5432}/{cfg['NAME']}"
    raise RuntimeError(f"no URL form for {cfg['ENGINE']}")


@dataclass
class Pipeline:
    """The running system: runscp on ``port`` writing to ``storage``, a worker indexing."""

    port: int
    ae_title: str
    storage: Path
    env: dict[str, str]
    logs: Path
    procs: dict = field(default_factory=dict)
    scp_log: str = "runscp"  # the name of procs["runscp"]'s log

    def log(self, name: str) -> str:
        name = self.scp_log if name == "runscp" else name
        return (self.logs / f"{name}.log").read_text(errors="replace")


def service_env(redis_url: str, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "imaging.settings",
        "DATABASE_URL": database_url(),
        "CELERY_BROKER_URL": redis_url,
        "STORAGE_DIR": str(settings.STORAGE_DIR),
        "PYTHONUNBUFFERED": "1",
        "REINDEX_INTERVAL_SECONDS": "0",
        "STORAGE_MIN_FREE_MB": "1",
        # The tests share one storage and count its files: its 65,536 folders are made
        # by the tests of STORAGE_PREPARE_FOLDERS (test_storage.py), not by every runscp.
        "STORAGE_PREPARE_FOLDERS": "0",
        **extra,
    }


def start_scp(env: dict, logs: Path, name: str = "runscp", ae_title: str = "IMAGING", port: int | None = None):
    """A runscp answering on ``port`` (a free one by default; a shared one with DICOM_REUSE_PORT)."""
    port = port or procs.free_port()
    log = logs / f"{name}.log"
    proc = procs.start(
        procs.manage("runscp", "--port", str(port), "--host", "127.0.0.1", "--ae-title", ae_title), env, log
    )

    def listening() -> bool:
        # Another instance may already answer on a shared port: this one must say it listens.
        return "listening on" in log.read_text(errors="replace") and procs.dicom_answers(port)

    try:
        procs.wait_for(lambda: listening() or proc.poll() is not None, 30, "runscp to answer")
    except TimeoutError:
        procs.stop(proc)
        raise
    if proc.poll() is not None:
        raise RuntimeError((logs / f"{name}.log").read_text())
    return proc, port


def start_worker(env: dict, log: Path, name: str, *, concurrency: int = 2, beat_schedule: Path | None = None):
    """A Celery worker (with beat when ``beat_schedule`` is given), once it says it is ready."""
    beat = ["-B", "-s", str(beat_schedule)] if beat_schedule else []
    worker = procs.start(
        [sys.executable, "-m", "celery", "-A", "imaging", "worker", *beat, "-c", str(concurrency), "-l", "info"]
        + ["--without-mingle", "--without-gossip", "--without-heartbeat", "-n", f"{name}@%h"],
        env,
        log,
    )
    try:
        procs.wait_for(
            lambda: "ready." in log.read_text(errors="replace") or worker.poll() is not None, 60, "the Celery worker"
        )
    except TimeoutError:
        procs.stop(worker)
        raise
    assert worker.poll() is None, log.read_text()
    return worker


@pytest.fixture(scope="session")
def pipeline(django_db_setup, django_db_blocker, redis_url, logs_dir):
    env = service_env(redis_url)
    worker = start_worker(env, logs_dir / "worker.log", "test")
    try:
        scp, port = start_scp(env, logs_dir)
    except BaseException:
        procs.stop(worker)  # a server that cannot start must not leave its worker behind
        raise
    yield Pipeline(
        port=port,
        ae_title="IMAGING",
        storage=Path(settings.STORAGE_DIR),
        env=env,
        logs=logs_dir,
        procs={"worker": worker, "runscp": scp},
    )
    procs.stop(scp)
    procs.stop(worker)


@pytest.fixture(scope="session")
def pynetdicom_pipeline(pipeline):
    """The pipeline with a runscp of its own that leaves every association to pynetdicom (DICOM_FAST_RECEIVE=0)."""
    env = {**pipeline.env, "DICOM_FAST_RECEIVE": "0"}
    scp, port = start_scp(env, pipeline.logs, name="runscp-pynetdicom-receive")
    yield dataclasses.replace(
        pipeline, port=port, env=env, procs={**pipeline.procs, "runscp": scp}, scp_log="runscp-pynetdicom-receive"
    )
    procs.stop(scp)


@pytest.fixture(scope="session")
def fast_receive() -> str:
    """DICOM_FAST_RECEIVE of the runscp ``system`` is: a module that tests both ways overrides this (RECEIVE_PATHS)."""
    return "1"


# For a module's ``fast_receive`` fixture: its tests run against our receive path and against pynetdicom's.
RECEIVE_PATHS = {"scope": "module", "params": ["1", "0"], "ids": ["fastrecv", "pynetdicom-receive"]}


@pytest.fixture
def receive_pipeline(request, fast_receive):
    """``pipeline`` (our receive path, the default) or ``pynetdicom_pipeline``, as ``fast_receive`` says."""
    return request.getfixturevalue("pipeline" if fast_receive == "1" else "pynetdicom_pipeline")


@pytest.fixture(params=[True, False], ids=["bulk", "one-by-one"])
def ingest_bulk(request, settings) -> bool:
    """Each way of writing a batch of index rows (INGEST_BULK): the same rows must come out."""
    settings.INGEST_BULK = request.param
    return request.param


@pytest.fixture(params=[True, False], ids=["scan", "pydicom"])
def header_scan(request, settings) -> bool:
    """Each way of reading a stored file's header (INGEST_SCAN_HEADER): the same index must come out."""
    settings.INGEST_SCAN_HEADER = request.param
    return request.param


@pytest.fixture
def system(receive_pipeline, transactional_db):
    """The running system with a database the subprocesses can see (no wrapping transaction).

    Each test starts with an empty store, as the database is emptied after each
    test, and with one known node: MODALITY at 127.0.0.1, allowed everything.
    """
    from network.models import ModalityNode

    pipeline = receive_pipeline
    ModalityNode.objects.create(ae_title="MODALITY", host="127.0.0.1", port=procs.free_port())
    yield pipeline
    # An association's process logs it after the peer has released: let every one
    # finish before the database is emptied, or the two race (a deadlock on PostgreSQL).
    runscp = pipeline.procs["runscp"].pid
    procs.wait_for(lambda: not procs.children(runscp, but=SPARE_NAME), 60, "runscp's associations to end")
    for folder in ("instances", "thumbnails"):
        shutil.rmtree(pipeline.storage / folder, ignore_errors=True)


# Debian's chromium: Playwright never downloads a browser of its own here.
CHROMIUM = "/usr/bin/chromium"


@pytest.fixture
def browser(monkeypatch):
    """Debian's chromium, headless, driven by Playwright, with nothing of its own calling out."""
    # Playwright's sync API keeps an event loop in this thread; the test's own ORM
    # calls are synchronous and safe (the documented setting for this case).
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    if not shutil.which(CHROMIUM):
        pytest.fail("chromium is not installed (make test installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        yield browser
        browser.close()


@contextlib.contextmanager
def runserver(logs: Path, name: str, **extra_env: str):
    """``manage.py runserver`` on a free 127.0.0.1 port over the test database and store; yields its URL."""
    port = procs.free_port()
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "imaging.settings",
        "DATABASE_URL": database_url(),
        "STORAGE_DIR": str(settings.STORAGE_DIR),
        "ALLOWED_HOSTS": "127.0.0.1",
        "PYTHONUNBUFFERED": "1",
        **extra_env,
    }
    log = logs / f"{name}-{port}.log"
    proc = procs.start(procs.manage("runserver", "--noreload", f"127.0.0.1:{port}"), env, log)
    try:
        procs.wait_for(lambda: procs.port_open(port) or proc.poll() is not None, 60, "runserver")
        assert proc.poll() is None, log.read_text()
        yield f"http://127.0.0.1:{port}"
    finally:
        procs.stop(proc)


@pytest.fixture
def rewrites_run_here(monkeypatch) -> list[int]:
    """Rewrite jobs a correction plans are not queued on Celery: the test runs them (``rewrite.run_job``).

    For transactional tests, whose commits would otherwise queue the job: on a broker
    this process has not configured yet (leaving Celery's connection pool bound to it
    for the rest of the session), or on the session's worker, which would run it too.
    Returns the ids that would have been queued.
    """
    from imaging import rewrite

    queued: list[int] = []
    monkeypatch.setattr(rewrite, "queue", lambda job_id: queued.append(job_id) or "")
    return queued
