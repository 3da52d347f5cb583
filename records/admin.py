from django.contrib import admin
from django.contrib.auth.admin import GroupAdmin, UserAdmin
from django.contrib.auth.models import Group, User
from django.urls import reverse
from django.utils.html import format_html
from django.utils.translation import gettext_lazy as _
from django.utils.translation import pgettext_lazy
from rest_framework.authtoken.admin import TokenAdmin
from rest_framework.authtoken.models import TokenProxy

from network.admin import send_to_node
from records.models import (
    AccessRecord,
    Correction,
    IndexingFailure,
    Instance,
    InstanceConflict,
    Patient,
    RewriteJob,
    Series,
    Study,
)
from records.names import display_name


class ReadOnlyIndexAdmin(admin.ModelAdmin):
    """The index is rebuilt from the files: it is read here, corrected elsewhere."""

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(Patient)
class PatientAdmin(ReadOnlyIndexAdmin):
    list_display = ("patient_id", "issuer", "shown_name", "birth_date", "shown_sex", "updated_at")
    search_fields = ("patient_id", "name_alphabetic", "name_ideographic", "name_phonetic")
    list_filter = ("sex",)

    @admin.display(description=pgettext_lazy("person", "name"), ordering="name_alphabetic")
    def shown_name(self, obj):
        return display_name(obj)

    @admin.display(description=_("sex"), ordering="sex")
    def shown_sex(self, obj):
        return obj.sex_display()


@admin.register(Study)
class StudyAdmin(ReadOnlyIndexAdmin):
    list_display = (
        "study_date",
        "study_time",
        "patient",
        "accession_number",
        "modalities_in_study",
        "description",
        "number_of_series",
        "number_of_instances",
    )
    list_select_related = ("patient",)
    search_fields = (
        "study_instance_uid",
        "accession_number",
        "patient__patient_id",
        "patient__name_alphabetic",
        "patient__name_ideographic",
        "description",
    )
    date_hierarchy = "study_date"
    list_filter = ("modalities_in_study",)
    actions = [send_to_node]

    def has_send_permission(self, request):
        """Sending a study out is recording a send job."""
        return request.user.has_perm("network.add_sendjob")


@admin.register(Series)
class SeriesAdmin(ReadOnlyIndexAdmin):
    list_display = (
        "preview",
        "series_instance_uid",
        "study",
        "modality",
        "series_number",
        "description",
        "body_part",
        "number_of_instances",
    )
    list_select_related = ("study",)
    search_fields = ("series_instance_uid", "description")

    @admin.display(description=_("thumbnail"))
    def preview(self, obj):
        if not obj.thumbnail:
            return "-"
        return format_html('<img src="{}" alt="" height="64">', reverse("series-thumbnail", args=[obj.pk]))

    list_filter = ("modality",)


@admin.register(Instance)
class InstanceAdmin(ReadOnlyIndexAdmin):
    list_display = (
        "sop_instance_uid",
        "instance_number",
        "sop_class_uid",
        "transfer_syntax_uid",
        "rows",
        "columns",
        "number_of_frames",
        "file_size",
        "received_at",
        "source_ae",
    )
    search_fields = ("sop_instance_uid",)
    list_filter = ("transfer_syntax_uid", "source_ae")
    raw_id_fields = ("series",)


# --- Users and groups -------------------------------------------------------------------------
# An Administrator (the group, not a superuser) manages accounts and their roles, but may
# not reach beyond the group: no superuser status for anyone, no permissions handed out
# one by one, no group given more permissions, no superuser edited or deleted (their
# password and groups included). Superusers keep Django's full admin.


def _reaches_a_superuser(request, obj) -> bool:
    return obj is not None and obj.is_superuser and not request.user.is_superuser


class ImagingUserAdmin(UserAdmin):
    def get_readonly_fields(self, request, obj=None):
        fields = tuple(super().get_readonly_fields(request, obj))
        if not request.user.is_superuser:
            fields += ("is_superuser", "user_permissions")
        return fields

    def has_change_permission(self, request, obj=None):
        return not _reaches_a_superuser(request, obj) and super().has_change_permission(request, obj)

    def has_delete_permission(self, request, obj=None):
        return not _reaches_a_superuser(request, obj) and super().has_delete_permission(request, obj)


class ImagingGroupAdmin(GroupAdmin):
    def get_readonly_fields(self, request, obj=None):
        fields = tuple(super().get_readonly_fields(request, obj))
        if not request.user.is_superuser:
            # The roles' permissions come from the data migrations; members are set on the user.
            fields += ("permissions",)
        return fields


admin.site.unregister(User)
admin.site.register(User, ImagingUserAdmin)
admin.site.unregister(Group)
admin.site.register(Group, ImagingGroupAdmin)


class RecordAdmin(ReadOnlyIndexAdmin):
    """What the system recorded about a file or an instance: read, never edited or deleted here.

    Indexing failures disappear by themselves once their file is indexed cleanly;
    conflicts stay as the record of what was decided.
    """

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(IndexingFailure)
class IndexingFailureAdmin(RecordAdmin):
    list_display = ("file_path", "category", "indexed", "reason", "source_ae", "attempts", "last_failed_at")
    list_filter = ("category", "indexed", "source_ae")
    search_fields = ("file_path", "sop_instance_uid", "reason")
    date_hierarchy = "last_failed_at"


@admin.register(InstanceConflict)
class InstanceConflictAdmin(RecordAdmin):
    list_display = (
        "detected_at",
        "sop_instance_uid",
        "resolution",
        "source_ae",
        "stored_patient_id",
        "incoming_patient_id",
        "stored_study_uid",
        "incoming_study_uid",
    )
    list_filter = ("resolution", "source_ae")
    search_fields = (
        "sop_instance_uid",
        "stored_study_uid",
        "incoming_study_uid",
        "stored_patient_id",
        "incoming_patient_id",
    )
    date_hierarchy = "detected_at"


@admin.register(AccessRecord)
class AccessRecordAdmin(RecordAdmin):
    """Who opened which patient's study: filtered by user, date, action; searched by patient and study.

    No one adds, changes or deletes a record here, superusers included; old ones
    are pruned by the worker (ACCESS_RECORD_RETENTION_DAYS).
    """

    list_display = ("at", "username", "action", "patient_id", "patient_name", "accession_number", "address")
    list_filter = ("action", "user", "at")
    search_fields = ("=patient_id", "patient_name", "=study_instance_uid", "=accession_number", "username")
    search_help_text = _("Patient ID, patient name, Study Instance UID, accession number or user name.")
    date_hierarchy = "at"
    list_select_related = ("user",)
    show_full_result_count = False  # a COUNT(*) over years of records on every page is not needed


@admin.register(Correction)
class CorrectionAdmin(RecordAdmin):
    """Corrections, merges and undos of demographics: written by records.demographics only, never edited."""

    list_display = ("at", "username", "kind", "dicom_patient_id", "reason", "studies_affected", "images_affected")
    list_filter = ("kind", "at")
    search_fields = ("=dicom_patient_id", "username", "reason")
    date_hierarchy = "at"
    show_full_result_count = False


@admin.register(RewriteJob)
class RewriteJobAdmin(RecordAdmin):
    """The rewrites of stored files after a correction, with their progress."""

    list_display = ("created_at", "correction", "state", "done", "failed", "total", "finished_at")
    list_filter = ("state",)
    list_select_related = ("correction",)


# --- API tokens (rest_framework.authtoken) ----------------------------------------------------
# An Administrator issues tokens for the programs that read the archive (one per user,
# "Authorization: Token <key>"), but never for a superuser: a superuser's token would be
# a superuser's key in an Administrator's hands.


class ImagingTokenAdmin(TokenAdmin):
    def get_queryset(self, request):
        tokens = super().get_queryset(request).select_related("user")
        return tokens if request.user.is_superuser else tokens.exclude(user__is_superuser=True)

    def formfield_for_foreignkey(self, db_field, request, **kwargs):
        if db_field.name == "user" and not request.user.is_superuser:
            kwargs["queryset"] = User.objects.filter(is_superuser=False, is_active=True)
        return super().formfield_for_foreignkey(db_field, request, **kwargs)


admin.site.unregister(TokenProxy)
admin.site.register(TokenProxy, ImagingTokenAdmin)
