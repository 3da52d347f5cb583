"""Administrators read indexing failures and instance conflicts in the admin; nobody edits them."""

import pytest
from django.contrib.auth.models import Group, User
from django.urls import reverse

from records.models import IndexingFailure, InstanceConflict

pytestmark = pytest.mark.django_db


@pytest.fixture
def records():
    failure = IndexingFailure.objects.create(
        file_path="instances/aa/bb/1.2.3.dcm",
        sop_instance_uid="1.2.3",
        category=IndexingFailure.Category.DEFLATE_BOMB,
        reason="the deflated data set inflates past 536870912 bytes (DICOM_MAX_INFLATED_BYTES)",
    )
    conflict = InstanceConflict.objects.create(
        sop_instance_uid="1.2.4",
        source_ae="CT1",
        stored_study_uid="1.2.10",
        incoming_study_uid="1.2.11",
        stored_patient_id="PA",
        incoming_patient_id="PB",
        resolution=InstanceConflict.Resolution.KEPT_STORED,
    )
    return failure, conflict


@pytest.fixture
def administrator(client):
    user = User.objects.create_user("ada", is_staff=True)
    user.groups.add(Group.objects.get(name="Administrator"))
    client.force_login(user)
    return client


@pytest.mark.parametrize(
    ("model", "search", "shown"),
    [("indexingfailure", "1.2.3", "DICOM_MAX_INFLATED_BYTES"), ("instanceconflict", "1.2.11", "1.2.4")],
)
def test_an_administrator_lists_and_searches_them(administrator, records, model, search, shown):
    response = administrator.get(reverse(f"admin:records_{model}_changelist"), {"q": search})
    assert response.status_code == 200
    assert shown in response.content.decode()
    response = administrator.get(reverse(f"admin:records_{model}_changelist"), {"q": "9.9.9.9"})
    assert shown not in response.content.decode()


@pytest.mark.parametrize("model", ["indexingfailure", "instanceconflict"])
def test_they_cannot_be_added_changed_or_deleted(admin_client, records, model):
    obj = records[0] if model == "indexingfailure" else records[1]
    assert admin_client.get(reverse(f"admin:records_{model}_add")).status_code == 403
    page = admin_client.get(reverse(f"admin:records_{model}_change", args=[obj.pk]))
    assert page.status_code == 200 and 'type="submit"' not in page.content.decode().split("<form")[-1]
    assert admin_client.get(reverse(f"admin:records_{model}_delete", args=[obj.pk])).status_code == 403
    assert admin_client.post(reverse(f"admin:records_{model}_change", args=[obj.pk]), {}).status_code == 403


def test_the_administrator_group_may_view_them():
    codenames = set(Group.objects.get(name="Administrator").permissions.values_list("codename", flat=True))
    assert {"view_indexingfailure", "view_instanceconflict"} <= codenames
    assert not {"change_indexingfailure", "delete_instanceconflict"} & codenames
