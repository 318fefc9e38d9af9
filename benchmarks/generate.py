"""Generation speed of the two stages, in × real time of the speech produced, at batch 1 and batch N.

Stage 1: a Llama-style token LM (random weights, extended vocabulary) sampling 50 Hz semantic units
through `generate_units` (KV cache). Stage 2: the acoustic model generating 75 Hz EnCodec-style codes
(8 codebooks, delay pattern) from those units with its KV cache, `generate_batch` for batch N.

    python benchmarks/generate.py --size 350m --batch 32          # GPU machine
    python benchmarks/generate.py --size tiny --device cpu --batch 4 --seconds 2 --no-write"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from lm_train import SIZES, VOCAB  # noqa: E402
from report import hardware, write_section  # noqa: E402

from speechtok.lm.acoustic import AcousticConfig, AcousticModel  # noqa: E402
from speechtok.lm.generate import SamplingOptions, generate_units  # noqa: E402
from speechtok.lm.vocab import SpeechVocab  # noqa: E402

UNIT_RATE, CODEC_RATE, K = 50.0, 75.0, 500


class Tok:
    bos_token_id, eos_token_id, pad_token_id = 1, 2, 0


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def speech_vocab() -> SpeechVocab:
    return SpeechVocab(semantic_stream="semantic", k=K, semantic_first_id=32002, text_id=32000,
                       speech_id=32001)


def build_lm(size: str, device: torch.device):
    """A random-init Llama-style token LM of `size` (bf16 on GPU, fp32 on CPU), in eval mode."""
    from transformers import LlamaConfig, LlamaForCausalLM

    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    torch.manual_seed(0)
    with torch.device(device):
        lm = LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB, max_position_embeddings=4096, **SIZES[size]))
    return lm.to(dtype=dtype).eval()


def build_acoustic(size: str, device: torch.device) -> AcousticModel:
    """A random-init acoustic model as wide and deep as the LM of `size` (8 EnCodec codebooks)."""
    width = SIZES[size]
    acfg = AcousticConfig(k=K, n_q=8, codebook_size=1024, dim=width["hidden_size"],
                          layers=width["num_hidden_layers"], heads=width["num_attention_heads"], max_len=4096)
    torch.manual_seed(0)
    return AcousticModel(acfg).to(device).eval()


def time_stage1(lm, batch: int, seconds: float, compiled: bool, full_warmup: bool = False) -> float:
    """Seconds for `generate_units` to sample `seconds` of units for `batch` prompts. `full_warmup` warms up
    at full length (a compiled static cache is shaped by the length: a short warm-up would recompile)."""
    device = next(lm.parameters()).device
    vocab = speech_vocab()
    n_units = int(seconds * UNIT_RATE)
    opts = SamplingOptions(max_new_tokens=n_units, min_new_tokens=n_units, temperature=1.0, top_k=50,
                           compile=compiled)
    prompts = [[1, vocab.speech_id] + list(range(32002, 32012))] * batch
    warm = opts if full_warmup else dataclasses.replace(opts, max_new_tokens=8, min_new_tokens=8)
    generate_units(lm, Tok(), vocab, prompts, warm)
    sync(device)
    t0 = time.perf_counter()
    outs = generate_units(lm, Tok(), vocab, prompts, opts)
    sync(device)
    dt = time.perf_counter() - t0
    assert all(len(o) == n_units for o in outs)
    return dt


def time_stage2(acoustic: AcousticModel, batch: int, seconds: float) -> tuple[float, np.ndarray]:
    """Seconds for the acoustic model to turn `seconds` of units into codec frames for `batch` rows; and
    the first row's codes [n_q, frames]."""
    device = acoustic.sep.device
    units = np.random.default_rng(0).integers(0, K, int(seconds * UNIT_RATE))
    frames = int(seconds * CODEC_RATE)
    acoustic.generate(units[:10], 4)
    sync(device)
    t0 = time.perf_counter()
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        codes = acoustic.generate_batch([units] * batch, [frames] * batch, temperature=1.0, top_k=50)
    sync(device)
    return time.perf_counter() - t0, codes[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size", choices=list(SIZES), default="350m")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=10.0, help="Speech generated per sequence.")
    ap.add_argument("--compile", action="store_true", help="Also time stage 1 with a static cache + torch.compile.")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    device = torch.device(args.device)
    lm = build_lm(args.size, device)
    n_units, frames = int(args.seconds * UNIT_RATE), int(args.seconds * CODEC_RATE)
    rows = []
    for compiled in (False, True) if args.compile else (False,):
        for batch in (1, args.batch):
            dt = time_stage1(lm, batch, args.seconds, compiled)
            name = "stage 1: LM → units" + (" (static cache, compiled)" if compiled else "")
            rows.append((name, batch, dt, batch * args.seconds / dt))
    acoustic = build_acoustic(args.size, device)
    for batch in (1, args.batch):
        dt, _ = time_stage2(acoustic, batch, args.seconds)
        rows.append(("stage 2: units → codes", batch, dt, batch * args.seconds / dt))

    lines = [f"## Generation, {args.size} models (issue #6)", "",
             f"Hardware: {hardware(device)}. {args.seconds:g} s of speech per sequence ({n_units} units at 50 Hz; "
             f"{frames} frames × 8 codebooks at 75 Hz); {'bf16' if device.type == 'cuda' else 'fp32'}; "
             "random weights, sampling with top-k 50.", "",
             "| stage | batch | seconds | × real time |", "|---|---|---|---|"]
    lines += [f"| {name} | {b} | {dt:.2f} | {x:,.1f} |" for name, b, dt, x in rows]
    s1 = [r for r in rows if r[0] == "stage 1: LM → units"]
    s2 = [r for r in rows if r[0].startswith("stage 2")]
    lines += ["", f"Batching gain at batch {args.batch}: stage 1 **{s1[1][3] / s1[0][3]:.1f}×**, "
              f"stage 2 **{s2[1][3] / s2[0][3]:.1f}×**."]
    body = "\n".join(lines)
    print(body)
    if not args.no_write:
        write_section(f"generate-{args.size}-{device.type}", body)


if __name__ == "__main__":
    main()
