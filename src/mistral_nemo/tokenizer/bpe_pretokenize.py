r"""Pre-tokenization of GGUF byte-level BPE vocabularies, as llama.cpp does it, and the GPT-2 byte alphabet.

`tokenizer.ggml.pre` names a llama.cpp pre-tokenizer type (src/llama-vocab.cpp, `llama_vocab::impl::load`
maps names to types; `llm_tokenizer_bpe` lists each type's regexes). The regexes are applied one after
another, each splitting the pieces the previous one left, which is a `Split(..., "isolated")` per regex
in Hugging Face `tokenizers`; then every byte is spelled with GPT-2's byte-to-unicode alphabet. Where
llama.cpp rewrote a regex for its own engine (case-insensitive contractions as `'[sS]`, the Tekken and
GPT-4o letter classes) the original tokenizer.json regex it was adapted from is used; llama.cpp's GPT-2
regex lacks the final `|\s+`, which changes nothing (unmatched text becomes a piece of its own anyway).
"""

from __future__ import annotations

from functools import cache

from tokenizers import Regex, pre_tokenizers

from mistral_nemo.tokenizer.errors import TokenizerFileError

_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
_LLAMA3 = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2 = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN35 = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}"
    r"| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_TEKKEN = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
    r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_GPT4O = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# llama.cpp pre-tokenizer type -> (regexes applied in turn, ignore_merges)
PRE_TOKENIZER_TYPES: dict[str, tuple[tuple[str, ...], bool]] = {
    "default": ((r"[\p{P}\$\+<=>\^~\|]+", _GPT2, r"\p{N}+", r"[0-9][0-9][0-9]"), False),
    "llama3": ((_LLAMA3,), True),
    "llama3-regex": ((_LLAMA3,), False),
    "gpt2": ((_GPT2,), False),
    "starcoder": ((r"\p{N}", _GPT2), False),
    "qwen2": ((_QWEN2,), False),
    "qwen35": ((_QWEN35,), False),
    "tekken": ((_TEKKEN,), True),
    "gpt4o": ((_GPT4O,), False),
}
PRE_TOKENIZER_NAMES: dict[str, str] = {
    "": "default",
    "default": "default",
    **dict.fromkeys(
        ("llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2"), "llama3"
    ),
    **dict.fromkeys(("dbrx", "smaug-bpe", "glm4", "chatglm-bpe"), "llama3-regex"),
    **dict.fromkeys(
        (
            *("gpt2", "gpt-2", "phi-2", "jina-es", "jina-de", "jina-v2-es", "jina-v2-de", "gigachat", "mpt"),
            *("olmo", "jais", "exaone4", "trillion", "granite-docling", "mellum", "a.x-4.0", "modern-bert"),
        ),
        "gpt2",
    ),
    **dict.fromkeys(
        ("smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva-7b"), "starcoder"
    ),
    **dict.fromkeys(
        ("qwen2", "deepseek-r1-qwen", "kormo", "f2llmv2", "megrez", "stablelm2", "hunyuan"), "qwen2"
    ),
    "qwen35": "qwen35",
    "tekken": "tekken",
    **dict.fromkeys(("gpt-4o", "llama4", "kanana2", "talkie", "minimax-m2"), "gpt4o"),
}


@cache
def byte_to_unicode() -> dict[int, str]:
    """GPT-2's spelling of each byte as a printable character."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    extra = iter(range(256, 512))
    return {b: chr(b) if b in printable else chr(next(extra)) for b in range(256)}


@cache
def _unicode_to_byte() -> dict[str, int]:
    return {c: b for b, c in byte_to_unicode().items()}


def token_bytes(token: str) -> bytes:
    """A vocabulary entry's bytes, as tokenizers' ByteLevel decoder reads them.

    An entry with a character outside the byte alphabet (an added token such as "<|fim prefix|>") is
    taken as its literal UTF-8, as that decoder does.
    """
    table = _unicode_to_byte()
    try:
        return bytes(table[c] for c in token)
    except KeyError:
        return token.encode("utf-8")


def pre_tokenizer_for(pre: str) -> tuple[pre_tokenizers.PreTokenizer, bool]:
    """The pre-tokenizer llama.cpp uses for a `tokenizer.ggml.pre` name, and whether merges are ignored."""
    if pre not in PRE_TOKENIZER_NAMES:
        supported = ", ".join(sorted(PRE_TOKENIZER_NAMES)[1:])
        raise TokenizerFileError(
            f"unsupported GGUF pre-tokenizer tokenizer.ggml.pre={pre!r}; supported: {supported}"
        )
    regexes, ignore_merges = PRE_TOKENIZER_TYPES[PRE_TOKENIZER_NAMES[pre]]
    steps = [pre_tokenizers.Split(Regex(r), behavior="isolated") for r in regexes]
    steps.append(pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False))
    return pre_tokenizers.Sequence(steps), ignore_merges
