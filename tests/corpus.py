"""A deterministic, varied text corpus (> 5 MiB of UTF-8) for tokenizer equality tests and benchmarks.

Nothing is downloaded: the corpus is made of

* real source and data files (.py .c .h .txt .json) read from the Python standard library and the
  installed site-packages, in sorted path order, sampled across both trees;
* multilingual prose, addresses, names and jobs from Faker in many locales and scripts (CJK, Arabic,
  Devanagari, Cyrillic, Greek, Hebrew, Thai, Latin with diacritics, ...), with a fixed seed;
* hand-made hard cases: emoji (ZWJ sequences, skin tones, flags, keycaps, tag sequences), whitespace
  runs (spaces, tabs, CRLF, Unicode spaces, very long runs), control and invisible characters, lone
  and stacked combining marks, mixed-script words and numbers of many digits.

The same Python, Faker version and installed packages give the same corpus. It is cached on disk
under bench/data/ (git-ignored), keyed by everything it depends on; `load_corpus()` is the entry
point for tests (import as `corpus` from tests/) and for bench/tokenizer.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import sys
import sysconfig
from dataclasses import dataclass
from datetime import datetime
from importlib.metadata import version
from pathlib import Path

CORPUS_VERSION = 1
MIN_CORPUS_BYTES = 5 * 1024 * 1024  # the tests require at least 5 MiB of UTF-8
CACHE_DIR = Path(__file__).resolve().parent.parent / "bench" / "data"

SOURCE_SUFFIXES = (".py", ".c", ".h", ".txt", ".json")
# Bytes of file text to take from each suffix, over both trees (stdlib first, then site-packages).
SOURCE_BUDGET = {".py": 1_900_000, ".c": 250_000, ".h": 450_000, ".txt": 250_000, ".json": 250_000}
MAX_SOURCE_FILE = 96 * 1024  # leaves out the huge generated files (and tokenizer vocabularies)
MIN_SOURCE_FILE = 64

# Locales and how much prose (UTF-8 bytes) to make with each. Locales without a native lorem
# provider (ko_KR, hi_IN, ka_GE, ta_IN) get their script from addresses, names and jobs.
# (Faker's city() is left out: for it_IT it depends on PYTHONHASHSEED.)
PROSE_LOCALES: dict[str, int] = {
    "zh_CN": 150_000,
    "zh_TW": 80_000,
    "ja_JP": 150_000,
    "ko_KR": 120_000,
    "ar_AA": 120_000,
    "fa_IR": 60_000,
    "hi_IN": 120_000,
    "bn_BD": 50_000,
    "ta_IN": 40_000,
    "ru_RU": 120_000,
    "uk_UA": 50_000,
    "el_GR": 100_000,
    "he_IL": 100_000,
    "th_TH": 100_000,
    "hy_AM": 40_000,
    "ka_GE": 40_000,
    "vi_VN": 80_000,
    "fr_FR": 90_000,
    "de_DE": 90_000,
    "es_ES": 80_000,
    "pt_BR": 60_000,
    "it_IT": 60_000,
    "pl_PL": 50_000,
    "cs_CZ": 40_000,
    "en_US": 80_000,
}
_NATIVE_LOREM = {
    "zh_CN", "zh_TW", "ja_JP", "ar_AA", "fa_IR", "bn_BD", "ru_RU", "uk_UA", "el_GR", "he_IL", "th_TH",
    "hy_AM", "vi_VN", "fr_FR", "de_DE", "es_ES", "it_IT", "pl_PL", "cs_CZ", "en_US",
}  # fmt: skip

# Unicode blocks the tests look for, and how many characters of each the corpus must hold.
SCRIPT_RANGES: dict[str, tuple[tuple[int, int], ...]] = {
    "Han": ((0x4E00, 0x9FFF), (0x3400, 0x4DBF)),
    "Hiragana/Katakana": ((0x3040, 0x30FF),),
    "Hangul": ((0xAC00, 0xD7AF), (0x1100, 0x11FF)),
    "Arabic": ((0x0600, 0x06FF),),
    "Devanagari": ((0x0900, 0x097F),),
    "Cyrillic": ((0x0400, 0x04FF),),
    "Greek": ((0x0370, 0x03FF), (0x1F00, 0x1FFF)),
    "Hebrew": ((0x0590, 0x05FF),),
    "Thai": ((0x0E00, 0x0E7F),),
    "Latin with diacritics": ((0x00C0, 0x024F), (0x1E00, 0x1EFF)),
    "Emoji": ((0x1F300, 0x1FAFF), (0x2600, 0x27BF)),
}


@dataclass(frozen=True)
class Document:
    kind: str  # "source", "prose", "emoji", "whitespace", "control", "mixed"
    name: str  # where it comes from (a file path relative to its tree, a locale, ...)
    text: str


def load_corpus(use_cache: bool = True) -> list[Document]:
    """The corpus; built once per environment and then read back from bench/data/."""
    sources = _select_source_files()
    key = _cache_key(sources)
    cache = CACHE_DIR / f"corpus-v{CORPUS_VERSION}-{key}.json"
    if use_cache and cache.is_file():
        try:
            raw = json.loads(cache.read_text(encoding="utf-8"))
            return [Document(*entry) for entry in raw]
        except (OSError, ValueError, TypeError):
            pass  # a damaged cache is rebuilt
    documents = build_corpus(sources)
    if use_cache:
        CACHE_DIR.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(
            json.dumps([[d.kind, d.name, d.text] for d in documents], ensure_ascii=False), encoding="utf-8"
        )
        tmp.replace(cache)
        for old in CACHE_DIR.glob("corpus-v*.json"):
            if old != cache:
                old.unlink(missing_ok=True)
    return documents


def corpus_texts(use_cache: bool = True) -> list[str]:
    return [d.text for d in load_corpus(use_cache)]


def total_bytes(documents: list[Document] | list[str]) -> int:
    """Size of the documents as UTF-8."""
    return sum(len((d.text if isinstance(d, Document) else d).encode("utf-8")) for d in documents)


def script_counts(texts: list[str]) -> dict[str, int]:
    """How many characters of each SCRIPT_RANGES script the texts hold."""
    lookup: dict[int, str] = {}
    for script, ranges in SCRIPT_RANGES.items():
        for lo, hi in ranges:
            for cp in range(lo, hi + 1):
                lookup[cp] = script
    counts = dict.fromkeys(SCRIPT_RANGES, 0)
    for text in texts:
        for ch in set(text):
            script = lookup.get(ord(ch))
            if script is not None:
                counts[script] += text.count(ch)
    return counts


def build_corpus(sources: list[tuple[str, Path]] | None = None) -> list[Document]:
    if sources is None:
        sources = _select_source_files()
    documents = [Document("source", label, text) for label, text in _read_sources(sources)]
    documents += _prose_documents()
    rng = random.Random(20240718)
    documents += _emoji_documents(rng)
    documents += _whitespace_documents(rng)
    documents += _control_documents(rng)
    documents += _mixed_documents(rng)
    return documents


# ---- source files --------------------------------------------------------------------------------


def _source_roots() -> list[tuple[str, Path]]:
    paths = sysconfig.get_paths()
    roots = [("stdlib", Path(paths["stdlib"]))]
    for key in ("purelib", "platlib"):
        root = Path(paths[key])
        if all(root != r for _, r in roots):
            roots.append(("site-packages" if key == "purelib" else "platlib", root))
    return roots


def _candidates(root: Path) -> list[tuple[Path, int]]:
    found: list[tuple[Path, int]] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(
            d for d in dirnames if d not in ("site-packages", "dist-packages", "__pycache__", ".git")
        )
        for name in sorted(filenames):
            if name.endswith(SOURCE_SUFFIXES):
                path = Path(dirpath, name)
                try:
                    size = path.stat().st_size
                except OSError:
                    continue
                if MIN_SOURCE_FILE <= size <= MAX_SOURCE_FILE:
                    found.append((path, size))
    return found


def _select_source_files() -> list[tuple[str, Path]]:
    """Files to read, in sorted path order: for each suffix, a spread-out sample up to its byte budget.

    A file is in the sample when the hash of its path ranks high enough, so installing or removing
    one package changes only a few picks instead of shifting all of them.
    """
    by_suffix: dict[str, list[tuple[str, Path, int]]] = {s: [] for s in SOURCE_SUFFIXES}
    for tree, root in _source_roots():
        if not root.is_dir():
            continue
        for path, size in _candidates(root):
            label = f"{tree}/{path.relative_to(root).as_posix()}"
            by_suffix[path.suffix].append((label, path, size))
    chosen: list[tuple[str, Path]] = []
    for suffix, files in by_suffix.items():
        budget, got = SOURCE_BUDGET[suffix], 0
        for label, path, size in sorted(files, key=lambda f: hashlib.sha1(f[0].encode()).digest()):
            if got >= budget:
                break
            chosen.append((label, path))
            got += size
    return sorted(chosen, key=lambda c: (not c[0].startswith("stdlib/"), c[0]))  # stdlib first


def _read_sources(sources: list[tuple[str, Path]]) -> list[tuple[str, str]]:
    out = []
    for label, path in sources:
        try:
            text = path.read_bytes().decode("utf-8")  # strict: files that are not UTF-8 are left out
        except (OSError, UnicodeDecodeError):
            continue
        out.append((label, text))
    return out


def _cache_key(sources: list[tuple[str, Path]]) -> str:
    h = hashlib.sha256()
    h.update(f"{CORPUS_VERSION}|{sys.version}|faker={version('faker')}\n".encode())
    h.update(Path(__file__).read_bytes())  # any change to this builder makes a new corpus
    for label, path in sources:
        try:
            st = path.stat()
        except OSError:
            continue
        h.update(f"{label}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


# ---- multilingual prose ----------------------------------------------------------------------------


def _prose_documents() -> list[Document]:
    from faker import Faker

    documents = []
    for index, (locale, budget) in enumerate(PROSE_LOCALES.items()):
        fake = Faker(locale)
        fake.seed_instance(1000 + index)
        rng = random.Random(index)
        parts: list[str] = []
        size, doc_no = 0, 0
        while size < budget:
            piece = _prose_piece(fake, locale, rng)
            parts.append(piece)
            size += len(piece.encode("utf-8"))
            if len(parts) >= 40 or size >= budget:
                documents.append(Document("prose", f"{locale}#{doc_no}", "".join(parts)))
                parts, doc_no = [], doc_no + 1
    return documents


def _prose_piece(fake, locale: str, rng: random.Random) -> str:
    choice = rng.random()
    if locale in _NATIVE_LOREM and choice < 0.6:
        if rng.random() < 0.5:
            return fake.paragraph(nb_sentences=rng.randint(2, 12)) + "\n\n"
        return fake.text(max_nb_chars=rng.choice((80, 200, 600))) + "\n"
    kind = rng.randrange(6)
    if kind == 0:
        return fake.address() + "\n"
    if kind == 1:
        return f"{fake.name()}, {_safe(fake, 'job')} — {_safe(fake, 'company')}\n"
    if kind == 2:
        names = ", ".join(fake.name() for _ in range(rng.randint(2, 6)))
        return f"{names}: {fake.street_address()} {fake.postcode()}\n"
    if kind == 3:
        when = fake.date_time_between(_EPOCH, _LATEST).isoformat(sep=rng.choice(" T"))  # not "now"-relative
        return f"{when} {fake.phone_number()} {fake.street_address()}\n"
    if kind == 4:
        return f"- {_safe(fake, 'job')}\t{fake.name()}\t{fake.address().replace(chr(10), ' ')}\n"
    return f"{fake.name()} ({fake.email()}) {fake.country()}\n"


_EPOCH = datetime(1970, 1, 1)
_LATEST = datetime(2030, 12, 31)


def _safe(fake, provider: str) -> str:
    try:
        return getattr(fake, provider)()
    except AttributeError:
        return fake.name()


# ---- emoji -----------------------------------------------------------------------------------------

ZWJ = "\u200d"
VS16 = "\ufe0f"
SKIN_TONES = ["\U0001f3fb", "\U0001f3fc", "\U0001f3fd", "\U0001f3fe", "\U0001f3ff"]
BASE_EMOJI = (
    "😀😃😄😁😆😅🤣😂🙂🙃😉😊😇🥰😍🤩😘😗☺😚😙🥲😋😛😜🤪😝🤑🤗🤭🤫🤔🤐🤨😐😑😶😏😒🙄😬🤥😌😔😪🤤😴😷🤒"
    "🤕🤢🤮🤧🥵🥶🥴😵🤯🤠🥳🥸😎🤓🧐😕😟🙁☹😮😯😲😳🥺😦😧😨😰😥😢😭😱😖😣😞😓😩😫🥱😤😡😠🤬😈👿💀☠💩"
    "🤡👹👺👻👽👾🤖😺😸😹😻😼😽🙀😿😾🙈🙉🙊💋💌💘💝💖💗💓💞💕💟❣💔❤🧡💛💚💙💜🤎🖤🤍💯💢💥💫💦"
    "🌍🌎🌏🌐🗺🗾🧭🏔⛰🌋🗻🏕🏖🏜🏝🏞🏟🏛🏗🧱🪨🪵🛖🏘🏚🏠🏡🏢🏣🏤🏥🏦🏨🏩🏪🏫🏬🏭🏯🏰💒🗼🗽⛪🕌🛕🕍⛩🕋"
    "🍇🍈🍉🍊🍋🍌🍍🥭🍎🍏🍐🍑🍒🍓🫐🥝🍅🫒🥥🥑🍆🥔🥕🌽🌶🫑🥒🥬🥦🧄🧅🍄🥜🌰🍞🥐🥖🫓🥨🥯🥞🧇🧀🍖"
    "⚽⚾🥎🏀🏐🏈🏉🎾🥏🎳🏏🏑🏒🥍🏓🏸🥊🥋🥅⛳⛸🎣🤿🎽🎿🛷🥌🎯🪀🪁🎱🔮🪄🧿🎮🕹🎰🎲🧩🧸🪅🪆♠♥♦♣♟"
    "🫠🫡🫢🫣🫤🫥🫦🫧🪷🪸🪹🪺🫶🫰🫵🫱🫲🫳🫴🛝🛞🛟🪩🪪🪫🪬🩼🫗🫘🫙🫚🫛🪻🪼🪽🪿🫎🫏"
)
PEOPLE = "👋🤚🖐✋🖖👌🤌🤏✌🤞🤟🤘🤙👈👉👆🖕👇☝👍👎✊👊🤛🤜👏🙌👐🤲🤝🙏💪🦵🦶👂🦻👃👶🧒👦👧🧑👱👨🧔👩🧓👴👵"
ZWJ_SEQUENCES = [
    "👨‍👩‍👧‍👦",
    "👩‍👩‍👦‍👦",
    "👨‍👨‍👧",
    "👩‍❤️‍💋‍👨",
    "👨‍❤️‍👨",
    "🏳️‍🌈",
    "🏳️‍⚧️",
    "🏴‍☠️",
    "🐕‍🦺",
    "🐈‍⬛",
    "🐻‍❄️",
    "🧑‍💻",
    "👩🏽‍💻",
    "👨🏿‍🚀",
    "🧑🏻‍🤝‍🧑🏿",
    "👩🏼‍🦰",
    "🧔🏾‍♂️",
    "🏃🏻‍♀️‍➡️",
    "❤️‍🔥",
    "❤️‍🩹",
    "😶‍🌫️",
    "😮‍💨",
    "😵‍💫",
    "👁️‍🗨️",
    "🧑‍🧑‍🧒‍🧒",
]
TAG_FLAGS = ["🏴󠁧󠁢󠁥󠁮󠁧󠁿", "🏴󠁧󠁢󠁳󠁣󠁴󠁿", "🏴󠁧󠁢󠁷󠁬󠁳󠁿"]
KEYCAPS = [f"{c}{VS16}\u20e3" for c in "0123456789#*"]
REGIONS = [
    "FR",
    "JP",
    "KR",
    "CN",
    "IN",
    "RU",
    "GR",
    "IL",
    "TH",
    "DE",
    "ES",
    "BR",
    "US",
    "UA",
    "EG",
    "UN",
    "EU",
]
FLAGS = ["".join(chr(0x1F1E6 + ord(c) - ord("A")) for c in code) for code in REGIONS]


def _random_emoji(rng: random.Random) -> str:
    kind = rng.randrange(8)
    if kind == 0:
        return rng.choice(ZWJ_SEQUENCES)
    if kind == 1:
        return rng.choice(PEOPLE) + rng.choice(SKIN_TONES)
    if kind == 2:
        return rng.choice(FLAGS)
    if kind == 3:
        return rng.choice(KEYCAPS + TAG_FLAGS)
    if kind == 4:
        return rng.choice(BASE_EMOJI) + VS16
    if kind == 5:  # a home-made ZWJ chain, valid or not
        return ZWJ.join(rng.choice(BASE_EMOJI + PEOPLE) for _ in range(rng.randint(2, 4)))
    if kind == 6:  # a lone regional indicator, a lone skin tone, a lone ZWJ
        return rng.choice([chr(0x1F1E6 + rng.randrange(26)), rng.choice(SKIN_TONES), ZWJ, VS16])
    return rng.choice(BASE_EMOJI)


EMOJI_CONTEXT = [
    "I love this",
    "東京で会いましょう",
    "좋아요",
    "Привет",
    "¡Qué bien!",
    "مرحبا",
    "नमस्ते",
    "OK",
    "",
    " ",
    "\n",
    "— done",
    "x",
    "123",
]


def _emoji_documents(rng: random.Random) -> list[Document]:
    documents = []
    for i in range(64):
        parts = []
        for _ in range(rng.randint(300, 900)):
            r = rng.random()
            if r < 0.55:
                parts.append(_random_emoji(rng))
            elif r < 0.75:
                parts.append(" ")
            else:
                parts.append(rng.choice(EMOJI_CONTEXT))
        documents.append(Document("emoji", f"emoji#{i}", "".join(parts)))
    every = "".join(BASE_EMOJI + PEOPLE) + "".join(ZWJ_SEQUENCES + TAG_FLAGS + KEYCAPS + FLAGS)
    every += "".join(p + t for p in PEOPLE for t in SKIN_TONES)
    documents.append(Document("emoji", "emoji#all", every))
    documents.append(Document("emoji", "emoji#spaced", " ".join(every)))
    return documents


# ---- whitespace --------------------------------------------------------------------------------------

UNICODE_SPACES = (
    "\u00a0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u202f\u205f\u3000"
)
LINE_BREAKS = ["\n", "\r\n", "\r", "\u0085", "\u2028", "\u2029", "\x0b", "\x0c"]
WORDS = ["def", "return", "x", "é", "日本", "слово", "λ", "שלום", "ไทย", "42", ".", "{", "}", "->", "#"]


def _whitespace_run(rng: random.Random, long: bool = False) -> str:
    n = (
        rng.choice((1000, 4096, 10000))
        if long
        else rng.choice((1, 1, 2, 3, 4, 7, 8, 15, 16, 17, 31, 64, 100))
    )
    kind = rng.randrange(7)
    if kind == 0:
        return " " * n
    if kind == 1:
        return "\t" * n
    if kind == 2:
        return "\n" * n
    if kind == 3:
        return "\r\n" * n
    if kind == 4:
        return "".join(rng.choice(" \t\n\r") for _ in range(n))
    if kind == 5:
        return "".join(rng.choice(" \t" + UNICODE_SPACES) for _ in range(n))
    return "".join(rng.choice([" ", "\t", *LINE_BREAKS]) for _ in range(n))


def _whitespace_documents(rng: random.Random) -> list[Document]:
    documents = []
    for i in range(24):
        parts = []
        for j in range(rng.randint(300, 900)):
            parts.append(_whitespace_run(rng, long=j % 400 == 399))
            parts.append(rng.choice(WORDS))
        documents.append(Document("whitespace", f"whitespace#{i}", "".join(parts)))
    # Runs alone and at the ends of a document, where lookaheads like \s+(?!\S) matter most.
    for n in (1, 2, 3, 15, 16, 17, 100, 999, 4000):
        for ws in (" ", "\t", "\n", "\r\n", " \n", "\n ", "\u3000", "\u00a0"):
            documents.append(Document("whitespace", f"run:{ws!r}*{n}", ws * n))
            documents.append(Document("whitespace", f"run-around:{ws!r}*{n}", f"a{ws * n}b{ws * n}"))
    return documents


# ---- control and invisible characters, combining marks --------------------------------------------

C0 = "".join(chr(c) for c in range(0x20)) + "\x7f"
C1 = "".join(chr(c) for c in range(0x80, 0xA0))
INVISIBLE = (
    "\u200b\u200c\u200d\u200e\u200f\u2060\u2061\u2062\u2063\u2064\u202a\u202b\u202c\u202d\u202e\ufeff\u00ad"
)
ODD = "\ufffd\ufffe\uffff\ue000\uf8ff\U000f0000\U0010fffd\U0010ffff\U0001d11e\U0001d400\U00020000\U0002a6d6"
COMBINING = [chr(c) for c in range(0x0300, 0x0370)] + [
    "\u0483",
    "\u05b0",
    "\u0610",
    "\u093c",
    "\u0e31",
    "\u20d7",
]


def _control_documents(rng: random.Random) -> list[Document]:
    documents = [
        Document("control", "c0", C0 * 50),
        Document("control", "c1", C1 * 50),
        Document("control", "invisible", INVISIBLE * 50),
        Document("control", "odd", ODD * 50),
        Document("control", "combining-alone", "".join(COMBINING) * 20),
        Document("control", "combining-spaced", " ".join(COMBINING) * 20),
    ]
    alphabet = [*C0, *C1, *INVISIBLE, *ODD, *COMBINING, " ", "a", "Z", "é", "字", "\n", "1"]
    for i in range(24):
        parts = []
        for _ in range(rng.randint(500, 2000)):
            r = rng.random()
            if r < 0.5:
                parts.append("".join(rng.choice(alphabet) for _ in range(rng.randint(1, 6))))
            elif r < 0.7:  # a lone combining mark at the start of a word, or stacked ("zalgo")
                marks = "".join(rng.choice(COMBINING) for _ in range(rng.randint(1, 12)))
                parts.append(rng.choice([" ", "\n", "", "x", "ñ", "ك", "क"]) + marks)
            else:
                parts.append(rng.choice(WORDS) + rng.choice(["", " ", "\x00", "\u200b", "\t"]))
        documents.append(Document("control", f"control#{i}", "".join(parts)))
    return documents


# ---- mixed scripts and numbers -----------------------------------------------------------------------

SCRIPT_WORDS = [
    "hello", "Привет", "世界", "こんにちは", "カタカナ", "안녕하세요", "مرحبا", "नमस्ते", "Γειά", "שלום",
    "สวัสดี", "Ελλάδα", "Straße", "naïve", "façade", "ĳssel", "Ωmega", "ΣΊΣΥΦΟΣ", "İstanbul", "ǅemal",
    "ﬁnance", "Ａｂｃ", "ß", "ΐ", "ǰ", "ﷺ", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢", "ⅻ", "①②", "Ⅷ",
]  # fmt: skip
DIGIT_SETS = [
    "0123456789",
    "٠١٢٣٤٥٦٧٨٩",
    "۰۱۲۳۴۵۶۷۸۹",
    "०१२३४५६७८९",
    "๐๑๒๓๔๕๖๗๘๙",
    "０１２３４５６７８９",
    "𝟎𝟏𝟐𝟑𝟒𝟓𝟔𝟕𝟖𝟗",
]


def _number(rng: random.Random) -> str:
    digits = rng.choice(DIGIT_SETS) if rng.random() < 0.3 else "0123456789"
    n = rng.choice((1, 2, 3, 4, 5, 8, 12, 16, 20, 50, 100, 500))
    body = "".join(rng.choice(digits) for _ in range(n))
    style = rng.randrange(6)
    if style == 0:
        return body
    if style == 1:
        return f"{body}.{''.join(rng.choice(digits) for _ in range(rng.randint(1, 20)))}"
    if style == 2:
        sep = rng.choice((",", ".", " ", "'", "\u202f", "_"))
        return sep.join(body[max(0, j - 3) : j] for j in range(len(body), 0, -3))[::-1]
    if style == 3:
        return f"-{body}e{rng.randint(-308, 308)}"
    if style == 4:
        return f"0x{rng.getrandbits(max(4, n * 4)):x}"
    return f"{body}%" if rng.random() < 0.5 else f"${body}"


def _mixed_documents(rng: random.Random) -> list[Document]:
    documents = []
    for i in range(24):
        parts = []
        for _ in range(rng.randint(400, 1000)):
            r = rng.random()
            if r < 0.35:  # a mixed-script word
                parts.append("".join(rng.choice(SCRIPT_WORDS) for _ in range(rng.randint(2, 4))))
            elif r < 0.65:
                parts.append(_number(rng))
            elif r < 0.8:
                parts.append(
                    rng.choice(SCRIPT_WORDS).upper() if rng.random() < 0.5 else rng.choice(SCRIPT_WORDS)
                )
            else:
                parts.append(
                    rng.choice(
                        [".", ",", "!", "?", "...", "'s", "'LL", "’re", "«", "»", "「", "」", "(", ")"]
                    )
                )
            parts.append(rng.choice([" ", " ", " ", "", "\n", "-", "_", "/"]))
        documents.append(Document("mixed", f"mixed#{i}", "".join(parts)))
    huge = "".join(rng.choice("0123456789") for _ in range(20000))
    documents.append(Document("mixed", "digits-20000", huge))
    documents.append(
        Document("mixed", "digits-grouped", " ".join(huge[i : i + 3] for i in range(0, 6000, 3)))
    )
    return documents


if __name__ == "__main__":
    import time

    start = time.perf_counter()
    docs = load_corpus(use_cache="--no-cache" not in sys.argv)
    elapsed = time.perf_counter() - start
    kinds: dict[str, int] = {}
    for d in docs:
        kinds[d.kind] = kinds.get(d.kind, 0) + len(d.text.encode("utf-8"))
    print(f"{len(docs)} documents, {total_bytes(docs) / 1e6:.2f} MB in {elapsed:.2f} s: {kinds}")
    print(script_counts([d.text for d in docs]))
