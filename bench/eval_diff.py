"""Per-item comparison of two `mistral-nemo eval --log-samples --output` files (e.g. quantized vs float).

    python bench/eval_diff.py float.json quantized.json

One JSON line per task in both: items, each metric's score on both sides (points), how many items
changed their answer (the metric differs), and how far the per-choice loglikelihoods moved (mean /
max absolute, max relative), so a score difference can be traced to the items behind it.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

METRICS = ("acc", "acc_norm")


def by_doc(samples: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    return {int(s["doc_id"]): s for s in samples}


def loglikelihoods(sample: dict[str, Any]) -> list[float]:
    return [float(r[0][0]) for r in sample["resps"]]  # resps: [[[ll, is_greedy]], ...] per choice


def compare(a: dict[str, Any], b: dict[str, Any], task: str) -> dict[str, Any]:
    left, right = by_doc(a["samples"][task]), by_doc(b["samples"][task])
    docs = sorted(set(left) & set(right))
    row: dict[str, Any] = {"task": task, "items": len(docs)}
    deltas: list[float] = []
    relative: list[float] = []
    for doc in docs:
        for x, y in zip(loglikelihoods(left[doc]), loglikelihoods(right[doc]), strict=True):
            deltas.append(abs(x - y))
            relative.append(abs(x - y) / max(abs(x), 1e-9))
    for metric in METRICS:
        if metric not in left[docs[0]]:
            continue
        ours = [float(left[d][metric]) for d in docs]
        theirs = [float(right[d][metric]) for d in docs]
        row[metric] = [round(100 * statistics.fmean(v), 2) for v in (ours, theirs)]
        row[f"{metric} changed"] = sum(1 for x, y in zip(ours, theirs, strict=True) if x != y)
    row["ll |diff| mean"] = statistics.fmean(deltas)
    row["ll |diff| max"] = max(deltas)
    row["ll rel max"] = max(relative)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("first", type=Path)
    parser.add_argument("second", type=Path)
    args = parser.parse_args()
    a, b = (json.loads(p.read_text()) for p in (args.first, args.second))
    for task in sorted(set(a.get("samples", {})) & set(b.get("samples", {}))):
        print(json.dumps(compare(a, b, task)))


if __name__ == "__main__":
    main()
