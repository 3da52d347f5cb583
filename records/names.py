"""How a person's name is shown on our pages: one function, in the active language's way.

DICOM writes a Person Name as up to three groups, "alphabetic=ideographic=phonetic",
each "family^given^middle^prefix^suffix" (PS3.5 6.2.1). A Chinese department writes
the characters, family name first, with no space: 张伟; the romanised form, when
there is one, follows in brackets: 张伟 (Zhang Wei). In English the romanised form
comes first, the family name in capitals as English-speaking hospitals write Chinese
names, so that "ZHANG Wei" reads unambiguously: ZHANG Wei (张伟).
"""

from django.utils import translation


def _components(group: str) -> list[str]:
    return [part.strip() for part in (group or "").split("^")]


def ideographic_name(group: str) -> str:
    """张^伟 -> 张伟: family name first, no separator (Chinese, Japanese and Korean names are written so)."""
    family, given, middle, prefix, suffix = (_components(group) + [""] * 5)[:5]
    return "".join(part for part in (prefix, family, given, middle, suffix) if part)


def alphabetic_name(group: str) -> str:
    """Zhang^Wei -> ZHANG Wei; Smith^John^^Dr -> Dr SMITH John: family name first, in capitals."""
    family, given, middle, prefix, suffix = (_components(group) + [""] * 5)[:5]
    parts = (prefix, family.upper(), given, middle)
    text = " ".join(part for part in parts if part)
    return f"{text}, {suffix}" if suffix else text


def _group_name(group: str) -> str:
    """A group as written: characters as ``ideographic_name``, letters as ``alphabetic_name``.

    Many modalities send a Chinese name in characters in the Alphabetic group (with
    GB18030 or GBK): 张^伟 there is still 张伟, not "张 伟". (From U+2E80 on: CJK radicals,
    kana, ideographs, Hangul, full-width forms; accented Latin stays alphabetic.)
    """
    return ideographic_name(group) if any(ord(c) >= 0x2E80 for c in group) else alphabetic_name(group)


def person_name(alphabetic: str = "", ideographic: str = "", phonetic: str = "", language: str | None = None) -> str:
    """The name as a page shows it in ``language`` (the active language by default)."""
    language = (language or translation.get_language() or "en").lower()
    ideo = ideographic_name(ideographic)
    alpha = _group_name(alphabetic)
    phon = _group_name(phonetic)
    if language.startswith("zh"):
        first, second = ideo or alpha or phon, alpha if ideo else ""
    else:
        first, second = alpha or ideo or phon, ideo if alpha else ""
    return f"{first} ({second})" if second else first


def display_name(patient) -> str:
    """A patient's name (records.models.Patient, or anything with its three name fields) for a page."""
    return person_name(patient.name_alphabetic, patient.name_ideographic, patient.name_phonetic)
