"""What every DICOMweb view shares: roles, UID checks, refusals with their reason, lookups.

Refusals are DRF exceptions, rendered as JSON ``{"detail": reason}``: a malformed
UID 400 (checked with ``storage.is_valid_uid`` before any query or path), an
unknown resource 404, an Accept we cannot serve 406, anonymous 401/403 (as DRF's
first authentication class says), a role without access 403. Files are found
through the index (``Instance.file_path``) and ``storage.absolute``, never from
anything in the request.
"""

import logging

from django.urls import reverse
from rest_framework.exceptions import NotAcceptable, NotFound, ParseError
from rest_framework.negotiation import BaseContentNegotiation
from rest_framework.renderers import JSONRenderer
from rest_framework.views import APIView

from imaging import storage
from records import access, roles
from records.access import Action  # noqa: F401 - the views name their action as base.Action
from records.api_permissions import DoctorsAndAdministrators, allow_roles
from records.models import Instance

log = logging.getLogger(__name__)

# Searching studies (patient and study data, no images): the front desk too.
StudySearchRoles = allow_roles(roles.DOCTOR, roles.FRONT_DESK, roles.ADMINISTRATOR)
# Images, pixel metadata, series and instance searches.
ImageRoles = DoctorsAndAdministrators

DICOM_JSON = "application/dicom+json"
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"


class BadRequest(ParseError):
    default_detail = "Bad request."


class _ChooseInView(BaseContentNegotiation):
    """DICOMweb media types are negotiated by each view (multipart ``type`` and
    ``transfer-syntax`` parameters, which DRF's negotiation does not read); DRF's
    renderer only writes refusals, as JSON."""

    def select_renderer(self, request, renderers, format_suffix=None):
        return renderers[0], renderers[0].media_type


class DicomWebView(APIView):
    """A DICOMweb endpoint: DRF authentication and role permission, the view answers itself."""

    content_negotiation_class = _ChooseInView
    renderer_classes = [JSONRenderer]
    permission_classes = [ImageRoles]


def check_uids(**uids: str | None) -> None:
    """400 for any UID of the path that is not a valid DICOM UID, before it reaches a query or a path."""
    for name, uid in uids.items():
        if uid is not None and not storage.is_valid_uid(uid):
            what = name.replace("_", " ")
            raise BadRequest(f"{what} {uid[:80]!r} is not a valid DICOM UID (PS3.5 9.1)")


def root_url(request) -> str:
    """The DICOMweb root as the client sees it (Host, and X-Forwarded-Proto behind a TLS proxy)."""
    root = getattr(request, "_dicomweb_root", None)
    if root is None:  # once per request: a series' metadata names it for every instance
        root = request.build_absolute_uri(reverse("dicomweb:search-studies")).removesuffix("studies")
        request._dicomweb_root = root
    return root


def study_url(request, study: str) -> str:
    return f"{root_url(request)}studies/{study}"


def series_url(request, study: str, series: str) -> str:
    return f"{study_url(request, study)}/series/{series}"


def instance_url(request, study: str, series: str, sop: str) -> str:
    return f"{series_url(request, study, series)}/instances/{sop}"


def instances(study: str, series: str | None = None, sop: str | None = None, *, fields=()) -> list[Instance]:
    """The indexed instances a WADO-RS path names, in series then instance order; 404 when none.

    One query: the UIDs of the levels above come along (select_related).
    """
    check_uids(study_instance_uid=study, series_instance_uid=series, sop_instance_uid=sop)
    if sop is not None:
        # By its unique UID, the levels above checked on the row: the lookup frames and
        # rendered images make for every image shown, kept cheap.
        qs = Instance.objects.select_related("series__study").filter(sop_instance_uid=sop)
        if fields:
            qs = qs.only(*fields, "series__series_instance_uid", "series__study__study_instance_uid")
        found = [i for i in qs if i.series.series_instance_uid == series and i.series.study.study_instance_uid == study]
        if not found:
            raise NotFound(f"no instance {sop} in series {series} of study {study}")
        return found
    qs = Instance.objects.filter(series__study__study_instance_uid=study)
    if series is not None:
        qs = qs.filter(series__series_instance_uid=series)
    qs = qs.select_related("series__study").order_by("series__series_number", "series_id", "instance_number", "id")
    if fields:
        qs = qs.only(*fields, "series__series_instance_uid", "series__study__study_instance_uid")
    found = list(qs)
    if not found:
        if series is not None:
            raise NotFound(f"no series {series} in study {study}")
        raise NotFound(f"no study {study}")
    return found


def path_of(instance: Instance):
    """The stored file of an indexed instance (its relative path comes from the index only)."""
    return storage.absolute(instance.file_path)


def stored_file(instance: Instance):
    """``path_of``, 404 with the reason when the file is gone (removed behind the index's back)."""
    path = path_of(instance)
    if not path.is_file():
        log.warning("DICOMweb: %s is indexed but its file %s is missing", instance.sop_instance_uid, path)
        raise NotFound(f"the stored file of instance {instance.sop_instance_uid} is missing (reindex needed)")
    return path


def not_acceptable(accept: str | None, offered: str) -> NotAcceptable:
    return NotAcceptable(f"cannot serve Accept: {accept or '(none)'}; this resource is offered as {offered}")


def record(request, study: str, action: str) -> None:
    """The access record of a read of a patient's images (records/access.py): once per session and study,
    no query on the frames that follow. Called once the lookup found what the request names."""
    access.record_access(request, study=study, action=action)
