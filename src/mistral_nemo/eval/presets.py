"""The model card's benchmark table: tasks, shot counts, the metric each figure is, and the figure."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CardTask:
    task: str  # lm-eval's task (or group) name
    shots: int
    metric: str  # the lm-eval metric the card figure is compared with
    figure: float  # Mistral-Nemo-Base-2407's model card, in percent


# Mistral NeMo 12B's card (Mistral-Nemo-Base-2407): "HellaSwag (0-shot) 83.5%" and so on.
NEMO_CARD: tuple[CardTask, ...] = (
    CardTask("hellaswag", 0, "acc_norm", 83.5),
    CardTask("winogrande", 0, "acc", 76.8),
    CardTask("openbookqa", 0, "acc_norm", 60.6),
    CardTask("commonsense_qa", 0, "acc", 70.4),
    CardTask("truthfulqa_mc2", 0, "acc", 50.3),
    CardTask("mmlu", 5, "acc", 68.0),
    CardTask("triviaqa", 5, "exact_match", 73.8),
    CardTask("nq_open", 5, "exact_match", 31.2),
)
PRESETS: dict[str, tuple[CardTask, ...]] = {"nemo-card": NEMO_CARD}


def card_figure(task: str, metric: str) -> float | None:
    """The card's figure for (task, metric), or None when the card has none."""
    return next((c.figure for c in NEMO_CARD if c.task == task and c.metric == metric), None)
