"""`tok lm train CONFIG`: the token-LM training loop.

bf16 autocast over fp32 master weights, AdamW, linear warmup then cosine decay, gradient accumulation
and clipping; DDP or FSDP2 under torchrun (applied in parallel.py). Checkpoints (training/checkpoint.py)
are sharded DCP folders with the data position and every rank's RNG: a run resumed on the same world size
continues the same loss curve; on another world size it reshards the model and continues the data from
its global position. The final model is saved in Hugging Face format with its tokenizer and speech
vocabulary."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

from speechtok.lm.config import RunConfig
from speechtok.lm.data import PackedTokens, token_loader
from speechtok.lm.loss import use_chunked_loss
from speechtok.lm.parallel import init_distributed, parallelize
from speechtok.lm.sequences import SequenceBuilder
from speechtok.lm.vocab import SpeechVocab
from speechtok.checksums import verify_checksums, write_checksums
from speechtok.training.checkpoint import barrier, load_checkpoint, save_checkpoint
from speechtok.training.loop import (Guard, Metrics, autocast_for, build_optimizer, check_schedule,
                                     compile_enabled, lr_at, schedule_of, seed_all, set_lr, training_run)
from speechtok.training.stream import resume_position

__all__ = ["train", "train_step", "evaluate", "build_optimizer", "lr_at", "flops_per_token", "peak_flops"]

PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "H800": 989e12, "A100": 312e12, "L40S": 362e12,
                   "A10G": 125e12}


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


@torch.no_grad()
def evaluate(model, batches: list[torch.Tensor], device, autocast, world: int,
             shape: tuple[int, int]) -> float:
    """Mean loss over every rank's batches. Ranks may hold different numbers of batches: all run as many
    forward passes as the rank with most (padding with a zero-weight batch of `shape`), so FSDP's
    collectives line up and no rank waits forever; the sums are then reduced."""
    n = torch.tensor([len(batches)], device=device)
    if world > 1:
        dist.all_reduce(n, op=dist.ReduceOp.MAX)
    model.eval()
    total = torch.zeros(2, dtype=torch.float64, device=device)  # loss sum, batch count
    for i in range(int(n.item())):
        real = i < len(batches)
        x = (batches[i] if real else torch.zeros(shape, dtype=torch.long)).to(device)
        with autocast():
            loss = model(input_ids=x, labels=x).loss.double()
        if real:
            total += torch.stack([loss, torch.ones((), dtype=torch.float64, device=device)])
    model.train()
    if world > 1:
        dist.all_reduce(total)
    return (total[0] / total[1]).item() if total[1] > 0 else float("nan")


def train_step(model, optimizer, lr: float, batches, grad_accum: int, device: torch.device, autocast,
               clip: float) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step at learning rate `lr` over `grad_accum` micro-batches (DDP syncs gradients on the
    last only); returns the mean loss and the gradient norm before clipping."""
    set_lr(optimizer, lr)
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
    optimizer.zero_grad(set_to_none=True)
    return loss_sum, grad_norm


def _tracked(loader, latest: dict):
    """The token ids of each batch; records each loader worker's latest per-source item counts."""
    for b in loader:
        latest[int(b["part"][0])] = b["consumed"][-1]
        yield b["ids"]


def train(run: RunConfig, stop_after: int | None = None, device: str = "auto") -> dict:
    """Train as configured; resumes from `run.output` when it holds a checkpoint. `stop_after` ends the run,
    with a checkpoint, after that many steps of this invocation (for time-limited and preemptible jobs);
    `device` as for parallel.init_distributed. SIGINT / SIGTERM end it after the step at hand, with a
    checkpoint (raising Interrupted); a non-finite loss, gradient norm or weight ends it without one
    (raising NonFinite)."""
    rank, world, device = init_distributed(device)
    with training_run(world) as stop:
        return _train(run, stop_after, rank, world, device, stop)


def _train(run: RunConfig, stop_after: int | None, rank: int, world: int, device: torch.device, stop) -> dict:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    cfg, dcfg = run.train, run.data
    out = Path(run.output)
    out.mkdir(parents=True, exist_ok=True)
    seed_all(cfg.seed)

    from speechtok.hub import check_model_ref

    if Path(run.model).is_dir():  # written by `tok lm extend-vocab` or `tok lm train`
        verify_checksums(run.model)
    tokenizer = AutoTokenizer.from_pretrained(check_model_ref(run.model))
    vocab = SpeechVocab.load(run.model)
    if dcfg.dedup is not None:  # the final model records the units it was trained on, for generation
        vocab.dedup = dcfg.dedup
    vocab.speech = dcfg.speech
    if run.from_scratch:
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(run.model),
                                                 attn_implementation=cfg.attn)
    else:
        model = AutoModelForCausalLM.from_pretrained(run.model, dtype=torch.float32,
                                                     attn_implementation=cfg.attn)
    model.config.use_cache = False
    raw = model.to(device)
    fpt = flops_per_token(raw, dcfg.seq_len)
    if cfg.loss == "chunked":
        use_chunked_loss(raw)
    if cfg.compile == "model":  # in place: state-dict keys unchanged
        raw.compile()
    model = parallelize(raw, cfg.parallel, world, device, cfg.precision,
                        cfg.compile != "model" and compile_enabled(cfg.compile, device),
                        cfg.gradient_checkpointing)
    optimizer = build_optimizer(model, cfg, device)
    parts = {"lm": (model, optimizer)}
    meta = load_checkpoint(out, parts, rank) or {}
    check_schedule(meta, cfg, "train.")
    step = meta.get("step", 0)
    metrics = Metrics(out, rank, step, cfg.steps)
    guard = Guard(stop, out, world, device)

    builder = SequenceBuilder(vocab, tokenizer, dcfg.dedup, dcfg.span_words, dcfg.speech)
    position = resume_position(meta.get("position"), step, world, max(1, dcfg.num_workers), f"{out}: ")
    data = PackedTokens(dcfg, builder, dcfg.shards, rank, world, cfg.seed, cfg.batch_size,
                        skip_batches=(step - position.origin_step) * cfg.grad_accum, position=position)
    latest: dict[int, torch.Tensor] = {}
    batches = _tracked(token_loader(data, dcfg.num_workers), latest)
    eval_batches = []
    if dcfg.eval_shards:  # the speech formats of the mix on the eval shards, one epoch split across ranks
        ev = PackedTokens(dcfg, builder, dcfg.eval_shards, rank, world, seed=1234, batch_size=cfg.batch_size,
                          epochs=1, text=False)
        eval_batches = [b["ids"] for _, b in zip(range(cfg.eval_batches), token_loader(ev, 0))]

    def position_now() -> dict:
        local = sum(latest.values()) if latest else torch.zeros(len(data.source_names), dtype=torch.long)
        return position.saved(dict(zip(data.source_names, local.tolist())), world, device)

    autocast = autocast_for(cfg.precision, device)
    peak = peak_flops(device)
    tokens_per_step = cfg.batch_size * cfg.grad_accum * dcfg.seq_len * world
    model.train()
    t_last, steps_since, last = time.perf_counter(), 0, {}
    first_step, signum = step, guard.stop_signal()
    while step < cfg.steps and (stop_after is None or step - first_step < stop_after) and not signum:
        lr = lr_at(step, cfg)
        loss_sum, grad_norm = train_step(model, optimizer, lr, batches, cfg.grad_accum, device, autocast,
                                         cfg.clip)
        guard.watch(loss=loss_sum, grad_norm=grad_norm)
        step += 1
        steps_since += 1
        if step % cfg.log_every == 0 or step == cfg.steps:
            guard.check(step)
            if device.type == "cuda":
                torch.cuda.synchronize()
            dt = time.perf_counter() - t_last
            tps = tokens_per_step * steps_since / dt
            loss = loss_sum.detach().clone()
            if world > 1:
                dist.all_reduce(loss)
            last = {"loss": loss.item() / world, "lr": lr,
                    "grad_norm": float(grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor")
                                       else grad_norm),
                    "tokens_per_s": tps, "mfu": (tps * fpt / (peak * world)) if peak else None}
            metrics.log(step, last)
            t_last, steps_since = time.perf_counter(), 0
        if dcfg.eval_shards and (step % cfg.eval_every == 0 or step == cfg.steps):
            ev_loss = evaluate(model, eval_batches, device, autocast, world, (cfg.batch_size, dcfg.seq_len))
            metrics.log(step, {"eval_loss": ev_loss})
            last["eval_loss"] = ev_loss
        signum = guard.stop_signal()
        stopping = (stop_after is not None and step - first_step >= stop_after) or signum
        if step % cfg.save_every == 0 or step == cfg.steps or stopping:
            guard.check(step, [model])
            saved = {"position": position_now(), "schedule": schedule_of(cfg)}
            save_checkpoint(out, step, parts, saved, rank, world, cfg.keep_checkpoints)
    if signum:
        raise guard.interrupted(signum, step, first_step)
    if step >= cfg.steps:
        guard.check(step, [model])
        save_final(out / "final", raw, model, tokenizer, vocab, rank, world)
        metrics.finished(out / "final")
    if world > 1:
        dist.barrier()  # no rank tears gloo down while another still has a collective in flight
    return {"step": step, **last}


def save_final(path: Path, raw, model, tokenizer, vocab: SpeechVocab, rank: int, world: int) -> None:
    """Hugging Face format: loadable with AutoModelForCausalLM / AutoTokenizer, plus speech_vocab.json."""
    model_sd = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if rank == 0:
        raw.config.use_cache = True
        raw.save_pretrained(path, state_dict=model_sd)
        tokenizer.save_pretrained(path)
        vocab.save(path)
        write_checksums(path)
    barrier(world)
