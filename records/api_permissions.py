"""DRF permissions: an API view names the roles it serves, or nobody gets in.

``settings.REST_FRAMEWORK["DEFAULT_PERMISSION_CLASSES"]`` is ``DenyAll``, so a view
that names no permission is closed. A view opens itself to its roles with
``permission_classes = [allow_roles(DOCTOR)]`` (or one of the classes below); the
role test is the same one the HTML pages use (``records.roles.user_roles``).
"""

from rest_framework.permissions import BasePermission

from records import roles


class DenyAll(BasePermission):
    """The default: refuses everyone, superusers included, until the view says whom it serves."""

    message = "This endpoint names no role it serves."

    def has_permission(self, request, view) -> bool:
        return False


class RolePermission(BasePermission):
    """Lets in signed-in users with one of ``allowed`` roles (a superuser counts as every role)."""

    allowed: tuple[str, ...] = ()
    message = "Your role does not give access to this endpoint."

    def has_permission(self, request, view) -> bool:
        return bool(roles.user_roles(request.user) & set(self.allowed))


def allow_roles(*allowed: str) -> type[RolePermission]:
    """A permission class for the users with any of ``allowed`` roles."""
    unknown = set(allowed) - set(roles.ROLES)
    if unknown or not allowed:
        raise ValueError(f"unknown roles: {sorted(unknown)}")
    name = "Allow" + "Or".join(role.title().replace(" ", "") for role in allowed)
    return type(name, (RolePermission,), {"allowed": tuple(allowed)})


# The role sets the API and DICOMweb views serve.
DoctorsOnly = allow_roles(roles.DOCTOR)
FrontDeskOnly = allow_roles(roles.FRONT_DESK)
AdministratorsOnly = allow_roles(roles.ADMINISTRATOR)
# Viewing images: doctors, and administrators (the admin shows thumbnails and studies).
DoctorsAndAdministrators = allow_roles(roles.DOCTOR, roles.ADMINISTRATOR)
# Reading demographics: doctors and the front desk.
DoctorsAndFrontDesk = allow_roles(roles.DOCTOR, roles.FRONT_DESK)
# Reading patient and study data: every role (the front desk sees no images, see below).
AnyRole = allow_roles(roles.DOCTOR, roles.FRONT_DESK, roles.ADMINISTRATOR)
