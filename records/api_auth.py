"""How programs sign in to /api/ and /dicomweb/: HTTP Basic that speaks of lockouts.

DRF's Basic authentication already calls ``authenticate(request=..., ...)``, so
django-axes (first in AUTHENTICATION_BACKENDS) counts wrong passwords sent with
Basic and refuses a locked-out user name and address, right password included,
exactly as on the login page. What DRF does not do is say so: its answer would be
"Invalid username/password.", and a script would go on retrying a right password.
This class answers 429, as the login page does (records.views.locked_out).
"""

from django.conf import settings
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import authentication, exceptions


class LockedOut(exceptions.Throttled):
    default_code = "locked_out"


class BasicAuthentication(authentication.BasicAuthentication):
    www_authenticate_realm = "imaging"

    def authenticate_credentials(self, userid, password, request=None):
        try:
            return super().authenticate_credentials(userid, password, request)
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


class BasicScheme(OpenApiAuthenticationExtension):
    """The OpenAPI security scheme of the class above (drf-spectacular knows DRF's own only)."""

    target_class = BasicAuthentication
    name = "basicAuth"

    def get_security_definition(self, auto_schema):
        return {"type": "http", "scheme": "basic"}
