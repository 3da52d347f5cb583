from django.http import FileResponse, Http404, JsonResponse
from django.shortcuts import get_object_or_404, render
from django.urls import reverse
from django.views.decorators.http import require_safe

from imaging import health as checks
from imaging import storage, viewer
from records import access, roles
from records.models import Series


def health(request):
    """200 when every check passes, 503 naming the failing ones; public (see imaging/health.py).

    Never cached: a monitor must see now, not what a proxy kept.
    """
    results = checks.run_checks()
    failing = [name for name, result in results.items() if not result.ok]
    body = {
        "status": "fail" if failing else "ok",
        "failing": failing,
        "reason": "; ".join(f"{name}: {results[name].error}" for name in failing),
        "checks": {name: result.as_json() for name, result in results.items()},
    }
    response = JsonResponse(body, status=503 if failing else 200)
    response["Cache-Control"] = "no-store"
    return response


# Administrators too: the admin's series list shows the thumbnails.
@roles.role_required(roles.DOCTOR, roles.ADMINISTRATOR)
def series_thumbnail(request, series_id: int):
    series = get_object_or_404(Series, pk=series_id)
    if not series.thumbnail:
        raise Http404("no thumbnail yet")
    path = storage.absolute(series.thumbnail)
    if not path.exists():
        raise Http404("no thumbnail yet")
    return FileResponse(path.open("rb"), content_type="image/png")


# The viewer page runs our scripts and nothing else; it reads /dicomweb/ (same origin).
VIEWER_CSP = (
    "default-src 'self'; script-src 'self'; connect-src 'self'; img-src 'self' blob: data:; "
    "style-src 'self'; object-src 'none'; base-uri 'self'; form-action 'self'; frame-ancestors 'none'"
)


@require_safe
@roles.role_required(roles.DOCTOR, roles.ADMINISTRATOR)
def viewer_page(request):
    """/viewer/?study=<uid>[&series=<uid>] or ?accession=<number>: the built-in viewer, as a RIS launches it."""
    study = viewer.study_to_view(
        study_uid=request.GET.get("study", "").strip(), accession=request.GET.get("accession", "").strip()
    )
    access.record_access(request, study=study, action=access.Action.VIEWER)
    series = viewer.series_to_open(study, request.GET.get("series", "").strip())
    config = {
        "dicomweb": reverse("dicomweb:search-studies").removesuffix("studies"),
        "study": study.study_instance_uid,
        "series": series,
        "instances": viewer.instance_list(series),
        "tagNames": reverse("viewer-tag-names"),
        "studyList": reverse("records:study-list"),
        "presets": {"CT": [{"key": k, "center": c, "width": w} for k, c, w in viewer.CT_PRESETS]},
        "strings": viewer.strings(),
    }
    response = render(request, "imaging/viewer.html", {"config": config, "study": study})
    response["Content-Security-Policy"] = VIEWER_CSP
    return response


@require_safe
@roles.role_required(roles.DOCTOR, roles.ADMINISTRATOR)
def viewer_tag_names(request):
    """The tag browser's dictionary (tag -> keyword), fetched once when it is first opened."""
    response = JsonResponse(viewer.tag_names())
    response["Cache-Control"] = "private, max-age=86400"
    return response
