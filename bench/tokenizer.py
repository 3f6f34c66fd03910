"""Encode throughput: our TekkenTokenizer against mistral_common's Tekkenizer, same corpus, same run.

    python bench/tokenizer.py [--repeats N]

Both encode every document of tests/corpus.py (> 5 MiB of source code, multilingual prose, emoji,
whitespace and control characters) one document per call, in the same thread, timed the same way;
the best of N passes counts. Prints one JSON line. tiktoken encodes a single string on the calling
thread only, so no thread setting applies to either side.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import sys
import time
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the corpus builder lives with the tests (one copy)

import mistral_common  # noqa: E402
from mistral_common.tokens.tokenizers.tekken import Tekkenizer  # noqa: E402

from mistral_nemo.tokenizer import load_tokenizer  # noqa: E402
from tests.corpus import load_corpus, total_bytes  # noqa: E402

NEMO_TEKKEN = Path(mistral_common.__file__).parent / "data" / "tekken_240718.json"


def best_time(encode: Callable[[str], list[int]], texts: list[str], repeats: int) -> float:
    for text in texts[:50]:  # warm up
        encode(text)
    best = float("inf")
    for _ in range(repeats):
        gc.collect()
        gc.disable()
        try:
            start = time.perf_counter()
            for text in texts:
                encode(text)
            best = min(best, time.perf_counter() - start)
        finally:
            gc.enable()
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    texts = [d.text for d in load_corpus()]
    size = total_bytes(texts)
    ours = load_tokenizer(NEMO_TEKKEN)
    ref = Tekkenizer.from_file(NEMO_TEKKEN)

    def ours_encode(text: str) -> list[int]:
        return ours.encode(text)

    def ref_encode(text: str) -> list[int]:
        return ref.encode(text, False, False)

    ids_equal = all(ours_encode(t) == ref_encode(t) for t in texts)
    # Alternate the two so that neither gets a quieter machine.
    ours_s, ref_s = float("inf"), float("inf")
    for _ in range(2):
        ours_s = min(ours_s, best_time(ours_encode, texts, args.repeats))
        ref_s = min(ref_s, best_time(ref_encode, texts, args.repeats))

    mb = size / 1e6
    result = {
        "bench": "tokenizer_encode",
        "corpus_mb": round(mb, 3),
        "ours_mb_s": round(mb / ours_s, 2),
        "mistral_common_mb_s": round(mb / ref_s, 2),
        "ratio": round(ref_s / ours_s, 3),
        "ids_equal": ids_equal,
        "python": platform.python_version(),
        "tiktoken": version("tiktoken"),
        "mistral_common": version("mistral_common"),
        "docs": len(texts),
        "repeats": 2 * args.repeats,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
