from django.contrib.auth.decorators import login_required
from django.http import FileResponse, Http404, JsonResponse
from django.shortcuts import get_object_or_404

from imaging import storage
from records.models import Series


def health(request):
    return JsonResponse({"status": "ok"})


@login_required
def series_thumbnail(request, series_id: int):
    series = get_object_or_404(Series, pk=series_id)
    if not series.thumbnail:
        raise Http404("no thumbnail yet")
    path = storage.absolute(series.thumbnail)
    if not path.exists():
        raise Http404("no thumbnail yet")
    return FileResponse(path.open("rb"), content_type="image/png")
