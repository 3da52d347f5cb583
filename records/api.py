"""The REST API of the records: the index (patients -> studies -> series -> instances) and what the indexer recorded.

Thin shells: the searching is the study list's own (records/views.py), the rows are
the index's. Everything here is read only; corrections go through their own
domain functions. Who reads what: every role reads patients, studies and series
(the front desk included: demographics and what was done), doctors and
administrators read instances (image data), administrators read indexing failures
and instance conflicts.
"""

import django_filters
from django.db.models import Count, F
from django.urls import reverse
from django.utils.translation import gettext as _
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers, viewsets
from rest_framework.response import Response

from records import access
from records.api_corrections import PatientCorrections, StudyCorrections
from records.api_permissions import AdministratorsOnly, AnyRole, DoctorsAndAdministrators
from records.models import IndexingFailure, Instance, InstanceConflict, Patient, Series, Study

# The study list's matching, so that the API finds what the pages find ("zhang wei" and "zw"
# find 张^伟=Zhang^Wei; "CT" finds CT\SR but not RTCT).
from records.search import modality_q, name_q


def _list_url(request, name: str, **query) -> str:
    url = reverse(f"api:{name}-list") + "?" + "&".join(f"{k}={v}" for k, v in query.items())
    return request.build_absolute_uri(url) if request is not None else url


# --- Filters ------------------------------------------------------------------------------------


class NameFilter(django_filters.CharFilter):
    """The patient's name as on the study list: any group, full pinyin, initials (records/search.py)."""

    def __init__(self, prefix: str = "", **kwargs):
        self.prefix = prefix
        kwargs.setdefault(
            "help_text", "The patient's name, in any group, full pinyin or initials (Zhang Wei, zhangwei, zw, 张伟)."
        )
        super().__init__(**kwargs)

    def filter(self, qs, value):
        return qs.filter(name_q(value, prefix=self.prefix)) if value and value.strip() else qs


class PatientFilter(django_filters.FilterSet):
    name = NameFilter()

    class Meta:
        model = Patient
        fields = ["patient_id", "issuer", "name", "birth_date", "sex"]


class DateRange(django_filters.DateFromToRangeFilter):
    """``study_date_after`` and ``study_date_before`` (YYYY-MM-DD, both included)."""

    def filter(self, qs, value):
        if value and value.start and value.stop and value.start > value.stop:
            raise serializers.ValidationError({self.field_name: [_("The start date is after the end date.")]})
        return super().filter(qs, value)


class StudyFilter(django_filters.FilterSet):
    patient = django_filters.NumberFilter(field_name="patient_id", help_text="The patient's id in this API.")
    patient_id = django_filters.CharFilter(field_name="patient__patient_id", help_text="The DICOM Patient ID.")
    name = NameFilter(prefix="patient__")
    study_date = DateRange()
    modality = django_filters.CharFilter(method="filter_modality", help_text="One of ModalitiesInStudy, e.g. CT.")

    class Meta:
        model = Study
        fields = ["patient", "patient_id", "name", "study_instance_uid", "accession_number", "study_id", "study_date"]

    def filter_modality(self, queryset, name, value):
        return queryset.filter(modality_q(value.strip().upper())) if value.strip() else queryset


class SeriesFilter(django_filters.FilterSet):
    study = django_filters.NumberFilter(field_name="study_id", help_text="The study's id in this API.")
    study_instance_uid = django_filters.CharFilter(field_name="study__study_instance_uid")

    class Meta:
        model = Series
        fields = ["study", "study_instance_uid", "series_instance_uid", "modality", "series_number"]


class InstanceFilter(django_filters.FilterSet):
    series = django_filters.NumberFilter(field_name="series_id", help_text="The series' id in this API.")
    series_instance_uid = django_filters.CharFilter(field_name="series__series_instance_uid")
    study_instance_uid = django_filters.CharFilter(field_name="series__study__study_instance_uid")

    class Meta:
        model = Instance
        fields = ["series", "series_instance_uid", "study_instance_uid", "sop_instance_uid", "sop_class_uid"]


# --- Serializers --------------------------------------------------------------------------------


class PatientSerializer(serializers.HyperlinkedModelSerializer):
    url = serializers.HyperlinkedIdentityField(view_name="api:patient-detail")
    number_of_studies = serializers.IntegerField(read_only=True)
    studies = serializers.SerializerMethodField()

    class Meta:
        model = Patient
        fields = [
            "url",
            "id",
            "patient_id",
            "issuer",
            "name",
            "name_alphabetic",
            "name_ideographic",
            "name_phonetic",
            "birth_date",
            "sex",
            "number_of_studies",
            "studies",
            "updated_at",
        ]

    @extend_schema_field(OpenApiTypes.URI)
    def get_studies(self, patient) -> str:
        return _list_url(self.context.get("request"), "study", patient=patient.pk)


class PatientBriefSerializer(serializers.HyperlinkedModelSerializer):
    url = serializers.HyperlinkedIdentityField(view_name="api:patient-detail")

    class Meta:
        model = Patient
        fields = ["url", "id", "patient_id", "issuer", "name"]


class BackslashList(serializers.Field):
    """A DICOM multi-value string ("CT\\SR") as a list (["CT", "SR"])."""

    def to_representation(self, value):
        return [v for v in value.split("\\") if v]


@extend_schema_field({"type": "array", "items": {"type": "string"}})
class ModalityList(BackslashList):
    pass


class StudySerializer(serializers.HyperlinkedModelSerializer):
    url = serializers.HyperlinkedIdentityField(view_name="api:study-detail")
    patient = PatientBriefSerializer(read_only=True)
    modalities_in_study = ModalityList(read_only=True)
    series = serializers.SerializerMethodField()

    class Meta:
        model = Study
        fields = [
            "url",
            "id",
            "study_instance_uid",
            "patient",
            "study_id",
            "accession_number",
            "study_date",
            "study_time",
            "description",
            "referring_physician",
            "modalities_in_study",
            "number_of_series",
            "number_of_instances",
            "series",
            "updated_at",
        ]

    @extend_schema_field(OpenApiTypes.URI)
    def get_series(self, study) -> str:
        return _list_url(self.context.get("request"), "series", study=study.pk)


class SeriesSerializer(serializers.HyperlinkedModelSerializer):
    url = serializers.HyperlinkedIdentityField(view_name="api:series-detail")
    study = serializers.HyperlinkedRelatedField(view_name="api:study-detail", read_only=True)
    study_instance_uid = serializers.CharField(source="study.study_instance_uid", read_only=True)
    instances = serializers.SerializerMethodField()

    class Meta:
        model = Series
        fields = [
            "url",
            "id",
            "series_instance_uid",
            "study",
            "study_instance_uid",
            "modality",
            "series_number",
            "description",
            "body_part",
            "number_of_instances",
            "instances",
            "updated_at",
        ]

    @extend_schema_field(OpenApiTypes.URI)
    def get_instances(self, series) -> str:
        return _list_url(self.context.get("request"), "instance", series=series.pk)


class InstanceSerializer(serializers.HyperlinkedModelSerializer):
    url = serializers.HyperlinkedIdentityField(view_name="api:instance-detail")
    series = serializers.HyperlinkedRelatedField(view_name="api:series-detail", read_only=True)
    series_instance_uid = serializers.CharField(source="series.series_instance_uid", read_only=True)
    study_instance_uid = serializers.CharField(source="series.study.study_instance_uid", read_only=True)

    class Meta:
        model = Instance
        # Not file_path: where a file lives on disk is the server's business.
        fields = [
            "url",
            "id",
            "sop_instance_uid",
            "series",
            "series_instance_uid",
            "study_instance_uid",
            "sop_class_uid",
            "instance_number",
            "transfer_syntax_uid",
            "rows",
            "columns",
            "number_of_frames",
            "specific_character_set",
            "file_size",
            "checksum",
            "received_at",
            "source_ae",
        ]


class IndexingFailureSerializer(serializers.ModelSerializer):
    class Meta:
        model = IndexingFailure
        fields = [
            "id",
            "file_path",
            "sop_instance_uid",
            "source_ae",
            "category",
            "indexed",
            "reason",
            "first_failed_at",
            "last_failed_at",
            "attempts",
        ]


class InstanceConflictSerializer(serializers.ModelSerializer):
    class Meta:
        model = InstanceConflict
        fields = [
            "id",
            "detected_at",
            "sop_instance_uid",
            "source_ae",
            "stored_study_uid",
            "incoming_study_uid",
            "stored_patient_id",
            "incoming_patient_id",
            "resolution",
            "detail",
        ]


# --- Viewsets -----------------------------------------------------------------------------------


class PatientViewSet(PatientCorrections, viewsets.ReadOnlyModelViewSet):
    """Patients, with their number of studies."""

    permission_classes = [AnyRole]
    serializer_class = PatientSerializer
    filterset_class = PatientFilter
    queryset = Patient.objects.annotate(number_of_studies=Count("studies")).order_by(
        "name_alphabetic", "patient_id", "id"
    )


class StudyViewSet(StudyCorrections, viewsets.ReadOnlyModelViewSet):
    """Studies, newest first, each with its patient."""

    permission_classes = [AnyRole]
    serializer_class = StudySerializer
    filterset_class = StudyFilter
    queryset = Study.objects.select_related("patient").order_by(
        F("study_date").desc(nulls_last=True), F("study_time").desc(nulls_last=True), "-id"
    )


class SeriesViewSet(viewsets.ReadOnlyModelViewSet):
    """Series: what was acquired (modality, description), not the images themselves."""

    permission_classes = [AnyRole]
    serializer_class = SeriesSerializer
    filterset_class = SeriesFilter
    queryset = Series.objects.select_related("study").order_by("study_id", "series_number", "id")


class InstanceViewSet(viewsets.ReadOnlyModelViewSet):
    """Instances (images): doctors and administrators, not the front desk."""

    permission_classes = [DoctorsAndAdministrators]
    serializer_class = InstanceSerializer
    filterset_class = InstanceFilter
    queryset = Instance.objects.select_related("series__study").order_by("series_id", "instance_number", "id")

    def retrieve(self, request, *args, **kwargs):
        """One instance, and the access record of reading it (lists are index searches, not reads)."""
        instance = self.get_object()
        access.record_access(request, study=instance.series.study, action=access.Action.API_INSTANCE)
        return Response(self.get_serializer(instance).data)


class IndexingFailureViewSet(viewsets.ReadOnlyModelViewSet):
    """Stored files the indexer could not index fully, and why (as in the admin)."""

    permission_classes = [AdministratorsOnly]
    serializer_class = IndexingFailureSerializer
    filterset_fields = ["category", "indexed", "source_ae", "sop_instance_uid"]
    queryset = IndexingFailure.objects.order_by("-last_failed_at", "-id")


class InstanceConflictViewSet(viewsets.ReadOnlyModelViewSet):
    """Instances that arrived with a SOP Instance UID held under another study or patient."""

    permission_classes = [AdministratorsOnly]
    serializer_class = InstanceConflictSerializer
    filterset_fields = ["resolution", "source_ae", "sop_instance_uid"]
    queryset = InstanceConflict.objects.order_by("-detected_at", "-id")
