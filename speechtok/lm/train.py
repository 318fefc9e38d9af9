"""`tok lm train CONFIG`: the token-LM training loop.

bf16 autocast over fp32 master weights, AdamW, linear warmup then cosine decay, gradient accumulation
and clipping; DDP or FSDP2 under torchrun (applied in parallel.py). Checkpoints hold the model,
optimizer, scheduler, data position and every rank's RNG, so a resumed run continues the same loss curve.
The final model is saved in Hugging Face format with its tokenizer and speech vocabulary."""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import shutil
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict

from speechtok.lm.config import RunConfig
from speechtok.lm.data import PackedTokens, token_loader
from speechtok.lm.parallel import all_mean, barrier, init_distributed, parallelize
from speechtok.lm.sequences import SequenceBuilder
from speechtok.lm.vocab import SpeechVocab

PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "H800": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12}


def peak_flops(device: torch.device) -> float | None:
    """Dense bf16 peak of the GPU, for MFU; None where unknown (CPU)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)


def flops_per_token(model, seq_len: int) -> float:
    """6N for the matmuls of forward + backward plus attention's 12·layers·width·seq (PaLM, appendix B).
    N leaves out the input embedding unless it is tied to the output head."""
    cfg = model.config
    n = sum(p.numel() for p in model.parameters())
    emb = model.get_input_embeddings().weight
    if model.get_output_embeddings() is None or model.get_output_embeddings().weight is not emb:
        n -= emb.numel()
    return 6 * n + 12 * cfg.num_hidden_layers * cfg.hidden_size * seq_len


def lr_at(step: int, cfg) -> float:
    """Linear warmup to cfg.lr, then cosine to cfg.lr × min_lr_ratio at the last step."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = min(1.0, (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


def publish_checkpoint(tmp: Path, final: Path, keep: int) -> None:
    """Rename a complete checkpoint folder into place, point `latest` at it, keep the newest `keep`."""
    root = final.parent
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    (root / "latest.tmp").write_text(final.name)
    os.replace(root / "latest.tmp", root / "latest")
    old = sorted(p for p in root.glob("step_*") if p != final)
    for p in old[: max(0, len(old) - keep + 1)]:
        shutil.rmtree(p, ignore_errors=True)


def save_checkpoint(out: Path, step: int, model, optimizer, scheduler, rank: int, world: int, keep: int) -> None:
    """out/checkpoints/step_NNNNNNN: written to a temporary folder, renamed when complete, then `latest`."""
    root = out / "checkpoints"
    tmp, final = root / f".tmp_step_{step:07d}", root / f"step_{step:07d}"
    model_sd, optim_sd = get_state_dict(model, optimizer, options=FULL)  # collective under FSDP
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        torch.save({"model": model_sd, "optimizer": optim_sd, "scheduler": scheduler.state_dict(), "step": step},
                   tmp / "state.pt")
    barrier(world)
    torch.save(rng_state(), tmp / f"rng_rank{rank}.pt")
    barrier(world)
    if rank == 0:
        (tmp / "world_size").write_text(str(world))
        publish_checkpoint(tmp, final, keep)
    barrier(world)


def load_checkpoint(out: Path, model, optimizer, scheduler, rank: int, world: int) -> int:
    """Restore the latest checkpoint, if any; the step to continue from."""
    latest = out / "checkpoints" / "latest"
    if not latest.exists():
        return 0
    ckpt = out / "checkpoints" / latest.read_text().strip()
    saved_world = int((ckpt / "world_size").read_text())
    if saved_world != world:
        raise ValueError(f"{ckpt}: saved with {saved_world} ranks, resumed with {world}; the data position "
                         "is per rank, so resume with the same world size")
    state = torch.load(ckpt / "state.pt", map_location="cpu", weights_only=False)
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"],
                   options=StateDictOptions(full_state_dict=True))
    scheduler.load_state_dict(state["scheduler"])
    set_rng_state(torch.load(ckpt / f"rng_rank{rank}.pt", weights_only=False))
    return int(state["step"])


def build_optimizer(model, cfg, device: torch.device) -> torch.optim.Optimizer:
    """AdamW; no weight decay on biases, norms and other 1-d parameters."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, fused=device.type == "cuda")


class Metrics:
    """metrics.jsonl (always) and TensorBoard (when installed), on rank 0."""

    def __init__(self, out: Path, rank: int, resume_step: int):
        self.rank, self.path, self.tb = rank, out / "metrics.jsonl", None
        if rank != 0:
            return
        if self.path.exists():  # drop what was logged after the checkpoint we resume from
            keep = [x for x in self.path.read_text().splitlines() if x and json.loads(x)["step"] <= resume_step]
            self.path.write_text("".join(x + "\n" for x in keep))
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(out / "tensorboard"), purge_step=resume_step + 1)
        except ImportError:
            pass

    def log(self, step: int, values: dict) -> None:
        if self.rank != 0:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": step, **values}) + "\n")
        if self.tb is not None:
            for k, v in values.items():
                if v is not None:
                    self.tb.add_scalar(k, v, step)
            self.tb.flush()


@torch.no_grad()
def evaluate(model, batches: list[torch.Tensor], device, autocast, world: int) -> float:
    model.eval()
    losses = []
    for x in batches:
        x = x.to(device)
        with autocast():
            losses.append(model(input_ids=x, labels=x).loss.float().item())
    model.train()
    return all_mean(float(np.mean(losses)) if losses else float("nan"), world, device)


def train_step(model, optimizer, scheduler, batches, grad_accum: int, device: torch.device, autocast,
               clip: float) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step over `grad_accum` micro-batches (DDP syncs gradients on the last only);
    returns the mean loss and the gradient norm before clipping."""
    loss_sum = torch.zeros((), device=device)
    for micro in range(grad_accum):
        x = next(batches).to(device, non_blocking=True)
        sync = micro == grad_accum - 1 or not hasattr(model, "no_sync")
        with (contextlib.nullcontext() if sync else model.no_sync()), autocast():
            loss = model(input_ids=x, labels=x).loss / grad_accum
        loss.backward()
        loss_sum += loss.detach().float()
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return loss_sum, grad_norm


def train(run: RunConfig, stop_after: int | None = None) -> dict:
    """Train as configured; resumes from `run.output` when it holds a checkpoint. `stop_after` ends the run,
    with a checkpoint, after that many steps of this invocation (for time-limited and preemptible jobs)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    cfg, dcfg = run.train, run.data
    rank, world, device = init_distributed()
    out = Path(run.output)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)

    from speechtok.hub import check_model_ref

    tokenizer = AutoTokenizer.from_pretrained(check_model_ref(run.model))
    vocab = SpeechVocab.load(run.model)
    if dcfg.dedup is not None:  # the final model records the units it was trained on, for generation
        vocab.dedup = dcfg.dedup
    if run.from_scratch:
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(run.model), attn_implementation=cfg.attn)
    else:
        model = AutoModelForCausalLM.from_pretrained(run.model, dtype=torch.float32, attn_implementation=cfg.attn)
    model.config.use_cache = False
    raw = model.to(device)
    fpt = flops_per_token(raw, dcfg.seq_len)
    model = parallelize(raw, cfg.parallel, world, device, cfg.precision, cfg.compile, cfg.gradient_checkpointing)
    optimizer = build_optimizer(model, cfg, device)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_at(s, cfg) / cfg.lr)
    step = load_checkpoint(out, model, optimizer, scheduler, rank, world)
    metrics = Metrics(out, rank, step)

    builder = SequenceBuilder(vocab, tokenizer, dcfg.dedup, dcfg.span_words)
    data = PackedTokens(dcfg, builder, dcfg.shards, rank, world, cfg.seed, cfg.batch_size,
                        skip_batches=step * cfg.grad_accum)
    batches = iter(token_loader(data, dcfg.num_workers))
    eval_batches = []
    if dcfg.eval_shards:
        ev = PackedTokens(dcfg, builder, dcfg.eval_shards, rank, world, seed=1234, batch_size=cfg.batch_size, epochs=1)
        eval_batches = [b for _, b in zip(range(cfg.eval_batches), token_loader(ev, 0))]

    def autocast():
        if cfg.precision == "bf16":
            return torch.autocast(device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    peak = peak_flops(device)
    tokens_per_step = cfg.batch_size * cfg.grad_accum * dcfg.seq_len * world
    model.train()
    t_last, steps_since, last = time.perf_counter(), 0, {}
    first_step = step
    while step < cfg.steps and (stop_after is None or step - first_step < stop_after):
        loss_sum, grad_norm = train_step(model, optimizer, scheduler, batches, cfg.grad_accum, device, autocast, cfg.clip)
        step += 1
        steps_since += 1
        if step % cfg.log_every == 0 or step == cfg.steps:
            if device.type == "cuda":
                torch.cuda.synchronize()
            dt = time.perf_counter() - t_last
            tps = tokens_per_step * steps_since / dt
            last = {"loss": all_mean(loss_sum.item(), world, device), "lr": scheduler.get_last_lr()[0],
                    "grad_norm": float(grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm),
                    "tokens_per_s": tps, "mfu": (tps * fpt / (peak * world)) if peak else None}
            metrics.log(step, last)
            if rank == 0:
                mfu = f" mfu {last['mfu']:.1%}" if last["mfu"] else ""
                print(f"step {step}/{cfg.steps} loss {last['loss']:.4f} lr {last['lr']:.2e} "
                      f"{tps:,.0f} tok/s{mfu}", flush=True)
            t_last, steps_since = time.perf_counter(), 0
        if eval_batches and (step % cfg.eval_every == 0 or step == cfg.steps):
            ev_loss = evaluate(model, eval_batches, device, autocast, world)
            metrics.log(step, {"eval_loss": ev_loss})
            last["eval_loss"] = ev_loss
        stopping = stop_after is not None and step - first_step >= stop_after
        if step % cfg.save_every == 0 or step == cfg.steps or stopping:
            save_checkpoint(out, step, model, optimizer, scheduler, rank, world, cfg.keep_checkpoints)

    if step >= cfg.steps:
        save_final(out / "final", raw, model, optimizer, tokenizer, vocab, rank, world)
    if world > 1:
        dist.barrier()  # no rank tears gloo down while another still has a collective in flight
        dist.destroy_process_group()
    return {"step": step, **last}


def save_final(path: Path, raw, model, optimizer, tokenizer, vocab: SpeechVocab, rank: int, world: int) -> None:
    """Hugging Face format: loadable with AutoModelForCausalLM / AutoTokenizer, plus speech_vocab.json."""
    model_sd, _ = get_state_dict(model, optimizer, options=FULL)
    if rank == 0:
        raw.config.use_cache = True
        raw.save_pretrained(path, state_dict=model_sd)
        tokenizer.save_pretrained(path)
        vocab.save(path)
    barrier(world)
