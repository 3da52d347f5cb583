"""State of the image pipeline itself (not of the images): leases between workers."""

from django.db import models
from django.utils.translation import gettext_lazy as _


class Lease(models.Model):
    """A named lock held by one process until it releases it or ``expires_at`` passes.

    In the database, so that processes on several hosts sharing the database and
    the storage exclude each other (a file lock would not hold across hosts), and
    with an expiry, so that a holder that crashed never blocks the next run.
    """

    name = models.CharField(_("lease name"), max_length=64, unique=True)
    holder = models.CharField(_("holder"), max_length=200, blank=True, default="")
    expires_at = models.DateTimeField(_("expires"))

    class Meta:
        verbose_name = _("lease")
        verbose_name_plural = _("leases")

    def __str__(self) -> str:
        return f"{self.name}: {self.holder or 'free'} until {self.expires_at}"
