"""Admin pages of the network app: nodes (with "Test connection"), "This server", the logs.

Every action here is a thin shell: the DICOM work is in ``network.scu``, the
background work in ``network.tasks``.
"""

from django.conf import settings
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.template.response import TemplateResponse
from django.urls import path
from django.utils.html import format_html, format_html_join
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy, ngettext

from network import scu, tasks
from network.addresses import local_addresses
from network.models import AssociationLog, ModalityNode, SendJob


@admin.register(ModalityNode)
class ModalityNodeAdmin(admin.ModelAdmin):
    list_display = (
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
    )
    list_display_links = ("ae_title",)
    search_fields = ("ae_title", "host", "description", "location")
    list_filter = ("active", "may_store", "may_query", "may_retrieve")
    actions = ["test_connection"]
    fieldsets = (
        (None, {"fields": ("ae_title", "host", "port", "description", "location", "active")}),
        (gettext_lazy("What it may do"), {"fields": ("may_store", "may_query", "may_retrieve")}),
        (gettext_lazy("Character set"), {"fields": ("fallback_charset",)}),
    )

    @admin.action(description=gettext_lazy("Test connection (C-ECHO)"))
    def test_connection(self, request, queryset):
        for node in queryset:
            result = scu.echo_node(node)
            if result.ok:
                self.message_user(
                    request,
                    _("%(node)s: C-ECHO succeeded, round trip %(ms).1f ms.")
                    % {"node": node, "ms": result.round_trip_ms},
                    messages.SUCCESS,
                )
            else:
                self.message_user(
                    request,
                    _("%(node)s: C-ECHO failed: %(error)s.") % {"node": node, "error": result.error},
                    messages.ERROR,
                )

    def get_urls(self):
        own = [
            path(
                "this-server/",
                self.admin_site.admin_view(self.this_server_view),
                name="network_modalitynode_this_server",
            )
        ]
        return own + super().get_urls()

    def this_server_view(self, request):
        """What a modality engineer types into a device to send us images."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "title": _("This server"),
            "ae_title": settings.DICOM_AE_TITLE,
            "port": settings.DICOM_PORT,
            "listen_host": settings.DICOM_HOST,
            "addresses": local_addresses(),
            "check_called_ae": settings.DICOM_CHECK_CALLED_AE,
            "check_host": settings.DICOM_CHECK_HOST,
        }
        return TemplateResponse(request, "admin/network/this_server.html", context)


class ReadOnlyAdmin(admin.ModelAdmin):
    """Records of what happened: written by the system, read by people."""

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(AssociationLog)
class AssociationLogAdmin(ReadOnlyAdmin):
    list_display = (
        "started_at",
        "calling_ae",
        "called_ae",
        "peer_host",
        "node",
        "outcome",
        "reason",
        "services",
        "images_received",
        "images_sent",
        "failures",
        "ended_at",
    )
    list_select_related = ("node",)
    list_filter = ("outcome", "calling_ae")
    date_hierarchy = "started_at"
    search_fields = ("calling_ae", "called_ae", "peer_host", "reason")


@admin.register(SendJob)
class SendJobAdmin(ReadOnlyAdmin):
    list_display = (
        "created_at",
        "study_instance_uid",
        "destination",
        "requested_by",
        "state",
        "total",
        "sent",
        "failed",
        "error",
        "finished_at",
    )
    list_select_related = ("requested_by",)
    list_filter = ("state",)
    date_hierarchy = "created_at"
    search_fields = ("study_instance_uid", "destination")
    exclude = ("failures",)
    readonly_fields = ("failures_table",)

    @admin.display(description=gettext_lazy("images not stored"))
    def failures_table(self, obj):
        if not obj.failures:
            return "-"
        rows = format_html_join(
            "",
            "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
            ((f.get("sop_instance_uid", ""), f.get("status", ""), f.get("error", "")) for f in obj.failures),
        )
        return format_html(
            "<table><thead><tr><th>{}</th><th>{}</th><th>{}</th></tr></thead><tbody>{}</tbody></table>",
            _("SOP Instance UID"),
            _("status"),
            _("error"),
            rows,
        )


# The study action, attached to records' StudyAdmin (records/admin.py).


@admin.action(description=gettext_lazy("Send to node…"), permissions=["send"])
def send_to_node(modeladmin, request, queryset):
    """Step 1 shows the nodes that may receive studies; step 2 (``apply``) queues one job per study."""
    nodes = tasks.send_destinations()
    node = nodes.filter(pk=request.POST.get("node") or None).first() if "apply" in request.POST else None
    if node is None:
        if "apply" in request.POST:
            modeladmin.message_user(request, _("Choose a node to send to."), messages.WARNING)
        context = {
            **modeladmin.admin_site.each_context(request),
            "title": _("Send studies to a node"),
            "opts": modeladmin.model._meta,
            "studies": queryset.select_related("patient"),
            "nodes": nodes,
            "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
        }
        return TemplateResponse(request, "admin/network/send_to_node.html", context)
    queued: list[SendJob] = []

    def reported(job: SendJob, error: str) -> None:
        if error:
            messages.error(
                request,
                _("Sending %(study)s could not be queued: %(error)s")
                % {"study": job.study_instance_uid, "error": error},
            )
        else:
            queued.append(job)

    with transaction.atomic():
        for study in queryset:
            tasks.send_job_create(study=study, node=node, requested_by=request.user, on_queued=reported)
    # The jobs were queued when the block committed (the admin's changelist is not atomic).
    if queued:
        message = ngettext(
            "%(count)d study queued for sending to %(node)s; see Send jobs.",
            "%(count)d studies queued for sending to %(node)s; see Send jobs.",
            len(queued),
        ) % {"count": len(queued), "node": node}
        modeladmin.message_user(request, message, messages.SUCCESS)
    return None
