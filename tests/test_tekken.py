"""TekkenTokenizer against mistral_common's Tekkenizer on NeMo's own tekken_240718.json.

Ids must be identical, not just similar: a prompt that differs by one token is a different prompt.
"""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mistral_common.tokens.tokenizers.base import SpecialTokenPolicy as RefPolicy
from mistral_common.tokens.tokenizers.tekken import Tekkenizer

from mistral_nemo.tokenizer import (
    SpecialTokenPolicy,
    TekkenTokenizer,
    TokenizerError,
    TokenizerFileError,
    load_tokenizer,
)
from tests.corpus import (
    MIN_CORPUS_BYTES,
    SCRIPT_RANGES,
    Document,
    load_corpus,
    script_counts,
    total_bytes,
)

NUM_SPECIAL = 1000
VOCAB_SIZE = 131072
CONTROL_TABLE = {
    0: "<unk>",
    1: "<s>",
    2: "</s>",
    3: "[INST]",
    4: "[/INST]",
    5: "[AVAILABLE_TOOLS]",
    6: "[/AVAILABLE_TOOLS]",
    7: "[TOOL_RESULTS]",
    8: "[/TOOL_RESULTS]",
    9: "[TOOL_CALLS]",
}
POLICIES = [
    (SpecialTokenPolicy.SKIP, RefPolicy.IGNORE),
    (SpecialTokenPolicy.KEEP, RefPolicy.KEEP),
    (SpecialTokenPolicy.RAISE, RefPolicy.RAISE),
]


@pytest.fixture(scope="session")
def ref_tk(reference) -> Tekkenizer:
    """mistral_common's raw Tekkenizer (encode(s, bos, eos), decode(ids, policy))."""
    tokenizer = reference.instruct_tokenizer.tokenizer
    assert isinstance(tokenizer, Tekkenizer)
    return tokenizer


@pytest.fixture(scope="session")
def corpus_docs() -> list[Document]:
    return load_corpus()


@pytest.fixture(scope="session")
def real_file(tekken_path: Path) -> dict[str, Any]:
    return json.loads(tekken_path.read_text(encoding="utf-8"))


def _difference(text: str, ours: list[int], ref: list[int]) -> str:
    """Where two id lists part, with the text around it, for a readable failure."""
    i = next((k for k, (a, b) in enumerate(zip(ours, ref, strict=False)) if a != b), min(len(ours), len(ref)))
    return (
        f"ids differ at position {i} (ours {len(ours)} ids, mistral_common {len(ref)}): "
        f"ours {ours[max(0, i - 3) : i + 5]} vs ref {ref[max(0, i - 3) : i + 5]}; text {text[:300]!r}"
    )


# ---- (a) the corpus ----------------------------------------------------------------------------------


def test_corpus_is_big_and_varied(corpus_docs: list[Document]) -> None:
    assert total_bytes(corpus_docs) >= MIN_CORPUS_BYTES
    kinds = {d.kind for d in corpus_docs}
    assert kinds == {"source", "prose", "emoji", "whitespace", "control", "mixed"}
    suffixes = {Path(d.name).suffix for d in corpus_docs if d.kind == "source"}
    assert suffixes == {".py", ".c", ".h", ".txt", ".json"}
    assert sum(len(d.text.encode()) for d in corpus_docs if d.kind == "source") > 2_000_000
    assert {d.name.split("/")[0] for d in corpus_docs if d.kind == "source"} >= {"stdlib", "site-packages"}
    counts = script_counts([d.text for d in corpus_docs])
    assert set(counts) == set(SCRIPT_RANGES)
    thin = {script: n for script, n in counts.items() if n < 5000}
    assert not thin, f"scripts too thin in the corpus: {thin}"
    everything = "".join(d.text for d in corpus_docs if d.kind != "source")
    needles = ["\u200d", "\U0001f3fd", "\U0001f1eb\U0001f1f7", "\r\n", "\t\t", " " * 4000, "\x00", "\x7f"]
    needles += ["\u200b", "\ufeff", " \u0301", "\u0660\u0661", "\u3000"]
    missing = [needle for needle in needles if needle not in everything]
    assert not missing
    assert re.search(r"[0-9]{400}", everything), "no number of many digits"


@pytest.mark.parametrize("kind", ["source", "prose", "emoji", "whitespace", "control", "mixed"])
def test_corpus_ids_equal_mistral_common(
    kind: str, corpus_docs: list[Document], tekken: TekkenTokenizer, ref_tk: Tekkenizer
) -> None:
    docs = [d for d in corpus_docs if d.kind == kind]
    assert docs
    mismatches, unround = [], []
    for doc in docs:
        ours = tekken.encode(doc.text)
        ref = ref_tk.encode(doc.text, False, False)
        if ours != ref:
            mismatches.append(f"{doc.name}: {_difference(doc.text, ours, ref)}")
        if tekken.decode(ours) != doc.text:
            unround.append(doc.name)
    assert not mismatches, f"{len(mismatches)}/{len(docs)} documents differ; first: {mismatches[:3]}"
    assert not unround, f"decode(encode(doc)) != doc for {unround[:5]}"


# ---- (b) property tests ---------------------------------------------------------------------------------

FRAGMENTS = [
    " ", "  ", "    ", "\t", "\n", "\r\n", "\r", "\n\n", " \n", "\u00a0", "\u3000", "\u2028", "\x0b", "\x0c",
    "\x00", "\x1b", "\x7f", "\x85", "\u200b", "\u200d", "\ufeff", "\ufffd", "\u0301", "\u0300\u0301\u0302",
    "😀", "👍🏽", "👨‍👩‍👧‍👦", "🏳️‍🌈", "🇫🇷", "🇯🇵🇰🇷", "1️⃣", "🏴󠁧󠁢󠁳󠁣󠁴󠁿", "\U0001f3ff",
    "中文", "日本語", "ひらがな", "カタカナ", "한국어", "العربية", "हिन्दी", "Русский", "Ελληνικά",
    "עברית", "ไทย", "é", "ñ", "ß", "Ǆ", "ﬁ", "İ", "a", "Z", "0", "123456789", "'s", "'LL", "...",
    "<s>", "[INST]", "[TOOL_CALLS]",
    "def f(x):", "    return x", "{\"k\": [1, 2]}", "http://example.com/a?b=c",
]  # fmt: skip
biased_text = st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.characters(codec="utf-8")), max_size=60).map(
    "".join
)


def _check_text(text: str, tekken: TekkenTokenizer, ref_tk: Tekkenizer) -> None:
    ours = tekken.encode(text)
    ref = ref_tk.encode(text, False, False)
    assert ours == ref, _difference(text, ours, ref)
    assert all(t >= NUM_SPECIAL for t in ours)
    assert tekken.decode(ours) == text


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=st.text())
def test_any_text_ids_equal_and_round_trip(text: str, tekken: TekkenTokenizer, ref_tk: Tekkenizer) -> None:
    _check_text(text, tekken, ref_tk)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=biased_text)
def test_biased_text_ids_equal_and_round_trip(text: str, tekken: TekkenTokenizer, ref_tk: Tekkenizer) -> None:
    _check_text(text, tekken, ref_tk)


@settings(max_examples=150, deadline=None)
@given(
    run=st.lists(st.sampled_from([" ", "\t", "\n", "\r", "\u00a0", "\u3000", "x", "é", "字"]), max_size=300)
)
def test_whitespace_runs_ids_equal(run: list[str], tekken: TekkenTokenizer, ref_tk: Tekkenizer) -> None:
    _check_text("".join(run), tekken, ref_tk)


@pytest.mark.parametrize(
    ("text", "decoded"),
    [("a\ud800b", "a\ufffdb"), ("\udfff", "\ufffd"), ("x\ud83d", "x\ufffd"), ("\ud83d\ude00 ", "😀 ")],
)
def test_surrogates_encode_like_mistral_common(
    text: str, decoded: str, tekken: TekkenTokenizer, ref_tk: Tekkenizer
) -> None:
    """Not valid Unicode, but a str can hold them: both replace lone ones and join pairs, neither crashes."""
    ours = tekken.encode(text)
    assert ours == ref_tk.encode(text, False, False)
    assert tekken.decode(ours) == decoded


# ---- (c) text never yields control ids -----------------------------------------------------------------


def test_control_token_text_is_plain_text(tekken: TekkenTokenizer, ref_tk: Tekkenizer) -> None:
    names = [tekken.id_to_piece(i) for i in range(NUM_SPECIAL)]
    assert names[20] == "<SPECIAL_20>"
    spellings = [*names, "<s>[INST] hi [/INST]</s>", '[TOOL_CALLS][{"name": "f"}]</s>', "<SPECIAL_20><pad>"]
    for text in spellings:
        ids = tekken.encode(text)
        assert min(ids) >= NUM_SPECIAL, (text, ids)
        assert ids == ref_tk.encode(text, False, False), text
        assert tekken.decode(ids, SpecialTokenPolicy.RAISE) == text


@settings(max_examples=200, deadline=None)
@given(parts=st.lists(st.one_of(st.sampled_from([*CONTROL_TABLE.values(), "<SPECIAL_20>"]), biased_text)))
def test_text_with_control_names_never_gives_control_ids(parts: list[str], tekken: TekkenTokenizer) -> None:
    text = "".join(parts)
    ids = tekken.encode(text)
    assert all(t >= NUM_SPECIAL for t in ids)
    assert tekken.decode(ids) == text


@pytest.mark.parametrize("text", ["", "hello", "[INST]", "日本語 😀"])
def test_bos_eos_flags(text: str, tekken: TekkenTokenizer, ref_tk: Tekkenizer) -> None:
    plain = tekken.encode(text)
    assert tekken.encode(text, bos=True) == [1, *plain]
    assert tekken.encode(text, eos=True) == [*plain, 2]
    assert tekken.encode(text, bos=True, eos=True) == [1, *plain, 2]
    for bos in (False, True):
        for eos in (False, True):
            assert tekken.encode(text, bos=bos, eos=eos) == ref_tk.encode(text, bos, eos)


# ---- (d) ids, pieces and decode policies ------------------------------------------------------------


def test_sizes_and_named_ids(tekken: TekkenTokenizer, ref_tk: Tekkenizer) -> None:
    assert tekken.vocab_size == VOCAB_SIZE == ref_tk.n_words
    assert tekken.num_special_tokens == NUM_SPECIAL == ref_tk.num_special_tokens
    assert (tekken.bos_id, tekken.eos_id, tekken.unk_id, tekken.pad_id) == (1, 2, 0, 11)
    assert (tekken.bos_id, tekken.eos_id, tekken.unk_id, tekken.pad_id) == (
        ref_tk.bos_id,
        ref_tk.eos_id,
        ref_tk.unk_id,
        ref_tk.pad_id,
    )
    for token_id, name in CONTROL_TABLE.items():
        assert tekken.special_id(name) == token_id == ref_tk.get_special_token(name)
        assert tekken.id_to_piece(token_id) == name
        assert tekken.piece_to_id(name) == token_id
    for name in ["[IMG]", "[PREFIX]", "[SYSTEM_PROMPT]", "<SPECIAL_20>", "<SPECIAL_999>"]:
        assert tekken.special_id(name) == ref_tk.get_special_token(name)
    assert all(tekken.is_special(i) for i in range(NUM_SPECIAL))
    assert not tekken.is_special(NUM_SPECIAL) and not tekken.is_special(VOCAB_SIZE - 1)
    with pytest.raises(TokenizerError, match="unknown control token"):
        tekken.special_id("<SPECIAL_1000>")
    with pytest.raises(TokenizerError):
        tekken.special_id("[NOT_A_TOKEN]")


def test_every_piece_equals_mistral_common(tekken: TekkenTokenizer, ref_tk: Tekkenizer) -> None:
    ours = [tekken.id_to_piece(i) for i in range(VOCAB_SIZE)]
    ref = ref_tk.vocab()
    assert len(ref) == VOCAB_SIZE
    bad = [i for i in range(VOCAB_SIZE) if ours[i] != ref[i]]
    assert not bad, [(i, ours[i], ref[i]) for i in bad[:10]]
    sample = [*range(0, VOCAB_SIZE, 97), 999, 1000, 1255, 1256, VOCAB_SIZE - 1]
    for i in sample:
        assert tekken.id_to_piece(i) == ref_tk.id_to_piece(i)
        assert tekken.id_to_bytes(i) == ref_tk.id_to_byte_piece(i, RefPolicy.KEEP), i


def test_piece_to_id_round_trips(tekken: TekkenTokenizer) -> None:
    for i in range(NUM_SPECIAL, VOCAB_SIZE):
        piece = tekken.id_to_bytes(i)
        assert tekken.piece_to_id(piece) == i, (i, piece)
    control_names = {tekken.id_to_piece(i) for i in range(NUM_SPECIAL)}
    for i in range(NUM_SPECIAL, VOCAB_SIZE, 7):
        piece = tekken.id_to_bytes(i)
        try:
            text = piece.decode("utf-8")
        except UnicodeDecodeError:
            continue
        if text not in control_names:  # a control token's text names the control token
            assert tekken.piece_to_id(text) == i, (i, text)
    for i in range(NUM_SPECIAL):
        assert tekken.piece_to_id(tekken.id_to_piece(i)) == i
    assert tekken.piece_to_id("this is certainly not one single token") is None
    assert tekken.piece_to_id(b"\xff\xfe\xfd\xfc\xfb") is None
    assert tekken.piece_to_id(bytes([0xF0])) == NUM_SPECIAL + 0xF0


control_ids = st.one_of(st.integers(0, 12), st.integers(0, NUM_SPECIAL - 1))
text_ids = st.one_of(st.integers(NUM_SPECIAL, NUM_SPECIAL + 255), st.integers(NUM_SPECIAL, VOCAB_SIZE - 1))
id_lists = st.lists(st.one_of(control_ids, text_ids, text_ids), max_size=40)


@settings(max_examples=400, deadline=None)
@given(ids=id_lists)
def test_decode_policies_equal_mistral_common(
    ids: list[int], tekken: TekkenTokenizer, ref_tk: Tekkenizer
) -> None:
    for ours_policy, ref_policy in POLICIES:
        try:
            expected: str | None = ref_tk.decode(ids, special_token_policy=ref_policy)
        except ValueError:
            expected = None
        if expected is None:
            assert ours_policy is SpecialTokenPolicy.RAISE
            with pytest.raises(TokenizerError, match="control token"):
                tekken.decode(ids, ours_policy)
        else:
            assert tekken.decode(ids, ours_policy) == expected
    assert tekken.decode(ids) == tekken.decode(ids, SpecialTokenPolicy.SKIP)


def test_decode_policies_by_hand(tekken: TekkenTokenizer) -> None:
    ids = [1, *tekken.encode("Hi"), 3, *tekken.encode(" there"), 2]
    assert tekken.decode(ids) == "Hi there"
    assert tekken.decode(ids, SpecialTokenPolicy.KEEP) == "<s>Hi[INST] there</s>"
    with pytest.raises(TokenizerError, match=r"'<s>' \(id 1\)"):
        tekken.decode(ids, SpecialTokenPolicy.RAISE)
    # A control token splits the bytes of a character: each half is decoded on its own.
    euro = [NUM_SPECIAL + b for b in "€".encode()]
    assert tekken.decode([*euro[:2], 9, euro[2]]) == "\ufffd\ufffd"
    assert tekken.decode(euro) == "€"


@pytest.mark.parametrize("bad", [-1, VOCAB_SIZE, VOCAB_SIZE + 5, 10**12])
def test_out_of_range_ids_raise(bad: int, tekken: TekkenTokenizer) -> None:
    for policy in SpecialTokenPolicy:
        with pytest.raises(TokenizerError, match="outside the vocabulary"):
            tekken.decode([*tekken.encode("ok"), bad], policy)
    with pytest.raises(TokenizerError, match="outside the vocabulary"):
        tekken.id_to_piece(bad)
    with pytest.raises(TokenizerError, match="outside the vocabulary"):
        tekken.id_to_bytes(bad)


# ---- (e) tekken files, good and broken --------------------------------------------------------------

TINY_MERGES = [b"he", b"ll", b"hell", b"hello", b"  ", b"    ", b"or", b"ld", b"wor", b"world", b" world"]
TINY_MERGES += [b"\xc3\xa9", b"\xe2\x82", b"\xe2\x82\xac", b"\n\n", b"[I", b"NS", b"T]"]


def _tiny(
    real_file: dict[str, Any], num_special: int = NUM_SPECIAL, extra_vocab: int = 0, **top: Any
) -> dict[str, Any]:
    pieces = [bytes([b]) for b in range(256)] + TINY_MERGES
    vocab = [
        {"rank": i, "token_bytes": base64.b64encode(p).decode(), "token_str": None}
        for i, p in enumerate(pieces)
    ]
    config = {
        "pattern": real_file["config"]["pattern"],
        "num_vocab_tokens": len(vocab),
        "default_vocab_size": num_special + len(vocab) - extra_vocab,
        "default_num_special_tokens": num_special,
        "version": "v3",
    }
    return {"config": config, "vocab": vocab, **top}


def _write(path: Path, data: Any) -> Path:
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


SAMPLES = ["hello world", "hello  world\n\nhello", "é€€ [INST] x", "", "    hello", "日本 😀", "<s>"]


def _same_as_mistral_common(path: Path, ours: TekkenTokenizer) -> None:
    ref = Tekkenizer.from_file(path)
    assert ours.vocab_size == ref.n_words and ours.num_special_tokens == ref.num_special_tokens
    for text in SAMPLES:
        assert ours.encode(text, bos=True, eos=True) == ref.encode(text, True, True), text
        ids = ours.encode(text)
        assert ours.decode(ids) == text
    for i in range(ours.vocab_size):
        assert ours.id_to_piece(i) == ref.id_to_piece(i), i


def test_tiny_file_matches_mistral_common(tmp_path: Path, real_file: dict[str, Any]) -> None:
    path = _write(tmp_path / "tiny_tekken.json", _tiny(real_file))
    ours = load_tokenizer(path)
    assert ours.vocab_size == NUM_SPECIAL + 256 + len(TINY_MERGES)
    assert ours.encode("hello world") == [
        NUM_SPECIAL + 256 + TINY_MERGES.index(b) for b in (b"hello", b" world")
    ]
    assert ours.special_id("[TOOL_CALLS]") == 9 and ours.id_to_piece(20) == "<SPECIAL_20>"
    _same_as_mistral_common(path, ours)


def test_vocab_longer_than_vocab_size_is_cut(tmp_path: Path, real_file: dict[str, Any]) -> None:
    path = _write(tmp_path / "tekken.json", _tiny(real_file, extra_vocab=4))  # drops "\n\n", "[I", "NS", "T]"
    ours = load_tokenizer(path)
    assert ours.vocab_size == NUM_SPECIAL + 256 + len(TINY_MERGES) - 4
    assert ours.encode("[INST]") == [NUM_SPECIAL + b for b in b"[INST]"]
    assert ours.piece_to_id(b"T]") is None
    _same_as_mistral_common(path, ours)


def test_explicit_special_tokens_list(tmp_path: Path, real_file: dict[str, Any]) -> None:
    names = ["<unk>", "<s>", "</s>", "[INST]", "[CUSTOM]", "[/INST]", "[TOOL_CALLS]"]
    specials = [{"rank": i, "token_str": s, "is_control": True} for i, s in enumerate(names)]
    path = _write(tmp_path / "tekken.json", _tiny(real_file, num_special=20, special_tokens=specials))
    ours = load_tokenizer(path)
    assert ours.num_special_tokens == 20
    for i, name in enumerate(names):
        assert ours.special_id(name) == i and ours.id_to_piece(i) == name
    assert [ours.id_to_piece(i) for i in range(7, 20)] == [f"<SPECIAL_{i}>" for i in range(7, 20)]
    assert (ours.bos_id, ours.eos_id) == (1, 2)
    with pytest.raises(TokenizerError):
        ours.special_id("[AVAILABLE_TOOLS]")  # not in this file's list
    with pytest.raises(TokenizerError):
        ours.pad_id  # noqa: B018
    assert ours.encode("hello") == [20 + 256 + TINY_MERGES.index(b"hello")]  # BPE ids start after 20
    _same_as_mistral_common(path, ours)


def _mutate(real_file: dict[str, Any], how: str) -> Any:
    data = _tiny(real_file)
    vocab, config = data["vocab"], data["config"]
    if how == "missing config":
        del data["config"]
    elif how == "missing vocab":
        del data["vocab"]
    elif how == "config not object":
        data["config"] = ["pattern"]
    elif how.startswith("missing config."):
        del config[how.removeprefix("missing config.")]
    elif how == "bad base64":
        vocab[260]["token_bytes"] = "@@not base64@@"
    elif how == "ranks out of order":
        vocab[258]["rank"], vocab[259]["rank"] = 259, 258
    elif how == "vocab too short":
        config["default_vocab_size"] += 5
    elif how == "vocab not list":
        data["vocab"] = {"0": "AA=="}
    elif how == "vocab entry without bytes":
        del vocab[7]["token_bytes"]
    elif how == "wrong byte table":
        vocab[65]["token_bytes"] = base64.b64encode(b"B").decode()
    elif how == "duplicate vocab bytes":
        vocab[260]["token_bytes"] = base64.b64encode(b"he").decode()
    elif how == "duplicate special tokens":
        data["special_tokens"] = [{"rank": i, "token_str": s} for i, s in enumerate(["<unk>", "<s>", "<s>"])]
    elif how == "special token equals a filler":
        data["special_tokens"] = [
            {"rank": i, "token_str": s} for i, s in enumerate(["<unk>", "<s>", "<SPECIAL_7>"])
        ]
    elif how == "too many special tokens":
        config["default_num_special_tokens"] = 3
        config["default_vocab_size"] = 3 + len(vocab)
        data["special_tokens"] = [{"rank": i, "token_str": f"<t{i}>"} for i in range(4)]
    elif how == "special token bad rank":
        data["special_tokens"] = [{"rank": 5, "token_str": "<unk>"}]
    elif how == "bad pattern":
        config["pattern"] = "([a-z"
    elif how == "no room for bytes":
        config["default_vocab_size"] = NUM_SPECIAL + 100
    else:
        raise AssertionError(how)
    return data


BROKEN = {
    "missing config": "expected an object with 'config' and 'vocab'",
    "missing vocab": "expected an object with 'config' and 'vocab'",
    "config not object": "'config' must be an object",
    "missing config.pattern": "config.pattern is missing",
    "missing config.default_vocab_size": "config.default_vocab_size is missing",
    "missing config.default_num_special_tokens": "config.default_num_special_tokens is missing",
    "bad base64": "vocab[260].token_bytes is not valid base64",
    "ranks out of order": "vocab[258] has rank 259; ranks must be 0, 1, 2",
    "vocab too short": f"vocab has {256 + len(TINY_MERGES)} entries but default_vocab_size",
    "vocab not list": "'vocab' must be a list",
    "vocab entry without bytes": "vocab[7] must be an object with 'rank' and 'token_bytes'",
    "wrong byte table": "vocab[65] must be the single byte 0x41",
    "duplicate vocab bytes": "same token_bytes twice",
    "duplicate special tokens": "special token strings must be unique",
    "special token equals a filler": "special token strings must be unique",
    "too many special tokens": "4 special tokens listed but default_num_special_tokens is 3",
    "special token bad rank": "special_tokens[0] has rank 5; expected 0",
    "bad pattern": "config.pattern is not a usable regex",
    "no room for bytes": "leaves no room for 256 byte tokens",
}


@pytest.mark.parametrize("how", list(BROKEN))
def test_broken_file_names_the_problem(how: str, tmp_path: Path, real_file: dict[str, Any]) -> None:
    path = _write(tmp_path / "tekken.json", _mutate(real_file, how))
    for load in (load_tokenizer, TekkenTokenizer.from_file):
        with pytest.raises(TokenizerFileError) as info:
            load(path)
        assert BROKEN[how] in str(info.value)
        assert str(path) in str(info.value)
    with pytest.raises(TokenizerFileError, match=r"tekken\.json"):
        load_tokenizer(tmp_path)  # the folder holding it says the same


def test_truncated_real_file(tmp_path: Path, tekken_path: Path) -> None:
    raw = tekken_path.read_bytes()
    path = tmp_path / "tekken.json"
    path.write_bytes(raw[: len(raw) // 2])
    for load in (load_tokenizer, TekkenTokenizer.from_file):
        with pytest.raises(TokenizerFileError, match=r"not valid JSON \(truncated or corrupt\?\)"):
            load(path)


def test_truncated_inside_a_character(tmp_path: Path, real_file: dict[str, Any]) -> None:
    data = _tiny(real_file)
    data["vocab"][258]["token_str"] = "hellé"
    raw = json.dumps(data, ensure_ascii=False).encode()
    cut = raw.index("é".encode()) + 1  # keep the first byte of "é" only
    path = tmp_path / "tekken.json"
    path.write_bytes(raw[:cut])
    with pytest.raises(TokenizerFileError, match="cannot read tokenizer file"):
        load_tokenizer(path)


@pytest.mark.parametrize(
    ("content", "via_load", "via_from_file"),
    [
        (b"", "is not a tokenizer this version reads", "not valid JSON"),
        (b"hello world", "is not a tokenizer this version reads", "not valid JSON"),
        (
            b"[1, 2, 3]",
            "is not a tokenizer this version reads",
            "expected an object with 'config' and 'vocab'",
        ),
        (b"{not json", "not valid JSON", "not valid JSON"),
        (b'{"config": {}}', "expected an object with 'config' and 'vocab'", "'config' and 'vocab'"),
    ],
)
def test_not_a_tekken_file(content: bytes, via_load: str, via_from_file: str, tmp_path: Path) -> None:
    path = tmp_path / "tekken.json"
    path.write_bytes(content)
    with pytest.raises(TokenizerFileError) as info:
        load_tokenizer(path)
    assert via_load in str(info.value)
    with pytest.raises(TokenizerFileError) as info:
        TekkenTokenizer.from_file(path)
    assert via_from_file in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(TokenizerFileError, match="tokenizer not found"):
        load_tokenizer(tmp_path / "nope.json")
    with pytest.raises(TokenizerFileError, match="tokenizer file not found"):
        TekkenTokenizer.from_file(tmp_path / "nope.json")


def test_load_from_folder(tmp_path: Path, real_file: dict[str, Any]) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "README.md").write_text("# a model\n")
    (folder / "model.safetensors").write_bytes(b"\x00" * 16)
    with pytest.raises(
        TokenizerFileError, match=r"no tokenizer in .*: expected tekken\.json or tokenizer\.json"
    ):
        load_tokenizer(folder)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(TokenizerFileError, match="no tokenizer in"):
        load_tokenizer(empty)

    _write(folder / "tekken.json", _tiny(real_file))
    from_folder = load_tokenizer(folder)
    from_file = load_tokenizer(folder / "tekken.json")
    assert from_folder.vocab_size == from_file.vocab_size == NUM_SPECIAL + 256 + len(TINY_MERGES)
    for text in SAMPLES:
        assert from_folder.encode(text) == from_file.encode(text)

    # Recognised by contents, not by name.
    other = tmp_path / "other"
    other.mkdir()
    _write(other / "my_tokenizer.json", _tiny(real_file))
    assert load_tokenizer(other).encode("hello world") == from_file.encode("hello world")
    # ... even beside other JSON files that sort first (a model folder's config.json).
    (other / "config.json").write_text('{"model_type": "mistral"}')
    (other / "a_params.json").write_text("{}")
    assert load_tokenizer(other).encode("hello world") == from_file.encode("hello world")
