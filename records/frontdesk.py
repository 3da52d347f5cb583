"""The front desk's pages for a patient: demographics, history, correction with a preview, undo, merge.

Thin views over records/demographics.py: a form is checked by the domain function
itself (the same checks as the API), the preview is ``preview_patient`` (``preview_merge``
for a merge), the save ``correct_patient`` (``merge_patients``). For the Front desk and
Administrators. The patients are found on the patient list (records/views.patient_list,
records/search.py's ``patient_search``: pinyin, initials, characters, patient ID).
"""

from django import forms
from django.contrib import messages
from django.shortcuts import get_object_or_404, redirect
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy
from django.views.decorators.http import require_POST

from imaging.charsets import _join_groups, _person_name_groups
from records import access, demographics, pinyin, roles
from records.models import Correction, Patient, RewriteJob, Study
from records.names import display_name
from records.views import _page

CORRECTORS = roles.CORRECTOR_ROLES
SEX_CHOICES = [("", "-"), ("M", gettext_lazy("male")), ("F", gettext_lazy("female")), ("O", gettext_lazy("other"))]


def _components(group: str) -> list[str]:
    return ([*group.split("^"), ""])[:2] if group else ["", ""]


class PatientCorrectionForm(forms.Form):
    """The fields of a patient as the front desk types them; ``changes()`` is what correct_patient takes."""

    patient_id = forms.CharField(label=gettext_lazy("Patient ID"), max_length=64)
    issuer = forms.CharField(label=gettext_lazy("Issuer"), max_length=64, required=False)
    alphabetic_family = forms.CharField(label=gettext_lazy("Family name (pinyin)"), required=False)
    alphabetic_given = forms.CharField(label=gettext_lazy("Given name (pinyin)"), required=False)
    ideographic_family = forms.CharField(label=gettext_lazy("Family name (characters)"), required=False)
    ideographic_given = forms.CharField(label=gettext_lazy("Given name (characters)"), required=False)
    birth_date = forms.CharField(
        label=gettext_lazy("Birth date"), required=False, widget=forms.DateInput(attrs={"type": "date"})
    )
    sex = forms.ChoiceField(label=gettext_lazy("Sex"), choices=SEX_CHOICES, required=False)
    reason = forms.CharField(label=gettext_lazy("Reason"), max_length=500, required=False)

    @classmethod
    def initial_for(cls, patient: Patient) -> dict:
        alpha, ideo = _components(patient.name_alphabetic), _components(patient.name_ideographic)
        return {
            "patient_id": patient.patient_id,
            "issuer": patient.issuer,
            "alphabetic_family": alpha[0],
            "alphabetic_given": alpha[1],
            "ideographic_family": ideo[0],
            "ideographic_given": ideo[1],
            "birth_date": patient.birth_date.isoformat() if patient.birth_date else "",
            "sex": patient.sex,
        }

    def changes(self, patient: Patient) -> dict:
        """The fields that differ from ``patient``; a name keeps its other components and its phonetic group."""
        data = self.cleaned_data
        changes = {}
        for field in ("patient_id", "issuer", "sex"):
            if data[field].strip() != getattr(patient, field):
                changes[field] = data[field]
        current = patient.birth_date.isoformat() if patient.birth_date else ""
        if data["birth_date"].strip() != current:
            changes["birth_date"] = data["birth_date"]
        alphabetic, ideographic, phonetic = _person_name_groups(patient.name)
        groups = []
        for group, family, given in (
            (alphabetic, data["alphabetic_family"], data["alphabetic_given"]),
            (ideographic, data["ideographic_family"], data["ideographic_given"]),
        ):
            rest = group.split("^")[2:] if group else []
            groups.append(_join_components([family.strip(), given.strip(), *rest]))
        name = _join_groups([*groups, phonetic])
        if name != patient.name:
            changes["name"] = name
        return changes


def _with_pinyin(data) -> PatientCorrectionForm:
    """The form as typed, its pinyin fields filled from the characters (the "Fill in the pinyin" button).

    Server-side rather than a script: the pinyin is records/pinyin.py's (surname
    readings, phrases), there is no endpoint or static file to keep in step, and it
    works in any browser. A whole name typed as the family name (张伟) is split at its
    surname (欧阳 is one).
    """
    data = data.copy()
    family, given = data.get("ideographic_family", "").strip(), data.get("ideographic_given", "").strip()
    if pinyin.has_han(family) and not given:
        family, given = pinyin.split_surname(family)
    data["ideographic_family"], data["ideographic_given"] = family, given
    problem = None
    if not pinyin.has_han(family + given):
        problem = _("Type the name in characters first.")
    else:
        alphabetic = pinyin.romanise(family, given)
        if not "".join(alphabetic).isascii():
            problem = _("Some characters have no pinyin reading; type the pinyin yourself.")
        else:
            data["alphabetic_family"], data["alphabetic_given"] = alphabetic
    form = PatientCorrectionForm(data)
    form.is_valid()
    if problem:
        form.add_error("ideographic_family", problem)
    return form


class StudyCorrectionForm(forms.Form):
    accession_number = forms.CharField(label=gettext_lazy("Accession number"), required=False)
    description = forms.CharField(label=gettext_lazy("Description"), required=False)
    referring_physician = forms.CharField(
        label=gettext_lazy("Referring physician"),
        required=False,
        help_text=gettext_lazy("As DICOM writes it, e.g. Li^Na=李^娜"),
    )
    reason = forms.CharField(label=gettext_lazy("Reason"), max_length=500, required=False)

    FIELDS = ("accession_number", "description", "referring_physician")

    @classmethod
    def initial_for(cls, study: Study) -> dict:
        return {field: getattr(study, field) for field in cls.FIELDS}

    def changes(self, study: Study) -> dict:
        return {f: self.cleaned_data[f] for f in self.FIELDS if self.cleaned_data[f].strip() != getattr(study, f)}


def _join_components(components: list[str]) -> str:
    while components and not components[-1]:
        components.pop()
    return "^".join(components)


def _patient_or_404(pk: int) -> Patient:
    return get_object_or_404(Patient, pk=pk)


def _field_errors(form: forms.Form, exc: demographics.CorrectionError) -> None:
    """Show a domain error beside its field (the name's on the name fields)."""
    fields = {"name": "alphabetic_family", "changes": None, "patient": None, "duplicate": "duplicate_patient_id"}
    field = fields.get(exc.field, exc.field)
    form.add_error(field if field in form.fields else None, exc.message)


def _preview_or_save(request, form: forms.Form, *, preview, save) -> tuple[bool, dict | None]:
    """The steps of every front-desk form once it is valid: (saved, preview).

    POST "save" calls ``save()``; anything else ``preview()``, which returns what the
    page shows. A CorrectionError from either is shown beside its field (nothing saved,
    no preview), so the form comes back with what was typed.
    """
    try:
        if request.POST.get("action") == "save":
            save()
            return True, None
        return False, preview()
    except demographics.CorrectionError as exc:
        _field_errors(form, exc)
        return False, None


def _correction_preview(preview: dict, reason) -> dict:
    """A correction's preview, refused when nothing would change or no reason is given (as the save would be)."""
    if not preview["after"]:
        raise demographics.InvalidCorrection("changes", _("nothing would change"))
    demographics.check_reason(reason)
    return preview


@roles.role_required(*CORRECTORS)
def patient_page(request, pk: int):
    patient = _patient_or_404(pk)
    history = list(demographics.history(patient).prefetch_related("rewrite_jobs"))
    for record in history:
        record.rows = [
            (FIELD_LABELS.get(field, field), record.before.get(field), after)
            for field, after in record.after.items()
            if record.before.get(field) != after
        ]
    jobs = RewriteJob.objects.filter(correction__in=history).order_by("-created_at")
    context = {
        "patient": patient,
        "patient_name": display_name(patient),
        "other_ids": demographics.other_ids(patient),
        "studies": patient.studies.order_by("-study_date", "-id"),
        "history": history,
        "jobs": jobs,
        "field_labels": FIELD_LABELS,
        "merge_form": MergeForm(),
    }
    return _page(request, "records/frontdesk/patient.html", context)


FIELD_LABELS = {
    "patient_id": gettext_lazy("Patient ID"),
    "issuer": gettext_lazy("Issuer"),
    "name": gettext_lazy("Name"),
    "birth_date": gettext_lazy("Birth date"),
    "sex": gettext_lazy("Sex"),
    "accession_number": gettext_lazy("Accession number"),
    "description": gettext_lazy("Description"),
    "referring_physician": gettext_lazy("Referring physician"),
}


def _correction_page(request, form: forms.Form, *, row, patient: Patient, title: str, preview, correct):
    """The correction form's steps for ``row`` (a patient or a study).

    POST "preview" (and Enter): what would change and how much; POST "save": the
    correction, then the patient's page; otherwise ``form`` as it is (the GET, the
    pinyin filled in). ``preview(changes)`` and ``correct(changes=, reason=, user=,
    address=)`` are the domain functions bound to ``row``.
    """
    shown = None
    if request.method == "POST" and request.POST.get("action") != "fill_pinyin" and form.is_valid():
        changes, reason = form.changes(row), form.cleaned_data["reason"]
        saved, shown = _preview_or_save(
            request,
            form,
            preview=lambda: _correction_preview(preview(changes), reason),
            save=lambda: correct(
                changes=changes, reason=reason, user=request.user, address=access.client_address(request)
            ),
        )
        if saved:
            messages.success(request, _("The correction is saved; the files are being rewritten."))
            return redirect("records:frontdesk-patient", pk=patient.pk)
    rows = [(FIELD_LABELS[f], shown["before"][f], shown["after"][f]) for f in shown["after"]] if shown else []
    context = {"patient": patient, "patient_name": title, "form": form, "preview": shown, "rows": rows}
    return _page(request, "records/frontdesk/correct.html", context)


@roles.role_required(*CORRECTORS)
def patient_correct(request, pk: int):
    """The patient's ID, issuer, name (pinyin filled from the characters on request), birth date and sex."""
    patient = _patient_or_404(pk)
    if request.method != "POST":
        form = PatientCorrectionForm(initial=PatientCorrectionForm.initial_for(patient))
    elif request.POST.get("action") == "fill_pinyin":
        form = _with_pinyin(request.POST)
    else:
        form = PatientCorrectionForm(request.POST)
    return _correction_page(
        request,
        form,
        row=patient,
        patient=patient,
        title=display_name(patient),
        preview=lambda changes: demographics.preview_patient(patient=patient, changes=changes),
        correct=lambda **kwargs: demographics.correct_patient(patient=patient, **kwargs),
    )


@roles.role_required(*CORRECTORS)
def study_correct(request, pk: int):
    """The same steps for a study's accession number, description and referring physician."""
    study = get_object_or_404(Study.objects.select_related("patient"), pk=pk)
    if request.method == "POST":
        form = StudyCorrectionForm(request.POST)
    else:
        form = StudyCorrectionForm(initial=StudyCorrectionForm.initial_for(study))
    return _correction_page(
        request,
        form,
        row=study,
        patient=study.patient,
        title=f"{display_name(study.patient)}, {study.study_date or ''} {study.description}".strip(),
        preview=lambda changes: demographics.preview_study(study=study, changes=changes),
        correct=lambda **kwargs: demographics.correct_study(study=study, **kwargs),
    )


@require_POST
@roles.role_required(*CORRECTORS)
def correction_undo(request, pk: int):
    record = get_object_or_404(Correction, pk=pk)
    try:
        undo = demographics.undo(
            record=record, user=request.user, address=access.client_address(request), reason=request.POST.get("reason")
        )
    except demographics.CorrectionError as exc:
        messages.error(request, f"{FIELD_LABELS.get(exc.field, exc.field)}: {exc.message}")
        undo = None
    if undo is not None:
        messages.success(request, _("Undone; the files are being rewritten."))
        return redirect("records:frontdesk-patient", pk=undo.patient_id)
    return (
        redirect("records:frontdesk-patient", pk=record.patient_id)
        if record.patient_id
        else redirect("records:patient-list")
    )


class MergeForm(forms.Form):
    duplicate_patient_id = forms.CharField(label=gettext_lazy("Patient ID of the duplicate"), max_length=64)
    duplicate_issuer = forms.CharField(label=gettext_lazy("Issuer"), max_length=64, required=False)
    reason = forms.CharField(label=gettext_lazy("Reason"), max_length=500, required=False)
    # The patient the preview showed: the confirmation merges that one or none.
    duplicate = forms.IntegerField(required=False, widget=forms.HiddenInput)

    def find_duplicate(self, *, confirming: bool) -> Patient:
        """The patient with the typed ID; when confirming, only if it is the one the preview showed."""
        data = self.cleaned_data
        duplicates = Patient.objects.filter(
            patient_id=data["duplicate_patient_id"].strip(), issuer=data["duplicate_issuer"].strip()
        )
        if confirming and data["duplicate"] is not None:
            duplicates = duplicates.filter(pk=data["duplicate"])
        duplicate = duplicates.first()
        if duplicate is None:
            raise demographics.InvalidCorrection("duplicate", _("No patient has this patient ID."))
        return duplicate


@require_POST
@roles.role_required(*CORRECTORS)
def patient_merge(request, pk: int):
    """Merge the patient with the ID typed in (the duplicate) into this one, who stays.

    POST "preview": who disappears, the studies and images that move, the IDs that
    become other IDs, and the confirmation; POST "save": the merge.
    """
    keep = _patient_or_404(pk)
    form = MergeForm(request.POST)
    preview = None
    if form.is_valid():
        reason = form.cleaned_data["reason"]

        def merge_preview() -> dict:
            duplicate = form.find_duplicate(confirming=False)
            preview = demographics.preview_merge(keep=keep, duplicate=duplicate)
            demographics.check_reason(reason)
            return {**preview, "duplicate_pk": duplicate.pk, "duplicate_name": display_name(duplicate)}

        saved, preview = _preview_or_save(
            request,
            form,
            preview=merge_preview,
            save=lambda: demographics.merge_patients(
                keep=keep,
                duplicate=form.find_duplicate(confirming=True),
                reason=reason,
                user=request.user,
                address=access.client_address(request),
            ),
        )
        if saved:
            messages.success(request, _("Merged; the files are being rewritten."))
            return redirect("records:frontdesk-patient", pk=keep.pk)
        if preview:
            # The confirmation carries the previewed patient: see MergeForm.duplicate.
            form = MergeForm(initial={**form.cleaned_data, "duplicate": preview["duplicate_pk"]})
    context = {
        "patient": keep,
        "patient_name": display_name(keep),
        "form": form,
        "preview": preview,
        "rows": _merge_rows(preview) if preview else [],
    }
    return _page(request, "records/frontdesk/merge.html", context)


def _merge_rows(preview: dict) -> list[tuple]:
    """(label, the duplicate's value, the value of the patient who stays) for the preview's table."""
    shown = {"sex": Patient.SEX_LABELS}
    return [
        (FIELD_LABELS[f], *(shown.get(f, {}).get(p[f], p[f]) for p in (preview["duplicate"], preview["keep"])))
        for f in demographics.PATIENT_FIELDS
    ]
