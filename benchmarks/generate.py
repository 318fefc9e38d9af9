"""Generation speed of the two stages, in × real time of the speech produced, at batch 1 and batch N.

Stage 1: a Llama-style token LM (random weights, extended vocabulary) sampling 50 Hz semantic units
through `generate_units` (KV cache). Stage 2: the acoustic model generating 75 Hz EnCodec-style codes
(8 codebooks) from those units with its KV cache, `generate_batch` for batch N, in each codebook pattern
of `--patterns` (same width and depth; `depth` adds its depth transformer, a quarter as wide, 2 layers;
`valle` is an AR and a NAR transformer of that size).

    python benchmarks/generate.py --size 350m --batch 32          # GPU machine
    python benchmarks/generate.py --size tiny --device cpu --batch 16 --seconds 2 --patterns delay,valle
    python benchmarks/generate.py --size tiny --device cpu --batch 4 --seconds 2 --no-write
    python benchmarks/generate.py --size tiny --device cpu --batch 16 --seconds 1 --patterns delay,depth
    python benchmarks/generate.py --size tiny --device cpu --per-step      # ms per step: eager vs compiled

`--per-step` times one decoding step of each stage at batch 1: stage 1 through transformers' `generate`
(the baseline: dynamic cache, Python per step), then the decoding core (lm/decoding.py) eager over its
static cache, then the core's step compiled whole (`reduce-overhead`: CUDA graphs on a GPU; inductor
on CPU), and checks that compiled and eager draw the same tokens."""

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

from speechtok.lm.acoustic import AcousticConfig, AcousticModel, acoustic_model  # noqa: E402
from speechtok.lm.generate import SamplingOptions, generate_units  # noqa: E402
from speechtok.lm.vocab import SpeechVocab  # noqa: E402

UNIT_RATE, CODEC_RATE, K = 50.0, 75.0, 500
PATTERNS = ("delay", "coarse_fine", "valle", "depth")  # stage 2's codebook patterns


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


def build_acoustic(size: str, device: torch.device, pattern: str = "delay") -> AcousticModel:
    """A random-init acoustic model as wide and deep as the LM of `size` (8 EnCodec codebooks) in `pattern`
    (depth: a depth transformer a quarter as wide, 2 layers, acoustic delay 1; valle: AR + NAR)."""
    width = SIZES[size]
    depth = dict(depth_dim=max(64, width["hidden_size"] // 4), depth_layers=2, depth_heads=4)
    acfg = AcousticConfig(k=K, n_q=8, codebook_size=1024, dim=width["hidden_size"], pattern=pattern,
                          layers=width["num_hidden_layers"], heads=width["num_attention_heads"], max_len=4096,
                          **depth)
    torch.manual_seed(0)
    return acoustic_model(acfg).to(device).eval()


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


def time_stage2(acoustic: AcousticModel, batch: int, seconds: float,
                compiled: bool = False) -> tuple[float, np.ndarray]:
    """Seconds for the acoustic model to turn `seconds` of units into codec frames for `batch` rows; and
    the first row's codes [n_q, frames]."""
    device = next(acoustic.parameters()).device
    units = np.random.default_rng(0).integers(0, K, int(seconds * UNIT_RATE))
    frames = int(seconds * CODEC_RATE)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        acoustic.generate_batch([units] * batch, [frames] * batch, temperature=1.0, top_k=50,
                                compiled=compiled)
        sync(device)
        t0 = time.perf_counter()
        codes = acoustic.generate_batch([units] * batch, [frames] * batch, temperature=1.0, top_k=50,
                                        compiled=compiled)
    sync(device)
    return time.perf_counter() - t0, codes[0]


def ms_per_step(run_steps, steps: int, device: torch.device) -> float:
    """Milliseconds per step of `run_steps(n)`, from the difference between `steps` and `steps // 4` steps
    so that set-up and prefill cancel; the better of two runs."""
    def timed(n: int) -> float:
        sync(device)
        t0 = time.perf_counter()
        run_steps(n)
        sync(device)
        return time.perf_counter() - t0

    run_steps(8)  # warm-up
    best = min(timed(steps) - timed(steps // 4) for _ in range(2))
    return 1000 * best / (steps - steps // 4)


def core_ms_per_step(make_decoder, steps: int, compiled: bool,
                     device: torch.device) -> tuple[float, torch.Tensor]:
    """Milliseconds per step of a decoder's step (compiled or eager), the better of two timings of
    `steps // 2` steps after 8 warm-up steps (which compile); and the tokens of one full run."""
    decoder = make_decoder()
    step = decoder.compiled_step() if compiled else decoder.step
    for _ in range(8):
        step()
    best = float("inf")
    for _ in range(2):
        sync(device)
        t0 = time.perf_counter()
        for _ in range(steps // 2):
            step()
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return 1000 * best / (steps // 2), make_decoder().run(compiled)


def per_step_table(size: str, device: torch.device, steps: int) -> tuple[list[tuple[str, float]], bool]:
    """(stage, ms per step) rows at batch 1, and whether compiled and eager drew the same tokens."""
    from speechtok.lm.decoding import Sampler
    from speechtok.lm.generate import unit_decoder

    lm, acoustic = build_lm(size, device), build_acoustic(size, device)
    vocab, prompt = speech_vocab(), [[1, speech_vocab().speech_id] + list(range(32002, 32012))]
    units = np.random.default_rng(0).integers(0, K, 100)
    n = steps + 8

    def hf_generate(n: int) -> None:
        lm.generate(input_ids=torch.tensor(prompt, device=device), max_new_tokens=n, min_new_tokens=n,
                    do_sample=True, top_k=50, pad_token_id=0)

    makers = {
        "stage 1": lambda: unit_decoder(lm, Tok(), vocab, prompt, SamplingOptions(
            max_new_tokens=n, min_new_tokens=n, temperature=1.0, top_k=50)),
        "stage 2": lambda: acoustic.decoder([units], [n], [None], Sampler(1.0, 50), [0]),
    }
    rows, same = [], True
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        rows.append(("stage 1, transformers generate (baseline)", ms_per_step(hf_generate, steps, device)))
        for name, make in makers.items():
            eager, eager_tokens = core_ms_per_step(make, steps, False, device)
            compiled, compiled_tokens = core_ms_per_step(make, steps, True, device)
            rows.append((f"{name}, core eager (static cache)", eager))
            rows.append((f"{name}, core compiled (reduce-overhead, fullgraph)", compiled))
            same &= bool(torch.equal(eager_tokens, compiled_tokens))
    return rows, same


def main_per_step(args) -> None:
    device = torch.device(args.device)
    rows, same = per_step_table(args.size, device, args.steps)
    base = {r[0].split(",")[0]: r[1] for r in rows if "core eager" in r[0]}
    base["stage 1"] = rows[0][1]
    lines = [f"## Generation: ms per decoding step, {args.size} models, batch 1 (issue #24)", "",
             f"Hardware: {hardware(device)}, {torch.get_num_threads()} threads. {args.steps} steps "
             "(set-up and prefill cancelled by timing n and n/4 steps); sampling with top-k 50; "
             f"{'bf16' if device.type == 'cuda' else 'fp32'}; random weights. Speed-up: against the first "
             f"row of its stage.", "",
             "| stage, path | ms / step | speed-up |", "|---|---|---|"]
    lines += [f"| {name} | {ms:.2f} | {base[name.split(',')[0]] / ms:.2f}× |" for name, ms in rows]
    lines += ["", f"Compiled and eager core drew the same tokens (sampled, same seed): "
                  f"**{'yes' if same else 'NO'}**."]
    body = "\n".join(lines)
    print(body)
    if not args.no_write:
        write_section(f"generate-steps-{args.size}-{device.type}", body)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size", choices=list(SIZES), default="350m")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=10.0, help="Speech generated per sequence.")
    ap.add_argument("--compile", action="store_true",
                    help="Also time stage 1 with a static cache + torch.compile.")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--per-step", action="store_true", help="ms per step, eager vs compiled (see above).")
    ap.add_argument("--steps", type=int, default=100, help="Steps timed with --per-step.")
    ap.add_argument("--patterns", default="delay", help="Stage 2's codebook patterns, comma-separated "
                                                        "(delay, coarse_fine, valle, depth).")
    args = ap.parse_args()
    if args.per_step:
        return main_per_step(args)
    device = torch.device(args.device)
    lm = build_lm(args.size, device)
    n_units, frames = int(args.seconds * UNIT_RATE), int(args.seconds * CODEC_RATE)
    rows = []
    for compiled in (False, True) if args.compile else (False,):
        for batch in (1, args.batch):
            dt = time_stage1(lm, batch, args.seconds, compiled)
            name = "stage 1: LM → units" + (" (static cache, compiled)" if compiled else "")
            rows.append((name, batch, dt, batch * args.seconds / dt))
    for pattern in args.patterns.split(","):
        acoustic = build_acoustic(args.size, device, pattern)
        for batch in (1, args.batch):
            dt, _ = time_stage2(acoustic, batch, args.seconds)
            rows.append((f"stage 2: units → codes, {pattern}", batch, dt, batch * args.seconds / dt))

    lines = [f"## Generation, {args.size} models (issue #6)", "",
             f"Hardware: {hardware(device)}. {args.seconds:g} s of speech per sequence "
             f"({n_units} units at 50 Hz; {frames} frames × 8 codebooks at 75 Hz); "
             f"{'bf16' if device.type == 'cuda' else 'fp32'}; "
             "random weights, sampling with top-k 50.", "",
             "| stage | batch | seconds | × real time |", "|---|---|---|---|"]
    lines += [f"| {name} | {b} | {dt:.2f} | {x:,.1f} |" for name, b, dt, x in rows]
    s1 = [r for r in rows if r[0] == "stage 1: LM → units"]
    s2 = [r for r in rows if r[0].startswith("stage 2")]
    gains = ", ".join(f"stage 2 {one[0].split(', ')[-1]} **{many[3] / one[3]:.1f}×**"
                      for one, many in zip(s2[::2], s2[1::2]))
    lines += ["", f"Batching gain at batch {args.batch}: stage 1 **{s1[1][3] / s1[0][3]:.1f}×**, {gains}."]
    body = "\n".join(lines)
    print(body)
    if not args.no_write:
        write_section(f"generate-{args.size}-{device.type}", body)


if __name__ == "__main__":
    main()
