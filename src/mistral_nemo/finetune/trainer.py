"""The training loop: mistral-finetune's recipe on this project's model.

AdamW (betas 0.9 / 0.95, eps 1e-8) on the LoRA weights only, a OneCycle learning rate over max_steps
(warm-up for pct_start of them), gradients accumulated over num_microbatches (each microbatch's mean
loss divided by their number), clipped to max_norm. Under torchrun (torch.distributed initialised)
each rank reads every world_size-th line and gradients are averaged across ranks (data parallel).
"""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from tqdm import tqdm

from mistral_nemo.finetune.checkpoints import list_checkpoints, load_training_state, save_checkpoint
from mistral_nemo.finetune.config import TrainConfig
from mistral_nemo.finetune.data.packing import Batch, Window
from mistral_nemo.finetune.dataset import BadLineReporter, eval_windows, training_windows
from mistral_nemo.finetune.forward import loss_sum
from mistral_nemo.finetune.metrics import PLOT_FILE, MetricsLog, plot_losses
from mistral_nemo.model.loading import LoadedModel, load
from mistral_nemo.model.lora import add_lora, load_lora_state_dict, lora_parameters
from mistral_nemo.model.lora_files import read_adapter


@dataclass
class TrainResult:
    steps: int
    final_loss: float
    last_checkpoint: Path | None
    metrics: Path
    plot: Path | None
    bad_lines: int


def _rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def quiet_numba_threads() -> None:
    """Use numba's workqueue threads (no spinning) unless the user chose a layer.

    Training alternates torch ops with the quantized layers' numba kernels. With numba's default
    OpenMP layer, its idle workers spin after every kernel and starve the torch ops in between: one
    QLoRA step on the embedded model took 28 s instead of 1.3-2.4 s (96 tokens, 2 loaded cores). Only
    takes effect before numba's first parallel kernel in this process (as in `mistral-nemo finetune`).
    """
    import numba

    if "NUMBA_THREADING_LAYER" not in os.environ:
        numba.config.THREADING_LAYER = "workqueue"


def train(config: TrainConfig, loaded: LoadedModel | None = None, progress: bool = True) -> TrainResult:
    """Train a LoRA adapter as the config says; `loaded` reuses an already loaded base model."""
    quiet_numba_threads()
    rank, world_size = _rank_and_world()
    run_dir = Path(config.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    if loaded is None:
        loaded = load(config.model_path, quantization=config.quantization)
    model = loaded.model
    add_lora(model, config.lora.rank, config.lora.scaling, config.lora.dropout)
    params = lora_parameters(model)
    for p in params:
        p.requires_grad_(True)
    model.train()
    optimizer = torch.optim.AdamW(
        params, lr=config.optim.lr, betas=(0.9, 0.95), eps=1e-8, weight_decay=config.optim.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=config.optim.lr, total_steps=config.max_steps, pct_start=config.optim.pct_start
    )
    start = _resume(run_dir, model, optimizer, scheduler)
    bad_lines = BadLineReporter()
    windows = training_windows(config, loaded.tokenizer, bad_lines, rank, world_size)
    per_step = config.num_microbatches * config.batch_size
    for _ in range(start * per_step):  # the same stream as before the interruption
        next(windows)
    evaluation = None if config.no_eval else eval_windows(config, loaded.tokenizer, bad_lines)
    log = MetricsLog(run_dir, append=start > 0) if rank == 0 else None
    lora_info = {"rank": config.lora.rank, "scaling": config.lora.scaling, "dropout": config.lora.dropout}
    last_ckpt = None
    loss_value = float("nan")
    bar = tqdm(
        total=config.max_steps, initial=start, desc="finetune", unit="step", disable=not progress or rank
    )
    for step in range(start + 1, config.max_steps + 1):
        began = time.perf_counter()
        loss_value = _train_step(model, params, optimizer, windows, config, world_size)
        lr = scheduler.get_last_lr()[0]
        scheduler.step()
        tokens_per_s = per_step * config.seq_len * world_size / (time.perf_counter() - began)
        bar.update(1)
        bar.set_postfix(loss=f"{loss_value:.3f}", lr=f"{lr:.2e}", tok_s=f"{tokens_per_s:.0f}")
        if log is not None and (step % config.log_freq == 0 or step == config.max_steps):
            log.write({"step": step, "loss": loss_value, "lr": lr, "tokens_per_s": tokens_per_s})
        if evaluation is not None and (step % config.eval_freq == 0 or step == config.max_steps):
            eval_loss = evaluate(model, evaluation)
            bar.write(f"step {step}: eval loss {eval_loss:.4f}, perplexity {math.exp(eval_loss):.2f}")
            if log is not None:
                log.write({"step": step, "eval_loss": eval_loss, "eval_perplexity": math.exp(eval_loss)})
        due = config.ckpt_freq > 0 and step % config.ckpt_freq == 0
        if rank == 0 and not config.no_ckpt and (due or step == config.max_steps):
            state = {
                "step": step,
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "torch_rng": torch.get_rng_state(),
            }
            last_ckpt = save_checkpoint(
                run_dir, step, model, lora_info, loaded.source, state, config.num_ckpt_keep
            )
    bar.close()
    if bad_lines:
        print(f"{len(bad_lines)} malformed data line(s) were skipped", file=sys.stderr)
    model.eval()
    plot = plot_losses(log.records(), run_dir / PLOT_FILE) if log is not None else None
    return TrainResult(
        config.max_steps, loss_value, last_ckpt, run_dir / "metrics.jsonl", plot, len(bad_lines)
    )


def _train_step(
    model: torch.nn.Module,
    params: list[torch.nn.Parameter],
    optimizer: torch.optim.Optimizer,
    windows: Any,
    config: TrainConfig,
    world_size: int,
) -> float:
    total = 0.0
    for _ in range(config.num_microbatches):
        batch = Batch.of([next(windows) for _ in range(config.batch_size)])
        summed, count = loss_sum(model, batch, checkpoint=config.checkpoint)
        loss = summed / max(count, 1)
        (loss / config.num_microbatches).backward()
        total += loss.item() / config.num_microbatches
    if world_size > 1:
        for p in params:
            if p.grad is not None:
                dist.all_reduce(p.grad)
                p.grad /= world_size
        reduced = torch.tensor(total)
        dist.all_reduce(reduced)
        total = reduced.item() / world_size
    torch.nn.utils.clip_grad_norm_(params, config.max_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return total


@torch.no_grad()
def evaluate(model: torch.nn.Module, windows: list[Window]) -> float:
    """Mean cross-entropy over every trained token of the evaluation windows."""
    was_training = model.training
    model.eval()
    summed, count = 0.0, 0
    for window in windows:
        loss, n = loss_sum(model, Batch.of([window]))
        summed, count = summed + loss.item(), count + n
    model.train(was_training)
    return summed / max(count, 1)


def _resume(
    run_dir: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
) -> int:
    """Continue from the newest checkpoint in run_dir (0: start afresh)."""
    checkpoints = list_checkpoints(run_dir)
    if not checkpoints:
        return 0
    step, folder = checkpoints[-1]
    tensors, _ = read_adapter(folder / "consolidated", model.args)
    load_lora_state_dict(model, tensors)
    state = load_training_state(folder)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["torch_rng"])
    print(f"resuming from {folder} (step {step})", file=sys.stderr)
    return int(state["step"])
