"""The access record: who opened which patient's study, when, from where, and how.

``record_access(request, study=..., action=...)`` is called by every view that shows
a patient's images or study (study page, viewer, ZIP download, WADO-RS, the API's
instance reads). It writes one ``AccessRecord`` per session, study and action: a
viewer asks for 300 frames of a series, and that is one record, not 300.

The hot path (every frame) costs a digest and a set lookup: each web process keeps
the keys it has recorded in a bounded in-memory set, and only a key it has not seen
reaches the database, as one ``INSERT ... ON CONFLICT DO NOTHING`` against the
unique constraint (so several processes, or a process that forgot, write it once).
Requests without a session (HTTP Basic, tokens) count "once" per user, token and
day: a script reading a study every night leaves one record a night.
"""

import datetime as dt
import hashlib
import threading
from collections import OrderedDict

from django.utils import timezone

from records.models import AccessRecord, Study

Action = AccessRecord.Action

# Keys (session digest, study UID, action) this process has written (about 350 bytes
# each); the oldest are forgotten past this many, which costs one no-op INSERT when
# they come back.
_MEMO_SIZE = 20_000
_memo: OrderedDict[tuple[str, str, str], None] = OrderedDict()
_memo_lock = threading.Lock()


def session_digest(request) -> str:
    """What "once per session" counts on: a digest of the session key, the token, or the user and day.

    The session key and the token are credentials: only their SHA-256 is kept.
    """
    # The user is part of every digest: a Basic request carrying another user's session
    # cookie is that request's user's read, not the session owner's.
    user = request.user.pk
    auth = getattr(request, "auth", None)  # DRF: the Token of TokenAuthentication
    token = getattr(auth, "key", None)
    if token:
        return "t" + hashlib.sha256(f"token:{user}:{token}".encode()).hexdigest()[:40]
    session = getattr(request, "session", None)
    key = getattr(session, "session_key", None)
    if key:
        return "s" + hashlib.sha256(f"session:{user}:{key}".encode()).hexdigest()[:40]
    day = timezone.localdate().isoformat()
    return "u" + hashlib.sha256(f"user:{user}:{day}".encode()).hexdigest()[:40]


def client_address(request) -> str | None:
    """REMOTE_ADDR: no trusted-proxy setting exists, and X-Forwarded-For is whatever a client writes."""
    return request.META.get("REMOTE_ADDR") or None


def record_access(request, *, study: Study | str, action: str) -> None:
    """Record that ``request.user`` read ``study`` (a Study or its UID) by ``action``, once per session.

    Call it after the view found what it serves (an unknown study records nothing).
    Costs no query when this process already recorded the same session, study and action.
    """
    uid = study if isinstance(study, str) else study.study_instance_uid
    key = (session_digest(request), uid, str(action))
    with _memo_lock:
        if key in _memo:
            _memo.move_to_end(key)
            return
    _write(request, key)
    with _memo_lock:
        _memo[key] = None
        while len(_memo) > _MEMO_SIZE:
            _memo.popitem(last=False)


def _write(request, key) -> None:
    session, uid, action = key
    # Read again with its patient: callers hold a Study loaded with only() the fields they serve.
    study = Study.objects.select_related("patient").filter(study_instance_uid=uid).first()
    patient = study.patient if study is not None else None
    user = request.user if request.user.is_authenticated else None
    record = AccessRecord(
        at=timezone.now(),
        user=user,
        username=user.get_username() if user else "",
        session=session,
        action=action,
        study=study,
        study_instance_uid=uid,
        accession_number=study.accession_number if study is not None else "",
        patient_id=patient.patient_id if patient else "",
        patient_name=patient.name if patient else "",
        address=client_address(request),
    )
    AccessRecord.objects.bulk_create([record], ignore_conflicts=True)


def forget() -> None:
    """Empty this process's memory of what it recorded (tests whose database was emptied)."""
    with _memo_lock:
        _memo.clear()


def prune(*, older_than_days: int) -> int:
    """Delete access records older than ``older_than_days``; returns how many."""
    cutoff = timezone.now() - dt.timedelta(days=older_than_days)
    deleted, _ = AccessRecord.objects.filter(at__lt=cutoff).delete()
    return deleted
