"""Patient names in every character set our modalities use come out as proper Unicode.

No database: data sets are written to a temporary file and read back with
``dcmread(..., stop_before_pixels=True, force=True)``, the lazy path ingest uses.
Expected values of pydicom's charset files are those its own test suite
documents (tests/test_charset.py, FILE_PATIENT_NAMES).
"""

import logging

import pydicom
import pytest
from pydicom.data import get_charset_files
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from imaging import charsets

ESC_IR58 = b"\x1b$)A"


def gb2312(value: str) -> bytes:
    return value.encode("gb2312")


def charset_file(name: str) -> Dataset:
    (path,) = get_charset_files(f"{name}.dcm")
    return pydicom.dcmread(path, stop_before_pixels=True, force=True)


def written_and_read(tmp_path, patient_name: bytes, specific_character_set=None, *, fallback=None, **elements):
    """A data set with these raw PatientName bytes, as ingest reads it from disk."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    if specific_character_set is not None:
        ds.add_new(0x00080005, "CS", specific_character_set)
    ds.add_new(0x00100010, "PN", patient_name)
    for keyword, (vr, value) in elements.items():
        ds.add_new(keyword, vr, value)
    path = tmp_path / "instance.dcm"
    ds.save_as(path, enforce_file_format=True)
    read = pydicom.dcmread(path, stop_before_pixels=True, force=True)
    charsets.apply_fallback(read, fallback)
    return read


def charset_warnings(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "imaging.charsets" and r.levelno == logging.WARNING]


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("chrArab", ("قباني^لنزار", "قباني^لنزار", "", "")),
        ("chrFren", ("Buc^Jérôme", "Buc^Jérôme", "", "")),
        ("chrFrenMulti", ("Buc^Jérôme", "Buc^Jérôme", "", "")),
        ("chrGerm", ("Äneas^Rüdiger", "Äneas^Rüdiger", "", "")),
        ("chrGreek", ("Διονυσιος", "Διονυσιος", "", "")),
        (
            "chrH31",
            ("Yamada^Tarou=山田^太郎=やまだ^たろう", "Yamada^Tarou", "山田^太郎", "やまだ^たろう"),
        ),
        ("chrH32", ("ﾔﾏﾀﾞ^ﾀﾛｳ=山田^太郎=やまだ^たろう", "ﾔﾏﾀﾞ^ﾀﾛｳ", "山田^太郎", "やまだ^たろう")),
        ("chrHbrw", ("שרון^דבורה", "שרון^דבורה", "", "")),
        ("chrI2", ("Hong^Gildong=洪^吉洞=홍^길동", "Hong^Gildong", "洪^吉洞", "홍^길동")),
        ("chrJapMulti", ("やまだ^たろう", "やまだ^たろう", "", "")),
        ("chrJapMultiExplicitIR6", ("やまだ^たろう", "やまだ^たろう", "", "")),
        ("chrKoreanMulti", ("김희중", "김희중", "", "")),
        ("chrRuss", ("Люкceмбypг", "Люкceмбypг", "", "")),
        ("chrX1", ("Wang^XiaoDong=王^小東", "Wang^XiaoDong", "王^小東", "")),
        ("chrX2", ("Wang^XiaoDong=王^小东", "Wang^XiaoDong", "王^小东", "")),
    ],
)
def test_it_reads_pydicoms_charset_files(name, expected, caplog):
    ds = charset_file(name)
    charsets.apply_fallback(ds, "GB18030")  # they all declare theirs: no effect

    assert charsets.person_name(ds, "PatientName") == expected
    assert not charset_warnings(caplog)


def test_it_uses_the_character_set_of_a_sequence_item():
    ds = charset_file("chrSQEncoding")  # ISO_IR 192, item in ISO 2022 IR 13 + IR 87
    (item,) = ds.RequestedProcedureCodeSequence

    assert charsets.person_name(item, "PatientName") == (
        "ﾔﾏﾀﾞ^ﾀﾛｳ=山田^太郎=やまだ^たろう",
        "ﾔﾏﾀﾞ^ﾀﾛｳ",
        "山田^太郎",
        "やまだ^たろう",
    )
    assert charsets.person_name(ds, "RequestingPhysician") == ("Doctor^Who^^MD", "Doctor^Who^^MD", "", "")


def test_it_joins_multiple_values_and_formats_other_elements():
    ds = charset_file("chrFrenMulti")

    assert charsets.text(ds, "OtherPatientIDs") == "eggs\\spam"
    assert charsets.text(ds, "OtherPatientNames") == "Buc^Jérôme\\Buc^Jérôme"
    assert charsets.text(ds, "PatientID") == "SCSFREN"
    assert charsets.text(ds, "SpecificCharacterSet") == "ISO_IR 100"
    assert charsets.text(ds, "StudyDate") == ""
    assert charsets.text(ds, "IssuerOfPatientID") == ""
    assert charsets.text(ds, "Rows") == "32"
    assert charsets.person_name(ds, "ReferringPhysicianName") == ("", "", "", "")


def test_it_reads_gb18030_including_characters_outside_gbk(tmp_path):
    raw = b"Liu^Yan=" + "刘^䶮".encode("gb18030") + b"=" + "𠀀^王小明".encode("gb18030")
    assert b"\x95\x32\x82\x36" in raw  # 𠀀 takes four bytes in GB18030
    ds = written_and_read(tmp_path, raw, "GB18030")

    assert charsets.person_name(ds, "PatientName") == ("Liu^Yan=刘^䶮=𠀀^王小明", "Liu^Yan", "刘^䶮", "𠀀^王小明")


def test_it_does_not_split_gbk_values_on_a_backslash_trail_byte(tmp_path):
    encoded = "王^琝".encode("gbk")
    assert encoded.endswith(b"\\")  # 琝 is 0x??5C in GBK
    other_names = encoded + b"\\" + "李^四".encode("gbk")
    ds = written_and_read(tmp_path, encoded, "GBK", OtherPatientNames=("PN", other_names))

    assert charsets.person_name(ds, "PatientName") == ("王^琝", "王^琝", "", "")
    assert charsets.text(ds, "OtherPatientNames") == "王^琝\\李^四"


def test_it_reads_gbk_declared_data_with_gb18030_only_characters(tmp_path):
    ds = written_and_read(tmp_path, "刘^䶮".encode("gb18030"), "GBK")

    assert charsets.person_name(ds, "PatientName")[1] == "刘^䶮"


def test_it_strips_ir58_escape_sequences_of_each_component(tmp_path):
    raw = (
        b"Wang^XiaoMing="
        + ESC_IR58
        + gb2312("王")
        + b"^"
        + ESC_IR58
        + gb2312("小明")
        + b"="
        + ESC_IR58
        + gb2312("ㄨㄤ")
        + b"^"
        + ESC_IR58
        + gb2312("ㄒㄧㄠ")
    )
    ds = written_and_read(tmp_path, raw, ["", "ISO 2022 IR 58"])

    assert charsets.person_name(ds, "PatientName") == (
        "Wang^XiaoMing=王^小明=ㄨㄤ^ㄒㄧㄠ",
        "Wang^XiaoMing",
        "王^小明",
        "ㄨㄤ^ㄒㄧㄠ",
    )


def test_it_keeps_an_ir58_designation_across_components(tmp_path):
    # Many modalities designate GB2312 once per group, not once per component.
    raw = b"Wang^XiaoMing=" + ESC_IR58 + gb2312("王^小明") + b"^^^ "
    ds = written_and_read(tmp_path, raw, ["", "ISO 2022 IR 58"])

    assert charsets.person_name(ds, "PatientName") == ("Wang^XiaoMing=王^小明", "Wang^XiaoMing", "王^小明", "")


def test_it_reads_ir58_declared_without_escape_sequences(tmp_path):
    ds = written_and_read(tmp_path, b"Wang^XiaoMing=" + gb2312("王^小明"), "\\ISO 2022 IR 58")

    assert charsets.person_name(ds, "PatientName")[2] == "王^小明"


def test_it_reads_ir58_correctly_after_pydicom_decoded_it(tmp_path):
    raw = b"Wang^XiaoMing=" + ESC_IR58 + gb2312("王") + b"^" + ESC_IR58 + gb2312("小明")
    ds = written_and_read(tmp_path, raw, ["", "ISO 2022 IR 58"])
    str(ds.PatientName)  # converts the raw element with pydicom's own decoding

    assert charsets.person_name(ds, "PatientName") == ("Wang^XiaoMing=王^小明", "Wang^XiaoMing", "王^小明", "")


def test_it_reads_a_korean_designation_used_across_a_delimiter(tmp_path):
    raw = b"\x1b$)C" + "김^희중".encode("euc_kr")
    ds = written_and_read(tmp_path, raw, ["", "ISO 2022 IR 149"])

    assert charsets.person_name(ds, "PatientName") == ("김^희중", "김^희중", "", "")


def test_it_reads_jis_x_0212_next_to_jis_x_0208(tmp_path):
    raw = b"\x1b$(D0!\x1b(B^\x1b$B;3ED\x1b(B"  # 丂 is only in JIS X 0212
    ds = written_and_read(tmp_path, raw, ["", "ISO 2022 IR 87", "ISO 2022 IR 159"])

    assert charsets.person_name(ds, "PatientName")[0] == "丂^山田"


def test_it_reads_utf8_and_drops_padding(tmp_path):
    raw = "Wang^XiaoMing^^^=王^小明 ^^=  ".encode()
    ds = written_and_read(tmp_path, raw, "ISO_IR 192")

    assert charsets.person_name(ds, "PatientName") == ("Wang^XiaoMing=王^小明", "Wang^XiaoMing", "王^小明", "")


def test_it_reads_an_ideographic_group_alone(tmp_path):
    ds = written_and_read(tmp_path, "=王^小明".encode(), "ISO_IR 192")

    assert charsets.person_name(ds, "PatientName") == ("=王^小明", "", "王^小明", "")


def test_it_reads_latin1(tmp_path):
    ds = written_and_read(tmp_path, "Buc^Jérôme".encode("latin_1"), "ISO_IR 100")

    assert charsets.person_name(ds, "PatientName") == ("Buc^Jérôme", "Buc^Jérôme", "", "")


def test_it_applies_the_fallback_when_no_character_set_is_declared(tmp_path):
    ds = written_and_read(tmp_path, "王^小明".encode("gb18030"), None, fallback="GB18030")

    assert charsets.person_name(ds, "PatientName") == ("王^小明", "王^小明", "", "")
    assert charsets.text(ds, "SpecificCharacterSet") == "GB18030"
    # pydicom's own lazy decoding sees the fallback too.
    assert str(ds.PatientName) == "王^小明"


def test_it_applies_the_fallback_when_the_declaration_is_empty(tmp_path):
    ds = written_and_read(tmp_path, "王^小明".encode("gb18030"), "", fallback="GB18030")

    assert charsets.person_name(ds, "PatientName")[0] == "王^小明"


def test_it_applies_a_fallback_with_code_extensions(tmp_path):
    raw = b"Wang=" + ESC_IR58 + gb2312("王")
    ds = written_and_read(tmp_path, raw, None, fallback="\\ISO 2022 IR 58")

    assert charsets.person_name(ds, "PatientName")[0] == "Wang=王"
    assert charsets.text(ds, "SpecificCharacterSet") == "\\ISO 2022 IR 58"


def test_it_applies_a_latin1_fallback(tmp_path):
    ds = written_and_read(tmp_path, "Buc^Jérôme".encode("latin_1"), None, fallback="ISO_IR 100")

    assert charsets.person_name(ds, "PatientName")[0] == "Buc^Jérôme"


def test_it_does_not_override_a_declared_character_set(tmp_path):
    # GB18030 bytes declared as Latin-1: every byte is valid Latin-1, so there
    # is nothing to detect; guessing would break the names that are right.
    ds = written_and_read(tmp_path, "王^小明".encode("gb18030"), "ISO_IR 100", fallback="GB18030")

    assert charsets.text(ds, "SpecificCharacterSet") == "ISO_IR 100"
    assert charsets.person_name(ds, "PatientName")[0] == "Íõ^Ð¡Ã÷"


def test_it_rejects_an_unknown_fallback(tmp_path):
    ds = written_and_read(tmp_path, b"Wang", None)

    with pytest.raises(ValueError, match="GB-18030-typo"):
        charsets.apply_fallback(ds, "GB-18030-typo")


def test_it_replaces_bytes_outside_the_default_character_set_and_warns(tmp_path, caplog):
    ds = written_and_read(tmp_path, b"Wang^" + "小明".encode("gb18030"), None)

    replaced = "Wang^" + "\ufffd" * 4
    assert charsets.person_name(ds, "PatientName") == (replaced, replaced, "", "")
    (record,) = charset_warnings(caplog)
    assert "PatientName" in record.getMessage()


def test_it_replaces_invalid_utf8_with_one_warning_and_no_phi(tmp_path, caplog):
    ds = written_and_read(tmp_path, b"Wang^\xe7\x8e=\xff\xfe^\xe5\xb0\x8f", "ISO_IR 192")

    alphabetic, ideographic = "Wang^\ufffd", "\ufffd\ufffd^小"
    assert charsets.person_name(ds, "PatientName") == (f"{alphabetic}={ideographic}", alphabetic, ideographic, "")
    (record,) = charset_warnings(caplog)
    assert "utf_8" in record.getMessage()
    assert "Wang" not in record.getMessage()


def test_it_replaces_invalid_ir58_bytes_with_one_warning(tmp_path, caplog):
    raw = b"Wang=" + ESC_IR58 + gb2312("王") + b"\xff^" + ESC_IR58 + b"\xa1"
    ds = written_and_read(tmp_path, raw, ["", "ISO 2022 IR 58"])

    assert charsets.person_name(ds, "PatientName") == ("Wang=王\ufffd^\ufffd", "Wang", "王\ufffd^\ufffd", "")
    assert len(charset_warnings(caplog)) == 1


def test_it_reads_codes_and_dates_in_the_default_repertoire_and_names_the_declared_set(tmp_path, caplog):
    # Specific Character Set does not apply to CS or DA (PS3.5 6.1.2.3): GB18030 bytes in
    # a date are bad bytes, and the warning still says what the data set declares.
    name = "王^小明".encode("gb18030")
    written_and_read(tmp_path, name, "GB18030", Modality=("CS", "MR"), StudyDate=("DA", "20240101"))
    path = tmp_path / "instance.dcm"
    path.write_bytes(path.read_bytes().replace(b"20240101", b"2024" + "一".encode("gb18030") + b"01"))
    ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)

    assert charsets.text(ds, "Modality") == "MR"
    assert charsets.text(ds, "PatientName") == "王^小明"
    assert charsets.text(ds, "StudyDate") == "2024\ufffd\ufffd01"
    (record,) = charset_warnings(caplog)
    assert "StudyDate" in record.getMessage() and "'GB18030'" in record.getMessage()


def test_it_drops_unknown_escape_sequences_with_a_warning(tmp_path, caplog):
    ds = written_and_read(tmp_path, b"Wang\x1b$)Z^Xiao", ["", "ISO 2022 IR 58"])

    assert charsets.person_name(ds, "PatientName")[0] == "Wang^Xiao"
    (record,) = charset_warnings(caplog)
    assert "unknown escape sequence" in record.getMessage()


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom's, on writing and reading them
def test_it_forgives_misspelt_and_misplaced_declarations(tmp_path):
    for declared in ("ISO IR 192", "UTF-8", "\\ISO_IR 192"):
        ds = written_and_read(tmp_path, "王^小明".encode(), declared)
        assert charsets.person_name(ds, "PatientName")[0] == "王^小明", declared


def test_ingest_reads_headers_with_the_fallback(tmp_path):
    from imaging import ingest

    written = written_and_read(tmp_path, "王^小明".encode("gb18030"), None)
    assert charsets.text(written, "SpecificCharacterSet") == ""

    read = ingest.read_header(tmp_path / "instance.dcm", fallback_charset="GB18030")

    assert charsets.person_name(read, "PatientName")[0] == "王^小明"


@pytest.mark.parametrize(
    ("file", "declared"),
    [
        ("chrH31", ["", "ISO 2022 IR 87"]),
        ("chrH32", ["ISO 2022 IR 13", "ISO 2022 IR 87"]),
        ("chrI2", ["", "ISO 2022 IR 149"]),
        ("chrX2", "GB18030"),
    ],
)
def test_it_encodes_person_names_as_the_standard_examples(file, declared):
    ds = charset_file(file)
    full = charsets.person_name(ds, "PatientName")[0]

    # The files pad with a space or end with an empty phonetic group.
    assert charsets.encode_person_name(full, declared) == ds.get_item("PatientName").value.rstrip(b" =")


def test_it_encodes_ir58_with_escape_sequences(tmp_path):
    encoded = charsets.encode_person_name("Wang^XiaoMing=王^小明", ["", "ISO 2022 IR 58"])

    assert encoded == b"Wang^XiaoMing=" + ESC_IR58 + gb2312("王") + b"^" + ESC_IR58 + gb2312("小明")
    ds = written_and_read(tmp_path, encoded, ["", "ISO 2022 IR 58"])
    assert charsets.person_name(ds, "PatientName")[0] == "Wang^XiaoMing=王^小明"


def test_it_refuses_to_encode_what_the_character_sets_cannot_hold():
    with pytest.raises(UnicodeEncodeError):
        charsets.encode_person_name("김", ["", "ISO 2022 IR 58"])


ASCII_VALUES = [b"", b"ZHANG^WEI", b"Wang^Xiao Ming=^=", b"CT\\MR\\DR", b"1.2.840\\3.4", b"tab\there ~ `{|}"]
DECLARATIONS = ["", "ISO_IR 100", "ISO_IR 192", "GB18030", "GBK", "\\ISO 2022 IR 58", "ISO 2022 IR 6\\ISO 2022 IR 58"]
DECLARATIONS += ["ISO_IR 13", "\\ISO 2022 IR 87", "\\ISO 2022 IR 149", "ISO_IR 144", "ISO_IR 166"]
DECLARATIONS += ["ISO_IR 13\\ISO 2022 IR 87"]


@pytest.mark.parametrize("vr", ["PN", "LO", "SH", "LT", "UC"])
@pytest.mark.parametrize("declared", DECLARATIONS)
def test_plain_ascii_values_read_as_pydicom_reads_them_under_every_declaration(declared, vr):
    """The ASCII shortcut of ``charsets._decode`` gives what pydicom's own decoder gives (and so the long way)."""
    from pydicom.charset import convert_encodings, decode_bytes

    encodings = convert_encodings(declared.split("\\"))
    delimiters = {"PN": {"\\", "^", "="}, "LT": set(), "UC": set()}.get(vr, {"\\"})
    for raw in ASCII_VALUES:
        expected = decode_bytes(raw, encodings, delimiters)
        assert charsets.decode(raw, declared, vr=vr) == expected, (raw, declared)
