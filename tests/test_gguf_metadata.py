"""read_gguf_metadata and BpeTokenizer.from_gguf_metadata on good, odd and broken GGUF files,
and a Tekken vocabulary in GGUF form against TekkenTokenizer."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from mistral_nemo.formats.gguf import GgufFileError, read_gguf_metadata
from mistral_nemo.tokenizer import (
    BpeTokenizer,
    ChatFormatError,
    TekkenTokenizer,
    TokenizerFileError,
    load_tokenizer,
)
from mistral_nemo.tokenizer.bpe_pretokenize import byte_to_unicode
from tests.gguf_fixture import smollm2_gguf_path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/corpus.py, however pytest was started
from corpus import load_corpus


@pytest.fixture(scope="module")
def gguf() -> Path:
    return smollm2_gguf_path()


@pytest.mark.parametrize("big_endian", [False, True])
def test_metadata_equals_gguf_reader_on_every_value_type(tmp_path: Path, big_endian: bool) -> None:
    gguf_lib = pytest.importorskip("gguf")
    path = tmp_path / "tiny.gguf"
    endian = gguf_lib.GGUFEndian.BIG if big_endian else gguf_lib.GGUFEndian.LITTLE
    writer = gguf_lib.GGUFWriter(str(path), "llama", endianess=endian)
    writer.add_uint8("t.u8", 200)
    writer.add_int16("t.i16", -3)
    writer.add_uint64("t.u64", 2**40)
    writer.add_float32("t.f32", 0.25)
    writer.add_float64("t.f64", -1e300)
    writer.add_bool("t.bool", True)
    writer.add_string("t.str", "héllo <|im_start|>")
    writer.add_array("t.ints", [1, -2, 3])
    writer.add_array("t.floats", [0.5, 1.5])
    writer.add_array("t.strs", ["a", "", "日本"])
    writer.add_array("t.nested", [[1, 2], [3]])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.close()
    reader = gguf_lib.GGUFReader(str(path))
    expected = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    ours = read_gguf_metadata(path)
    assert ours.pop("t.nested") == [[1, 2], [3]]  # GGUFReader.contents() flattens it to [1, 2, 3]
    del expected["t.nested"]
    assert ours == expected
    assert ours["t.strs"] == ["a", "", "日本"]


@pytest.mark.parametrize("size", [0, 3, 4, 10, 30, 200, 5_000, 600_000])
def test_truncated_or_foreign_files_are_clear_errors(gguf: Path, tmp_path: Path, size: int) -> None:
    cut = tmp_path / "cut.gguf"
    with gguf.open("rb") as f:
        cut.write_bytes(f.read(size))
    with pytest.raises(GgufFileError, match="not a GGUF file" if size < 4 else "truncated"):
        read_gguf_metadata(cut)
    with pytest.raises(TokenizerFileError):
        load_tokenizer(cut)


def test_bad_gguf_files(tmp_path: Path) -> None:
    (tmp_path / "v9.gguf").write_bytes(b"GGUF" + (9).to_bytes(4, "little") + bytes(16))
    with pytest.raises(GgufFileError, match="version 9"):
        read_gguf_metadata(tmp_path / "v9.gguf")
    (tmp_path / "text.gguf").write_text("just text")
    with pytest.raises(GgufFileError, match="not a GGUF file"):
        read_gguf_metadata(tmp_path / "text.gguf")
    with pytest.raises(GgufFileError, match="not found"):
        read_gguf_metadata(tmp_path / "missing.gguf")


def test_bad_tokenizer_metadata(gguf: Path) -> None:
    fields = read_gguf_metadata(gguf)
    with pytest.raises(TokenizerFileError, match=r"'llama'.*only byte-level BPE"):
        BpeTokenizer.from_gguf_metadata({**fields, "tokenizer.ggml.model": "llama"})
    with pytest.raises(TokenizerFileError, match=r"unsupported GGUF pre-tokenizer.*'no-such-pre'"):
        BpeTokenizer.from_gguf_metadata({**fields, "tokenizer.ggml.pre": "no-such-pre"})
    with pytest.raises(TokenizerFileError, match=r"tokenizer\.ggml\.merges"):
        BpeTokenizer.from_gguf_metadata({k: v for k, v in fields.items() if k != "tokenizer.ggml.merges"})
    with pytest.raises(TokenizerFileError, match="do not fit"):
        BpeTokenizer.from_gguf_metadata({**fields, "tokenizer.ggml.merges": ["zzq qqz"]})
    no_template = BpeTokenizer.from_gguf_metadata({**fields, "tokenizer.chat_template": None})
    with pytest.raises(ChatFormatError, match="no chat template"):
        no_template.encode_chat([{"role": "user", "content": "hi"}])


def test_gguf_recognised_by_magic_not_name(gguf: Path, tmp_path: Path) -> None:
    disguised = tmp_path / "tekken.json"
    disguised.symlink_to(gguf)
    assert isinstance(load_tokenizer(disguised), BpeTokenizer)


def _tekken_as_gguf_fields(tekken: TekkenTokenizer) -> dict:
    """NeMo's tekken.json in the form llama.cpp's converter writes it: byte-spelled tokens, merges
    recovered from the ranks (every split of a token into two tokens, ordered by the merged rank)."""
    spelling = byte_to_unicode()
    n_special = tekken.num_special_tokens
    tokens = [tekken.id_to_piece(i) for i in range(n_special)]
    tokens += [
        "".join(spelling[b] for b in tekken.id_to_bytes(i)) for i in range(n_special, tekken.vocab_size)
    ]
    rank = {t: i for i, t in enumerate(tokens) if i >= n_special}
    merges = []
    for token, token_rank in rank.items():
        splits = [(token[:k], token[k:]) for k in range(1, len(token))]
        found = sorted((rank[a], rank[b], a, b) for a, b in splits if a in rank and b in rank)
        merges += [(token_rank, len(a), len(b), f"{a} {b}") for _, _, a, b in found]
    merges.sort(key=lambda m: m[:3])
    return {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "tekken",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.merges": [m[3] for m in merges],
        "tokenizer.ggml.token_type": [3] * n_special + [1] * (len(tokens) - n_special),
        "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.eos_token_id": 2,
    }


@pytest.mark.slow
def test_tekken_vocabulary_in_gguf_form_encodes_like_tekken(tekken: TekkenTokenizer) -> None:
    bpe = BpeTokenizer.from_gguf_metadata(_tekken_as_gguf_fields(tekken))
    assert (bpe.vocab_size, bpe.bos_id, bpe.eos_id) == (tekken.vocab_size, 1, 2)
    assert bpe.add_bos  # llama.cpp's default for the tekken pre-tokenizer
    controls = [tekken.id_to_piece(i) for i in range(20)]
    checked = 0
    for doc in load_corpus()[::10]:
        if any(c in doc.text for c in controls):  # text never makes a control id in Tekken; here it does
            continue
        ids = tekken.encode(doc.text)
        assert bpe.encode(doc.text) == ids, doc.name
        assert bpe.decode(ids) == tekken.decode(ids)
        checked += 1
    assert checked > 50
    assert bpe.encode("[INST]hi[/INST]") == [3, *tekken.encode("hi"), 4]
