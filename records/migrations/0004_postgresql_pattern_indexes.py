"""PostgreSQL: indexes that prefix wildcards (LIKE 'WANG%') can use.

On PostgreSQL a btree index with the default operator class serves LIKE only
when the database collation is C (not even C.UTF-8); otherwise the index needs
the pattern operator class on the same column or expression, which also serves
"=". This is what Django adds by itself (a ``_like`` index) for a CharField with
db_index or unique, but not for expressions, nor for a column indexed only by a
multi-column constraint. SQLite matches wildcards with GLOB and a prefix range
(network/query.py, _wildcard_q) on the indexes it has: nothing is done there.

Not in the models' Meta: the operator class would not translate to SQLite.
"""

from django.db import migrations

INDEXES = [
    # C-FIND/QIDO-RS PatientName=WANG^XI* on any name group (network/query.py,
    # person_name_q): UPPER(name_alphabetic) LIKE 'WANG^XI%' OR UPPER(name_ideographic)
    # LIKE ... OR UPPER(name_phonetic) LIKE ..., one index per group.
    ("patient_name_alpha_upper_like", "UPPER(name_alphabetic) text_pattern_ops"),
    ("patient_name_ideo_upper_like", "UPPER(name_ideographic) text_pattern_ops"),
    ("patient_name_phon_upper_like", "UPPER(name_phonetic) text_pattern_ops"),
    # C-FIND/QIDO-RS PatientID=P12* (network/query.py, _string_q): patient_id LIKE 'P12%'.
    # The unique (patient_id, issuer) constraint serves PatientID=P123 only.
    ("patient_patient_id_like", "patient_id varchar_pattern_ops"),
]


def create_indexes(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    table = schema_editor.quote_name(apps.get_model("records", "Patient")._meta.db_table)
    for name, expression in INDEXES:
        schema_editor.execute(f"CREATE INDEX {schema_editor.quote_name(name)} ON {table} ({expression})")


def drop_indexes(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    for name, _ in INDEXES:
        schema_editor.execute(f"DROP INDEX IF EXISTS {schema_editor.quote_name(name)}")


class Migration(migrations.Migration):
    dependencies = [
        ("records", "0003_query_indexes"),
    ]

    operations = [migrations.RunPython(create_indexes, drop_indexes)]
