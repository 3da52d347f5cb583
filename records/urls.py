from django.urls import path

from records import views

app_name = "records"

urlpatterns = [
    path("studies/", views.study_list, name="study-list"),
    path("patients/", views.patient_list, name="patient-list"),
]
