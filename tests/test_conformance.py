"""docs/conformance.md says what the SCP accepts: its tables are checked against build_ae()."""

import re
from pathlib import Path

import pytest
from pynetdicom.sop_class import Verification

from network.scp import build_ae

DOC = Path(__file__).resolve().parent.parent / "docs" / "conformance.md"
QR_PREFIX = "1.2.840.10008.5.1.4.1.2."


def tables() -> dict[str, list[list[str]]]:
    """Every markdown table of the statement, by the text of its first header cell."""
    found: dict[str, list[list[str]]] = {}
    rows: list[list[str]] = []
    for line in DOC.read_text().splitlines() + [""]:
        if line.startswith("|"):
            rows.append([cell.strip().strip("`") for cell in line.strip().strip("|").split("|")])
        elif rows:
            header, body = rows[0], [r for r in rows[1:] if not set("".join(r)) <= set("-:")]
            found[header[0]] = [header, *body]
            rows = []
    return found


def uids(table: list[list[str]], column: int = 1) -> set[str]:
    values = [row[column] for row in table[1:]]
    assert all(re.fullmatch(r"[0-9.]+", v) for v in values), values
    assert len(values) == len(set(values)), "a UID is listed twice"
    return set(values)


@pytest.fixture(scope="module")
def contexts():
    return {cx.abstract_syntax: cx for cx in build_ae().supported_contexts}


def test_it_lists_exactly_the_sop_classes_the_scp_accepts(contexts):
    t = tables()
    listed = uids(t["SOP Class"]) | uids(t["Storage SOP Class"])
    assert listed == set(contexts)
    assert not uids(t["SOP Class"]) & uids(t["Storage SOP Class"])


def test_every_sop_class_it_lists_is_one_we_are_scp_for():
    assert {row[3] for row in tables()["SOP Class"][1:]} == {"yes"}


def test_the_transfer_syntaxes_it_lists_are_those_accepted_for_each_kind_of_context(contexts):
    t = tables()
    storage = uids(t["Transfer Syntax (Storage)"])
    query_retrieve = uids(t["Transfer Syntax (Query/Retrieve)"])
    verification = uids(t["Transfer Syntax (Verification)"])
    for uid in uids(t["Storage SOP Class"]):
        assert set(contexts[uid].transfer_syntax) == storage, uid
    for uid in uids(t["SOP Class"]):
        expected = verification if uid == Verification else query_retrieve
        assert set(contexts[uid].transfer_syntax) == expected, uid


def test_the_query_retrieve_models_it_lists_are_find_move_and_get_of_both_roots(contexts):
    qr = {uid for uid in uids(tables()["SOP Class"]) if uid.startswith(QR_PREFIX)}
    assert qr == {f"{QR_PREFIX}{root}.{service}" for root in (1, 2) for service in (1, 2, 3)}


def test_storage_contexts_accept_both_roles_as_the_statement_says_for_c_get(contexts):
    assert "role selection is accepted for every storage SOP class" in " ".join(DOC.read_text().split())
    for uid in uids(tables()["Storage SOP Class"]):
        assert contexts[uid].scp_role and contexts[uid].scu_role, uid
