from django.urls import path

from records import views

app_name = "records"

urlpatterns = [
    path("studies/", views.study_list, name="study-list"),
    # Matched loosely, checked in the view (storage.is_valid_uid): a malformed UID is a 404.
    path("studies/<str:study_uid>/", views.study_page, name="study"),
    path("studies/<str:study_uid>/download.zip", views.study_download, name="study-download"),
    path("patients/", views.patient_list, name="patient-list"),
]
