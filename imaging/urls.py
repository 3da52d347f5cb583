from django.contrib import admin
from django.urls import path
from django.views.generic import RedirectView

from imaging import views

urlpatterns = [
    path("", RedirectView.as_view(url="/admin/", permanent=False)),
    path("admin/", admin.site.urls),
    path("health", views.health, name="health"),
    path("series/<int:series_id>/thumbnail.png", views.series_thumbnail, name="series-thumbnail"),
]
