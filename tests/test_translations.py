"""Every string we mark for translation has its Simplified Chinese, and the committed .mo is the .po's.

The msgids are found as ``manage.py makemessages`` finds them (xgettext from
Debian's gettext package, over our Python code and templates), in a copy of the
sources in a temporary directory: the committed locale/zh_Hans/LC_MESSAGES/django.po
is never rewritten by the test. A failure lists each untranslated msgid with the
places it comes from, ready to be translated in that .po.
"""

import ast
import gettext
import hashlib
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.procs import ROOT

LOCALE_DIR = ROOT / "locale" / "zh_Hans" / "LC_MESSAGES"
PO = LOCALE_DIR / "django.po"
MO = LOCALE_DIR / "django.mo"

# Not part of the web interface: left out of the copy makemessages reads.
NOT_SOURCES = {"tests", "bench", "docs", "docker"}
NEVER_COPIED = (".git", ".venv", "var", "node_modules", "__pycache__", "staticfiles", "test-artifacts", "*.mo")


@dataclass
class Entry:
    msgid: str = ""
    msgid_plural: str | None = None
    msgctxt: str | None = None
    msgstr: dict[int, str] = field(default_factory=dict)
    flags: set[str] = field(default_factory=set)
    references: list[str] = field(default_factory=list)

    @property
    def key(self) -> tuple:
        return (self.msgctxt, self.msgid, self.msgid_plural)

    def describe(self) -> str:
        text = f"msgid {self.msgid!r}" + (f" (plural {self.msgid_plural!r})" if self.msgid_plural else "")
        if self.msgctxt is not None:
            text = f"msgctxt {self.msgctxt!r} " + text
        return text + (f"\n      from {', '.join(self.references)}" if self.references else "")


def parse_po(text: str) -> list[Entry]:
    """The entries of a .po file (header and obsolete ``#~`` entries left out)."""
    entries: list[Entry] = []
    entry, target = Entry(), None

    def finish():
        nonlocal entry, target
        if target is not None and entry.msgid:
            entries.append(entry)
        entry, target = Entry(), None

    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#~"):
            continue
        if line.startswith("#"):
            if target is not None and target[0] == "msgstr":
                finish()
            if line.startswith("#:"):
                entry.references += line[2:].split()
            elif line.startswith("#,"):
                entry.flags |= {flag.strip() for flag in line[2:].split(",")}
            continue
        keyword, _, rest = line.partition(" ")
        if line.startswith('"'):
            value = ast.literal_eval(line)
        else:
            if keyword in ("msgctxt", "msgid") and target is not None and target[0] == "msgstr":
                finish()
            value = ast.literal_eval(rest)
            match = re.fullmatch(r"msgstr\[(\d+)\]", keyword)
            target = ("msgstr", int(match[1])) if match else ("msgstr", 0) if keyword == "msgstr" else (keyword,)
            if target[0] == "msgid_plural":
                entry.msgid_plural = ""
            if target[0] == "msgctxt":
                entry.msgctxt = ""
        if target[0] == "msgstr":
            entry.msgstr[target[1]] = entry.msgstr.get(target[1], "") + value
        else:
            setattr(entry, target[0], (getattr(entry, target[0]) or "") + value)
    finish()
    return entries


def test_the_po_parser_reads_plurals_contexts_flags_and_continued_lines():
    entries = parse_po(
        'msgid ""\nmsgstr ""\n"Language: zh_Hans\\n"\n\n'
        "#: a.py:1 b.html:2\n#, fuzzy, python-format\n"
        'msgctxt "menu"\nmsgid ""\n"%(n)s \\"image\\""\nmsgid_plural "%(n)s images"\n'
        'msgstr[0] "%(n)s 幅"\n"图像"\n\n'
        '#~ msgid "gone"\n#~ msgstr "没了"\n'
        'msgid "Plain"\nmsgstr ""\n'
    )
    assert [e.key for e in entries] == [("menu", '%(n)s "image"', "%(n)s images"), (None, "Plain", None)]
    assert entries[0].msgstr == {0: "%(n)s 幅图像"} and entries[1].msgstr == {0: ""}
    assert entries[0].flags == {"fuzzy", "python-format"} and entries[0].references == ["a.py:1", "b.html:2"]


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> Path:
    """A copy of our code and templates without their catalogs, for makemessages to write into."""
    if not shutil.which("xgettext") or not shutil.which("msgfmt"):
        pytest.fail("gettext is not installed (make test installs Debian's gettext package)")
    source = tmp_path_factory.mktemp("makemessages") / "src"

    def ignored(directory, names):
        skip = set(shutil.ignore_patterns(*NEVER_COPIED)(directory, names))
        return skip | (NOT_SOURCES & set(names) if Path(directory) == ROOT else set())

    shutil.copytree(ROOT, source, ignore=ignored, symlinks=True)
    for po in (source / "locale" / "zh_Hans" / "LC_MESSAGES").glob("*.po"):
        po.unlink()
    return source


def makemessages(source: Path, domain: str) -> list[Entry]:
    """The msgids makemessages finds for ``domain``, with their source locations (none: [])."""
    before = {po: hashlib.sha256(po.read_bytes()).hexdigest() for po in LOCALE_DIR.glob("*.po")}
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "imaging.settings", "VAR_DIR": str(source.parent / "var")}
    command = ["manage.py", "makemessages", "--locale", "zh_Hans", "--domain", domain, "--no-wrap", "--verbosity", "0"]
    done = subprocess.run([sys.executable, *command], cwd=source, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    after = {po: hashlib.sha256(po.read_bytes()).hexdigest() for po in LOCALE_DIR.glob("*.po")}
    assert after == before, "the test rewrote a committed .po"
    found = source / "locale" / "zh_Hans" / "LC_MESSAGES" / f"{domain}.po"
    return parse_po(found.read_text(encoding="utf-8")) if found.exists() else []


@pytest.fixture(scope="module")
def marked(sources) -> list[Entry]:
    """What makemessages finds in our Python code and templates."""
    return makemessages(sources, "django")


@pytest.fixture(scope="module")
def committed() -> dict[tuple, Entry]:
    return catalog(PO)


def catalog(po: Path) -> dict[tuple, Entry]:
    return {entry.key: entry for entry in parse_po(po.read_text(encoding="utf-8"))}


def untranslated(marked: list[Entry], committed: dict[tuple, Entry], po: Path) -> str:
    """What a failure says: each marked msgid without a usable translation, and where it comes from."""
    problems = []
    for entry in marked:
        ours = committed.get(entry.key)
        if ours is None:
            problems.append(f"  not in the .po: {entry.describe()}")
        elif "fuzzy" in ours.flags:
            problems.append(f"  fuzzy: {entry.describe()}")
        elif not ours.msgstr or not all(ours.msgstr.values()):
            problems.append(f"  empty msgstr: {entry.describe()}")
    if not problems:
        return ""
    return (
        f"{len(problems)} marked string(s) without a Simplified Chinese translation in "
        f"{po.relative_to(ROOT)} (add each msgid with its msgstr, then "
        "`manage.py compilemessages -l zh_Hans`):\n" + "\n".join(problems)
    )


def test_makemessages_finds_our_marked_strings(marked):
    # The extraction itself works: strings from models, admin code and templates are there.
    msgids = {entry.msgid for entry in marked}
    assert {"modality node", "Test connection (C-ECHO)", "This server", "Sign in"} <= msgids
    assert any(ref.startswith("templates/") for entry in marked for ref in entry.references)


def test_every_marked_string_has_a_simplified_chinese_translation(marked, committed):
    problems = untranslated(marked, committed, PO)
    assert not problems, problems


def test_strings_marked_in_javascript_have_their_catalog(sources):
    # Our pages' scripts (the viewer) may mark strings for Django's JavaScriptCatalog:
    # they need locale/zh_Hans/LC_MESSAGES/djangojs.po, held to the same rule.
    js_po = LOCALE_DIR / "djangojs.po"
    marked_js = makemessages(sources, "djangojs")
    if not js_po.exists():
        assert not marked_js, f"strings marked in JavaScript but no {js_po.relative_to(ROOT)}:\n" + "\n".join(
            f"  {entry.describe()}" for entry in marked_js
        )
    else:
        problems = untranslated(marked_js, catalog(js_po), js_po)
        assert not problems, problems


PLACEHOLDER = re.compile(r"%(?:\([^)]+\))?[-#0 +]*\d*(?:\.\d+)?[sdifrxXeEgGco]|\{[A-Za-z_][A-Za-z0-9_]*\}|\{\d*\}")


def placeholders(text: str) -> list[str]:
    return sorted(PLACEHOLDER.findall(text.replace("%%", "")))


def test_translations_keep_every_placeholder():
    problems = []
    entries = [entry for po in sorted(LOCALE_DIR.glob("*.po")) for entry in catalog(po).values()]
    assert entries
    for entry in entries:
        expected = placeholders(entry.msgid_plural if entry.msgid_plural is not None else entry.msgid)
        for n, text in entry.msgstr.items():
            if text and placeholders(text) != expected:
                problems.append(f"  msgstr[{n}] {text!r} has {placeholders(text)}, {entry.describe()} has {expected}")
    assert not problems, "translations that lost or changed a placeholder:\n" + "\n".join(problems)


@pytest.mark.parametrize("domain", ["django", "djangojs"])
def test_the_committed_mo_is_the_compiled_po(tmp_path, domain):
    po, mo = LOCALE_DIR / f"{domain}.po", LOCALE_DIR / f"{domain}.mo"
    if domain != "django" and not po.exists():
        assert not mo.exists(), f"{mo.relative_to(ROOT)} without its .po"
        return
    compiled = tmp_path / f"{domain}.mo"
    done = subprocess.run(["msgfmt", "--check", "-o", compiled, po], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert mo.exists(), f"{mo.relative_to(ROOT)} is missing: run `manage.py compilemessages -l zh_Hans` and commit it"
    with mo.open("rb") as ours, compiled.open("rb") as fresh:
        assert gettext.GNUTranslations(ours)._catalog == gettext.GNUTranslations(fresh)._catalog, (
            f"{mo.relative_to(ROOT)} is not the compiled {po.relative_to(ROOT)}: "
            "run `manage.py compilemessages -l zh_Hans` and commit the .mo"
        )


def installed_catalogs() -> dict[str, dict]:
    """The zh_Hans catalogs of Django and of every installed app that has one (ours have none of their own)."""
    import django
    from django.apps import apps

    folders = [Path(django.__file__).parent / "conf"] + [Path(app.path) for app in apps.get_app_configs()]
    catalogs = {}
    for folder in folders:
        mo = folder / "locale" / "zh_Hans" / "LC_MESSAGES" / "django.mo"
        if mo.exists() and mo != MO:
            with mo.open("rb") as f:
                catalogs[str(folder.relative_to(folder.parents[1]))] = gettext.GNUTranslations(f)._catalog
    return catalogs


def test_our_catalog_does_not_retranslate_what_django_and_the_apps_translate(committed):
    # Our catalog comes first (LOCALE_PATHS) for every msgid on every page: a plain "Change"
    # of ours turned the admin's 修改 into 切换. Give such a string a context (pgettext).
    catalogs = installed_catalogs()
    assert "django/conf" in catalogs and "contrib/admin" in catalogs, sorted(catalogs)
    problems = []
    for entry in committed.values():
        key = entry.msgid if entry.msgctxt is None else f"{entry.msgctxt}\x04{entry.msgid}"
        ours = entry.msgstr.get(0, "")
        for package, catalog in catalogs.items():
            theirs = catalog.get(key if entry.msgid_plural is None else (key, 0))
            if theirs and ours and theirs.strip() != ours.strip():
                problems.append(f"  {entry.describe()}: ours {ours!r}, {package}'s {theirs!r}")
    assert not problems, "our translation would replace another package's (use a context):\n" + "\n".join(problems)
