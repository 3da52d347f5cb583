"""All configuration, read from the environment with embedded defaults.

This is the only module that reads ``os.environ``. Every variable is listed in
the README and in ``docker/.env.example``.
"""

import datetime as dt
import os
import secrets
import socket
import tempfile
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


def generated_secret_key(path: Path) -> str:
    """The key kept in ``path``, made on first use (mode 0600) so that no key ever lives in the repository.

    Every process of ``make run`` (web workers, SCP, worker) imports the settings at
    about the same time: the key is written to a private temporary file and linked
    into place, so a process either creates the one file or reads the complete key
    another process created, never half a file.
    """
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".secret-key-")  # mode 0600
        try:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_urlsafe(50) + "\n")
            try:
                os.link(tmp, path)
            except FileExistsError:
                pass  # another process got there first: its key wins
        finally:
            os.unlink(tmp)
    key = path.read_text().strip()
    if len(key) < 50:
        raise ImproperlyConfigured(f"{path} holds no usable key: delete it to have a new one made")
    return key


def this_machine_hosts() -> list[str]:
    """Loopback plus this machine's host name and addresses, as ALLOWED_HOSTS takes them.

    So that a browser elsewhere in the department can open http://<our address>:8000/
    without configuring anything. Read locally (network/addresses.py): no packet is sent.
    """
    from network.addresses import local_addresses

    hosts = ["localhost", "127.0.0.1", "[::1]"]
    name = socket.gethostname()
    hosts += [name, name.split(".")[0]] if name else []
    for address in local_addresses():
        hosts.append(f"[{address.address}]" if address.version == 6 else address.address)
    return list(dict.fromkeys(host.lower() for host in hosts))


VAR_DIR = Path(envstr("VAR_DIR", str(BASE_DIR / "var")))

DEBUG = envbool("DEBUG", False)
# Without SECRET_KEY (or SECRET_KEY_FILE) a key is generated on first start and kept
# in VAR_DIR/secret-key; set it where several machines or containers must share one
# (docker's entrypoint insists, since its VAR_DIR is not a shared volume).
SECRET_KEY = envstr("SECRET_KEY", "") or generated_secret_key(VAR_DIR / "secret-key")
# Unset: this machine's names and addresses (this_machine_hosts); set it to the DNS
# name users type, or behind a proxy.
ALLOWED_HOSTS = envlist("ALLOWED_HOSTS", "") or this_machine_hosts()
CSRF_TRUSTED_ORIGINS = envlist("CSRF_TRUSTED_ORIGINS", "")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "corsheaders",
    "imaging.apps.AxesConfig",  # django-axes, named in our languages
    "imaging",
    "records",
    "network",
]

MIDDLEWARE = [
    # First, as django-cors-headers asks: it answers CORS preflights before anything else can.
    "corsheaders.middleware.CorsMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.locale.LocaleMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last, as django-axes asks: it turns a lockout into the "too many attempts" page.
    "axes.middleware.AxesMiddleware",
]

# django-axes first: it refuses a locked-out username+address before the password is checked.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
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
        conn_health_checks=True,
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Several worker processes write at once: WAL lets readers go on while one
    # writes, IMMEDIATE takes the write lock at BEGIN (no upgrade deadlocks), and
    # the timeout makes a writer wait for the lock instead of failing. Connections are
    # kept between requests (DATABASE_CONN_MAX_AGE, as for PostgreSQL): opening one, with
    # its WAL files and PRAGMAs, took 2-4 ms here, as long as a short QIDO-RS search.
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
# Dates in Chinese as Chinese PACS/RIS write them, 2026-12-01 (imaging/formats/zh_Hans/formats.py).
FORMAT_MODULE_PATH = ["imaging.formats"]
TIME_ZONE = envstr("TIME_ZONE", "UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"

# --- Web security ------------------------------------------------------------------
# A signed-in session lasts one working day from sign-in: it is not prolonged by each
# request (SESSION_SAVE_EVERY_REQUEST stays off), so a workstation left signed in does
# not stay so for ever.
SESSION_HOURS = envint("SESSION_HOURS", 10)
SESSION_COOKIE_AGE = SESSION_HOURS * 3600
# Also end the session when the browser closes (shared ward workstations).
SESSION_EXPIRE_AT_BROWSER_CLOSE = envbool("SESSION_EXPIRE_AT_BROWSER_CLOSE", False)
# The one HTTPS switch: set when users reach us through an HTTPS proxy (gunicorn itself
# speaks plain HTTP). It makes cookies Secure, redirects plain HTTP to HTTPS, sends HSTS,
# and trusts the proxy's X-Forwarded-Proto header (the proxy must set it, overwriting
# what a client sent).
HTTPS = envbool("HTTPS", False)
SESSION_COOKIE_SECURE = HTTPS
CSRF_COOKIE_SECURE = HTTPS
SECURE_SSL_REDIRECT = HTTPS
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https") if HTTPS else None
# The container's health check asks gunicorn directly, over plain HTTP.
SECURE_REDIRECT_EXEMPT = [r"^health$"]
# Browsers refuse plain HTTP to us for this long once they have seen HTTPS (0: no HSTS).
HSTS_SECONDS = envint("HSTS_SECONDS", 31536000 if HTTPS else 0)
SECURE_HSTS_SECONDS = HSTS_SECONDS
SECURE_HSTS_INCLUDE_SUBDOMAINS = HSTS_SECONDS > 0
SECURE_HSTS_PRELOAD = HSTS_SECONDS > 0
if not HTTPS:
    # Plain HTTP is then the operator's stated choice (a closed department network), so
    # `check --deploy` does not repeat it four times; everything else it still reports.
    # HTTPS=1 turns these settings on and these checks pass.
    SILENCED_SYSTEM_CHECKS = [
        "security.W004",  # SECURE_HSTS_SECONDS
        "security.W008",  # SECURE_SSL_REDIRECT
        "security.W012",  # SESSION_COOKIE_SECURE
        "security.W016",  # CSRF_COOKIE_SECURE
    ]

# Failed sign-ins (django-axes): after LOGIN_FAILURE_LIMIT wrong passwords for one user
# name from one address, that pair is refused, right password included, for
# LOGIN_COOLOFF_MINUTES. By user name *and* address, so that a guesser neither locks
# out the real user at another workstation nor gets more tries by changing the name.
LOGIN_FAILURE_LIMIT = envint("LOGIN_FAILURE_LIMIT", 5)
LOGIN_COOLOFF_MINUTES = envint("LOGIN_COOLOFF_MINUTES", 15)
AXES_FAILURE_LIMIT = LOGIN_FAILURE_LIMIT
AXES_COOLOFF_TIME = dt.timedelta(minutes=LOGIN_COOLOFF_MINUTES)
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
# One successful sign-in forgets the earlier mistakes.
AXES_RESET_ON_SUCCESS = True
# The page that says so (429): records/views.py, in the site's language and look.
AXES_LOCKOUT_CALLABLE = "records.views.locked_out"
# Every sign-in (who, from where, when) is kept by axes: the access log an auditor asks for.
AXES_DISABLE_ACCESS_LOG = False

# --- /health (imaging/health.py; public, for load balancers and monitors) ----------
# Each check (database, broker, storage) gives up after this many seconds,
# so a dead Redis or a hung disk answers 503 instead of hanging the monitor.
HEALTH_CHECK_TIMEOUT = envint("HEALTH_CHECK_TIMEOUT", 3)
# /health fails when more stored files than this could not be indexed; -1 only counts
# them (one odd file from a modality should not take the web out of a load balancer).
HEALTH_MAX_INDEXING_FAILURES = envint("HEALTH_MAX_INDEXING_FAILURES", -1)

# --- Image storage -------------------------------------------------------------
STORAGE_DIR = Path(envstr("STORAGE_DIR", str(VAR_DIR / "storage")))
THUMBNAIL_SIZE = envint("THUMBNAIL_SIZE", 256)
# A series' thumbnail is rendered this long after its latest images were indexed,
# so a CT streaming in is rendered a few times, not once per batch.
THUMBNAIL_DELAY_SECONDS = envint("THUMBNAIL_DELAY_SECONDS", 1)
# While indexing tasks wait in the queue, a thumbnail waits too (findable first), at
# most this long in all before it is rendered anyway.
THUMBNAIL_MAX_DEFER_SECONDS = envint("THUMBNAIL_MAX_DEFER_SECONDS", 30)
# fsync each stored file (and its directory) before answering Success. Turning it
# off trades durability after a power cut for speed; only benchmarks should.
STORAGE_FSYNC = envbool("STORAGE_FSYNC", True)
# Files stored together (the parts of one STOW-RS request) are made durable by this
# many threads at once: a journaling file system folds concurrent fsyncs into one
# commit (20 files: 160 ms one after another, 50-65 ms from 8 threads, measured here).
STORAGE_FSYNC_THREADS = envint("STORAGE_FSYNC_THREADS", 8)
# runscp makes the 65,536 shard folders of the instance layout once, at its first
# start, in a low-priority process of its own (storage.prepare_folders; 256 MB of
# folder blocks on ext4; also `manage.py preparestorage`): in a young archive a
# C-STORE then no longer waits for its folder's mkdir. 0: each folder is made by the
# first file stored in it.
STORAGE_PREPARE_FOLDERS = envbool("STORAGE_PREPARE_FOLDERS", True)
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
# Index a batch of stored files in one transaction with bulk inserts of the
# instances (imaging/ingest.py, docs/fastindex.md); 0 writes each instance in a
# transaction of its own, as before. Same rows either way.
INGEST_BULK = envbool("INGEST_BULK", True)
# With INGEST_BULK, the batch's new patients, studies and series are inserted in three
# bulk inserts (ingest._insert_new_parents) rather than one insert each; 0: one each.
INGEST_BULK_PARENTS = envbool("INGEST_BULK_PARENTS", True)
# Read the header of a common file (preamble, plain file meta, Little Endian, header
# within 64 KB) by a scan of ours into raw elements (imaging/dicomfile.scan_header)
# instead of pydicom's reader, and the UIDs the SCP checks in a received Little Endian
# data set (dicomfile.scan_values); anything else is read by pydicom as before. 0: always pydicom.
INGEST_SCAN_HEADER = envbool("INGEST_SCAN_HEADER", True)
# The SCP gathers stored paths this long (at most INDEX_HANDOFF_MAX_PATHS) before
# sending them to the indexer as one task (network/handoff.py); the end of an
# association sends at once, so only images inside a long association wait. The
# indexer pays about 14 ms per batch besides each image (docs/performance.md).
INDEX_HANDOFF_LINGER_MS = envint("INDEX_HANDOFF_LINGER_MS", 1000)
INDEX_HANDOFF_MAX_PATHS = envint("INDEX_HANDOFF_MAX_PATHS", 256)

# --- STOW-RS (network/dicomweb/stow.py) -------------------------------------------
# Largest STOW-RS request body, all parts together, in bytes; beyond it the request
# is refused with 413 (each part is also bounded by DICOM_MAX_DATASET_BYTES). The
# body is read as a stream either way: this bounds one request's disk use and time.
DICOMWEB_STOW_MAX_BODY_BYTES = envint("DICOMWEB_STOW_MAX_BODY_BYTES", 4 * 1024**3)
# WADO-RS metadata: each instance's dicom+json is kept here once built, so that a
# series' metadata reads 300 small files instead of parsing 300 DICOM headers (750 ms
# for a 300-slice CT). A cache: rebuilt whenever the stored file changes (size, mtime,
# inode), safe to delete; empty turns it off.
DICOMWEB_METADATA_CACHE_DIR = envstr("DICOMWEB_METADATA_CACHE_DIR", str(VAR_DIR / "cache" / "metadata"))

# --- Hostile and broken files (imaging/dicomfile.py, ingest, the index spool) ---
# A Deflated Explicit VR data set is inflated as a stream and never beyond this many
# bytes: a few MB on disk can inflate to gigabytes (a deflate bomb). Such a file is
# left unindexed and recorded as an indexing failure.
DICOM_MAX_INFLATED_BYTES = envint("DICOM_MAX_INFLATED_BYTES", 512 * 1024**2)
# Largest decoded pixel data (Rows x Columns x Frames x Samples x Bits) we render
# (thumbnails); beyond it the header is indexed and the pixel problem recorded.
DICOM_MAX_PIXEL_BYTES = envint("DICOM_MAX_PIXEL_BYTES", 1024**3)
# Paths the SCP could not hand to the broker are appended (fsynced) to spool files
# here; it must be shared by the SCP and the worker, like STORAGE_DIR.
INDEX_SPOOL_DIR = Path(envstr("INDEX_SPOOL_DIR", "") or STORAGE_DIR / "spool")
# Seconds between the worker's drains of the index spool (Celery beat); 0 disables.
INDEX_SPOOL_INTERVAL_SECONDS = envint("INDEX_SPOOL_INTERVAL_SECONDS", 30)
# A reindex run holds a lease in the database, renewed after each batch; a crashed
# holder's lease expires after this many seconds and another run may start.
REINDEX_LOCK_SECONDS = envint("REINDEX_LOCK_SECONDS", 300)
# --- Corrections: the stored files' rewrite (imaging/rewrite.py) ---
# A running rewrite job holds a lease, renewed as it goes; a killed worker's lease
# expires after this many seconds (at once for a worker of the same host restarted).
REWRITE_LEASE_SECONDS = envint("REWRITE_LEASE_SECONDS", 60)
# Files a rewrite job writes before it waits for their fsyncs (they overlap, as
# STOW-RS's do; STORAGE_FSYNC_THREADS); 1 writes and syncs one file at a time.
REWRITE_GROUP_FILES = max(1, envint("REWRITE_GROUP_FILES", 8))
# Seconds between beat's checks for rewrite jobs whose worker died; 0 disables.
REWRITE_RESUME_INTERVAL_SECONDS = envint("REWRITE_RESUME_INTERVAL_SECONDS", 60)
# A worker that starts queues the rewrite jobs left unfinished.
REWRITE_RESUME_ON_START = envbool("REWRITE_RESUME_ON_START", True)

# --- DICOM network ---------------------------------------------------------------
DICOM_AE_TITLE = envstr("DICOM_AE_TITLE", "IMAGING")
# Access control, secure by default: the called AE title must be ours, the calling
# AE title an active ModalityNode, and (with DICOM_CHECK_HOST) its IP the node's host.
DICOM_CHECK_CALLED_AE = envbool("DICOM_CHECK_CALLED_AE", True)
DICOM_CHECK_HOST = envbool("DICOM_CHECK_HOST", True)
# Association log entries older than this are deleted daily by the worker.
ASSOCIATION_LOG_RETENTION_DAYS = envint("ASSOCIATION_LOG_RETENTION_DAYS", 90)
# Access records (who opened which patient's study: records/access.py) older than this
# are deleted daily by the worker. Default: seven years and the leap days in them.
ACCESS_RECORD_RETENTION_DAYS = envint("ACCESS_RECORD_RETENTION_DAYS", 7 * 365 + 2)
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
# Let several runscp processes on one host listen on the same address and port
# (Linux SO_REUSEPORT): the kernel spreads new connections among them, and each
# peer's own address is kept for the node checks (a TCP proxy in front would hide
# it). Every instance must set it; see docs/performance.md, "Scaling out".
DICOM_REUSE_PORT = envbool("DICOM_REUSE_PORT", False)
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
# Serve associations that only store and verify (a modality's storescu) with our own
# single-threaded receive path (network/fastrecv.py); 0 leaves every one to pynetdicom.
DICOM_FAST_RECEIVE = envbool("DICOM_FAST_RECEIVE", True)
# --- Our own sends (C-MOVE/C-GET sub-operations, sends to nodes; network/sendguard.py) ---
# Each C-STORE response we wait for gets DICOM_DIMSE_TIMEOUT; these bound the rest.
# A write to a peer that takes no byte of it for this many seconds (its TCP window
# stays full: it stopped reading) fails, and the association is dropped.
DICOM_SEND_TIMEOUT = envint("DICOM_SEND_TIMEOUT", 60)
# Smallest maximum PDU length a peer may announce for us to send it images. PS3.8
# sets no minimum, but a PDV carries 6 bytes of header: 1-6 bytes carry nothing, and
# a few hundred bytes make a CT slice thousands of PDUs (pynetdicom queues them all
# at once). DCMTK never announces less than 4096; below 1 KiB is a broken or
# hostile peer, and gets an A-ABORT instead of images.
DICOM_MIN_PEER_PDU = envint("DICOM_MIN_PEER_PDU", 1024)
if DICOM_SEND_TIMEOUT < 1 or DICOM_MIN_PEER_PDU < 7:
    raise ImproperlyConfigured("DICOM_SEND_TIMEOUT must be at least 1 (s), DICOM_MIN_PEER_PDU at least 7 (bytes)")
# Processes forked ahead, warmed up and waiting for the next associations (network/scp.py).
DICOM_SPARE_PROCESSES = envint("DICOM_SPARE_PROCESSES", 2)
# While another spare waits, one that took a connection is replaced when its association
# ends, or this many milliseconds after it began (0: at once); the fork and warm-up would
# otherwise compete with the association for the CPU while it starts.
DICOM_SPARE_REFILL_AFTER_MS = envint("DICOM_SPARE_REFILL_AFTER_MS", 1000)
# Associations one process serves, one after another, when our own receive path
# (DICOM_FAST_RECEIVE) serves them: back from one, it waits for the next as a spare
# (if fewer than DICOM_SPARE_PROCESSES others do). 1: a process per association.
DICOM_ASSOCIATIONS_PER_PROCESS = envint("DICOM_ASSOCIATIONS_PER_PROCESS", 100)
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

# --- OHIF Viewer (imaging/ohif/; its version is pinned in imaging/ohif/package.json) ---
# The prebuilt @ohif/app from npm, served under /ohif/ to Doctors and Administrators and
# linked from the study list; `manage.py ohif_install` (make run, make test) fetches it.
# 0: no /ohif/, no link, nothing fetched (a machine without npm or registry access).
OHIF_ENABLED = envbool("OHIF_ENABLED", True)
# Where the unpacked viewer lives (about 200 MB per version; older versions are removed).
OHIF_DIR = Path(envstr("OHIF_DIR", "") or VAR_DIR / "ohif")

# --- Celery ----------------------------------------------------------------------
CELERY_BROKER_URL = envstr("CELERY_BROKER_URL", "redis://127.0.0.1:6379/0")
CELERY_RESULT_BACKEND = envstr("CELERY_RESULT_BACKEND", "") or None
CELERY_TASK_ACKS_LATE = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# Processes per worker (a --concurrency on the command line wins); 0: one per core.
CELERY_WORKER_CONCURRENCY = envint("CELERY_CONCURRENCY", 0) or None
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
        # django-axes: failed sign-ins and lockouts are warnings; its start-up line and each
        # successful sign-in (kept in its access log table anyway) are not news.
        "axes": {"level": "WARNING"},
    },
}

# --- REST API and DICOMweb (records/api.py, network/api.py, imaging/api_urls.py) ----
REST_FRAMEWORK = {
    # Deny unless a view names the roles it serves (records/api_permissions.py): an API
    # view that forgets to is closed, and the URL walk test fails, instead of open.
    "DEFAULT_PERMISSION_CLASSES": ["records.api_permissions.DenyAll"],
    # Programs and browsers alike, on /api/ and /dicomweb/: HTTP Basic (through
    # authenticate() with the request, so django-axes' lockouts apply), tokens an
    # administrator issues in the admin, and the session of our login page. Basic comes
    # first so that an anonymous request is answered 401 with WWW-Authenticate: Basic.
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "records.api_auth.BasicAuthentication",
        "records.api_auth.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_FILTER_BACKENDS": ["django_filters.rest_framework.DjangoFilterBackend"],
    "DEFAULT_PAGINATION_CLASS": "records.api_pagination.Pagination",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
}
# A Basic password checked once is remembered for this many seconds (0: never), so that a
# program sending Basic with every request pays Django's PBKDF2 (1,000,000 iterations,
# about 0.6 s of CPU here) once, not per request. Only in this process's memory, under an
# HMAC of user name and password keyed by SECRET_KEY; forgotten at once when the user's
# password changes or the user is deactivated, and a lockout still refuses it.
API_BASIC_AUTH_CACHE_SECONDS = envint("API_BASIC_AUTH_CACHE_SECONDS", 300)
# Items per page of an API list, unless the client asks for ?page_size= (at most API_MAX_PAGE_SIZE).
API_PAGE_SIZE = envint("API_PAGE_SIZE", 100)
API_MAX_PAGE_SIZE = envint("API_MAX_PAGE_SIZE", 1000)
if not 1 <= API_PAGE_SIZE <= API_MAX_PAGE_SIZE:
    # 0 would turn pagination off, and a whole archive would come back as one list.
    raise ImproperlyConfigured(f"API_PAGE_SIZE={API_PAGE_SIZE} must be between 1 and API_MAX_PAGE_SIZE")
SPECTACULAR_SETTINGS = {
    "TITLE": "Imaging archive API",
    "DESCRIPTION": (
        "Patients, studies, series and instances of the departmental archive; modality nodes, "
        "the association log and send jobs for Administrators. Sign in with the session of the "
        "login page, HTTP Basic, or a token an administrator issues (`Authorization: Token <key>`)."
    ),
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    # /api/ only: DICOMweb is described by PS3.18, not by this schema.
    "PREPROCESSING_HOOKS": ["imaging.api_urls.only_api_endpoints"],
    # Any role may read the schema and the docs page; strangers may not.
    "SERVE_PERMISSIONS": ["records.api_permissions.AnyRole"],
    # Swagger UI's files come from drf-spectacular-sidecar, served by us: no CDN.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "SCHEMA_PATH_PREFIX": "/api/",
}
# CORS (django-cors-headers): other origins (a viewer or a script page served elsewhere)
# may call /api/ and /dicomweb/ only when listed here, e.g. "https://viewer.example.org".
CORS_ALLOWED_ORIGINS = envlist("CORS_ALLOWED_ORIGINS", "")
CORS_URLS_REGEX = r"^/(api|dicomweb)/"
# Authorization for Basic and token requests; Accept named explicitly, since
# `multipart/related; type="application/dicom"` (quoted) makes it a non-safelisted
# header that the preflight must allow.
CORS_ALLOW_HEADERS = ["accept", "authorization", "content-type", "user-agent", "x-csrftoken", "x-requested-with"]
# What a script on another origin may read: QIDO's Warning, the job URL of a send.
CORS_EXPOSE_HEADERS = ["Warning", "Location", "Content-Location"]
# No cookies across origins: other origins authenticate with Authorization.
CORS_ALLOW_CREDENTIALS = False
