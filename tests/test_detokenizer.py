"""IncrementalDetokenizer: ids fed one at a time give exactly tokenizer.decode(ids), never half a char."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mistral_common.tokens.tokenizers.base import SpecialTokenPolicy as RefPolicy

from mistral_nemo.tokenizer import IncrementalDetokenizer, SpecialTokenPolicy, TekkenTokenizer, TokenizerError
from tests.corpus import Document, load_corpus

NUM_SPECIAL = 1000
VOCAB_SIZE = 131072


def byte_id(b: int) -> int:
    return NUM_SPECIAL + b


def _stream(tekken: TekkenTokenizer, ids: list[int], policy: SpecialTokenPolicy) -> tuple[list[str], str]:
    detok = IncrementalDetokenizer(tekken, policy)
    pieces = [detok.add(t) for t in ids]
    tail = detok.flush()
    assert detok.pending_bytes == 0
    return pieces, tail


def _assert_valid_pieces(pieces: list[str]) -> None:
    for piece in pieces:
        assert isinstance(piece, str)
        piece.encode("utf-8")  # strict: a piece never holds a surrogate (half of anything)


# ---- real text: every character comes out whole, as soon as it is complete -------------------------

SCRIPTS = [
    "中文字符测试", "日本語のテキスト", "カタカナ", "한국어 텍스트", "مرحبا بالعالم", "नमस्ते दुनिया",
    "Привет, мир",
    "Γειά σου κόσμε", "שלום עולם", "สวัสดีชาวโลก", "ĉu vi parolas", "Ærøskøbing", "Tiếng Việt", "ﬁnancé",
    "Ꭰ Ᏸ", "ሰላም", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢", "𠀀𠀁", "각",
]  # fmt: skip
EMOJI = ["😀", "👍🏽", "👨‍👩‍👧‍👦", "🏳️‍🌈", "🇫🇷", "🇯🇵🇰🇷", "1️⃣", "🏴󠁧󠁢󠁳󠁣󠁴󠁿", "🧑🏻‍🤝‍🧑🏿", "❤️‍🔥", "🫠", "\U0001f3ff"]
OTHER = [
    " ",
    "  ",
    "\n",
    "\r\n",
    "\t",
    "\u3000",
    "\u200b",
    "\u200d",
    "\u0301",
    "\x00",
    "é",
    "a",
    "1",
    "...",
    "<s>",
]
multilingual = st.lists(
    st.one_of(
        st.sampled_from(SCRIPTS), st.sampled_from(EMOJI), st.sampled_from(OTHER), st.characters(codec="utf-8")
    ),
    max_size=40,
).map("".join)


def _check_streaming_text(text: str, tekken: TekkenTokenizer) -> None:
    ids = tekken.encode(text)
    detok = IncrementalDetokenizer(tekken)
    fed = b""
    out: list[str] = []
    for token_id in ids:
        out.append(detok.add(token_id))
        fed += tekken.id_to_bytes(token_id)
        # Everything fed is either out (as whole characters) or held back, nothing else.
        emitted = "".join(out).encode("utf-8")
        assert len(emitted) + detok.pending_bytes == len(fed)
        assert fed.startswith(emitted)
        try:
            fed.decode("utf-8")
            complete = True
        except UnicodeDecodeError:
            complete = False
        assert (detok.pending_bytes == 0) == complete, (text, fed)
    out.append(detok.flush())
    _assert_valid_pieces(out)
    assert "".join(out) == tekken.decode(ids) == text
    if "\ufffd" not in text:
        assert all("\ufffd" not in piece for piece in out)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=multilingual)
def test_streamed_multilingual_text_equals_decode(text: str, tekken: TekkenTokenizer) -> None:
    _check_streaming_text(text, tekken)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=st.text())
def test_streamed_any_text_equals_decode(text: str, tekken: TekkenTokenizer) -> None:
    _check_streaming_text(text, tekken)


@settings(max_examples=200, deadline=None)
@given(text=multilingual)
def test_byte_tokens_hold_back_exactly_the_incomplete_character(text: str, tekken: TekkenTokenizer) -> None:
    """Text fed one byte token at a time: pending_bytes is k after k bytes of an n-byte character."""
    detok = IncrementalDetokenizer(tekken)
    out = []
    for ch in text:
        raw = ch.encode("utf-8")
        for k, b in enumerate(raw, start=1):
            piece = detok.add(byte_id(b))
            if k < len(raw):
                assert piece == "" and detok.pending_bytes == k
            else:
                assert piece == ch and detok.pending_bytes == 0
            out.append(piece)
    assert detok.flush() == ""
    assert "".join(out) == text


@pytest.fixture(scope="module")
def stream_docs() -> list[Document]:
    # Sources are plain ASCII mostly; the other kinds are where characters get split.
    return [d for d in load_corpus() if d.kind in ("prose", "emoji", "control")]


def test_corpus_streams_exactly(stream_docs: list[Document], tekken: TekkenTokenizer) -> None:
    assert sum(len(d.text) for d in stream_docs) > 1_000_000
    held_back = 0
    for doc in stream_docs:
        ids = tekken.encode(doc.text)
        detok = IncrementalDetokenizer(tekken)
        pieces = []
        for token_id in ids:
            pieces.append(detok.add(token_id))
            held_back += detok.pending_bytes > 0
        pieces.append(detok.flush())
        assert "".join(pieces) == doc.text, doc.name
    assert held_back > 1000  # the corpus really splits characters across tokens


# ---- arbitrary ids: broken UTF-8 and control tokens -------------------------------------------------

continuation = st.integers(byte_id(0x80), byte_id(0xBF))
lead = st.integers(byte_id(0xC0), byte_id(0xFF))
ascii_byte = st.integers(byte_id(0x00), byte_id(0x7F))
control = st.one_of(st.integers(0, 12), st.integers(0, NUM_SPECIAL - 1))
any_bpe = st.integers(NUM_SPECIAL + 256, VOCAB_SIZE - 1)


@pytest.fixture(scope="module")
def split_ids(tekken: TekkenTokenizer) -> list[int]:
    """BPE ids whose bytes are not whole UTF-8 (start or end inside a character)."""
    out = []
    for i in range(NUM_SPECIAL + 256, VOCAB_SIZE):
        try:
            tekken.id_to_bytes(i).decode("utf-8")
        except UnicodeDecodeError:
            out.append(i)
    assert len(out) > 1000
    return out


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), policy=st.sampled_from([SpecialTokenPolicy.SKIP, SpecialTokenPolicy.KEEP]))
def test_random_ids_stream_like_decode(
    data: st.DataObject, policy: SpecialTokenPolicy, tekken: TekkenTokenizer, split_ids: list[int], reference
) -> None:
    parts = st.one_of(continuation, lead, ascii_byte, control, any_bpe, st.sampled_from(split_ids))
    ids = data.draw(st.lists(parts, max_size=50), label="ids")
    pieces, tail = _stream(tekken, ids, policy)
    _assert_valid_pieces([*pieces, tail])
    expected = tekken.decode(ids, policy)
    assert "".join(pieces) + tail == expected
    ref_policy = RefPolicy.KEEP if policy is SpecialTokenPolicy.KEEP else RefPolicy.IGNORE
    assert expected == reference.instruct_tokenizer.tokenizer.decode(ids, special_token_policy=ref_policy)
    # Fed in chunks, the result is the same.
    detok = IncrementalDetokenizer(tekken, policy)
    cut = data.draw(st.integers(0, len(ids)), label="cut")
    assert detok.add_many(ids[:cut]) + detok.add_many(ids[cut:]) + detok.flush() == expected


# ---- by hand ------------------------------------------------------------------------------------------


def test_emoji_bytes_pending(tekken: TekkenTokenizer) -> None:
    emoji = "😀".encode()  # F0 9F 98 80
    detok = IncrementalDetokenizer(tekken)
    assert detok.pending_bytes == 0
    for k, b in enumerate(emoji[:3], start=1):
        assert detok.add(byte_id(b)) == ""
        assert detok.pending_bytes == k
    assert detok.add(byte_id(emoji[3])) == "😀"
    assert detok.pending_bytes == 0
    assert detok.add(byte_id(ord("!"))) == "!"
    assert detok.flush() == ""


@pytest.mark.parametrize("policy", [SpecialTokenPolicy.SKIP, SpecialTokenPolicy.KEEP])
def test_control_token_ends_an_incomplete_character(
    policy: SpecialTokenPolicy, tekken: TekkenTokenizer
) -> None:
    ids = [byte_id(0xF0), byte_id(0x9F), 1, byte_id(0x98), byte_id(0x80), 2]
    detok = IncrementalDetokenizer(tekken, policy)
    assert detok.add(ids[0]) == "" and detok.add(ids[1]) == ""
    assert detok.pending_bytes == 2
    keep = policy is SpecialTokenPolicy.KEEP
    assert detok.add(1) == "\ufffd" + ("<s>" if keep else "")
    assert detok.pending_bytes == 0
    assert detok.add(ids[3]) == "\ufffd"  # a lone continuation byte, right away
    assert detok.add(ids[4]) == "\ufffd"
    assert detok.add(2) == ("</s>" if keep else "")
    expected = "\ufffd<s>\ufffd\ufffd</s>" if keep else "\ufffd\ufffd\ufffd"
    assert tekken.decode(ids, policy) == expected


def test_flush_replaces_what_never_completed(tekken: TekkenTokenizer) -> None:
    detok = IncrementalDetokenizer(tekken)
    for b in "€".encode()[:2]:
        assert detok.add(byte_id(b)) == ""
    assert detok.pending_bytes == 2
    assert detok.flush() == "\ufffd" == tekken.decode([byte_id(b) for b in "€".encode()[:2]])
    assert detok.pending_bytes == 0
    # After a flush the detokenizer starts afresh.
    assert detok.add_many([byte_id(b) for b in "€".encode()]) == "€"


def test_raise_policy_refuses_control_tokens(tekken: TekkenTokenizer) -> None:
    detok = IncrementalDetokenizer(tekken, SpecialTokenPolicy.RAISE)
    assert detok.add_many(tekken.encode("fine")) == "fine"
    with pytest.raises(TokenizerError):
        detok.add(tekken.eos_id)
