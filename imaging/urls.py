from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path, re_path
from django.utils.translation import gettext_lazy as _

from imaging import views
from imaging.ohif import views as ohif_views
from records import roles
from records import views as records_views

# The admin is for the Administrator group, whatever is_staff says: Django's check
# (is_staff) would mean remembering to tick "staff status" for every Administrator
# and untick it when the role goes, and would let a staff Doctor in. Its login
# form also refuses non-staff users, so the admin's login page sends people to
# ours (anonymous) or answers 403 (signed in, not an Administrator).
admin.site.has_permission = roles.can_use_admin
admin.site.login = records_views.admin_login
admin.site.site_header = _("Imaging administration")
admin.site.site_title = _("Imaging administration")

urlpatterns = [
    path("", records_views.home, name="home"),
    path(
        "accounts/login/",
        auth_views.LoginView.as_view(next_page="home", redirect_authenticated_user=True),
        name="login",
    ),
    path("accounts/logout/", auth_views.LogoutView.as_view(next_page="login"), name="logout"),
    path("i18n/", include("django.conf.urls.i18n")),
    path("admin/", admin.site.urls),
    path("", include("records.urls")),
    path("health", views.health, name="health"),
    path("viewer/", views.viewer_page, name="viewer"),
    path("viewer/tag-names.json", views.viewer_tag_names, name="viewer-tag-names"),
    path("series/<int:series_id>/thumbnail.png", views.series_thumbnail, name="series-thumbnail"),
    # The REST API, its schema and docs (imaging/api_urls.py).
    path("api/", include("imaging.api_urls")),
]

# DICOMweb (PS3.18): QIDO-RS, WADO-RS (network/dicomweb/).
urlpatterns += [path("dicomweb/", include("network.dicomweb.urls"))]

# The OHIF Viewer (imaging/ohif/): its files, app-config.js and, for its client-side routes, index.html.
urlpatterns += [re_path(r"^ohif/(?P<path>.*)$", ohif_views.serve, name="ohif")]
