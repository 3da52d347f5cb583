"""/api/: the REST API's routes, its OpenAPI schema and its docs page (Swagger UI, served by us)."""

from django.contrib.auth.views import redirect_to_login
from django.urls import path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView
from rest_framework import exceptions, routers

from network import api as network_api
from records import api as records_api
from records import api_corrections, roles
from records.api_permissions import AnyRole

app_name = "api"


class ApiRoot(routers.APIRootView):
    """The archive's REST API: follow the links (what each role may open is said on each endpoint)."""

    permission_classes = [AnyRole]


class Router(routers.DefaultRouter):
    APIRootView = ApiRoot
    include_format_suffixes = False


router = Router()
router.register("patients", records_api.PatientViewSet, basename="patient")
router.register("studies", records_api.StudyViewSet, basename="study")
router.register("series", records_api.SeriesViewSet, basename="series")
router.register("instances", records_api.InstanceViewSet, basename="instance")
router.register("nodes", network_api.ModalityNodeViewSet, basename="modalitynode")
router.register("associations", network_api.AssociationLogViewSet, basename="associationlog")
router.register("send-jobs", network_api.SendJobViewSet, basename="sendjob")
router.register("corrections", api_corrections.CorrectionViewSet, basename="correction")
router.register("rewrite-jobs", api_corrections.RewriteJobViewSet, basename="rewritejob")
router.register("indexing-failures", records_api.IndexingFailureViewSet, basename="indexingfailure")
router.register("instance-conflicts", records_api.InstanceConflictViewSet, basename="instanceconflict")


class DocsView(SpectacularSwaggerView):
    """The docs page is for people at a browser: strangers go to the sign-in page and come back."""

    def handle_exception(self, exc):
        if isinstance(exc, exceptions.NotAuthenticated):
            return redirect_to_login(self.request.get_full_path(), roles.LOGIN_URL)
        return super().handle_exception(exc)


def only_api_endpoints(endpoints):
    """drf-spectacular preprocessing hook: the schema describes /api/ (DICOMweb is PS3.18's business)."""
    return [endpoint for endpoint in endpoints if endpoint[0].startswith("/api/")]


urlpatterns = [
    path("schema/", SpectacularAPIView.as_view(), name="schema"),
    path("docs/", DocsView.as_view(url_name="api:schema"), name="docs"),
    *router.urls,
]
