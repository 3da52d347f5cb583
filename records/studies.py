"""Reading one study for its page: the study with its patient, its series, the patient's other studies."""

import datetime as dt
from dataclasses import dataclass

from django.db.models import F
from django.utils.translation import ngettext

from imaging import storage
from records.models import Patient, Series, Study


@dataclass
class StudyDetail:
    study: Study
    patient: Patient
    series: list[Series]
    # The patient's other studies, newest first (undated ones last).
    priors: list[Study]


def study_detail(*, study_uid: str) -> StudyDetail | None:
    """The study ``study_uid`` names, its series in order and the patient's priors; None if unknown or malformed.

    Three queries whatever the number of series or priors.
    """
    if not storage.is_valid_uid(study_uid):
        return None
    study = Study.objects.select_related("patient").filter(study_instance_uid=study_uid).first()
    if study is None:
        return None
    series = list(study.series.order_by(F("series_number").asc(nulls_last=True), "id"))
    priors = list(
        Study.objects.filter(patient_id=study.patient_id)
        .exclude(pk=study.pk)
        .order_by(F("study_date").desc(nulls_last=True), F("study_time").desc(nulls_last=True), "-id")
    )
    return StudyDetail(study=study, patient=study.patient, series=series, priors=priors)


def age_at(birth_date: dt.date | None, on: dt.date | None) -> str:
    """The patient's age on the study date as people say it: "45 years", "8 months", "12 days"; "" if unknown."""
    if birth_date is None or on is None or on < birth_date:
        return ""
    years = on.year - birth_date.year - ((on.month, on.day) < (birth_date.month, birth_date.day))
    if years >= 2:
        return ngettext("%(count)d year", "%(count)d years", years) % {"count": years}
    months = (on.year - birth_date.year) * 12 + on.month - birth_date.month - (on.day < birth_date.day)
    if months >= 1:
        return ngettext("%(count)d month", "%(count)d months", months) % {"count": months}
    days = (on - birth_date).days
    return ngettext("%(count)d day", "%(count)d days", days) % {"count": days}
