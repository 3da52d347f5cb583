"""THE search of patients and studies: the study list, the front desk, the API and QIDO-RS fuzzy matching.

A name matches as a substring, case-insensitive, of any name group, of the
full pinyin of a name written in characters, or of its initials: "张", "zhang
wei", "zhangwei", "Zhang Wei" and "zw" all find 张^伟. The keys are computed
when the name is written (records/pinyin.py, stored on Patient by
``Patient.save`` and the indexer), so a search is a few LIKEs on one table.
"""

import datetime as dt

from django.db.models import Count, F, OuterRef, Prefetch, Q, Subquery
from django.db.models.functions import Coalesce
from django.utils import timezone

from records import pinyin
from records.models import Patient, Series, Study

KEY_FIELDS = ("name_search", "name_pinyin", "name_initials")

PERIODS = ("today", "yesterday", "week")

# Sort keys of the study list (?sort=) and the columns they order by; every order
# ends with the primary key so that pages never overlap.
STUDY_SORTS = {
    "date": ("study_date", "study_time"),
    "name": ("patient__name_pinyin", "patient__name_search"),
    "patient_id": ("patient__patient_id",),
    "modality": ("modalities_in_study",),
}
# The natural direction of each sort when ?order= is not given: newest first, A to Z.
DEFAULT_ORDER = {"date": "desc", "name": "asc", "patient_id": "asc", "modality": "asc"}


def name_q(text: str, prefix: str = "") -> Q:
    """Patients (at ``prefix``, "patient__" from studies) whose name matches what a user typed.

    The typed text without spaces is a substring of a name group, of the full
    pinyin or of the initials; or, for several words, each word is in the
    name ("wei zhang" finds Zhang^Wei).
    """
    compact = pinyin.normalise(text)
    if not compact:
        return Q()
    q = Q()
    for field in KEY_FIELDS:
        q |= Q(**{f"{prefix}{field}__contains": compact})
    words = [w for w in (pinyin.normalise(w) for w in text.replace("^", " ").split()) if w]
    if len(words) > 1:
        every = Q()
        for word in words:
            every &= Q(**{f"{prefix}name_search__contains": word}) | Q(**{f"{prefix}name_pinyin__contains": word})
        q |= every
    return q


def patients_named(text: str):
    """The primary keys of patients whose name matches, as a subquery (one scan of the patient table)."""
    return Patient.objects.filter(name_q(text)).values("pk")


def modality_q(modality: str) -> Q:
    """One modality among the backslash-separated ModalitiesInStudy ("CT" finds "CT\\SR", not "RTCT")."""
    return (
        Q(modalities_in_study=modality)
        | Q(modalities_in_study__startswith=f"{modality}\\")
        | Q(modalities_in_study__endswith=f"\\{modality}")
        | Q(modalities_in_study__contains=f"\\{modality}\\")
    )


def period_dates(period: str, today: dt.date | None = None) -> tuple[dt.date | None, dt.date | None]:
    """The date range of a preset: today, yesterday, or the last 7 days (today included)."""
    today = today or timezone.localdate()
    if period == "today":
        return today, today
    if period == "yesterday":
        day = today - dt.timedelta(days=1)
        return day, day
    if period == "week":
        return today - dt.timedelta(days=6), today
    return None, None


def study_order(sort: str = "date", order: str = "") -> list:
    """ORDER BY of the study list for ``?sort=`` and ``?order=`` (asc, desc); unknown values sort by date."""
    if sort not in STUDY_SORTS:
        sort = "date"
    descending = (order or DEFAULT_ORDER[sort]) == "desc"
    columns = [F(c).desc(nulls_last=True) if descending else F(c).asc(nulls_last=True) for c in STUDY_SORTS[sort]]
    if sort != "date":
        columns += [F("study_date").desc(nulls_last=True), F("study_time").desc(nulls_last=True)]
    return [*columns, "-pk" if descending else "pk"]


def study_search(
    *,
    name: str = "",
    patient_id: str = "",
    accession_number: str = "",
    modality: str = "",
    date_from: dt.date | None = None,
    date_to: dt.date | None = None,
    period: str = "",
    sort: str = "date",
    order: str = "",
):
    """Studies matching the criteria, sorted, with patient and thumbnailed series (3 queries a page)."""
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
        # A subquery, not a join condition: the database scans the patients once,
        # then reaches their studies by the foreign key's index.
        studies = studies.filter(patient__in=Subquery(patients_named(name)))
    if patient_id.strip():
        studies = studies.filter(patient__patient_id__icontains=patient_id.strip())
    if accession_number.strip():
        studies = studies.filter(accession_number__icontains=accession_number.strip())
    if modality:
        studies = studies.filter(modality_q(modality))
    if period in PERIODS:
        date_from, date_to = period_dates(period)
    if date_from:
        studies = studies.filter(study_date__gte=date_from)
    if date_to:
        studies = studies.filter(study_date__lte=date_to)
    return studies.order_by(*study_order(sort, order))


def patient_search(*, name: str = "", patient_id: str = "", birth_date: dt.date | None = None):
    """Patients matching the criteria, by name (pinyin order), with their number of studies."""
    study_count = Study.objects.filter(patient=OuterRef("pk")).order_by().values("patient").annotate(n=Count("pk"))
    # Counted for the rows of the page only (a correlated subquery), not for every patient.
    patients = Patient.objects.annotate(study_count=Coalesce(Subquery(study_count.values("n")), 0))
    if name.strip():
        patients = patients.filter(name_q(name))
    if patient_id.strip():
        patients = patients.filter(patient_id__icontains=patient_id.strip())
    if birth_date:
        patients = patients.filter(birth_date=birth_date)
    return patients.order_by("name_pinyin", "name_alphabetic", "patient_id", "pk")
