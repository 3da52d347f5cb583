"""Text from data sets as proper Unicode, whatever character set the modality used.

First version; see tests/test_charsets.py.
"""

from pydicom.dataset import Dataset


def apply_fallback(ds: Dataset, fallback: str) -> None:
    """Declare ``fallback`` on a data set that declares no character set.

    Must be called before any text element is read (pydicom decodes lazily).
    """
    if "SpecificCharacterSet" not in ds and fallback:
        ds.SpecificCharacterSet = fallback


def text(ds: Dataset, keyword: str) -> str:
    """A text element's value as a str ('' when absent or empty)."""
    value = ds.get(keyword)
    if value is None:
        return ""
    if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue":
        return "\\".join(str(v) for v in value)
    return str(value).strip()


def person_name(ds: Dataset, keyword: str) -> tuple[str, str, str, str]:
    """(full, alphabetic, ideographic, phonetic) groups of a Person Name element."""
    value = ds.get(keyword)
    if value is None or value == "":
        return "", "", "", ""
    alphabetic = str(value.alphabetic or "")
    ideographic = str(value.ideographic or "")
    phonetic = str(value.phonetic or "")
    groups = [alphabetic, ideographic, phonetic]
    while groups and not groups[-1]:
        groups.pop()
    return "=".join(groups), alphabetic, ideographic, phonetic
