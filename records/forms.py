"""The search forms of the study list and the front desk's patient list (GET parameters people bookmark)."""

from django import forms
from django.utils.translation import gettext_lazy as _
from django.utils.translation import pgettext_lazy

from records import search


class DateInput(forms.DateInput):
    input_type = "date"


class StudySearchForm(forms.Form):
    name = forms.CharField(label=_("Patient name"), required=False, max_length=200)
    patient_id = forms.CharField(label=_("Patient ID"), required=False, max_length=64)
    accession_number = forms.CharField(label=_("Accession number"), required=False, max_length=64)
    modality = forms.CharField(label=_("Modality"), required=False, max_length=16)
    period = forms.ChoiceField(
        label=_("Date"),
        required=False,
        choices=[
            ("", pgettext_lazy("study date", "Any date")),
            ("today", _("Today")),
            ("yesterday", _("Yesterday")),
            ("week", _("Last 7 days")),
        ],
        help_text=_("Overrides From and To."),
    )
    date_from = forms.DateField(label=_("From"), required=False, widget=DateInput)
    date_to = forms.DateField(label=_("To"), required=False, widget=DateInput)
    # Set by the column headers' links, not shown in the form.
    sort = forms.ChoiceField(required=False, choices=[(s, s) for s in search.STUDY_SORTS], widget=forms.HiddenInput)
    order = forms.ChoiceField(required=False, choices=[("asc", "asc"), ("desc", "desc")], widget=forms.HiddenInput)

    def clean_modality(self):
        return self.cleaned_data["modality"].strip().upper()

    def clean_sort(self):
        return self.cleaned_data["sort"] or "date"

    def clean(self):
        cleaned = super().clean()
        start, end = cleaned.get("date_from"), cleaned.get("date_to")
        if start and end and start > end and not cleaned.get("period"):
            raise forms.ValidationError(_("The start date is after the end date."))
        return cleaned


class PatientSearchForm(forms.Form):
    name = forms.CharField(label=_("Patient name"), required=False, max_length=200)
    patient_id = forms.CharField(label=_("Patient ID"), required=False, max_length=64)
    birth_date = forms.DateField(label=_("Birth date"), required=False, widget=DateInput)
