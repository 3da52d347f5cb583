from django.http import FileResponse, Http404, JsonResponse
from django.shortcuts import get_object_or_404

from imaging import storage
from records import roles
from records.models import Series


def health(request):
    return JsonResponse({"status": "ok"})


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
