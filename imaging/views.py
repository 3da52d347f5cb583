from django.http import FileResponse, Http404, JsonResponse
from django.shortcuts import get_object_or_404

from imaging import health as checks
from imaging import storage
from records import roles
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
