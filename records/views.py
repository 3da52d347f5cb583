"""The doctors' study list, a study's page and ZIP, the front desk's patient search; "/" and the admin's login gate.

Each view checks the role itself (records/roles.py), menus only mirror it.
"""

import functools

from django.conf import settings
from django.contrib.auth.views import redirect_to_login
from django.core.paginator import Paginator
from django.http import Http404, StreamingHttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.http import content_disposition_header, url_has_allowed_host_and_scheme
from django.utils.translation import gettext_lazy as _

from records import access, download, roles, search, studies
from records.forms import PatientSearchForm, StudySearchForm
from records.names import display_name

PAGE_SIZE = 50


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


# --- Search (records/search.py does it; these pages present it) ---------------------------------


def _search_page(request, form_class, search_function, paginator=Paginator):
    form = form_class(request.GET or None)
    if form.is_bound and not form.is_valid():
        results = search_function().none()
    else:
        results = search_function(**(form.cleaned_data if form.is_bound else {}))
    page = paginator(results, PAGE_SIZE).get_page(request.GET.get("page"))
    query = request.GET.copy()
    query.pop("page", None)
    return page, form, query


def _sort_links(query, form) -> dict[str, dict]:
    """Each sortable column's link (the search kept, page 1) and its direction now, for the headers."""
    data = form.cleaned_data if form.is_bound and form.is_valid() else {}
    current = data.get("sort") or "date"
    current_order = data.get("order") or search.DEFAULT_ORDER[current]
    links = {}
    for sort in search.STUDY_SORTS:
        params = query.copy()
        params["sort"] = sort
        if sort == current:
            params["order"] = "asc" if current_order == "desc" else "desc"
        else:
            params["order"] = search.DEFAULT_ORDER[sort]
        links[sort] = {"url": "?" + params.urlencode(), "order": current_order if sort == current else ""}
    return links


@roles.role_required(roles.DOCTOR)
def study_list(request):
    paginator = functools.partial(search.NarrowPaginator, details=search.with_list_details)
    page, form, query = _search_page(request, StudySearchForm, search.study_search, paginator)
    for study in page:
        study.patient_name = display_name(study.patient)
    context = {
        "page": page,
        "form": form,
        "query": query.urlencode(),
        "sorts": _sort_links(query, form),
        "ohif_enabled": settings.OHIF_ENABLED,
    }
    return _page(request, "records/study_list.html", context)


@roles.role_required(*roles.CORRECTOR_ROLES)
def patient_list(request):
    """Find a patient (records/search.py: pinyin, initials, characters, patient ID) and open their page."""
    page, form, query = _search_page(request, PatientSearchForm, search.patient_search)
    query = query.urlencode()
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
