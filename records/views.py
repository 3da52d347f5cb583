"""The doctors' study list, a study's page and ZIP, the front desk's patient search; "/" and the admin's login gate.

Each view checks the role itself (records/roles.py), menus only mirror it.
"""

from django import forms
from django.conf import settings
from django.contrib.auth.views import redirect_to_login
from django.core.paginator import Paginator
from django.db.models import Count, F, Prefetch, Q, Value
from django.db.models.functions import Replace
from django.http import Http404, StreamingHttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.http import content_disposition_header, url_has_allowed_host_and_scheme
from django.utils.translation import gettext_lazy as _

from records import access, download, roles, studies
from records.models import Patient, Series, Study
from records.names import display_name

PAGE_SIZE = 50

NAME_FIELDS = ("name_alphabetic", "name_ideographic", "name_phonetic")


def _page(request, template: str, context: dict, status: int = 200):
    return render(request, template, {"role_links": roles.role_links(request.user), **context}, status=status)


def home(request):
    """Signed-in users go to their role's home page; others to the login page."""
    if not request.user.is_authenticated:
        return redirect(roles.LOGIN_URL)
    url = roles.home_url(request.user)
    if url is None:
        return roles.forbidden(request)
    return redirect(url)


def locked_out(request, response=None, credentials=None):
    """What django-axes answers while a user name is locked out from this address (AXES_LOCKOUT_CALLABLE).

    429 Too Many Requests, with the page saying why and for how long, instead of the
    login form's "did not match", which would have people retype a right password.
    """
    context = {"failure_limit": settings.LOGIN_FAILURE_LIMIT, "cooloff_minutes": settings.LOGIN_COOLOFF_MINUTES}
    return _page(request, "registration/locked_out.html", context, status=429)


def admin_login(request):
    """Replaces the admin's own login page (see imaging/urls.py).

    Django's admin login form refuses users without ``is_staff``; we sign in on
    our login page and let the Administrator group decide (roles.can_use_admin).
    """
    next_url = request.GET.get("next", "")
    if not url_has_allowed_host_and_scheme(next_url, {request.get_host()}, require_https=request.is_secure()):
        next_url = ""
    if not request.user.is_authenticated:
        return redirect_to_login(next_url or "/admin/", roles.LOGIN_URL)
    if not roles.can_use_admin(request):
        return roles.forbidden(request, (roles.ADMINISTRATOR,))
    return redirect(next_url or "admin:index")


# --- Search --------------------------------------------------------------------------------------


def _name_matches(queryset, text: str, prefix: str = ""):
    """Each word of ``text`` is in some name group (case-insensitive, "^" ignored).

    So "zhang wei", "Zhang^Wei" and "张伟" all find 张^伟=Zhang^Wei.
    """
    annotations = {f"_search_{field}": Replace(F(f"{prefix}{field}"), Value("^"), Value("")) for field in NAME_FIELDS}
    queryset = queryset.annotate(**annotations)
    for word in text.replace("^", " ").split():
        queryset = queryset.filter(Q(*[Q(**{f"{name}__icontains": word}) for name in annotations], _connector=Q.OR))
    return queryset


def _modality_matches(modality: str) -> Q:
    """One modality among the backslash-separated ModalitiesInStudy ("CT" finds "CT\\SR", not "RTCT")."""
    return (
        Q(modalities_in_study=modality)
        | Q(modalities_in_study__startswith=f"{modality}\\")
        | Q(modalities_in_study__endswith=f"\\{modality}")
        | Q(modalities_in_study__contains=f"\\{modality}\\")
    )


class DateInput(forms.DateInput):
    input_type = "date"


class StudySearchForm(forms.Form):
    name = forms.CharField(label=_("Patient name"), required=False, max_length=200)
    patient_id = forms.CharField(label=_("Patient ID"), required=False, max_length=64)
    accession_number = forms.CharField(label=_("Accession number"), required=False, max_length=64)
    modality = forms.CharField(label=_("Modality"), required=False, max_length=16)
    date_from = forms.DateField(label=_("From"), required=False, widget=DateInput)
    date_to = forms.DateField(label=_("To"), required=False, widget=DateInput)

    def clean_modality(self):
        return self.cleaned_data["modality"].strip().upper()

    def clean(self):
        cleaned = super().clean()
        start, end = cleaned.get("date_from"), cleaned.get("date_to")
        if start and end and start > end:
            raise forms.ValidationError(_("The start date is after the end date."))
        return cleaned


class PatientSearchForm(forms.Form):
    name = forms.CharField(label=_("Patient name"), required=False, max_length=200)
    patient_id = forms.CharField(label=_("Patient ID"), required=False, max_length=64)
    birth_date = forms.DateField(label=_("Birth date"), required=False, widget=DateInput)


def study_search(*, name="", patient_id="", accession_number="", modality="", date_from=None, date_to=None):
    """Studies matching the criteria, newest first, with patient and thumbnailed series in 3 queries."""
    studies = Study.objects.select_related("patient").prefetch_related(
        Prefetch(
            "series",
            queryset=Series.objects.exclude(thumbnail="").only(
                "id", "study_id", "modality", "series_number", "description"
            ),
            to_attr="thumbnailed_series",
        )
    )
    if name.strip():
        studies = _name_matches(studies, name, prefix="patient__")
    if patient_id.strip():
        studies = studies.filter(patient__patient_id__icontains=patient_id.strip())
    if accession_number.strip():
        studies = studies.filter(accession_number__icontains=accession_number.strip())
    if modality:
        studies = studies.filter(_modality_matches(modality))
    if date_from:
        studies = studies.filter(study_date__gte=date_from)
    if date_to:
        studies = studies.filter(study_date__lte=date_to)
    return studies.order_by(F("study_date").desc(nulls_last=True), F("study_time").desc(nulls_last=True), "-id")


def patient_search(*, name="", patient_id="", birth_date=None):
    """Patients matching the criteria, with their number of studies."""
    patients = Patient.objects.annotate(study_count=Count("studies"))
    if name.strip():
        patients = _name_matches(patients, name)
    if patient_id.strip():
        patients = patients.filter(patient_id__icontains=patient_id.strip())
    if birth_date:
        patients = patients.filter(birth_date=birth_date)
    return patients.order_by("name_alphabetic", "patient_id", "id")


def _search_page(request, form_class, search):
    form = form_class(request.GET or None)
    if form.is_bound and not form.is_valid():
        results = search().none()
    else:
        results = search(**(form.cleaned_data if form.is_bound else {}))
    page = Paginator(results, PAGE_SIZE).get_page(request.GET.get("page"))
    query = request.GET.copy()
    query.pop("page", None)
    return page, form, query.urlencode()


@roles.role_required(roles.DOCTOR)
def study_list(request):
    page, form, query = _search_page(request, StudySearchForm, study_search)
    for study in page:
        study.patient_name = display_name(study.patient)
    context = {"page": page, "form": form, "query": query, "ohif_enabled": settings.OHIF_ENABLED}
    return _page(request, "records/study_list.html", context)


@roles.role_required(roles.FRONT_DESK)
def patient_list(request):
    page, form, query = _search_page(request, PatientSearchForm, patient_search)
    for patient in page:
        patient.display_name = display_name(patient)
    return _page(request, "records/patient_list.html", {"page": page, "form": form, "query": query})


# --- A study ------------------------------------------------------------------------------------


def _study_or_404(study_uid: str) -> studies.StudyDetail:
    detail = studies.study_detail(study_uid=study_uid)
    if detail is None:  # unknown, or not a UID at all: the same answer
        raise Http404("no such study")
    return detail


@roles.role_required(*roles.STUDY_ROLES)
def study_page(request, study_uid: str):
    """Header, series (thumbnails for those who see images), the patient's priors; recorded."""
    detail = _study_or_404(study_uid)
    access.record_access(request, study=detail.study, action=access.Action.STUDY_PAGE)
    context = {
        "study": detail.study,
        "patient": detail.patient,
        "patient_name": display_name(detail.patient),
        "name_groups": [
            (_("Alphabetic"), detail.patient.name_alphabetic),
            (_("Ideographic"), detail.patient.name_ideographic),
            (_("Phonetic"), detail.patient.name_phonetic),
        ],
        "age": studies.age_at(detail.patient.birth_date, detail.study.study_date),
        "series_list": detail.series,
        "priors": detail.priors,
        "images": roles.can_see_images(request.user),
        "viewer_url": reverse("viewer"),
        "ohif_enabled": settings.OHIF_ENABLED,
    }
    return _page(request, "records/study_page.html", context)


@roles.role_required(*roles.IMAGE_ROLES)
def study_download(request, study_uid: str):
    """The study as a ZIP of its stored DICOM files, streamed (records/download.py); recorded."""
    study = _study_or_404(study_uid).study
    entries = download.study_entries(study)
    if not entries:
        raise Http404("the study has no images")
    access.record_access(request, study=study, action=access.Action.DOWNLOAD)
    response = StreamingHttpResponse(download.zip_chunks(entries), content_type="application/zip")
    response["Content-Disposition"] = content_disposition_header(True, download.archive_name(study))
    response["Cache-Control"] = "no-store"  # a patient's images stay out of shared caches
    return response
