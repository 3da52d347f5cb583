"""Setting up a device in the admin: the node list, "Test connection", "This server"."""

import re

import pytest
from django.urls import reverse
from django.utils import timezone

from network.models import AssociationLog, ModalityNode
from tests import procs
from tests.storescp import storescp

pytestmark = pytest.mark.django_db

CHANGELIST = "admin:network_modalitynode_changelist"


@pytest.fixture
def nodes():
    return [
        ModalityNode.objects.create(ae_title="CT_ROOM_1", host="10.0.0.5", port=104, location="Radiology"),
        ModalityNode.objects.create(ae_title="DR_WARD_3", host="10.0.0.9", port=11112, description="ward DR"),
        ModalityNode.objects.create(ae_title="OLD_US", host="10.0.0.7", port=104, active=False, may_retrieve=False),
    ]


def listed(response) -> set[str]:
    html = response.content.decode()
    return {node for node in ("CT_ROOM_1", "DR_WARD_3", "OLD_US") if f">{node}</a>" in html}


def test_the_node_list_shows_every_node(admin_client, nodes, django_assert_max_num_queries):
    with django_assert_max_num_queries(10):
        response = admin_client.get(reverse(CHANGELIST))
    assert response.status_code == 200
    assert listed(response) == {"CT_ROOM_1", "DR_WARD_3", "OLD_US"}
    assert reverse("admin:network_modalitynode_this_server") in response.content.decode()


def test_it_searches_nodes_by_location_and_description(admin_client, nodes):
    assert listed(admin_client.get(reverse(CHANGELIST), {"q": "radiology"})) == {"CT_ROOM_1"}
    assert listed(admin_client.get(reverse(CHANGELIST), {"q": "ward"})) == {"DR_WARD_3"}
    assert listed(admin_client.get(reverse(CHANGELIST), {"q": "10.0.0.7"})) == {"OLD_US"}


def test_it_filters_nodes_by_activity_and_permission(admin_client, nodes):
    assert listed(admin_client.get(reverse(CHANGELIST), {"active__exact": "0"})) == {"OLD_US"}
    assert listed(admin_client.get(reverse(CHANGELIST), {"may_retrieve__exact": "1"})) == {"CT_ROOM_1", "DR_WARD_3"}


def run_test_connection(admin_client, *nodes):
    response = admin_client.post(
        reverse(CHANGELIST),
        {"action": "test_connection", "_selected_action": [n.pk for n in nodes]},
        follow=True,
    )
    assert response.status_code == 200
    return [(m.level_tag, str(m)) for m in response.context["messages"]]


def test_test_connection_reports_success_and_round_trip_time(admin_client, tmp_path):
    with storescp(tmp_path / "in", tmp_path / "storescp.log") as port:
        node = ModalityNode.objects.create(ae_title="TARGET", host="127.0.0.1", port=port)
        [(level, text)] = run_test_connection(admin_client, node)
    assert level == "success"
    assert re.search(r"TARGET .*C-ECHO succeeded, round trip \d+\.\d ms", text), text


def test_test_connection_reports_why_a_node_cannot_be_reached(admin_client, tmp_path):
    with storescp(tmp_path / "in", tmp_path / "storescp.log") as port:
        up = ModalityNode.objects.create(ae_title="TARGET", host="127.0.0.1", port=port)
        down = ModalityNode.objects.create(ae_title="SWITCHED_OFF", host="127.0.0.1", port=procs.free_port())
        messages = dict(
            (text.split(" ", 1)[0], (level, text)) for level, text in run_test_connection(admin_client, up, down)
        )
    assert messages["TARGET"][0] == "success"
    level, text = messages["SWITCHED_OFF"]
    assert level == "error"
    assert "C-ECHO failed: cannot connect to 127.0.0.1" in text and "Connection refused" in text


def test_this_server_shows_what_a_modality_engineer_types_in(admin_client, settings):
    settings.DICOM_AE_TITLE = "PACS_MAIN"
    settings.DICOM_PORT = 11999
    settings.DICOM_CHECK_HOST = False
    response = admin_client.get(reverse("admin:network_modalitynode_this_server"))
    assert response.status_code == 200
    html = response.content.decode()
    assert '<td id="our-ae-title"><code>PACS_MAIN</code></td>' in html
    assert '<td id="our-port"><code>11999</code></td>' in html
    assert '<td id="check-called-ae">yes</td>' in html and '<td id="check-host">no</td>' in html
    addresses = [a.address for a in response.context["addresses"]]
    assert "127.0.0.1" not in addresses and "::1" not in addresses


def test_this_server_needs_a_staff_login(client):
    response = client.get(reverse("admin:network_modalitynode_this_server"))
    assert response.status_code == 302 and "/login/" in response["Location"]


def add_node(admin_client, ae_title):
    return admin_client.post(
        reverse("admin:network_modalitynode_add"),
        {
            "ae_title": ae_title,
            "host": "10.0.0.20",
            "port": "104",
            "description": "",
            "location": "",
            "active": "on",
            "may_store": "on",
            "fallback_charset": "",
        },
    )


@pytest.mark.parametrize(
    ("ae_title", "error"),
    [
        ("SEVENTEEN_CHARS_X", "at most 16 characters"),
        ("CT\\ROOM", "cannot contain a backslash"),
    ],
)
def test_the_node_form_refuses_an_invalid_ae_title(admin_client, ae_title, error):
    response = add_node(admin_client, ae_title)
    assert response.status_code == 200
    assert error in response.content.decode()
    assert not ModalityNode.objects.exists()


def test_the_node_form_strips_spaces_around_the_ae_title(admin_client):
    response = add_node(admin_client, "  CT_ROOM_2  ")
    assert response.status_code == 302
    node = ModalityNode.objects.get()
    assert (node.ae_title, node.may_store, node.may_query) == ("CT_ROOM_2", True, False)


def test_the_association_log_is_listed_and_read_only(admin_client):
    entry = AssociationLog.objects.create(
        started_at=timezone.now(),
        calling_ae="STRANGER",
        called_ae="IMAGING",
        peer_host="10.1.1.1",
        outcome="rejected",
        reason="unknown calling AE title 'STRANGER'",
    )
    listing = admin_client.get(reverse("admin:network_associationlog_changelist"), {"outcome__exact": "rejected"})
    assert listing.status_code == 200 and "unknown calling AE title" in listing.content.decode()
    assert admin_client.get(reverse("admin:network_associationlog_add")).status_code == 403
    detail = admin_client.get(reverse("admin:network_associationlog_change", args=[entry.pk]))
    assert detail.status_code == 200 and 'name="_save"' not in detail.content.decode()
    assert admin_client.post(reverse("admin:network_associationlog_delete", args=[entry.pk])).status_code == 403
    assert admin_client.get(reverse("admin:network_sendjob_add")).status_code == 403
    assert AssociationLog.objects.count() == 1


def test_an_administrator_who_is_not_a_superuser_may_send_studies(rf, django_user_model):
    from django.contrib import admin
    from django.contrib.auth.models import Group

    from records.models import Study

    user = django_user_model.objects.create_user("radmin", password="x")  # noqa: S106 - test password
    user.groups.add(Group.objects.get(name="Administrator"))
    request = rf.get("/admin/records/study/")
    request.user = django_user_model.objects.get(pk=user.pk)  # fresh permission cache
    assert "send_to_node" in admin.site._registry[Study].get_actions(request)
