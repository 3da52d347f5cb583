from django.urls import path

from records import frontdesk, views

app_name = "records"

urlpatterns = [
    path("studies/", views.study_list, name="study-list"),
    # Matched loosely, checked in the view (storage.is_valid_uid): a malformed UID is a 404.
    path("studies/<str:study_uid>/", views.study_page, name="study"),
    path("studies/<str:study_uid>/download.zip", views.study_download, name="study-download"),
    path("patients/", views.patient_list, name="patient-list"),
    # The front desk's pages of a patient (records/frontdesk.py).
    path("patients/<int:pk>/", frontdesk.patient_page, name="frontdesk-patient"),
    path("patients/<int:pk>/correct/", frontdesk.patient_correct, name="frontdesk-correct"),
    path("patients/<int:pk>/merge/", frontdesk.patient_merge, name="frontdesk-merge"),
    path("patients/studies/<int:pk>/correct/", frontdesk.study_correct, name="frontdesk-study-correct"),
    path("corrections/<int:pk>/undo/", frontdesk.correction_undo, name="frontdesk-undo"),
]
