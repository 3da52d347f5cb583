"""The REST API of the network app, for Administrators: nodes, the association log, send jobs.

Thin shells: a node is validated by the model's own ``full_clean`` (what the admin's
form runs), a send is ``network.tasks.send_job_create`` (what the admin's action
runs) and the worker's ``network.scu.send_study`` fills in the job's progress.
"""

import copy

import django_filters
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import transaction
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.response import Response

from network import tasks
from network.models import AssociationLog, ModalityNode, SendJob, normalize_ae_title, validate_ae_title
from records.api_permissions import AdministratorsOnly
from records.models import Study


class ModalityNodeSerializer(serializers.HyperlinkedModelSerializer):
    url = serializers.HyperlinkedIdentityField(view_name="api:modalitynode-detail")

    class Meta:
        model = ModalityNode
        fields = [
            "url",
            "id",
            "ae_title",
            "host",
            "port",
            "description",
            "location",
            "active",
            "may_store",
            "may_query",
            "may_retrieve",
            "fallback_charset",
            "created_at",
            "updated_at",
        ]

    def validate(self, attrs):
        """The admin's validation: the model's ``full_clean`` (AE title rules, normalised and unique; port range)."""
        node = copy.copy(self.instance) if self.instance is not None else ModalityNode()
        for name, value in attrs.items():
            setattr(node, name, value)
        try:
            node.full_clean()
        except DjangoValidationError as exc:
            raise serializers.ValidationError(exc.message_dict) from None
        return {**attrs, "ae_title": node.ae_title}


class AssociationLogSerializer(serializers.ModelSerializer):
    node = serializers.HyperlinkedRelatedField(view_name="api:modalitynode-detail", read_only=True)

    class Meta:
        model = AssociationLog
        fields = [
            "id",
            "started_at",
            "ended_at",
            "calling_ae",
            "called_ae",
            "peer_host",
            "peer_port",
            "node",
            "outcome",
            "reason",
            "services",
            "images_received",
            "images_sent",
            "failures",
        ]


class SendFailureSerializer(serializers.Serializer):
    sop_instance_uid = serializers.CharField()
    status = serializers.CharField(help_text='The C-STORE status ("0xA700"), or "" when there was no answer.')
    error = serializers.CharField()


class SendJobSerializer(serializers.HyperlinkedModelSerializer):
    url = serializers.HyperlinkedIdentityField(view_name="api:sendjob-detail")
    study = serializers.HyperlinkedRelatedField(view_name="api:study-detail", read_only=True)
    node = serializers.HyperlinkedRelatedField(view_name="api:modalitynode-detail", read_only=True)
    requested_by = serializers.SlugRelatedField(slug_field="username", read_only=True)
    failures = SendFailureSerializer(many=True, read_only=True, help_text="One entry per image not stored.")

    class Meta:
        model = SendJob
        fields = [
            "url",
            "id",
            "study_instance_uid",
            "study",
            "node",
            "destination",
            "requested_by",
            "created_at",
            "started_at",
            "finished_at",
            "state",
            "total",
            "sent",
            "failed",
            "error",
            "failures",
        ]


class SendRequestSerializer(serializers.Serializer):
    """What to send where: a study by its UID, to a node by its AE title."""

    study_instance_uid = serializers.CharField(max_length=64)
    node = serializers.CharField(
        max_length=64, help_text="AE title of an active node that may receive images (may retrieve from us)."
    )

    def validate_study_instance_uid(self, value):
        study = Study.objects.filter(study_instance_uid=value.strip()).first()
        if study is None:
            raise serializers.ValidationError(f"No study has Study Instance UID {value!r}.")
        return study

    def validate_node(self, value):
        try:
            validate_ae_title(value)
        except DjangoValidationError as exc:
            raise serializers.ValidationError(exc.messages) from None
        title = normalize_ae_title(value)
        node = tasks.send_destinations().filter(ae_title=title).first()
        if node is not None:
            return node
        known = ModalityNode.objects.filter(ae_title=title).first()
        if known is None:
            raise serializers.ValidationError(f"No modality node has AE title {title!r}.")
        why = "is inactive" if not known.active else "may not receive images from us (may_retrieve is off)"
        raise serializers.ValidationError(f"The node {title!r} {why}.")


class ModalityNodeViewSet(viewsets.ModelViewSet):
    """The DICOM nodes allowed to talk to us, and what each may do."""

    permission_classes = [AdministratorsOnly]
    serializer_class = ModalityNodeSerializer
    filterset_fields = ["ae_title", "active", "may_store", "may_query", "may_retrieve"]
    queryset = ModalityNode.objects.order_by("ae_title")


class AssociationLogFilter(django_filters.FilterSet):
    started_at = django_filters.IsoDateTimeFromToRangeFilter(
        help_text="started_at_after / started_at_before, ISO 8601 date and time."
    )

    class Meta:
        model = AssociationLog
        fields = ["calling_ae", "called_ae", "outcome", "node", "started_at"]


class AssociationLogViewSet(viewsets.ReadOnlyModelViewSet):
    """Every association (accepted, rejected, aborted), newest first; written once, never edited."""

    permission_classes = [AdministratorsOnly]
    serializer_class = AssociationLogSerializer
    filterset_class = AssociationLogFilter
    queryset = AssociationLog.objects.order_by("-started_at", "-id")


class SendJobViewSet(mixins.CreateModelMixin, viewsets.ReadOnlyModelViewSet):
    """Studies sent to nodes, with their progress (``total``, ``sent``, ``failed``, ``state``)."""

    permission_classes = [AdministratorsOnly]
    serializer_class = SendJobSerializer
    filterset_fields = ["state", "study_instance_uid", "node"]
    queryset = SendJob.objects.select_related("requested_by").order_by("-created_at", "-id")

    def get_serializer_class(self):
        # What a POST takes (and the browsable API's form shows) is the request, not the job.
        return SendRequestSerializer if self.action == "create" else SendJobSerializer

    @extend_schema(
        request=SendRequestSerializer,
        responses={
            202: SendJobSerializer,
            400: OpenApiResponse(description="What is wrong with the study or the node, per field."),
            503: SendJobSerializer,
        },
        summary="Send a study to a node",
        description=(
            "Queues the job (202, its URL in Location); the worker sends the study and the job "
            "shows its progress. 503 when the job could not be queued (the job says why)."
        ),
    )
    def create(self, request, *args, **kwargs):
        wanted = self.get_serializer(data=request.data)
        wanted.is_valid(raise_exception=True)
        with transaction.atomic():
            job = tasks.send_job_create(
                study=wanted.validated_data["study_instance_uid"],
                node=wanted.validated_data["node"],
                requested_by=request.user,
            )
        # Queued on commit, above: the worker never looks for a row that is not there yet.
        body = SendJobSerializer(job, context=self.get_serializer_context()).data
        if job.state == SendJob.State.FAILED:
            return Response(body, status=status.HTTP_503_SERVICE_UNAVAILABLE)
        return Response(body, status=status.HTTP_202_ACCEPTED, headers={"Location": body["url"]})
