"""All configuration, read from the environment with embedded defaults.

This is the only module that reads ``os.environ``. Every variable is listed in
the README and in ``docker/.env.example``.
"""

import os
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent


def envstr(name: str, default: str) -> str:
    """A string; ``NAME_FILE`` (a path, as container secrets provide) wins."""
    file_name = os.environ.get(f"{name}_FILE")
    if file_name:
        return Path(file_name).read_text().strip()
    return os.environ.get(name, default)


def envbool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    if value.lower() in ("1", "true", "yes", "on"):
        return True
    if value.lower() in ("0", "false", "no", "off"):
        return False
    raise ImproperlyConfigured(f"{name}={value!r} is not a boolean (use 1/0, true/false)")


def envint(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={value!r} is not an integer") from None


def envlist(name: str, default: str) -> list[str]:
    return [item.strip() for item in envstr(name, default).split(",") if item.strip()]


VAR_DIR = Path(envstr("VAR_DIR", str(BASE_DIR / "var")))

DEBUG = envbool("DEBUG", False)
# The embedded key only serves a first run on a developer's machine; set SECRET_KEY
# (or SECRET_KEY_FILE) anywhere else.
SECRET_KEY = envstr("SECRET_KEY", "insecure-development-key-set-SECRET_KEY-in-production")
ALLOWED_HOSTS = envlist("ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]")
CSRF_TRUSTED_ORIGINS = envlist("CSRF_TRUSTED_ORIGINS", "")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "imaging",
    "records",
    "network",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.locale.LocaleMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "imaging.urls"
WSGI_APPLICATION = "imaging.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.template.context_processors.i18n",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {
    "default": dj_database_url.parse(
        envstr("DATABASE_URL", f"sqlite:///{VAR_DIR / 'db.sqlite3'}"),
        conn_max_age=envint("DATABASE_CONN_MAX_AGE", 60),
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Several worker processes write at once: WAL lets readers go on while one
    # writes, IMMEDIATE takes the write lock at BEGIN (no upgrade deadlocks), and
    # the timeout makes a writer wait for the lock instead of failing.
    DATABASES["default"]["CONN_MAX_AGE"] = 0
    DATABASES["default"]["OPTIONS"] = {
        "timeout": 30,
        "transaction_mode": "IMMEDIATE",
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / "test-db.sqlite3")}

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = envstr("LANGUAGE_CODE", "en")
LANGUAGES = [("en", "English"), ("zh-hans", "简体中文")]
LOCALE_PATHS = [BASE_DIR / "locale"]
TIME_ZONE = envstr("TIME_ZONE", "UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"

# --- Image storage -------------------------------------------------------------
STORAGE_DIR = Path(envstr("STORAGE_DIR", str(VAR_DIR / "storage")))
THUMBNAIL_SIZE = envint("THUMBNAIL_SIZE", 256)
# A series' thumbnail is rendered this long after its latest images were indexed,
# so a CT streaming in is rendered a few times, not once per batch.
THUMBNAIL_DELAY_SECONDS = envint("THUMBNAIL_DELAY_SECONDS", 1)
# fsync each stored file (and its directory) before answering Success. Turning it
# off trades durability after a power cut for speed; only benchmarks should.
STORAGE_FSYNC = envbool("STORAGE_FSYNC", True)
# Largest C-STORE data set accepted, in bytes (a multi-frame US cine can be large).
DICOM_MAX_DATASET_BYTES = envint("DICOM_MAX_DATASET_BYTES", 2 * 1024**3)
# Below this much free space on STORAGE_DIR, C-STORE and STOW-RS answer "out of
# resources" (0xA700) and /health says why: the disk never fills up under the
# files already stored.
STORAGE_MIN_FREE_MB = envint("STORAGE_MIN_FREE_MB", 1024)
# A SOP Instance UID that arrives again under another study or patient than the
# stored one: "reject" keeps the stored instance and answers a failure status,
# "replace" stores the new one over it. Either way the conflict is recorded.
DICOM_UID_CONFLICT_POLICY = envstr("DICOM_UID_CONFLICT_POLICY", "reject")
if DICOM_UID_CONFLICT_POLICY not in ("reject", "replace"):
    raise ImproperlyConfigured(f"DICOM_UID_CONFLICT_POLICY={DICOM_UID_CONFLICT_POLICY!r}: use reject or replace")

# --- DICOM network ---------------------------------------------------------------
DICOM_AE_TITLE = envstr("DICOM_AE_TITLE", "IMAGING")
# Access control, secure by default: the called AE title must be ours, the calling
# AE title an active ModalityNode, and (with DICOM_CHECK_HOST) its IP the node's host.
DICOM_CHECK_CALLED_AE = envbool("DICOM_CHECK_CALLED_AE", True)
DICOM_CHECK_HOST = envbool("DICOM_CHECK_HOST", True)
# Association log entries older than this are deleted daily by the worker.
ASSOCIATION_LOG_RETENTION_DAYS = envint("ASSOCIATION_LOG_RETENTION_DAYS", 90)
DICOM_HOST = envstr("DICOM_HOST", "0.0.0.0")  # noqa: S104 - a PACS listens on the network
DICOM_PORT = envint("DICOM_PORT", 11112)
# Largest PDU we announce (Maximum Length): a P-DATA-TF longer than this is refused
# with an A-ABORT, and one PDU is what an association reads into memory at a time.
# 0 announces no limit (then only DICOM_MAX_DATASET_BYTES bounds a PDU); see
# docs/performance.md for how the default was chosen.
DICOM_MAX_PDU = envint("DICOM_MAX_PDU", 131072)
# Each association is served by its own process (forked), so several modalities
# sending at once use every core; beyond this many, new connections wait.
DICOM_MAX_ASSOCIATIONS = envint("DICOM_MAX_ASSOCIATIONS", 32)
DICOM_NETWORK_TIMEOUT = envint("DICOM_NETWORK_TIMEOUT", 60)
DICOM_ACSE_TIMEOUT = envint("DICOM_ACSE_TIMEOUT", 30)
DICOM_DIMSE_TIMEOUT = envint("DICOM_DIMSE_TIMEOUT", 60)
# --- Hostile and broken peers (network/admission.py, network/guard.py) -----------
# Longest PDU read before an association is established: an A-ASSOCIATE-RQ
# proposing a hundred presentation contexts is about 10 KB. Longer: A-ABORT, closed.
DICOM_MAX_ASSOCIATE_PDU = envint("DICOM_MAX_ASSOCIATE_PDU", 1024 * 1024)
# Seconds a connection has to complete its A-ASSOCIATE-RQ, even trickling bytes;
# then it is dropped and its process serves others.
DICOM_ASSOCIATE_TIMEOUT = envint("DICOM_ASSOCIATE_TIMEOUT", 5)
# Associations at once from one IP address (0: no limit); beyond, a connection is
# closed at accept() with an A-ASSOCIATE-RJ (transient, local limit exceeded).
DICOM_MAX_ASSOCIATIONS_PER_PEER = envint("DICOM_MAX_ASSOCIATIONS_PER_PEER", 12)
# Connections the kernel queues for accept() (socketserver's default is 5).
DICOM_LISTEN_BACKLOG = envint("DICOM_LISTEN_BACKLOG", 256)
# Seconds the spares keep the active nodes' addresses (host names resolved) before
# reading them again: an administrator's change applies within this long.
DICOM_PEER_CACHE_SECONDS = envint("DICOM_PEER_CACHE_SECONDS", 5)
# A C-STORE data set that grows past this many bytes is written to its file as it
# arrives instead of being held in memory until complete.
DICOM_STREAM_TO_DISK_BYTES = envint("DICOM_STREAM_TO_DISK_BYTES", 8 * 1024 * 1024)
# Replace pynetdicom's 1 ms polling sleeps with waits that end when there is work
# (network/reactor.py); 0 restores pynetdicom's own loops.
DICOM_EVENT_DRIVEN_LOOPS = envbool("DICOM_EVENT_DRIVEN_LOOPS", True)
# Write our C-STORE requests (C-MOVE/C-GET sub-operations, sends to nodes) to the
# socket in one piece (network/fastsend.py); 0 leaves them to pynetdicom.
DICOM_FAST_SEND = envbool("DICOM_FAST_SEND", True)
# Processes forked ahead, warmed up and waiting for the next associations (network/scp.py).
DICOM_SPARE_PROCESSES = envint("DICOM_SPARE_PROCESSES", 2)
# On SIGTERM, associations in progress get this long to finish before being aborted.
DICOM_SHUTDOWN_GRACE = envint("DICOM_SHUTDOWN_GRACE", 30)
# Character set assumed for names in data sets that declare none (issue: many
# Chinese modalities send GB18030 without Specific Character Set).
DICOM_FALLBACK_CHARSET = envstr("DICOM_FALLBACK_CHARSET", "ISO_IR 100")
# C-FIND/QIDO: Person Names match case-insensitively ("wang^xi*" finds WANG^XIAOMING),
# as PS3.4 C.2.2.2.1 allows and users expect; on SQLite ASCII letters only.
DICOM_PN_CASE_INSENSITIVE = envbool("DICOM_PN_CASE_INSENSITIVE", True)
# C-FIND answers at most this many matches (the first ones, newest studies first)
# and logs a warning: a workstation shows a partial list rather than none.
DICOM_FIND_MAX_RESULTS = envint("DICOM_FIND_MAX_RESULTS", 1000)
# C-MOVE/C-GET Pending responses (optional, PS3.4 C.4.2.3) at most this often, in
# milliseconds: a progress bar needs a few a second, and one after each image costs
# the requester and us CPU beside every image sent. 0 sends one after each sub-operation.
DICOM_RETRIEVE_PENDING_INTERVAL_MS = envint("DICOM_RETRIEVE_PENDING_INTERVAL_MS", 200)

# --- Celery ----------------------------------------------------------------------
CELERY_BROKER_URL = envstr("CELERY_BROKER_URL", "redis://127.0.0.1:6379/0")
CELERY_RESULT_BACKEND = envstr("CELERY_RESULT_BACKEND", "") or None
CELERY_TASK_ACKS_LATE = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_BROKER_CONNECTION_TIMEOUT = 3
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# Publishing gives up fast when the broker is down: the SCP's files are safe on
# disk and reindex picks them up, so a stalled publish would only delay shutdown.
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "max_retries": 1,
    "interval_start": 0,
    "interval_step": 0.2,
    "interval_max": 0.5,
    "socket_connect_timeout": 3,
}
# Worker processes run this much nicer than the SCP: storing is what modalities
# wait for, indexing may lag behind by a moment (0 disables).
WORKER_NICENESS = envint("WORKER_NICENESS", 10)
# A safety net for days the broker was down: index stored files that have no row.
REINDEX_INTERVAL_SECONDS = envint("REINDEX_INTERVAL_SECONDS", 3600)

LOG_LEVEL = envstr("LOG_LEVEL", "INFO")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        # pynetdicom logs every PDU at INFO/DEBUG; only its warnings are news.
        "pynetdicom": {"level": "WARNING"},
    },
}

REST_FRAMEWORK = {
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
}
