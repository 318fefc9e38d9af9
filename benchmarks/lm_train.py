"""Token-LM training throughput: `tok lm train`'s step (fp32 master weights, bf16 autocast, per-layer
torch.compile, fused AdamW) against a plain Hugging Face loop (bf16 weights, model(labels).loss,
backward, AdamW) on the same Llama-style model and random token batches, in one run.

    python benchmarks/lm_train.py --size 350m --batch-size 8 --seq-len 2048     # GPU machine
    python benchmarks/lm_train.py --size 1b --batch-size 4 --seq-len 2048
    python benchmarks/lm_train.py --size tiny --device cpu --steps 4            # smoke run

Tokens/s and MFU (model FLOPs, PaLM's 6N + attention, over the GPU's dense bf16 peak)."""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from report import hardware, write_section  # noqa: E402

from speechtok.lm.config import TrainConfig  # noqa: E402
from speechtok.lm.parallel import parallelize  # noqa: E402
from speechtok.lm.train import build_optimizer, flops_per_token, lr_at, peak_flops, train_step  # noqa: E402

TOKENS = 32000 + 2 + 500  # a Llama-2 vocabulary with [TEXT], [SPEECH] and 500 units
VOCAB = -(-TOKENS // 64) * 64  # the embedding rows users get: `tok lm extend-vocab` pads to a multiple of 64
SIZES = {  # Llama-style; parameter counts include the untied embeddings and head
    "tiny": dict(hidden_size=128, intermediate_size=352, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=4),
    "350m": dict(hidden_size=1024, intermediate_size=2816, num_hidden_layers=24, num_attention_heads=16,
                 num_key_value_heads=16),
    "1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
               num_key_value_heads=8),
}


def build(size: str, seq_len: int, dtype: torch.dtype, device: torch.device):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=VOCAB, max_position_embeddings=seq_len, tie_word_embeddings=False,
                      attn_implementation="sdpa", use_cache=False, **SIZES[size])
    with torch.device(device):  # initialised where it runs: seconds less for a 1B model than on the CPU
        return LlamaForCausalLM(cfg).to(dtype=dtype)


def timed(step, steps: int, warmup: int, device: torch.device) -> float:
    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / steps


def random_batches(batch_size: int, seq_len: int, n: int = 4) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.randint(0, TOKENS, (batch_size, seq_len), generator=g) for _ in range(n)]


def time_plain(size: str, data: list[torch.Tensor], steps: int, warmup: int, device: torch.device) -> dict:
    """ms/step of a plain Hugging Face loop: bf16 weights (fp32 on CPU, where bf16 is slow),
    model(labels).loss, backward, AdamW."""
    seq_len = data[0].shape[1]
    model = build(size, seq_len, torch.bfloat16 if device.type == "cuda" else torch.float32, device)
    n_params = sum(p.numel() for p in model.parameters())
    fpt = flops_per_token(model, seq_len)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    it = iter(data * 1000)

    def plain_step():
        x = next(it).to(device)
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    seconds = timed(plain_step, steps, warmup, device)
    model = opt = None  # free them before emptying the cache
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return {"seconds": seconds, "params": n_params, "flops_per_token": fpt}


def ours_step(size: str, data: list[torch.Tensor], device: torch.device, compile_layers: bool,
              loss: str = "plain"):
    """speechtok's training step (fp32 master weights, bf16 autocast on GPU, fused AdamW, optional
    per-layer compile, plain or chunked head + loss) on a fresh model, as a zero-argument callable."""
    from speechtok.lm.loss import use_chunked_loss

    batch_size, seq_len = data[0].shape
    cfg = TrainConfig(batch_size=batch_size, steps=10_000, warmup=10, compile=compile_layers, loss=loss)
    raw = build(size, seq_len, torch.float32, device)
    if loss == "chunked":
        use_chunked_loss(raw)
    model = parallelize(raw, "none", 1, device, "bf16", compile_layers=cfg.compile)
    opt = build_optimizer(model, cfg, device)
    it = iter(data * 1000)
    step = iter(range(1 << 62))

    def autocast():
        return (torch.autocast(device.type, dtype=torch.bfloat16) if device.type == "cuda"
                else contextlib.nullcontext())

    return lambda: train_step(model, opt, lr_at(next(step), cfg), it, 1, device, autocast, cfg.clip)


def time_ours(size: str, data: list[torch.Tensor], steps: int, warmup: int, device: torch.device,
              compile_layers: bool, loss: str = "plain") -> float:
    """Seconds per step of `ours_step`; its model is freed afterwards."""
    seconds = timed(ours_step(size, data, device, compile_layers, loss), steps, warmup, device)
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return seconds


def mfu(tokens_per_s: float, fpt: float, device: torch.device) -> float | None:
    peak = peak_flops(device)
    return tokens_per_s * fpt / peak if peak else None


def format_lm(size: str, device: torch.device, plain: dict, ours: dict[str, float], batch_size: int,
              seq_len: int, steps: int, warmup: int) -> str:
    """`ours` maps a loop description to its seconds per step."""
    tokens, fpt = batch_size * seq_len, plain["flops_per_token"]
    rows = []
    plain_name = f"plain HF loop, {'bf16' if device.type == 'cuda' else 'fp32'} weights, AdamW"
    for name, t in ((plain_name, plain["seconds"]), *ours.items()):
        m = mfu(tokens / t, fpt, device)
        shown = "n/a (CPU)" if m is None else f"{m:.1%}"
        rows.append(f"| {name} | {t * 1000:,.0f} | {tokens / t:,.0f} | {shown} |")
    best = min(ours.values())
    return "\n".join([
        f"## Token-LM training, {size} (issue #5, #24)", "",
        f"Hardware: {hardware(device)}. Llama-style {plain['params'] / 1e6:,.0f}M parameters (vocabulary "
        f"{TOKENS:,} padded to {VOCAB:,}, a multiple of 64, as `tok lm extend-vocab` makes it), "
        f"batch {batch_size} × {seq_len} tokens, {steps} timed steps after {warmup} warm-up; "
        f"{fpt / 1e9:.2f} GFLOP per token.", "",
        "| loop | ms / step | tokens/s | MFU |", "|---|---|---|---|", *rows, "",
        f"Speed-up: **{plain['seconds'] / best:.2f}×**.",
    ])


def ours_name(device: torch.device, compiled: bool, loss: str = "plain") -> str:
    return (f"speechtok train step (fp32 master, {'bf16 autocast' if device.type == 'cuda' else 'fp32'}"
            f"{', per-layer compile' if compiled else ''}, {'fused ' if device.type == 'cuda' else ''}AdamW"
            f"{', chunked head + loss' if loss == 'chunked' else ''})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size", choices=list(SIZES), default="350m")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    device = torch.device(args.device)
    data = random_batches(args.batch_size, args.seq_len)
    plain = time_plain(args.size, data, args.steps, args.warmup, device)
    compiled = not args.no_compile
    ours = {ours_name(device, compiled, loss): time_ours(args.size, data, args.steps, args.warmup, device,
                                                         compiled, loss)
            for loss in ("plain", "chunked")}
    body = format_lm(args.size, device, plain, ours, args.batch_size, args.seq_len, args.steps, args.warmup)
    print(body)
    if not args.no_write:
        write_section(f"lm-train-{args.size}-{device.type}", body)


if __name__ == "__main__":
    main()
