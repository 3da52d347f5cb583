"""The REST API of corrections: thin shells over records/demographics.py (issue 11).

- ``PATCH /api/patients/{id}/`` and ``PATCH /api/studies/{id}/``: the changed fields,
  named as the models name them, and a ``reason``;
- ``POST /api/patients/{id}/merge/``: ``{"duplicate": <id>, "reason": "..."}``;
- ``GET /api/patients/{id}/history/``: the patient's audit records, newest first;
- ``GET /api/corrections/`` (``?patient=<id>``), ``POST /api/corrections/{id}/undo/``;
- ``GET /api/rewrite-jobs/`` (``?correction=<id>``): the rewrite of the files, with progress.

Writing is for the front desk and administrators; reading, for every role. A refused
change answers 400 (an invalid value, a missing reason) or 409 (a merge into itself,
a patient ID another patient has), ``{"<field>": ["why"]}``, and changes nothing.
"""

from rest_framework import serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.response import Response

from records import access, demographics
from records.api_permissions import AnyRole, allow_roles
from records.models import Correction, Patient, RewriteJob
from records.roles import ADMINISTRATOR, FRONT_DESK

FrontDeskAndAdministrators = allow_roles(FRONT_DESK, ADMINISTRATOR)


class RewriteJobSerializer(serializers.ModelSerializer):
    class Meta:
        model = RewriteJob
        fields = ["id", "correction", "state", "total", "done", "failed", "created_at", "started_at", "finished_at"]


class CorrectionSerializer(serializers.ModelSerializer):
    patient_id = serializers.CharField(source="dicom_patient_id", read_only=True)
    issuer = serializers.CharField(source="dicom_issuer", read_only=True)
    patient = serializers.PrimaryKeyRelatedField(read_only=True)
    undone_by = serializers.SerializerMethodField()
    rewrite_jobs = RewriteJobSerializer(many=True, read_only=True)

    class Meta:
        model = Correction
        fields = [
            "id",
            "at",
            "username",
            "address",
            "kind",
            "reason",
            "patient",
            "study",
            "patient_id",
            "issuer",
            "before",
            "after",
            "studies_affected",
            "images_affected",
            "undoes",
            "undone_by",
            "rewrite_jobs",
        ]

    def get_undone_by(self, record) -> int | None:
        undo = getattr(record, "undone_by", None)
        return undo.pk if undo is not None else None


def _refused(exc: demographics.CorrectionError) -> Response:
    code = status.HTTP_409_CONFLICT if exc.status == 409 else status.HTTP_400_BAD_REQUEST
    return Response({exc.field: [exc.message]}, status=code)


def _changes(request) -> tuple[dict, object]:
    data = dict(request.data)
    reason = data.pop("reason", None)
    return data, reason


def _record(record: Correction, request) -> dict:
    record = Correction.objects.prefetch_related("rewrite_jobs").select_related("undone_by").get(pk=record.pk)
    return CorrectionSerializer(record, context={"request": request}).data


class PatientCorrections:
    """PATCH, merge and history on /api/patients/ (mixed into records.api.PatientViewSet)."""

    def get_permissions(self):
        if self.action in ("partial_update", "merge"):
            return [FrontDeskAndAdministrators()]
        return super().get_permissions()

    def partial_update(self, request, *args, **kwargs):
        """Correct the patient: ``patient_id``, ``issuer``, ``name``, ``birth_date``, ``sex``, and a ``reason``."""
        patient = self.get_object()
        changes, reason = _changes(request)
        try:
            record = demographics.correct_patient(
                patient=patient,
                changes=changes,
                reason=reason,
                user=request.user,
                address=access.client_address(request),
            )
        except demographics.CorrectionError as exc:
            return _refused(exc)
        patient = self.get_queryset().get(pk=patient.pk)
        return Response({"patient": self.get_serializer(patient).data, "correction": _record(record, request)})

    @action(detail=True, methods=["post"])
    def merge(self, request, pk=None):
        """Merge ``duplicate`` (a patient's id) into this patient, who stays."""
        keep = self.get_object()
        try:
            duplicate = Patient.objects.get(pk=int(request.data.get("duplicate")))
        except (TypeError, ValueError, Patient.DoesNotExist):
            return Response({"duplicate": ["no such patient"]}, status=status.HTTP_400_BAD_REQUEST)
        try:
            record = demographics.merge_patients(
                keep=keep,
                duplicate=duplicate,
                reason=request.data.get("reason"),
                user=request.user,
                address=access.client_address(request),
            )
        except demographics.CorrectionError as exc:
            return _refused(exc)
        keep = self.get_queryset().get(pk=keep.pk)
        return Response({"patient": self.get_serializer(keep).data, "correction": _record(record, request)})

    @action(detail=True, methods=["get"])
    def history(self, request, pk=None):
        """The patient's corrections, merges and undos, newest first."""
        records = demographics.history(self.get_object()).prefetch_related("rewrite_jobs")
        return Response(CorrectionSerializer(records, many=True, context={"request": request}).data)


class StudyCorrections:
    """PATCH on /api/studies/ (mixed into records.api.StudyViewSet)."""

    def get_permissions(self):
        if self.action == "partial_update":
            return [FrontDeskAndAdministrators()]
        return super().get_permissions()

    def partial_update(self, request, *args, **kwargs):
        """Correct the study: ``accession_number``, ``description``, ``referring_physician``, and a ``reason``."""
        study = self.get_object()
        changes, reason = _changes(request)
        try:
            record = demographics.correct_study(
                study=study, changes=changes, reason=reason, user=request.user, address=access.client_address(request)
            )
        except demographics.CorrectionError as exc:
            return _refused(exc)
        study = self.get_queryset().get(pk=study.pk)
        return Response({"study": self.get_serializer(study).data, "correction": _record(record, request)})


class CorrectionViewSet(viewsets.ReadOnlyModelViewSet):
    """Audit records of corrections, merges and undos; ``POST .../undo/`` with a ``reason`` undoes one."""

    serializer_class = CorrectionSerializer
    queryset = Correction.objects.select_related("undone_by").prefetch_related("rewrite_jobs").order_by("-at", "-id")
    filterset_fields = ["patient", "study", "kind"]

    def get_permissions(self):
        if self.action == "undo":
            return [FrontDeskAndAdministrators()]
        return [AnyRole()]

    @action(detail=True, methods=["post"])
    def undo(self, request, pk=None):
        try:
            record = demographics.undo(
                record=self.get_object(),
                user=request.user,
                address=access.client_address(request),
                reason=request.data.get("reason"),
            )
        except demographics.CorrectionError as exc:
            return _refused(exc)
        return Response(_record(record, request), status=status.HTTP_201_CREATED)


class RewriteJobViewSet(viewsets.ReadOnlyModelViewSet):
    """The rewrite of the stored files after a correction: state and progress (files done of total)."""

    permission_classes = [AnyRole]
    serializer_class = RewriteJobSerializer
    queryset = RewriteJob.objects.order_by("-created_at", "-id")
    filterset_fields = ["correction", "state"]
