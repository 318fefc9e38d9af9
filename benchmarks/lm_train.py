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

VOCAB = 32000 + 2 + 500  # a Llama-2 vocabulary with [TEXT], [SPEECH] and 500 units
SIZES = {  # Llama-style; parameter counts include the untied embeddings and head
    "tiny": dict(hidden_size=128, intermediate_size=352, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4),
    "350m": dict(hidden_size=1024, intermediate_size=2816, num_hidden_layers=24, num_attention_heads=16, num_key_value_heads=16),
    "1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8),
}


def build(size: str, seq_len: int, dtype: torch.dtype, device: torch.device):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=VOCAB, max_position_embeddings=seq_len, tie_word_embeddings=False,
                      attn_implementation="sdpa", use_cache=False, **SIZES[size])
    return LlamaForCausalLM(cfg).to(device=device, dtype=dtype)


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
    g = torch.Generator().manual_seed(0)
    data = [torch.randint(0, VOCAB, (args.batch_size, args.seq_len), generator=g) for _ in range(4)]
    tokens = args.batch_size * args.seq_len

    # plain Hugging Face loop, bf16 weights
    model = build(args.size, args.seq_len, torch.bfloat16, device)
    n_params = sum(p.numel() for p in model.parameters())
    fpt = flops_per_token(model, args.seq_len)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    it = iter(data * 1000)

    def plain_step():
        x = next(it).to(device)
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    t_plain = timed(plain_step, args.steps, args.warmup, device)
    del model, opt
    if device.type == "cuda":
        torch.cuda.empty_cache()

    # speechtok's training step
    cfg = TrainConfig(batch_size=args.batch_size, steps=10_000, warmup=10, compile=not args.no_compile)
    model = parallelize(build(args.size, args.seq_len, torch.float32, device), "none", 1, device, "bf16",
                        compile_layers=cfg.compile)
    opt = build_optimizer(model, cfg, device)
    it = iter(data * 1000)

    def autocast():
        return torch.autocast(device.type, dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()

    t_ours = timed(lambda: train_step(model, opt, lr_at(0, cfg), it, 1, device, autocast, cfg.clip), args.steps, args.warmup, device)

    peak = peak_flops(device)
    rows = []
    for name, t in (("plain HF loop, bf16 weights, AdamW", t_plain),
                    (f"speechtok train step (fp32 master, {'bf16 autocast' if device.type == 'cuda' else 'fp32'}"
                     f"{', per-layer compile' if cfg.compile else ''}, {'fused ' if device.type == 'cuda' else ''}AdamW)", t_ours)):
        tps = tokens / t
        mfu = f"{tps * fpt / peak:.1%}" if peak else "n/a (CPU)"
        rows.append(f"| {name} | {t * 1000:,.0f} | {tps:,.0f} | {mfu} |")
    body = "\n".join([
        f"## Token-LM training, {args.size} (issue #5)", "",
        f"Hardware: {hardware(device)}. Llama-style {n_params / 1e6:,.0f}M parameters (vocabulary {VOCAB:,}), "
        f"batch {args.batch_size} × {args.seq_len} tokens, {args.steps} timed steps after {args.warmup} warm-up; "
        f"{fpt / 1e9:.2f} GFLOP per token.", "",
        "| loop | ms / step | tokens/s | MFU |", "|---|---|---|---|", *rows, "",
        f"Speed-up: **{t_plain / t_ours:.2f}×**.",
    ])
    print(body)
    if not args.no_write:
        write_section(f"lm-train-{args.size}-{device.type}", body)


if __name__ == "__main__":
    main()
