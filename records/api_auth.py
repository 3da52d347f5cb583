"""How programs sign in to /api/ and /dicomweb/: HTTP Basic that speaks of lockouts, and is fast.

DRF's Basic authentication already calls ``authenticate(request=..., ...)``, so
django-axes (first in AUTHENTICATION_BACKENDS) counts wrong passwords sent with
Basic and refuses a locked-out user name and address, right password included,
exactly as on the login page. What DRF does not do is say so: its answer would be
"Invalid username/password.", and a script would go on retrying a right password.
This class answers 429, as the login page does (records.views.locked_out).

Basic sends the password with every request, and checking it is Django's PBKDF2 with
a million iterations: 0.6-0.9 s of CPU per request on this machine, which made every
DICOMweb line dozens of times slower than Orthanc's. So a password that passed is
remembered for API_BASIC_AUTH_CACHE_SECONDS (see ``VerifiedPasswords``); a
remembered one still costs the user row and axes' lockout check (two indexed
queries), never the hash.
"""

import hashlib
import hmac
import threading
import time
from collections import OrderedDict

from axes.handlers.proxy import AxesProxyHandler
from axes.models import AccessAttempt
from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import connection
from django.utils import timezone
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import authentication, exceptions
from rest_framework.authtoken.models import Token


class LockedOut(exceptions.Throttled):
    default_code = "locked_out"


class VerifiedPasswords:
    """User name + password pairs that passed the password check, for a while, in this process.

    Keyed by an HMAC of the pair (SECRET_KEY-derived key): the memory of a worker holds
    no password, and nothing here helps a guesser, since only a pair that already
    passed is found. Each entry keeps the user's password hash as it was then, so a
    changed password (or a changed hash) misses at once; bounded in size, oldest first
    out.
    """

    MAX_ENTRIES = 1024

    def __init__(self):
        self._entries: OrderedDict[bytes, tuple[int, str, float]] = OrderedDict()
        self._lock = threading.Lock()
        self._key = hashlib.sha256(b"imaging.api_auth.basic:" + settings.SECRET_KEY.encode()).digest()

    def _digest(self, userid: str, password: str) -> bytes:
        return hmac.new(self._key, f"{userid}\0{password}".encode(), hashlib.sha256).digest()

    def get(self, userid: str, password: str) -> tuple[int, str] | None:
        """(user pk, password hash when verified), or None."""
        digest = self._digest(userid, password)
        with self._lock:
            entry = self._entries.get(digest)
            if entry is None:
                return None
            if entry[2] < time.monotonic():
                del self._entries[digest]
                return None
            return entry[0], entry[1]

    def put(self, userid: str, password: str, user) -> None:
        digest = self._digest(userid, password)
        expires = time.monotonic() + settings.API_BASIC_AUTH_CACHE_SECONDS
        with self._lock:
            self._entries[digest] = (user.pk, user.password, expires)
            self._entries.move_to_end(digest)
            while len(self._entries) > self.MAX_ENTRIES:
                self._entries.popitem(last=False)

    def forget(self, userid: str, password: str) -> None:
        with self._lock:
            self._entries.pop(self._digest(userid, password), None)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


_verified: VerifiedPasswords | None = None


def verified_passwords() -> VerifiedPasswords:
    global _verified
    if _verified is None:
        _verified = VerifiedPasswords()
    return _verified


class BasicAuthentication(authentication.BasicAuthentication):
    www_authenticate_realm = "imaging"

    def authenticate_credentials(self, userid, password, request=None):
        if settings.API_BASIC_AUTH_CACHE_SECONDS > 0:
            user = self._remembered(userid, password, request)
            if user is not None:
                return user, None
        try:
            user, auth = super().authenticate_credentials(userid, password, request)
        except exceptions.AuthenticationFailed:
            # Set by axes' backend on the request it was given (DRF's, which we hold).
            if getattr(request, "axes_locked_out", False):
                raise LockedOut(
                    detail=(
                        f"Too many failed sign-ins: after {settings.LOGIN_FAILURE_LIMIT} wrong passwords this "
                        f"user name is refused from this address for {settings.LOGIN_COOLOFF_MINUTES} minutes, "
                        "right password included. An administrator can unlock it."
                    )
                ) from None
            raise
        if settings.API_BASIC_AUTH_CACHE_SECONDS > 0:
            verified_passwords().put(userid, password, user)
        return user, auth

    @staticmethod
    def _remembered(userid, password, request):
        """The user of a pair that passed lately, if it is still the same password, active and not locked out."""
        cache = verified_passwords()
        hit = cache.get(userid, password)
        if hit is None:
            return None
        pk, password_hash = hit
        user = _user("u.{pk} = %s", [pk])
        if user is None or not user.is_active or user.password != password_hash or user.get_username() != userid:
            cache.forget(userid, password)
            return None
        if request is not None and _locked_out(request, userid):
            # Locked out since: the full path refuses it and says so (429).
            cache.forget(userid, password)
            return None
        return user


class TokenAuthentication(authentication.TokenAuthentication):
    """DRF's tokens (an administrator issues them in the admin), looked up in one plain query.

    DRF's ``select_related("user").get(key=...)`` cost 0.9 ms of ORM work per request,
    the same again as the short QIDO-RS search it guards.
    """

    def authenticate_credentials(self, key):
        tokens = connection.ops.quote_name(Token._meta.db_table)
        user_fk = connection.ops.quote_name(Token._meta.get_field("user").column)
        key_column = connection.ops.quote_name("key")
        where = f"u.{{pk}} = (SELECT t.{user_fk} FROM {tokens} t WHERE t.{key_column} = %s)"  # noqa: S608 - names from _meta
        user = _user(where, [key])
        if user is None:
            raise exceptions.AuthenticationFailed("Invalid token.")
        if not user.is_active:
            raise exceptions.AuthenticationFailed("User inactive or deleted.")
        return user, Token(key=key, user=user)


def _user(where: str, params: list):
    """The one user row ``where`` selects (alias ``u``, ``{pk}`` its primary key), or None; no ORM compilation."""
    model = get_user_model()
    quote = connection.ops.quote_name
    fields = model._meta.concrete_fields
    columns = ", ".join(f"u.{quote(f.column)}" for f in fields)
    where = where.replace("{pk}", quote(model._meta.pk.column))
    with connection.cursor() as cursor:
        sql = f"SELECT {columns} FROM {quote(model._meta.db_table)} u WHERE {where}"  # noqa: S608 - names from _meta
        cursor.execute(sql, params)
        rows = cursor.fetchmany(2)
    if len(rows) != 1:
        return None
    values = [
        converter(value) if converter else value for value, converter in zip(rows[0], _converters(fields), strict=True)
    ]
    return model.from_db(connection.alias, [f.attname for f in fields], values)


def _converters(fields) -> list:
    """What the ORM would apply to each column read (SQLite gives datetimes as text)."""
    converters = []
    for field in fields:
        column = field.cached_col
        chain = connection.ops.get_db_converters(column) + field.get_db_converters(connection)

        def convert(value, chain=chain, column=column):
            for step in chain:
                value = step(value, column, connection)
            return value

        converters.append(convert if chain else None)
    return converters


def _locked_out(request, userid: str) -> bool:
    return _failed_lately(userid) and not AxesProxyHandler.is_allowed(request, {"username": userid})


def _failed_lately(userid: str) -> bool:
    """Whether any failed sign-in of this user name is recent enough to count towards a lockout.

    The common case (none) in one indexed query; only then is axes' own check
    (2-3 ms: its request parsing and aggregate) asked whether the pair is locked out.
    """
    table = connection.ops.quote_name(AccessAttempt._meta.db_table)
    cutoff = timezone.now() - settings.AXES_COOLOFF_TIME
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT 1 FROM {table} WHERE username = %s AND attempt_time >= %s LIMIT 1",  # noqa: S608 - from _meta
            [userid, connection.ops.adapt_datetimefield_value(cutoff)],
        )
        return cursor.fetchone() is not None


class BasicScheme(OpenApiAuthenticationExtension):
    """The OpenAPI security scheme of the class above (drf-spectacular knows DRF's own only)."""

    target_class = BasicAuthentication
    name = "basicAuth"

    def get_security_definition(self, auto_schema):
        return {"type": "http", "scheme": "basic"}
