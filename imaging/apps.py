import axes.apps
from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class ImagingConfig(AppConfig):
    name = "imaging"
    verbose_name = _("Imaging")


class AxesConfig(axes.apps.AppConfig):
    """django-axes under a name that says what it is, in the admin's language (axes gives it none)."""

    default = False  # imaging's own config stays ImagingConfig; settings name this one
    verbose_name = _("Sign-in lockouts")
