"""lm-eval's results dict -> the table `mistral-nemo eval` prints (task, metric, ours, stderr, card)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mistral_nemo.eval.presets import card_figure

PERCENT_METRICS = {"acc", "acc_norm", "exact_match", "mc1", "mc2", "f1", "em", "contains"}


@dataclass
class Row:
    task: str
    metric: str  # "acc", or "exact_match (remove_whitespace)" for a filter other than "none"
    value: float
    stderr: float | None
    card: float | None


def result_rows(results: dict[str, Any], tasks: list[str], nemo: bool) -> list[Row]:
    """One row per metric of each requested task or group, in the order asked; percent where usual."""
    rows = []
    for task in tasks:
        scores = results.get("results", {}).get(task, {})
        for key, value in scores.items():
            if "," not in key or "_stderr" in key or not isinstance(value, int | float):
                continue
            metric, filt = key.split(",", 1)
            scale = 100.0 if metric in PERCENT_METRICS else 1.0
            stderr = scores.get(f"{metric}_stderr,{filt}")
            rows.append(
                Row(
                    task,
                    metric if filt == "none" else f"{metric} ({filt})",
                    float(value) * scale,
                    float(stderr) * scale if isinstance(stderr, int | float) else None,
                    card_figure(task, metric) if nemo else None,
                )
            )
    return rows


def format_table(rows: list[Row]) -> str:
    header = ("task", "metric", "ours", "stderr", "model card")
    cells = [
        (
            r.task,
            r.metric,
            f"{r.value:.2f}",
            f"{r.stderr:.2f}" if r.stderr is not None else "",
            f"{r.card:.1f}" if r.card is not None else "",
        )
        for r in rows
    ]
    widths = [max(len(str(c[i])) for c in [header, *cells]) for i in range(len(header))]
    rows_text = [header, *cells]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows_text]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
