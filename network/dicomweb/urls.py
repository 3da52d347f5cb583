"""/dicomweb/: QIDO-RS, WADO-RS, STOW-RS (PS3.18). UIDs are matched loosely here and checked in the views (400)."""

from django.urls import path

from network.dicomweb import frames, qido, rendered, stow, wado

app_name = "dicomweb"

STUDY = "studies/<str:study>"
SERIES = STUDY + "/series/<str:series>"
INSTANCE = SERIES + "/instances/<str:sop>"
FRAMES = INSTANCE + "/frames/<str:frames>"

urlpatterns = [
    # QIDO-RS (GET) and STOW-RS (POST)
    path("studies", stow.Studies.as_view(), name="search-studies"),
    path(STUDY + "/series", qido.SearchSeries.as_view(), name="search-study-series"),
    path("series", qido.SearchSeries.as_view(), name="search-series"),
    path(SERIES + "/instances", qido.SearchInstances.as_view(), name="search-series-instances"),
    path(STUDY + "/instances", qido.SearchInstances.as_view(), name="search-study-instances"),
    path("instances", qido.SearchInstances.as_view(), name="search-instances"),
    # WADO-RS
    path(STUDY, stow.Study.as_view(), name="study"),  # WADO-RS (GET) and STOW-RS (POST)
    path(SERIES, wado.Retrieve.as_view(), name="series"),
    path(INSTANCE, wado.Retrieve.as_view(), name="instance"),
    path(STUDY + "/metadata", wado.Metadata.as_view(), name="study-metadata"),
    path(SERIES + "/metadata", wado.Metadata.as_view(), name="series-metadata"),
    path(INSTANCE + "/metadata", wado.Metadata.as_view(), name="instance-metadata"),
    path(INSTANCE + "/bulkdata/<path:tagpath>", wado.BulkData.as_view(), name="bulkdata"),
    path(FRAMES, frames.Frames.as_view(), name="frames"),
    path(STUDY + "/rendered", rendered.Rendered.as_view(), name="study-rendered"),
    path(SERIES + "/rendered", rendered.Rendered.as_view(), name="series-rendered"),
    path(INSTANCE + "/rendered", rendered.Rendered.as_view(), name="instance-rendered"),
    path(FRAMES + "/rendered", rendered.Rendered.as_view(), name="frames-rendered"),
    path(STUDY + "/thumbnail", rendered.Thumbnail.as_view(), name="study-thumbnail"),
    path(SERIES + "/thumbnail", rendered.Thumbnail.as_view(), name="series-thumbnail"),
    path(INSTANCE + "/thumbnail", rendered.Thumbnail.as_view(), name="instance-thumbnail"),
    path(FRAMES + "/thumbnail", rendered.Thumbnail.as_view(), name="frames-thumbnail"),
]
