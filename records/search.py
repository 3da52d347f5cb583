"""THE search of patients and studies: the study list, the front desk, the API and QIDO-RS fuzzy matching.

A name matches as a substring, case-insensitive, of any name group, of the
full pinyin of a name written in characters, or of its initials: "张", "zhang
wei", "zhangwei", "Zhang Wei" and "zw" all find 张^伟. The keys are computed
when the name is written (records/pinyin.py, stored on Patient by
``Patient.save`` and the indexer), so a search is a few substring tests on one table.
"""

import datetime as dt

from django.core.paginator import Paginator
from django.db.models import Count, F, Lookup, OuterRef, Prefetch, Q, Subquery, Value
from django.db.models.functions import Coalesce
from django.utils import timezone

from records import pinyin
from records.models import Patient, Series, Study

KEY_FIELDS = ("name_search", "name_pinyin", "name_initials")

PERIODS = ("today", "yesterday", "week")

# Most patients a name or patient ID search hands to the study query as a list of keys (SQLite takes
# 32,766 parameters; a list this long is still quicker than a second scan).
MAX_PATIENT_KEYS = 2000

# Sort keys of the study list (?sort=) and the columns they order by. Every order ends
# with primary keys so that pages never overlap. Name and patient ID end with the
# patient's unique key, then the study's: a unique index on the patient's columns then
# gives the first page of 100,000 studies without sorting them (patient_name_pinyin_order,
# patient_id_issuer_unique); a study's date after them would need the sort.
STUDY_SORTS = {
    "date": ("study_date", "study_time", "pk"),
    "name": ("patient__name_pinyin", "patient__patient_id", "patient__issuer", "pk"),
    "patient_id": ("patient__patient_id", "patient__issuer", "pk"),
    "modality": ("modalities_in_study", "study_date", "pk"),
}
NULLABLE = {"study_date", "study_time"}
DEFAULT_ORDER = {"date": "desc", "name": "asc", "patient_id": "asc", "modality": "asc"}


class _Has(Lookup):
    """``needle`` is a substring of ``lhs``, case-sensitive: the keys and the typed text are normalised alike.

    instr()/strpos() rather than LIKE: nothing to escape, and on SQLite about
    twice as fast as a LIKE over 40,000 patients (LIKE folds case on every row).
    """

    lookup_name = "has_text"
    prepare_rhs = False

    def as_sql(self, compiler, connection):
        lhs, lhs_params = self.process_lhs(compiler, connection)
        rhs, rhs_params = self.process_rhs(compiler, connection)
        function = "strpos" if connection.vendor == "postgresql" else "instr"
        return f"{function}({lhs}, {rhs}) > 0", [*lhs_params, *rhs_params]


def _has(field: str, text: str) -> Q:
    return Q(_Has(F(field), Value(text)))


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
        q |= _has(f"{prefix}{field}", compact)
    words = [w for w in (pinyin.normalise(w) for w in text.replace("^", " ").split()) if w]
    if len(words) > 1:
        every = Q()
        for word in words:
            every &= _has(f"{prefix}name_search", word) | _has(f"{prefix}name_pinyin", word)
        q |= every
    return q


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


def study_order(sort: str = "date", order: str = "", *, by_index: bool = True) -> list:
    """ORDER BY of the study list for ``?sort=`` and ``?order=`` (asc, desc); unknown values sort by date.

    ``by_index=False`` for the studies of a few patients (a name or patient ID search):
    the sort columns are wrapped (COALESCE(x, x), the same order) so that no index
    serves the order. PostgreSQL would otherwise walk 65,000 studies of the newest-first
    index looking for the 50 of 31 patients (200 ms) instead of reading their 71
    studies by the foreign key and sorting them (under 1 ms).
    """
    if sort not in STUDY_SORTS:
        sort = "date"
    descending = (order or DEFAULT_ORDER[sort]) == "desc"
    columns = []
    for column in STUDY_SORTS[sort]:
        expression = F(column) if by_index or column == "pk" else Coalesce(F(column), F(column))
        if column in NULLABLE:  # studies without a date last, both ways
            columns.append(expression.desc(nulls_last=True) if descending else expression.asc(nulls_last=True))
        else:
            columns.append(expression.desc() if descending else expression.asc())
    return columns


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
    """Studies matching the criteria, sorted (a queryset of Study; ``with_list_details`` for a page).

    A search by name or patient ID runs its patient query now; the rest is lazy.
    """
    studies = Study.objects.all()
    if name.strip():
        studies = _of_patients(studies, name_q(name))
    if patient_id.strip():
        studies = _of_patients(studies, Q(patient_id__icontains=patient_id.strip()))
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
    by_index = not (name.strip() or patient_id.strip())
    return studies.order_by(*study_order(sort, order, by_index=by_index))


def _of_patients(studies, q: Q):
    """The studies of the patients matching ``q``.

    The patients first, by one scan of their table (or of the keys' index); then their
    studies by the foreign key's index, instead of testing the patient of each of
    100,000 studies. Their keys as a list, not a subquery, so that the page's count and
    its rows do not scan the patients again each (a subquery past MAX_PATIENT_KEYS,
    which a one-letter search can match).
    """
    patients = Patient.objects.filter(q).order_by().values_list("pk", flat=True)
    matched = list(patients[: MAX_PATIENT_KEYS + 1])
    if len(matched) <= MAX_PATIENT_KEYS:
        return studies.filter(patient_id__in=matched)
    return studies.filter(patient__in=Subquery(patients))


def with_list_details(studies):
    """What the study list shows of each study: its patient and its series with a thumbnail (2 queries)."""
    return studies.select_related("patient").prefetch_related(
        Prefetch(
            "series",
            queryset=Series.objects.exclude(thumbnail="").only(
                "id", "study_id", "modality", "series_number", "description"
            ),
            to_attr="thumbnailed_series",
        )
    )


class NarrowPaginator(Paginator):
    """Pages of a large sorted queryset: the page's keys by a narrow query, then its rows by key.

    Asked for every column of a study and its patient, SQLite's planner sorts all
    100,000 studies for ``ORDER BY patient.name_pinyin LIMIT 50``; asked for the
    studies' keys only, it reads them in order from an index (patient_name_pinyin_order)
    and stops at 50. So the page is ``WHERE id IN (SELECT id ... ORDER BY ... LIMIT 50)``,
    one query still, and ``details`` (``with_list_details``) adds what the page shows.
    """

    def __init__(self, object_list, per_page, *, details=lambda queryset: queryset, **kwargs):
        super().__init__(object_list, per_page, **kwargs)
        self.details = details

    def page(self, number):
        number = self.validate_number(number)
        bottom = (number - 1) * self.per_page
        top = bottom + self.per_page
        if top + self.orphans >= self.count:
            top = self.count
        keys = self.object_list.values("pk")[bottom:top]
        rows = self.object_list.model.objects.filter(pk__in=Subquery(keys))
        return self._get_page(self.details(rows.order_by(*self.object_list.query.order_by)), number, self)


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
    return patients.order_by("name_pinyin", "patient_id", "issuer")
