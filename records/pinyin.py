"""Pinyin and initials of patient names, computed when a name is indexed.

Doctors type "zw", "zhangwei" or "zhang wei" for 张伟. pypinyin gives the common
reading of a character; a surname often reads otherwise (曾 is céng in 曾经 but
zēng as a surname), and pypinyin has no surname mode, so the family name goes
through our table first, then the given name through pypinyin's phrase
dictionary (which knows that 乐 in 快乐 is lè).

Names arrive in characters only (an Ideographic group, or characters in the
Alphabetic group), in pinyin only ("ZHANG^WEI"), or both. For pinyin sent as
letters, the initials come from splitting each component into syllables
("XIAOMING" -> xiao ming -> xm).

Everything here is a plain function of strings; records/search.py stores the
results on Patient (``name_keys``) and matches queries with ``normalise``.
"""

import functools
import re
import unicodedata

from pypinyin import Style, lazy_pinyin
from pypinyin.pinyin_dict import pinyin_dict

# Surnames that read differently from the character's common reading (or whose
# common reading pypinyin might not pick): character(s) -> syllables.
SURNAME_READINGS: dict[str, tuple[str, ...]] = {
    "曾": ("zeng",),
    "单": ("shan",),
    "解": ("xie",),
    "仇": ("qiu",),
    "区": ("ou",),
    "查": ("zha",),
    "翟": ("zhai",),
    "覃": ("qin",),
    "朴": ("piao",),
    "盖": ("ge",),
    "缪": ("miao",),
    "员": ("yun",),
    "贲": ("ben",),
    "秘": ("bi",),
    "种": ("chong",),
    "繁": ("po",),
    "句": ("gou",),
    "召": ("shao",),
    "冼": ("xian",),
    "谌": ("chen",),
    "隗": ("wei",),
    "眭": ("sui",),
    "郇": ("huan",),
    "折": ("she",),
    "尉": ("wei",),
    "万": ("wan",),
    "长": ("chang",),
    "重": ("chong",),
    "沈": ("shen",),
    "柏": ("bai",),
    "薄": ("bo",),
    "任": ("ren",),
    "华": ("hua",),
    "纪": ("ji",),
    "燕": ("yan",),
    "宓": ("mi",),
    "阚": ("kan",),
    "过": ("guo",),
    "黑": ("he",),
    "蕃": ("pi",),
    "洗": ("xian",),
    "能": ("nai",),
    "都": ("du",),
    "卜": ("bu",),
    "藏": ("zang",),
    "曲": ("qu",),
    "朝": ("chao",),
    "应": ("ying",),
    "相": ("xiang",),
    "强": ("qiang",),
    "殷": ("yin",),
    "宿": ("su",),
    "么": ("yao",),
    "叶": ("ye",),
    "石": ("shi",),
    "牟": ("mou",),
    "莘": ("shen",),
    "祭": ("zhai",),
    "陆": ("lu",),
    "费": ("fei",),
    "车": ("che",),
    "褚": ("chu",),
    # Compound surnames (复姓): two characters, read as a unit.
    "欧阳": ("ou", "yang"),
    "司马": ("si", "ma"),
    "诸葛": ("zhu", "ge"),
    "上官": ("shang", "guan"),
    "东方": ("dong", "fang"),
    "皇甫": ("huang", "fu"),
    "令狐": ("ling", "hu"),
    "慕容": ("mu", "rong"),
    "司徒": ("si", "tu"),
    "夏侯": ("xia", "hou"),
    "长孙": ("zhang", "sun"),
    "宇文": ("yu", "wen"),
    "尉迟": ("yu", "chi"),
    "万俟": ("mo", "qi"),
    "公孙": ("gong", "sun"),
    "轩辕": ("xuan", "yuan"),
    "西门": ("xi", "men"),
    "南宫": ("nan", "gong"),
    "独孤": ("du", "gu"),
    "端木": ("duan", "mu"),
    "呼延": ("hu", "yan"),
    "澹台": ("tan", "tai"),
    "百里": ("bai", "li"),
    "东郭": ("dong", "guo"),
    "公羊": ("gong", "yang"),
    "闻人": ("wen", "ren"),
    "赫连": ("he", "lian"),
    "申屠": ("shen", "tu"),
    "太史": ("tai", "shi"),
    "钟离": ("zhong", "li"),
    "拓跋": ("tuo", "ba"),
    "单于": ("chan", "yu"),
    "濮阳": ("pu", "yang"),
    "淳于": ("chun", "yu"),
    "司空": ("si", "kong"),
    "公冶": ("gong", "ye"),
    "宗政": ("zong", "zheng"),
    "乐正": ("yue", "zheng"),
    "鲜于": ("xian", "yu"),
    "闾丘": ("lv", "qiu"),
    "左丘": ("zuo", "qiu"),
    "亓官": ("qi", "guan"),
    "第五": ("di", "wu"),
    "仲孙": ("zhong", "sun"),
    "叔孙": ("shu", "sun"),
    "巫马": ("wu", "ma"),
    "公西": ("gong", "xi"),
    "漆雕": ("qi", "diao"),
    "谷梁": ("gu", "liang"),
    "段干": ("duan", "gan"),
    "颛孙": ("zhuan", "sun"),
    "司寇": ("si", "kou"),
}
COMPOUND_SURNAMES = frozenset(s for s in SURNAME_READINGS if len(s) == 2)

# Characters removed before matching: DICOM's component separator and what people
# put between syllables ("Xiao-Ming", "Xi'an", "Zhang, Wei").
_SEPARATORS = re.compile(r"[\s^,.'’\-·•_]+")


def is_han(char: str) -> bool:
    """A CJK ideograph (the Unified block and its extensions, and the compatibility block)."""
    code = ord(char)
    return (
        0x4E00 <= code <= 0x9FFF or 0x3400 <= code <= 0x4DBF or 0x20000 <= code <= 0x2FA1F or 0xF900 <= code <= 0xFAFF
    )


def has_han(text: str) -> bool:
    return any(is_han(c) for c in text)


def normalise(text: str) -> str:
    """Lower case, full-width folded (NFKC), tone marks dropped (ǚ -> v), no separators.

    Applied to stored names and to what a user types alike, so "Zhang Wei",
    "ZHANG^WEI" and "zhangwei" are one string.
    """
    text = unicodedata.normalize("NFKC", text).casefold()
    text = text.replace("ü", "v").replace("ǖ", "v").replace("ǘ", "v").replace("ǚ", "v").replace("ǜ", "v")
    text = "".join(c for c in unicodedata.normalize("NFD", text) if not unicodedata.combining(c))
    return _SEPARATORS.sub("", text)


def _syllables_of(text: str) -> list[str]:
    """Pinyin syllables of characters with pypinyin's phrase dictionary; other characters as they are."""
    result = []
    for syllable in lazy_pinyin(text, style=Style.NORMAL, errors=lambda chars: list(chars)):
        syllable = normalise(syllable)
        if syllable:
            result.append(syllable)
    return result


def _family_syllables(family: str) -> list[str]:
    """The family name read with the surname table: compound surnames first, then single ones."""
    syllables: list[str] = []
    i = 0
    while i < len(family):
        if family[i : i + 2] in COMPOUND_SURNAMES:
            syllables += SURNAME_READINGS[family[i : i + 2]]
            i += 2
        elif family[i] in SURNAME_READINGS:
            syllables += SURNAME_READINGS[family[i]]
            i += 1
        else:
            syllables += _syllables_of(family[i])
            i += 1
    return syllables


def split_surname(characters: str) -> tuple[str, str]:
    """(surname, given name) of a name written in characters without a separator: 欧阳娜娜 -> 欧阳, 娜娜."""
    characters = characters.strip()
    if characters[:2] in COMPOUND_SURNAMES:
        return characters[:2], characters[2:]
    return characters[:1], characters[1:]


def han_syllables(group: str) -> list[str]:
    """The pinyin syllables of a name group written in characters ("张^伟", "张伟", "欧阳^娜娜").

    The family name is the group's first component when the group has
    components, else the first (compound) surname of its characters; the rest
    is the given name, read as a phrase.
    """
    components = [c.strip() for c in group.split("^")]
    if len(components) > 1 and components[0]:
        family, given = components[0], "".join(components[1:])
    else:
        family, given = split_surname("".join(components))
    return _family_syllables(family) + _syllables_of(given)


@functools.cache
def _syllable_set() -> frozenset[str]:
    """Every toneless pinyin syllable pypinyin knows (about 400), for splitting pinyin written as letters."""
    syllables = set()
    for readings in pinyin_dict.values():
        for reading in readings.split(","):
            syllable = normalise(reading)
            if syllable.isascii() and syllable.isalpha():
                syllables.add(syllable)
    return frozenset(syllables)


def split_pinyin(word: str, *, limit: int = 4) -> list[list[str]]:
    """The ways of writing ``word`` ("xiaoming") as the fewest pinyin syllables (at most ``limit``).

    [] when it is not pinyin ("smith"). "xian" gives [["xian"]]; "changan" gives
    both [["chang", "an"], ["chan", "gan"]].
    """
    known = _syllable_set()
    word = word.lower()
    n = len(word)
    if not n or not word.isascii() or not word.isalpha():
        return []
    # best[i]: fewest syllables for word[i:] (None: impossible), computed from the end.
    best: list[int | None] = [None] * (n + 1)
    best[n] = 0
    for i in range(n - 1, -1, -1):
        for j in range(i + 1, min(n, i + 6) + 1):
            if word[i:j] in known and best[j] is not None and (best[i] is None or best[j] + 1 < best[i]):
                best[i] = best[j] + 1
    if best[0] is None:
        return []
    results: list[list[str]] = []

    def walk(i: int, path: list[str]) -> None:
        if len(results) >= limit:
            return
        if i == n:
            results.append(path)
            return
        for j in range(i + 1, min(n, i + 6) + 1):
            if word[i:j] in known and best[j] is not None and best[j] + 1 == best[i]:
                walk(j, [*path, word[i:j]])

    walk(0, [])
    return results


def _letter_initials(group: str) -> list[str]:
    """Initials of a name group written in letters: pinyin components split into syllables."""
    variants = [""]
    for component in (c for c in re.split(r"[\s^,\-'’.]+", group) if c):
        word = normalise(component)
        if not word:
            continue
        splits = split_pinyin(word) or [[word]]
        choices = list(dict.fromkeys("".join(s[0] for s in split) for split in splits))
        variants = [v + c for v in variants for c in choices][:8]
    return [v for v in variants if v]


@functools.lru_cache(maxsize=4096)  # the 300 slices of a CT carry the same name: computed once
def name_keys(alphabetic: str, ideographic: str = "", phonetic: str = "") -> dict[str, str]:
    """The search keys of a Person Name's groups, as stored on Patient.

    - ``name_search``: each group normalised, groups apart (a match never spans two);
    - ``name_pinyin``: the full pinyin of each group written in characters, the
      first one being the reading used for sorting; "lv" also as "lu";
    - ``name_initials``: initials of the characters' pinyin and of names sent in letters.
    Each is a space-separated list of distinct variants. The dict is shared (cached): do not change it.
    """
    groups = [g for g in (alphabetic, ideographic, phonetic) if g and g.strip()]
    search = [normalise(g) for g in groups]
    pinyins: list[str] = []
    initials: list[str] = []
    for group in groups:
        if has_han(group):
            syllables = han_syllables(group)
            full = "".join(syllables)
            pinyins.append(full)
            if "v" in full:
                pinyins.append(full.replace("v", "u"))
            initials.append("".join(s[0] for s in syllables))
        else:
            initials += _letter_initials(group)
    # A name sent in letters sorts by them ("zhangwei"), as one in characters does by its pinyin.
    if not pinyins:
        pinyins = [s for s in search if s.isascii()][:1]

    def join(values: list[str]) -> str:
        return " ".join(dict.fromkeys(v for v in values if v))

    return {"name_search": join(search), "name_pinyin": join(pinyins), "name_initials": join(initials)}


def _written(syllables: list[str]) -> str:
    """Syllables written as one name component: "Xiaoming", "Ouyang", "Xi'an" (an apostrophe before a, o, e)."""
    word = ""
    for syllable in syllables:
        if word and syllable[:1] in ("a", "o", "e"):
            word += "'"
        word += syllable
    return word[:1].upper() + word[1:]


def romanise(family: str, given: str = "") -> tuple[str, str]:
    """The family and given name in pinyin, as DICOM's Alphabetic group writes them: 张, 伟 -> Zhang, Wei.

    The family name is read with the surname table (单 Shan, 曾 Zeng, 欧阳 Ouyang), the
    given name as a phrase (王^乐乐 -> Wang, Lele). Characters without a reading are
    kept as they are (the caller checks that the result is ASCII).
    """
    family, given = family.strip(), given.strip()
    return _written(_family_syllables(family)), _written(_syllables_of(given))
