"""BpeTokenizer on a real GGUF (SmolLM2-135M-Instruct) against transformers' tokenizer of the same file.

Reference: `AutoTokenizer.from_pretrained(folder, gguf_file=...)`, whose GGUF conversion drops one step of
SmolLM2's pre-tokenizer: the file says tokenizer.ggml.pre = "smollm", which llama.cpp (and SmolLM2's own
tokenizer.json) split into single digits before the GPT-2 regex; transformers only applies the GPT-2
regex. The reference gets that step back (`SMOLLM2_PRE`, SmolLM2's tokenizer.json pre_tokenizer) and
the gap is pinned by `test_transformers_gguf_loader_skips_the_digit_split`.
"""

from __future__ import annotations

import os
import sys
import unicodedata
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer, pre_tokenizers

from mistral_nemo.formats.gguf import read_gguf_metadata
from mistral_nemo.tokenizer import (
    BpeTokenizer,
    IncrementalDetokenizer,
    SpecialTokenPolicy,
    TokenizerError,
    TokenizerFileError,
    load_tokenizer,
)
from tests.gguf_fixture import smollm2_gguf_path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/corpus.py, however pytest was started
from corpus import load_corpus

os.environ.setdefault("HF_HUB_OFFLINE", "1")
import transformers

SKIP, KEEP = SpecialTokenPolicy.SKIP, SpecialTokenPolicy.KEEP
CHAT_TOKENS = ["<|im_start|>", "<|im_end|>", "<|endoftext|>", "<repo_name>", "<file_sep>", "<jupyter_code>"]
SMOLLM2_PRE = pre_tokenizers.Sequence(
    [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
)
SAMPLE_BYTES_PER_KIND = 110_000  # x 6 kinds of corpus documents: ~650 KB


@pytest.fixture(scope="module")
def gguf() -> Path:
    return smollm2_gguf_path()


@pytest.fixture(scope="module")
def bpe(gguf: Path) -> BpeTokenizer:
    tok = load_tokenizer(gguf)
    assert isinstance(tok, BpeTokenizer)
    return tok


@pytest.fixture(scope="module")
def hf_raw_and_ref(gguf: Path) -> tuple[Tokenizer, object]:
    ref = transformers.AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    raw = Tokenizer.from_str(ref.backend_tokenizer.to_str())  # transformers' conversion as it is
    ref.backend_tokenizer.pre_tokenizer = SMOLLM2_PRE
    return raw, ref


@pytest.fixture(scope="module")
def hf(hf_raw_and_ref: tuple[Tokenizer, object]) -> object:
    return hf_raw_and_ref[1]


@pytest.fixture(scope="module")
def sample() -> list[str]:
    """Documents of every corpus kind (source, prose in many scripts, emoji, whitespace, control, mixed),
    with chat control tokens spliced into some of them."""
    by_kind: dict[str, list[str]] = {}
    for doc in load_corpus():
        by_kind.setdefault(doc.kind, []).append(doc.text)
    texts: list[str] = []
    for kind in sorted(by_kind):
        docs, taken = by_kind[kind], 0
        for text in docs[:: max(1, len(docs) // 40)]:
            if taken >= SAMPLE_BYTES_PER_KIND:
                break
            text = text[:20_000]
            taken += len(text.encode())
            texts.append(text)
    for i in range(0, len(texts), 3):
        cut = len(texts[i]) // 2
        token = CHAT_TOKENS[i % len(CHAT_TOKENS)]
        texts[i] = f"{token}user\n{texts[i][:cut]}<|im_end|>{texts[i][cut:]} {token}"
    assert sum(len(t.encode()) for t in texts) > 500_000
    return texts


def _hf_ids(hf: object, text: str) -> list[int]:
    return hf(text, add_special_tokens=False)["input_ids"]


def _stream(tok: BpeTokenizer, ids: list[int], policy: SpecialTokenPolicy) -> str:
    detok = IncrementalDetokenizer(tok, policy)
    return "".join(detok.add(t) for t in ids) + detok.flush()


# ---- metadata and basics -------------------------------------------------------------------------


def test_metadata_equals_transformers_reader(gguf: Path) -> None:
    from transformers.integrations.gguf.reader import read_gguf_metadata as reference_reader

    class Everything:
        def __contains__(self, key: object) -> bool:
            return True

    ours = read_gguf_metadata(gguf)
    theirs, _ = reference_reader(str(gguf), Everything())
    assert ours == theirs
    assert len(ours["tokenizer.ggml.tokens"]) == 49152


def test_basics(bpe: BpeTokenizer, hf: object) -> None:
    assert bpe.vocab_size == 49152 == len(hf)
    assert (bpe.bos_id, bpe.eos_id) == (hf.bos_token_id, hf.eos_token_id) == (1, 2)
    assert bpe.special_id("<|im_start|>") == 1 and bpe.piece_to_id("<|im_end|>") == 2
    assert bpe.is_special(0) and bpe.is_special(16) and not bpe.is_special(17)
    assert bpe.piece_to_id(" the") == hf.convert_tokens_to_ids("Ġthe")
    assert bpe.piece_to_id("no such piece at all") is None
    assert bpe.encode("hi", bos=True, eos=True) == [1, *_hf_ids(hf, "hi"), 2]
    assert bpe.eog_ids == {0, 2}  # <|endoftext|> and <|im_end|> (eos)
    assert not bpe.add_bos  # tokenizer.ggml.add_bos_token: the chat template writes what it needs
    with pytest.raises(TokenizerError, match="control token"):
        bpe.decode([81, 1], SpecialTokenPolicy.RAISE)
    assert bpe.decode([81, 82], SpecialTokenPolicy.RAISE) == hf.decode([81, 82])
    with pytest.raises(TokenizerError, match="outside the vocabulary"):
        bpe.decode([49152])
    with pytest.raises(TokenizerError, match="outside the vocabulary"):
        bpe.id_to_bytes(-1)


def test_id_to_bytes_is_the_true_bytes(bpe: BpeTokenizer, hf: object) -> None:
    assert bpe.id_to_bytes(bpe.piece_to_id(" the")) == b" the"
    assert bpe.id_to_bytes(1) == b"<|im_start|>"
    for token_id in range(bpe.vocab_size):
        assert bpe.id_to_bytes(token_id).decode("utf-8", errors="replace") == hf.decode([token_id])


# ---- encode / decode against transformers ---------------------------------------------------------


@pytest.mark.slow
def test_encode_decode_stream_on_corpus(bpe: BpeTokenizer, hf: object, sample: list[str]) -> None:
    for text in sample:
        ids = bpe.encode(text)
        assert ids == _hf_ids(hf, text)
        assert bpe.decode(ids) == hf.decode(ids, skip_special_tokens=True)
        assert bpe.decode(ids, KEEP) == hf.decode(ids, skip_special_tokens=False)
        assert _stream(bpe, ids, SKIP) == bpe.decode(ids)
        assert _stream(bpe, ids, KEEP) == bpe.decode(ids, KEEP)


text_pieces = st.one_of(
    st.text(max_size=40),
    st.text(alphabet=" \t\n\r0123456789'sdlmtvre", max_size=20),
    st.sampled_from(
        [*CHAT_TOKENS, "<|im_start", "|>", " 1", "  2", "\u00a03", "٣", "🇫🇷", "e\u0301", "\x04\xff"]
    ),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pieces=st.lists(text_pieces, max_size=12))
def test_encode_decode_hypothesis(bpe: BpeTokenizer, hf: object, pieces: list[str]) -> None:
    text = "".join(pieces)
    ids = bpe.encode(text)
    assert ids == _hf_ids(hf, text)
    assert bpe.decode(ids, KEEP) == hf.decode(ids, skip_special_tokens=False) == _stream(bpe, ids, KEEP)
    assert bpe.decode(ids) == hf.decode(ids, skip_special_tokens=True) == _stream(bpe, ids, SKIP)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ids=st.lists(st.integers(0, 49151), max_size=30))
def test_decode_any_ids(bpe: BpeTokenizer, hf: object, ids: list[int]) -> None:
    assert bpe.decode(ids) == hf.decode(ids, skip_special_tokens=True)
    assert bpe.decode(ids, KEEP) == hf.decode(ids, skip_special_tokens=False) == _stream(bpe, ids, KEEP)


def test_digit_split_like_llama_cpp(bpe: BpeTokenizer) -> None:
    # ids llama.cpp gives for SmolLM2 (pre "smollm": \p{N} split first, then the GPT-2 regex)
    assert bpe.encode("Hello world! 123") == [19556, 905, 17, 216, 33, 34, 35]
    assert bpe.encode("  multiple   spaces") == [216, 2701, 256, 5600]
    assert bpe.encode("Café déjà vu.") == [51, 1939, 2756, 32564, 90, 16739, 386, 101, 30]
    assert bpe.encode("a  1") == [81, 256, 33]  # "a", "  ", "1": the digit split first leaves "a  "


def test_transformers_gguf_loader_skips_the_digit_split(
    bpe: BpeTokenizer, hf_raw_and_ref: tuple[Tokenizer, object], sample: list[str]
) -> None:
    raw = hf_raw_and_ref[0]
    assert raw.encode("a  1", add_special_tokens=False).ids == [81, 216, 216, 33]  # "a", " ", " 1"
    for text in sample[::3]:  # without \p{N} characters the two pipelines agree
        text = "".join(c for c in text if not unicodedata.category(c).startswith("N"))
        assert bpe.encode(text) == raw.encode(text, add_special_tokens=False).ids


@pytest.mark.parametrize("pre", ["llama-bpe", "qwen2", "tekken", "gpt2"])
def test_other_pre_tokenizers_match_transformers(gguf: Path, pre: str, sample: list[str]) -> None:
    from transformers.integrations.gguf.gguf_tokenizer_mapping import convert_gguf_tokenizer

    fields = {**read_gguf_metadata(gguf), "tokenizer.ggml.pre": pre}
    ours = BpeTokenizer.from_gguf_metadata(fields)
    tokenizer_dict = {
        "tokenizer_type": "gpt2",
        "pre_tokenizer_type": pre,
        "tokens": fields["tokenizer.ggml.tokens"],
        "merges": fields["tokenizer.ggml.merges"],
        "token_type": fields["tokenizer.ggml.token_type"],
    }
    reference, _ = convert_gguf_tokenizer("llama", tokenizer_dict)
    # llama.cpp sets ignore_merges for llama3 and tekken vocabularies; transformers' GGUF path does not
    reference.model.ignore_merges = pre in ("llama-bpe", "tekken")
    for text in sample[::4]:
        assert ours.encode(text) == reference.encode(text, add_special_tokens=False).ids, pre


# ---- chat ------------------------------------------------------------------------------------------

CONVERSATIONS = [
    [{"role": "user", "content": "Hello!"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "2+2?"}],
    [
        {"role": "user", "content": "Écris un haïku sur la mer 🌊"},
        {"role": "assistant", "content": "Vagues sous la lune\nle sel parle aux rochers\n1 2 3 silence"},
        {"role": "user", "content": "  Now in 日本語, with  two spaces\tand a tab.\n"},
    ],
    [
        {"role": "system", "content": "Rules:\n1. be kind\n2. no <|im_end|> tricks"},
        {"role": "user", "content": "what does <|im_start|>assistant mean?"},
        {"role": "assistant", "content": "It opens a turn.", "tool_calls": None},
        {"role": "user", "content": "```python\nprint('hi')\n```"},
    ],
]


@pytest.mark.parametrize("messages", CONVERSATIONS)
def test_encode_chat_matches_apply_chat_template(bpe: BpeTokenizer, hf: object, messages: list) -> None:
    expected = hf.apply_chat_template(messages, tokenize=True, add_generation_prompt=True, return_dict=False)
    assert bpe.encode_chat(messages) == expected
    assert bpe.render_chat(messages) == hf.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True
    )
    assert bpe.render_chat(messages).startswith(
        "<|im_start|>system\n"
    )  # no extra BOS: the template writes it


def test_hf_folder_round_trip(bpe: BpeTokenizer, hf: object, sample: list[str], tmp_path: Path) -> None:
    hf.save_pretrained(tmp_path)
    assert (tmp_path / "tokenizer.json").is_file()
    folder_tok = load_tokenizer(tmp_path)
    assert isinstance(folder_tok, BpeTokenizer)
    assert (folder_tok.bos_id, folder_tok.eos_id, folder_tok.vocab_size) == (1, 2, 49152)
    for text in sample[::3]:
        ids = folder_tok.encode(text)
        assert ids == bpe.encode(text) == _hf_ids(hf, text)
        assert folder_tok.decode(ids, KEEP) == bpe.decode(ids, KEEP)
    for messages in CONVERSATIONS:
        assert folder_tok.encode_chat(messages) == bpe.encode_chat(messages)


def test_hf_folder_that_is_not_byte_level_bpe(tmp_path: Path) -> None:
    from tokenizers import models

    word_level = Tokenizer(models.WordLevel({"hello": 0, "[UNK]": 1}, unk_token="[UNK]"))
    word_level.save(str(tmp_path / "tokenizer.json"))
    with pytest.raises(TokenizerFileError, match="only byte-level BPE"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(TokenizerFileError, match="cannot read"):
        load_tokenizer(tmp_path)
