"""The parts of a training loop every trainer shares: seeding, the LR schedule, AdamW, autocast, metrics."""

from __future__ import annotations

import contextlib
import json
import math
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch


def seed_all(seed: int) -> None:
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)


def lr_at(step: int, cfg) -> float:
    """The learning rate of optimizer step `step` (0-based): linear warmup to cfg.lr, then cosine to
    cfg.lr × cfg.min_lr_ratio at the last step."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = min(1.0, (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> float:
    """Set the rate the next optimizer.step() uses (a function of the step alone: nothing to checkpoint)."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    return lr


def build_optimizer(model, cfg, device: torch.device) -> torch.optim.Optimizer:
    """AdamW; no weight decay on biases, norms and other 1-d parameters."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, fused=device.type == "cuda")


def autocast_for(precision: str, device: torch.device):
    """A context factory: bf16 autocast over fp32 weights, or nothing."""
    def autocast():
        if precision == "bf16":
            return torch.autocast(device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()
    return autocast


def compile_enabled(setting: bool | str, device: torch.device) -> bool:
    """`compile: auto` compiles on CUDA only (on CPU it makes short runs slower)."""
    return device.type == "cuda" if setting == "auto" else bool(setting)


class Metrics:
    """metrics.jsonl (always) and TensorBoard (when installed), on rank 0; with `steps` (the run's length)
    also the progress on stdout: where a run resumes, a line per log with rate and ETA, the final model."""

    def __init__(self, out: Path, rank: int, resume_step: int, steps: int | None = None):
        self.rank, self.path, self.tb = rank, out / "metrics.jsonl", None
        self.steps, self.clock = steps, (resume_step, time.perf_counter())
        if rank != 0:
            return
        if steps is not None and resume_step > 0:
            from speechtok.training.checkpoint import latest_checkpoint

            print(f"resuming from step {resume_step} (checkpoint {latest_checkpoint(out)})", flush=True)
        if self.path.exists():  # drop what was logged after the checkpoint we resume from
            self.path.write_text("".join(json.dumps(r) + "\n" for r in read_metrics(self.path)
                                         if r["step"] <= resume_step))
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(out / "tensorboard"), purge_step=resume_step + 1)
        except ImportError:
            pass

    def log(self, step: int, values: dict) -> None:
        if self.rank != 0:
            return
        if self.steps is not None:
            print(self.progress(step, values), flush=True)
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": step, **values}) + "\n")
        if self.tb is not None:
            for k, v in values.items():
                if v is not None:
                    self.tb.add_scalar(k, v, step)
            self.tb.flush()

    def progress(self, step: int, values: dict) -> str:
        """`step N/T key value … | R steps/s ETA h:mm:ss`, the rate since the previous line."""
        shown = " ".join(f"{k} {_short(k, v)}" for k, v in values.items() if v is not None)
        line = f"step {step}/{self.steps} {shown}"
        (last_step, last_t), now = self.clock, time.perf_counter()
        if step > last_step:
            rate = (step - last_step) / max(now - last_t, 1e-9)
            eta = int(round(max(0, self.steps - step) / rate))
            line += f" | {rate:.3g} steps/s ETA {eta // 3600}:{eta // 60 % 60:02d}:{eta % 60:02d}"
            self.clock = (step, now)
        return line

    def finished(self, path: Path) -> None:
        """Say where the final model is."""
        if self.rank == 0:
            print(f"final model: {path}", flush=True)


def _short(key: str, value) -> str:
    if isinstance(value, float):
        return f"{value:.1%}" if key == "mfu" else f"{value:.2e}" if key == "lr" else \
            f"{value:,.0f}" if value >= 1000 else f"{value:.4g}"
    return str(value)


def read_metrics(path: Path) -> list[dict]:
    """The records of a metrics.jsonl; a line torn by a kill mid-write is dropped with a note."""
    out = []
    for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        try:
            record = json.loads(line) if line.strip() else None
        except json.JSONDecodeError:
            record = None
            print(f"note: {path}: line {n} is not a complete record (an interrupted write?): dropped",
                  file=sys.stderr)
        if isinstance(record, dict) and isinstance(record.get("step"), int):
            out.append(record)
    return out


SCHEDULE_KEYS = ("steps", "warmup")  # the shape of lr_at's curve (lr may be lowered after a divergence)


def schedule_of(cfg) -> dict:
    """The settings that shape the LR schedule, saved with each checkpoint."""
    return {k: getattr(cfg, k) for k in SCHEDULE_KEYS}


def check_schedule(meta: dict, cfg, config_key: str) -> None:
    """Refuse to resume with an LR schedule other than the checkpoint's (a changed `steps` would silently
    bend the rest of the curve), naming the key and both values; `config_key` is where the keys live
    ("train." or "")."""
    from speechtok.training.config import ConfigError

    saved = meta.get("schedule") or {}
    for key in SCHEDULE_KEYS:
        if key in saved and saved[key] != getattr(cfg, key):
            raise ConfigError(f"{config_key}{key}: {getattr(cfg, key)} now but {saved[key]} in the "
                              f"checkpoint of step {meta.get('step')}; the LR schedule depends on it: set it "
                              f"back to {saved[key]} to resume, or train into a new output folder")


class Guard:
    """What every trainer checks between steps: a stop request (SIGINT / SIGTERM, agreed by all ranks so
    that they save the same step) and non-finite numbers (noted on the device each step, read only where the
    trainer logs or saves, so no step waits for the host)."""

    def __init__(self, stop, out: Path, world: int, device: torch.device):
        self.stop, self.out, self.world = stop, out, world
        self.bad = torch.zeros((), dtype=torch.bool, device=device)
        self.last: dict[str, torch.Tensor] = {}

    def watch(self, **values: torch.Tensor) -> None:
        """Note whether the step's losses / gradient norms are finite (no host sync)."""
        for name, v in values.items():
            v = v.full_tensor() if hasattr(v, "full_tensor") else v
            self.last[name] = v.detach()
            self.bad |= ~torch.isfinite(self.last[name]).all()

    def stop_signal(self) -> int | None:
        """The signal that asked the run to stop (on any rank), or None."""
        signum = self.stop.signum or 0
        if self.world > 1:
            import torch.distributed as dist

            t = torch.tensor([signum], device=self.bad.device)
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
            signum = int(t.item())
        return signum or None

    def check(self, step: int, models=()) -> None:
        """Raise NonFinite if a noted number since the start, or a weight of `models`, is infinite or NaN."""
        from speechtok.stopping import NonFinite

        bad = self.bad.clone()
        for model in models:
            for p in model.parameters():
                p = p.to_local() if hasattr(p, "to_local") else p
                bad |= ~torch.isfinite(p.detach()).all()
        if self.world > 1:
            import torch.distributed as dist

            bad = bad.to(torch.int32)
            dist.all_reduce(bad, op=dist.ReduceOp.MAX)
        if not bool(bad.item()):
            return
        from speechtok.training.checkpoint import latest_checkpoint

        seen = ", ".join(f"{k} {v.float().mean().item():.4g}" for k, v in self.last.items())
        kept = latest_checkpoint(self.out)
        raise NonFinite(f"{self.out}: step {step}: a loss, gradient norm or weight is not finite ({seen}); "
                        "stopped without saving it; "
                        + (f"the last good checkpoint ({kept.name}) is kept; " if kept else "")
                        + "lower the learning rate (or check the data) and rerun to resume from it")

    def interrupted(self, signum: int, step: int, first_step: int):
        """The Interrupted to raise once the run stopped for `signum` (after saving, if a step ran)."""
        from speechtok.stopping import Interrupted

        if step > first_step:
            return Interrupted(signum, f"after step {step}: checkpoint saved; rerun the same command to "
                                       f"resume from step {step}")
        return Interrupted(signum, f"before its first step: rerun the same command to resume from step "
                                   f"{step}")


@contextlib.contextmanager
def training_run(world: int):
    """Around a trainer: SIGINT / SIGTERM only ask it to stop (see Guard); on the way out, however it
    ends, the process group is torn down, so that a rerun under torchrun finds its port free."""
    from speechtok.stopping import stop_on_signals

    try:
        with stop_on_signals() as stop:
            yield stop
    finally:
        if world > 1:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
