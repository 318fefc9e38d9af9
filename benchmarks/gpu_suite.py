"""One GPU run that measures everything (issue #17): semantic encode, k-means, codecs, token-LM training,
two-stage generation, vocoders and `pytest -m gpu`, each a ratio against a baseline in the same run, on
inputs the suite makes itself, with the distance to each H100 target.

    python benchmarks/gpu_suite.py                      # the GPU run (~8 min on an H100); no arguments needed
    python benchmarks/gpu_suite.py --parts lm-1b,pytest --budget 180      # rerun some parts
    python benchmarks/gpu_suite.py --smoke --out /tmp/s --benchmarks-md /tmp/s/B.md   # seconds, on CPU

Each part runs in a forked child process with its own time box (a hang, crash or CUDA error stays there);
what a part measured before it failed or timed out is kept. A global deadline (--budget) skips the parts
left. Writes benchmarks/results/<date>-<gpu>.jsonl (appended: a rerun adds lines, the newest line of a
part wins), the `-cuda` sections of BENCHMARKS.md, and prints a one-screen summary. Where a target is
missed the part profiles one step (torch.profiler top kernels, and how busy the GPU was over the wall
time) to say why. benchmarks/README.md has the device command line."""

from __future__ import annotations

import os

# The parent never touches CUDA (its children are forked); should anything ask whether CUDA is there, NVML
# answers without initialising the driver, which a forked child could not use.
os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import multiprocessing  # noqa: E402
import platform  # noqa: E402
import re  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from pathlib import Path  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "benchmarks"), str(REPO)]  # this working tree's speechtok, not an installed copy

import numpy as np  # noqa: E402
import soundfile as sf  # noqa: E402
import torch  # noqa: E402

import codec as codec_bench  # noqa: E402
import encode as encode_bench  # noqa: E402
import generate as generate_bench  # noqa: E402
import kmeans as kmeans_bench  # noqa: E402
import lm_train as lm_bench  # noqa: E402
import vocoder as vocoder_bench  # noqa: E402
from report import hardware, write_section  # noqa: E402

PARTS = ("env", "encode", "kmeans", "codec", "lm-350m", "lm-1b", "generate", "vocoder", "pytest",
         "generate-patterns")
HEAVY_OPTIONAL = ("matplotlib", "tensorboard", "pesq", "pyworld", "pystoi")  # not carried to the device


def preimport() -> None:
    """Import, once in the parent, what every part would otherwise import lazily after its fork."""
    import torch._dynamo  # noqa: F401  (the optimizers' first step imports it)
    import torch.profiler  # noqa: F401
    import transformers
    from transformers import (DacModel, EncodecModel, HubertModel, LlamaForCausalLM,  # noqa: F401
                              MimiModel)

    from speechtok.pipelines import encode  # noqa: F401
    from speechtok.tokenizers import codec, semantic  # noqa: F401

    transformers.logging.set_verbosity_error()


@dataclasses.dataclass
class Sizes:
    """Problem sizes and time boxes; `SMOKE` shrinks every part to seconds on a CPU."""

    encode_hours: float = 0.5
    encode_sec: tuple[float, float] = (10.0, 20.0)
    encode_layer: int = 6
    encode_k: int = 500
    hubert: dict | None = None  # HubertConfig overrides; None: the base architecture
    kmeans_frames: int = 1_000_000
    kmeans_dim: int = 768
    kmeans_k: int = 500
    kmeans_iters: int = 20
    codec_utts: int = 128
    codec_seconds: float = 10.0
    codec_batch: int = 64
    codec_single: int = 16
    codec_configs: dict | None = None  # kind → config overrides; None: transformers' default configs
    lm_models: dict = dataclasses.field(default_factory=lambda: {"lm-350m": "350m", "lm-1b": "1b"})
    lm_batch: dict = dataclasses.field(default_factory=lambda: {"350m": 8, "1b": 4})
    lm_seq: int = 2048
    lm_steps: int = 5
    lm_warmup: int = 2
    compile: bool = True
    gen_size: str = "350m"
    gen_seconds: float = 5.0
    pattern_seconds: float = 1.0  # speech per row when the acoustic patterns are timed side by side
    pattern_batch: int = 16
    voc_batches: tuple[int, ...] = (1, 16)
    voc_repeats: int = 10
    voc_seconds: float = 1.0
    pytest_paths: tuple[str, ...] = ("tests",)
    profiled: tuple[str, ...] = PARTS  # parts that profile a missed target (profiles parse slowly on a CPU)
    min_part_s: float = 20.0  # a part is skipped when less than this is left
    budgets: dict = dataclasses.field(default_factory=lambda: {
        "env": 30, "encode": 90, "kmeans": 75, "codec": 70, "lm-350m": 90, "lm-1b": 100, "generate": 110,
        "vocoder": 30, "pytest": 90, "generate-patterns": 60})


TINY_CODECS = {
    "encodec": dict(num_filters=4, upsampling_ratios=[4, 4, 4], codebook_size=1024, codebook_dim=16,
                    hidden_size=16, target_bandwidths=[7.5, 30.0], num_lstm_layers=1),  # 30 kbps: 8 books
    "dac": dict(encoder_hidden_size=8, downsampling_ratios=[2, 4, 4], decoder_hidden_size=32, n_codebooks=8,
                codebook_size=64, codebook_dim=4, hidden_size=64),
    "mimi": dict(sampling_rate=16000, frame_rate=125.0, hidden_size=32, num_filters=4,
                 upsampling_ratios=[4, 4, 4], num_hidden_layers=1, num_attention_heads=2,
                 num_key_value_heads=2, head_dim=16, intermediate_size=64, codebook_size=64,
                 codebook_dim=16, vector_quantization_hidden_dimension=16, num_quantizers=8,
                 num_semantic_quantizers=1, sliding_window=50, upsample_groups=32),
}

SMOKE = Sizes(
    encode_hours=6 / 3600, encode_sec=(1.0, 2.5), encode_layer=2, encode_k=16,
    hubert=dict(hidden_size=48, num_hidden_layers=2, num_attention_heads=4, intermediate_size=96,
                conv_dim=(32,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4),
    kmeans_frames=4000, kmeans_dim=32, kmeans_k=16, kmeans_iters=3,
    codec_utts=4, codec_seconds=0.5, codec_batch=2, codec_single=2, codec_configs=TINY_CODECS,
    lm_models={"lm-350m": "tiny", "lm-1b": "tiny"}, lm_batch={"tiny": 2}, lm_seq=32, lm_steps=1, lm_warmup=1,
    compile=False, gen_size="tiny", gen_seconds=0.2, pattern_seconds=0.1, pattern_batch=2, voc_batches=(1, 2),
    voc_repeats=1, voc_seconds=0.05,
    pytest_paths=("tests/test_gpu.py",), min_part_s=0.0, profiled=("vocoder",),
    budgets={p: 60 for p in PARTS})

# part → (figure, comparison, threshold, what the target says, how to print the figure)
TARGETS = {
    "encode": [("ours_xrt", ">=", 10_000, "semantic encode end to end ≥ 10,000× real time", "{:,.0f}×")],
    "kmeans": [("ours_s", "<", 2.0, "k-means 1M×768, K=500, 20 iterations < 2 s", "{:.2f} s"),
               ("inertia_ratio", "<=", 1.0001, "k-means inertia no worse than the baseline's (≤ 1 ± 1e-4)",
                "{:.4f}")],
    "codec": [("encodec_encode_batched_xrt", ">=", 8_000, "EnCodec encode ≥ 8,000× real time", "{:,.0f}×")],
    "lm-350m": [("best_mfu", ">=", 0.45, "LM training MFU ≥ 45% at 350M", "{:.1%}")],
    "lm-1b": [("best_mfu", ">=", 0.50, "LM training MFU ≥ 50% at 1B", "{:.1%}")],
    "generate": [("best_chain_xrt", ">=", 10.0, "two-stage generation ≥ 10× real time, batch 1", "{:.2f}×")],
    "vocoder": [("vocos_xrt", ">=", 10_000, "Vocos ≥ 10,000× real time (largest batch)", "{:,.0f}×"),
                ("vocos_over_hifigan", ">=", 10.0, "Vocos ≥ 10× HiFi-GAN V1 (largest batch)", "{:.1f}×"),
                ("vocos_bf16_xrt", ">=", 10_000, "Vocos bf16 ≥ 10,000× real time (largest batch, difference "
                 "from fp32 reported)", "{:,.0f}×")],
    "pytest": [("failed_or_error", "<=", 0, "every GPU test passes (failed + errors)", "{:d}")],
}

# --------------------------------------------------------------------------------------- child side

class Part:
    """What a part measured so far, rewritten to `path` after every change so a timeout keeps it."""

    def __init__(self, name: str, path: Path, deadline: float, device: torch.device, profiled: bool = True):
        self.name, self.path, self.deadline, self.device = name, path, deadline, device
        self.profiled = profiled
        self.data = {"part": name, "status": "running", "figures": {}, "targets": [], "sections": {},
                     "profile": None, "notes": []}
        self._save()

    def _save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, default=_jsonable))
        os.replace(tmp, self.path)

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def record(self, **figures) -> None:
        self.data["figures"].update(figures)
        self._save()

    def note(self, text: str) -> None:
        self.data["notes"].append(text)
        self._save()

    def section(self, name: str, body: str) -> None:
        self.data["sections"][f"{name}-{self.device.type}"] = body
        self._save()

    def check_targets(self) -> bool:
        """Evaluate this part's targets on the recorded figures; True when all that apply are met."""
        results = []
        for key, op, threshold, text, form in TARGETS.get(self.name, []):
            results.append(target_result(text, self.data["figures"].get(key), op, threshold, form))
        self.data["targets"] = results
        self._save()
        return all(r["met"] is not False for r in results)

    def profile(self, fn, what: str, min_left: float = 10.0) -> None:
        """Profile `fn` once (after a target was missed), if time is left; a failure here is only noted."""
        if not self.profiled:
            return
        if self.left() < min_left:
            self.note(f"profile of {what} skipped: {self.left():.0f} s left")
            return
        try:
            self.data["profile"] = {"what": what, **profile_top(fn, self.device)}
        except Exception as e:  # the figures matter more than the profile
            self.note(f"profile of {what} failed: {type(e).__name__}: {str(e)[:200]}")
        self._save()

    def finish(self, status: str, error: str | None = None) -> None:
        self.data["status"] = status
        if error:
            self.data["error"] = error
        self._save()


def _jsonable(x):
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    if isinstance(x, (Path, torch.device, torch.dtype)):
        return str(x)
    return repr(x)


def target_result(text: str, value, op: str, threshold: float, form: str = "{}") -> dict:
    """met is None where the figure is missing (the part failed, or it means nothing here: MFU on CPU)."""
    if value is None:
        return {"target": text, "value": None, "shown": "—", "op": op, "threshold": threshold, "met": None,
                "distance": "not measured"}
    met = {">=": value >= threshold, "<": value < threshold, "<=": value <= threshold}[op]
    if op == ">=":
        distance = f"{value / threshold:.3g}× of target" if threshold else ""
    elif threshold > 0 and value > 0:
        distance = f"{threshold / value:.3g}× of target"  # >1: faster / lower than needed
    else:
        distance = f"{value:g} vs {threshold:g}"
    return {"target": text, "value": value, "shown": form.format(value), "op": op, "threshold": threshold,
            "met": bool(met), "distance": distance}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def profile_top(fn, device: torch.device, top: int = 8) -> dict:
    """One call of `fn` under torch.profiler: wall time, summed kernel time (GPU busy share: low means
    host-bound: Python, launches, syncs), and the top kernels (ops on CPU) by their own time."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    sync(device)
    with profile(activities=activities) as prof:
        t0 = time.perf_counter()
        fn()
        sync(device)
        wall_ms = (time.perf_counter() - t0) * 1000
    events = prof.key_averages()

    def dev_us(e) -> float:
        return float(getattr(e, "self_device_time_total", None) or getattr(e, "self_cuda_time_total", 0) or 0)

    if cuda:
        kernels = [e for e in events if getattr(e, "device_type", None) == DeviceType.CUDA and dev_us(e) > 0]
        if not kernels:  # kernels not told apart from the operators that launched them: leaf operators then
            kernels = [e for e in events if dev_us(e) > 0]
        own = dev_us
    else:
        kernels = [e for e in events if e.self_cpu_time_total > 0]

        def own(e) -> float:
            return float(e.self_cpu_time_total)
    total_us = sum(own(e) for e in kernels)
    rows = sorted(kernels, key=own, reverse=True)[:top]
    out = {"wall_ms": wall_ms, "top": [{"name": e.key[:90], "ms": own(e) / 1e3, "calls": e.count,
                                        "share": own(e) / total_us if total_us else 0.0} for e in rows]}
    if cuda:
        busy = total_us / 1e3 / wall_ms if wall_ms else 0.0
        out.update(device_ms=total_us / 1e3, gpu_busy=busy,
                   verdict=(f"host-bound: kernels ran {busy:.0%} of the wall time under the profiler "
                            "(Python, launches, syncs)" if busy < 0.6 else
                            f"device-bound ({busy:.0%} busy): top kernel {rows[0].key[:60] if rows else '-'} "
                            f"takes {out['top'][0]['share'] if rows else 0:.0%}"))
    else:
        out["verdict"] = "CPU run: top operators by their own time"
    return out


def part_env(p: Part, sz: Sizes, tmp: Path) -> None:
    """Versions and hardware; on a GPU also the two ceilings (bf16 matmul rate, device copy bandwidth)."""
    device = p.device
    import transformers

    from speechtok.tokenizers.kmeans import faiss_available

    has_faiss, faiss_gpu = faiss_available()
    figures = {"device": device.type, "hardware": hardware(device), "torch": torch.__version__,
               "cuda": torch.version.cuda, "transformers": transformers.__version__, "numpy": np.__version__,
               "python": platform.python_version(), "cpus": os.cpu_count(), "faiss": has_faiss,
               "faiss_gpu": faiss_gpu,
               "heavy_modules_loaded": sorted(m for m in HEAVY_OPTIONAL if m in sys.modules)}
    if device.type == "cuda":
        prop = torch.cuda.get_device_properties(device)
        figures.update(gpu=prop.name, capability=f"{prop.major}.{prop.minor}", sms=prop.multi_processor_count,
                       gpu_memory_gib=round(prop.total_memory / 2**30, 1),
                       cudnn=torch.backends.cudnn.version())
        try:
            smi = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=20)
            figures["driver"] = smi.stdout.strip()
        except (OSError, subprocess.SubprocessError):
            pass
    p.record(**figures)
    n = 8192 if device.type == "cuda" else 256
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    sync(device)
    reps = 10
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    p.record(matmul_tflops=2 * n**3 * reps / (time.perf_counter() - t0) / 1e12, matmul_size=n,
             matmul_dtype=str(dtype))
    x = torch.empty(256 << 20 if device.type == "cuda" else 1 << 20, device=device)  # 1 GiB of fp32 on a GPU
    y = torch.empty_like(x)
    y.copy_(x)
    sync(device)
    t0 = time.perf_counter()
    for _ in range(reps):
        y.copy_(x)
    sync(device)
    p.record(copy_gb_s=2 * x.numel() * 4 * reps / (time.perf_counter() - t0) / 1e9)


def part_encode(p: Part, sz: Sizes, tmp: Path) -> None:
    from transformers import HubertConfig

    lo, hi = sz.encode_sec
    n = max(2, math.ceil(1.15 * sz.encode_hours * 3600 / ((lo + hi) / 2)))
    paths = encode_bench.make_corpus(tmp / "audio", n, lo, hi, suffix=".flac")
    r = encode_bench.measure_encode(tmp, paths, p.device, sz.encode_layer, sz.encode_k,
                                    hubert_config=HubertConfig(**sz.hubert) if sz.hubert else None)
    tok = r.pop("tokenizer")
    p.record(**r, overhead_share=1 - r["forward_s"] / r["ours_s"])
    p.section("encode", encode_bench.format_encode(r, p.device, lo, hi))
    if not p.check_targets():
        p.note(f"the bare forward alone runs at {r['forward_xrt']:,.0f}× real time; reading, batching, "
               f"assignment and writing take {1 - r['forward_s'] / r['ours_s']:.0%} of the end-to-end time")
        wav = torch.stack([torch.from_numpy(sf.read(q, dtype="float32")[0][: int(lo * 16000)])
                           for q in paths[:16]])
        p.profile(lambda: tok.encode_batch(wav, torch.full((len(wav),), wav.shape[1])),
                  f"tok.encode_batch on {len(wav)} × {lo:g} s (forward + assignment)")


def part_kmeans(p: Part, sz: Sizes, tmp: Path) -> None:
    from speechtok.tokenizers.kmeans import faiss_available, kmeans_faiss, kmeans_torch, train_kmeans

    device, k, iters = p.device, sz.kmeans_k, sz.kmeans_iters
    xt = kmeans_bench.mixture(sz.kmeans_frames, sz.kmeans_dim, device=device)
    sync(device)
    ours_s, ours_inertia, backend = kmeans_bench.time_ours(xt, k, iters, backend="torch")
    p.record(frames=sz.kmeans_frames, dim=sz.kmeans_dim, k=k, iters=iters, ours_backend=backend,
             ours_s=ours_s, ours_inertia=ours_inertia)
    has_faiss, faiss_gpu = faiss_available()
    x = xt.cpu().numpy()
    if has_faiss and faiss_gpu and device.type == "cuda":
        t0 = time.perf_counter()
        res = kmeans_faiss(x, k, iters, seed=0, gpu=True)
        p.record(faiss_gpu_s=time.perf_counter() - t0,
                 faiss_gpu_inertia=kmeans_bench.inertia(xt, res.centroids))
    t0 = time.perf_counter()
    if has_faiss:
        res = kmeans_faiss(x, k, iters, seed=0, gpu=False)
    else:  # no faiss: the same Lloyd iterations in PyTorch on the CPU cores
        res = kmeans_torch(torch.from_numpy(x), k, iters, seed=0)
    base_s = time.perf_counter() - t0
    base_inertia = kmeans_bench.inertia(xt, res.centroids)
    p.record(baseline=res.backend, baseline_threads=torch.get_num_threads(), baseline_s=base_s,
             baseline_inertia=base_inertia, speedup=base_s / ours_s,
             inertia_ratio=ours_inertia / base_inertia)
    f = p.data["figures"]
    rows = [f"| {res.backend} on {os.cpu_count()} CPU cores (baseline) | {base_s:.2f} | {base_inertia:.4f} |",
            f"| speechtok `{backend}` | {ours_s:.2f} | {ours_inertia:.4f} |"]
    if "faiss_gpu_s" in f:
        rows.append(f"| faiss GPU | {f['faiss_gpu_s']:.2f} | {f['faiss_gpu_inertia']:.4f} |")
    p.section("kmeans", "\n".join([
        "## k-means (issue #2)", "",
        f"Hardware: {hardware(device)}. {sz.kmeans_frames:,} frames × {sz.kmeans_dim} dims, K={k}, k-means++ "
        f"seeds (the same for all) + {iters} Lloyd iterations (mixture of 2,000 Gaussians).", "",
        "| method | seconds | inertia (mean sq. distance) |", "|---|---|---|", *rows, "",
        f"Speed-up: **{base_s / ours_s:.1f}×**; inertia ratio ours / baseline: "
        f"**{ours_inertia / base_inertia:.4f}**."]))
    if not p.check_targets():
        p.profile(lambda: train_kmeans(xt, k, iters=iters, seed=0, device=str(device), backend="torch"),
                  "train_kmeans (k-means++ seeding + Lloyd iterations)")


def codec_config(kind: str, sz: Sizes):
    from transformers import DacConfig, EncodecConfig, MimiConfig

    cls = {"encodec": EncodecConfig, "dac": DacConfig, "mimi": MimiConfig}[kind]
    return cls(**(sz.codec_configs or {}).get(kind, {}))


def part_codec(p: Part, sz: Sizes, tmp: Path) -> None:
    rows = []
    for kind in ("encodec", "dac", "mimi"):
        if p.left() < 5:
            p.note(f"{kind} skipped: time box spent")
            continue
        codec = codec_bench.build_codec(kind, codec_config(kind, sz), tmp / kind, 8, p.device)
        r = codec_bench.measure_codec(codec, sz.codec_utts, sz.codec_seconds, sz.codec_batch, sz.codec_single)
        rows.append(r)
        p.record(**{f"{kind}_{key}": v for key, v in r.items() if key.endswith("_xrt")})
        if kind == "encodec":
            encodec = codec
        else:
            del codec
        p.section("codec", codec_bench.format_codecs(rows, p.device, sz.codec_utts, sz.codec_seconds,
                                                     sz.codec_batch))
    if not p.check_targets() and rows and rows[0]["kind"] == "encodec":
        n = int(sz.codec_seconds * encodec.sample_rate)
        wav = 0.1 * torch.randn(sz.codec_batch, n)
        p.profile(lambda: encodec.encode(wav, torch.full((sz.codec_batch,), n)),
                  f"EnCodec encode of {sz.codec_batch} × {sz.codec_seconds:g} s")


def part_lm(p: Part, sz: Sizes, tmp: Path) -> None:
    device, size = p.device, sz.lm_models[p.name]
    batch, seq = sz.lm_batch[size], sz.lm_seq
    data = lm_bench.random_batches(batch, seq)
    tokens = batch * seq
    plain = lm_bench.time_plain(size, data, sz.lm_steps, sz.lm_warmup, device)
    fpt = plain["flops_per_token"]
    p.record(size=size, params=plain["params"], batch=batch, seq_len=seq, flops_per_token=fpt,
             plain_s=plain["seconds"], plain_tokens_s=tokens / plain["seconds"],
             plain_mfu=lm_bench.mfu(tokens / plain["seconds"], fpt, device))
    target = TARGETS[p.name][0][2]
    ours = {}
    for compiled in (False, True) if sz.compile else (False,):
        if compiled and p.left() < 45:
            p.note(f"compiled step skipped: {p.left():.0f} s left")
            continue
        key = "compiled" if compiled else "eager"
        step = lm_bench.ours_step(size, data, device, compiled, "chunked")  # `tok lm train`'s default loss
        seconds = lm_bench.timed(step, sz.lm_steps, sz.lm_warmup, device)
        mfu = lm_bench.mfu(tokens / seconds, fpt, device)
        best = not ours or seconds < min(ours.values())
        ours[lm_bench.ours_name(device, compiled, "chunked")] = seconds
        p.record(**{f"{key}_s": seconds, f"{key}_tokens_s": tokens / seconds, f"{key}_mfu": mfu})
        if best:
            p.record(best=key, best_tokens_s=tokens / seconds, speedup=plain["seconds"] / seconds,
                     best_mfu=mfu)
            if mfu is None or mfu < target:  # profiled now, while its model exists: the best variant's stays
                p.profile(step, f"one {key} training step ({batch} × {seq} tokens)")
        del step
        if device.type == "cuda":
            torch.cuda.empty_cache()
        # written after each variant: kept should the next one time out
        p.section(f"lm-train-{size}", lm_bench.format_lm(size, device, plain, ours, batch, seq, sz.lm_steps,
                                                         sz.lm_warmup))
    p.check_targets()


def part_generate(p: Part, sz: Sizes, tmp: Path) -> None:
    device, seconds = p.device, sz.gen_seconds
    lm = generate_bench.build_lm(sz.gen_size, device)
    acoustic = generate_bench.build_acoustic(sz.gen_size, device)
    codec = codec_bench.build_codec("encodec", codec_config("encodec", sz), tmp / "encodec", 8, device)
    s1_eager = generate_bench.time_stage1(lm, 1, seconds, compiled=False)
    p.record(size=sz.gen_size, speech_seconds=seconds, stage1_eager_s=s1_eager)
    s2, codes = generate_bench.time_stage2(acoustic, 1, seconds)
    codes = torch.from_numpy(codes)[None]
    codec.decode(codes)  # warm-up
    sync(device)
    t0 = time.perf_counter()
    codec.decode(codes)
    sync(device)
    dec = time.perf_counter() - t0
    chain_eager = seconds / (s1_eager + s2 + dec)
    p.record(stage2_s=s2, decode_s=dec, chain_eager_xrt=chain_eager, best_chain_xrt=chain_eager, best="eager")
    rows = [("stage 1: LM → units, eager", s1_eager), ("stage 2: units → codes (acoustic model)", s2),
            ("codec decode (EnCodec 24 kHz, 8 codebooks)", dec)]
    chains = [("eager", chain_eager)]

    def write_section() -> None:
        p.section("generate-batch1", "\n".join([
            f"## Two-stage generation at batch 1, {sz.gen_size} models (issues #6, #17)", "",
            f"Hardware: {hardware(device)}. {seconds:g} s of speech: "
            f"{int(seconds * generate_bench.UNIT_RATE)} units (LM, "
            f"{'bf16' if device.type == 'cuda' else 'fp32'}, top-k 50) → "
            f"{int(seconds * generate_bench.CODEC_RATE)} frames × 8 codebooks (acoustic model as wide and "
            "deep as the LM) → waveform; random weights.", "",
            "| step | seconds | × real time |", "|---|---|---|",
            *[f"| {name} | {t:.2f} | {seconds / t:,.1f} |" for name, t in rows], "",
            "| chain | × real time |", "|---|---|", *[f"| {name} | {x:,.2f} |" for name, x in chains]]))

    write_section()  # kept should the compiled run time out
    if chain_eager < TARGETS["generate"][0][2]:  # profiled before compiling, which replaces the LM's forward
        short = min(seconds, 0.25)  # a short run: the profiler's trace of every decode step is large
        p.profile(lambda: (generate_bench.time_stage1(lm, 1, short, compiled=False),
                           generate_bench.time_stage2(acoustic, 1, short)),
                  f"eager stage 1 + stage 2 on {short:g} s of speech")
    if sz.compile and p.left() > 60:
        s1_comp = generate_bench.time_stage1(lm, 1, seconds, compiled=True, full_warmup=True)
        s2_comp, _ = generate_bench.time_stage2(acoustic, 1, seconds, compiled=True)
        chain_comp = seconds / (s1_comp + s2_comp + dec)
        rows.insert(1, ("stage 1: LM → units, `--compile` (decoding step compiled whole, CUDA graphs)",
                        s1_comp))
        rows.insert(3, ("stage 2: units → codes, `--compile`", s2_comp))
        chains.append(("`--compile`", chain_comp))
        p.record(stage1_compiled_s=s1_comp, stage2_compiled_s=s2_comp, chain_compiled_xrt=chain_comp)
        if chain_comp > chain_eager:
            p.record(best_chain_xrt=chain_comp, best="compiled")
        write_section()
    elif sz.compile:
        p.note(f"compiled stage 1 skipped: {p.left():.0f} s left")
    p.check_targets()


def part_generate_patterns(p: Part, sz: Sizes, tmp: Path) -> None:
    """Stage 2 in each codebook pattern (issue #25), the same width and depth, at batch 1 and
    `pattern_batch`, eager: what the choice of pattern costs in speed. Last part: skipped when time runs
    out."""
    seconds, rows = sz.pattern_seconds, []
    for pattern in generate_bench.PATTERNS:
        acoustic = generate_bench.build_acoustic(sz.gen_size, p.device, pattern)
        for batch in (1, sz.pattern_batch):
            if p.left() < 10:
                p.note(f"{pattern} at batch {batch} and after skipped: {p.left():.0f} s left")
                break
            dt, _ = generate_bench.time_stage2(acoustic, batch, seconds)
            rows.append((pattern, batch, batch * seconds / dt))
            p.record(**{f"{pattern}_b{batch}_xrt": rows[-1][2]})
    p.section("generate-patterns", "\n".join([
        f"## Acoustic codebook patterns, generation speed, {sz.gen_size} models (issue #25)", "",
        f"Hardware: {hardware(p.device)}. Stage 2 (units → 8 codebooks at 75 Hz) for {seconds:g} s of speech "
        "per row, eager, random weights, every pattern as wide and deep as the LM (depth: its depth "
        "transformer a quarter as wide, 2 layers; valle: an AR and a NAR transformer).", "",
        "| pattern | batch | × real time |", "|---|---|---|",
        *[f"| {name} | {b} | {x:,.1f} |" for name, b, x in rows]]))


def part_vocoder(p: Part, sz: Sizes, tmp: Path) -> None:
    vocos, hifigan = vocoder_bench.build_vocoders(p.device)
    rows = vocoder_bench.measure_vocoders(vocos, hifigan, sz.voc_batches, sz.voc_repeats, sz.voc_seconds)
    for b, v, h in rows:
        p.record(**{f"vocos_b{b}_xrt": v, f"hifigan_b{b}_xrt": h})
    b, v, h = rows[-1]
    p.record(vocos_xrt=v, hifigan_xrt=h, vocos_over_hifigan=v / h, largest_batch=b)
    precisions = vocoder_bench.measure_precisions(vocos, hifigan, b, sz.voc_repeats, sz.voc_seconds)
    for name, pv, dv, ph, dh in precisions:
        p.record(**{f"vocos_{name}_xrt": pv, f"vocos_{name}_difference": dv, f"hifigan_{name}_xrt": ph,
                    f"hifigan_{name}_difference": dh})
    uneven = vocoder_bench.measure_uneven(vocos, b, sz.voc_repeats)
    p.record(vocos_uneven_alone_xrt=uneven[0], vocos_uneven_batched_xrt=uneven[1])
    p.section("vocoder", vocoder_bench.format_vocoders(rows, p.device, sz.voc_seconds) + "\n"
              + vocoder_bench.format_precisions(precisions, uneven, b, sz.voc_seconds))
    if not p.check_targets():
        frames = int(sz.voc_seconds * 24000) // 256 + 1
        mel = torch.randn(b, 100, frames, device=p.device)
        p.profile(lambda: vocos.decode(mel), f"Vocos decode, batch {b}")


def part_pytest(p: Part, sz: Sizes, tmp: Path) -> None:
    """`pytest -m gpu` in a subprocess that imports this working tree's speechtok."""
    path = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env = {**os.environ, "PYTHONPATH": path}
    env.pop("PYTORCH_NVML_BASED_CUDA_CHECK", None)
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-rfEs", "--continue-on-collection-errors",
           "-p", "no:cacheprovider", "--basetemp", str(tmp / "pytest"), *sz.pytest_paths]
    try:
        r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True,
                           timeout=max(5.0, p.left() - 5))
        out, rc = r.stdout + r.stderr, r.returncode
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        rc = "timeout"
    outcome = r"(\d+) (passed|failed|errors?|skipped|deselected)"
    totals = [line for line in out.splitlines()
              if re.search(outcome, line) and re.search(r" in [\d.]+s", line)]
    counts = {k: int(n) for n, k in re.findall(outcome, totals[-1] if totals else "")}
    counts["error"] = counts.pop("errors", 0) + counts.pop("error", 0)
    failing = [line for line in out.splitlines() if line.startswith(("FAILED", "ERROR"))]
    p.record(returncode=rc, **{k: counts.get(k, 0) for k in ("passed", "failed", "error", "skipped")},
             failed_or_error=counts.get("failed", 0) + counts["error"], failing=failing[:20],
             output_tail=out[-3000:])
    c = p.data["figures"]
    p.section("pytest-gpu", "\n".join([
        "## `pytest -m gpu` (issue #17)", "",
        f"Hardware: {hardware(p.device)}. `{' '.join(cmd[2:5])} {' '.join(sz.pytest_paths)}`: "
        f"{c['passed']} passed, {c['failed']} failed, {c['error']} errors, {c['skipped']} skipped "
        f"(exit {rc}).",
        *([""] + [f"- {line[:200]}" for line in failing] if failing else [])]))
    p.check_targets()


PART_FUNCS = {"env": part_env, "encode": part_encode, "kmeans": part_kmeans, "codec": part_codec,
              "lm-350m": part_lm, "lm-1b": part_lm, "generate": part_generate, "vocoder": part_vocoder,
              "pytest": part_pytest, "generate-patterns": part_generate_patterns}


def child_main(name: str, sz: Sizes, device_name: str, result_path: str, deadline: float, tmp: str) -> None:
    os.setpgrp()  # the parent ends this part's whole process group (loader workers, pytest) on a timeout
    if device_name == "auto":
        device_name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device_name)
    part = Part(name, Path(result_path), deadline, device, profiled=name in sz.profiled)
    try:
        workdir = Path(tmp) / name
        workdir.mkdir(parents=True, exist_ok=True)
        PART_FUNCS[name](part, sz, workdir)
        part.finish("ok")
    except BaseException as e:  # recorded, the suite goes on
        tail = "".join(traceback.format_exception(type(e), e, e.__traceback__))[-2500:]
        part.finish("error", tail)
        sys.stderr.write(tail)
    sys.stdout.flush()
    sys.stderr.flush()


# -------------------------------------------------------------------------------------- parent side

def end_group(proc) -> None:
    """SIGTERM, then SIGKILL, to a part's process group (the part, its loader workers, pytest)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:  # not yet its own group leader, or already gone
            if proc.is_alive():
                os.kill(proc.pid, sig)
        proc.join(5)
        if not proc.is_alive():
            return


def run_part(name: str, sz: Sizes, device: str, timeout: float, tmp: Path, start_method: str) -> dict:
    """Run one part in a child process, at most `timeout` seconds; its record, whatever happened."""
    result_path = tmp / f"{name}.json"
    t0 = time.monotonic()
    ctx = multiprocessing.get_context(start_method)
    proc = ctx.Process(target=child_main, args=(name, sz, device, str(result_path), t0 + timeout, str(tmp)))
    proc.start()
    try:
        proc.join(timeout)
    except KeyboardInterrupt:  # the child has its own process group, so Ctrl-C reaches only this process
        end_group(proc)
        raise
    timed_out = proc.is_alive()
    if timed_out:
        end_group(proc)
    try:
        rec = json.loads(result_path.read_text())
    except (OSError, ValueError):
        rec = {"part": name, "figures": {}, "targets": [], "sections": {}, "notes": []}
    if timed_out:
        rec["status"] = "timeout"
        rec["error"] = f"time box of {timeout:.0f} s ran out; figures are what it measured before"
    elif rec.get("status") in (None, "running"):
        rec["status"] = "died"
        rec["error"] = f"the part's process ended with exit code {proc.exitcode} before finishing"
    rec["seconds"] = round(time.monotonic() - t0, 1)
    rec["time_box_s"] = round(timeout, 1)
    if not rec.get("targets"):
        rec["targets"] = [target_result(text, rec["figures"].get(key), op, thr, form)
                          for key, op, thr, text, form in TARGETS.get(name, [])]
    return rec


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "unknown"


def latest_records(path: Path) -> dict[str, dict]:
    """The newest record of each part in a results file (a rerun's lines come after the first run's)."""
    latest = {}
    for line in path.read_text().splitlines():
        rec = json.loads(line)
        if rec.get("part"):
            latest[rec["part"]] = rec
    return latest


def fmt(v) -> str:
    return "—" if v is None else (f"{v:,.0f}" if isinstance(v, float) and v >= 100 else
                                  f"{v:.3g}" if isinstance(v, float) else str(v))


def summary_section(records: dict[str, dict], env: dict) -> str:
    lines = ["## GPU suite (issue #17)", "",
             f"Hardware: {env.get('hardware', '?')}; torch {env.get('torch')}, CUDA {env.get('cuda')}, "
             f"cuDNN {env.get('cudnn', '—')}, driver {env.get('driver', '—')}, "
             f"transformers {env.get('transformers')}, "
             f"Python {env.get('python')}; faiss {'yes' if env.get('faiss') else 'no'}"
             f"{' (GPU)' if env.get('faiss_gpu') else ''}. Measured ceilings: {env.get('matmul_dtype', '')} "
             f"{env.get('matmul_size', '')}³ matmul {fmt(env.get('matmul_tflops'))} TFLOP/s, device copy "
             f"{fmt(env.get('copy_gb_s'))} GB/s (read + write). `python benchmarks/gpu_suite.py`; each "
             "part's section below holds its figures.", "",
             "| target | measured | distance | met |", "|---|---|---|---|"]
    for name in PARTS:
        for t in records.get(name, {}).get("targets", []):
            met = {True: "yes", False: "**no**", None: "—"}[t["met"]]
            lines.append(f"| {t['target']} | {t['shown']} | {t['distance']} | {met} |")
    lines += ["", "| part | status | seconds | why a target was missed (profile) |", "|---|---|---|---|"]
    for name in PARTS:
        rec = records.get(name)
        if rec is None:
            continue
        prof = rec.get("profile") or {}
        why = [prof["verdict"]] if prof.get("verdict") else []
        if prof.get("top"):
            why.append("top: " + ", ".join(f"`{t['name'][:40]}` {t['share']:.0%}" for t in prof["top"][:3]))
        if rec.get("error"):
            why.append("error: " + rec["error"].strip().splitlines()[-1][:150])
        why += rec.get("notes", [])
        why_text = "; ".join(why).replace("|", "/")
        lines.append(f"| {name} | {rec.get('status')} | {rec.get('seconds', 0):.0f} | {why_text} |")
    return "\n".join(lines)


def print_summary(records: dict[str, dict], env: dict, jsonl: Path, md: Path, wall: float) -> None:
    print("\n" + "=" * 100)
    print(f"GPU suite: {env.get('hardware', '?')} | torch {env.get('torch')} CUDA {env.get('cuda')} | "
          f"{wall:.0f} s")
    for name in PARTS:
        rec = records.get(name)
        if rec is None:
            continue
        targets = rec.get("targets", [])
        mark = ", ".join(f"{'OK' if t['met'] else ('MISS' if t['met'] is False else 'n/a')} {t['shown']} "
                         f"({t['distance']})" for t in targets)
        print(f"  {name:9s} {rec.get('status', '?'):8s} {rec.get('seconds', 0):6.0f} s  {mark}")
        if rec.get("error"):
            print(f"            {rec['error'].strip().splitlines()[-1][:90]}")
        if (rec.get("profile") or {}).get("verdict"):
            print(f"            why: {rec['profile']['verdict'][:90]}")
    print(f"results: {jsonl}\nBENCHMARKS.md sections written to {md}")
    print("=" * 100)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="every part with tiny sizes on the CPU, in seconds")
    ap.add_argument("--device", default=None, help="default: cuda when there is one; cpu with --smoke")
    ap.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    ap.add_argument("--budget", type=float, default=None,
                    help="global deadline in seconds (default 450; smoke 300)")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results",
                    help="folder for <date>-<gpu>.jsonl")
    ap.add_argument("--benchmarks-md", type=Path, default=REPO / "BENCHMARKS.md")
    ap.add_argument("--no-write", action="store_true", help="write neither results file nor BENCHMARKS.md")
    ap.add_argument("--start-method", choices=("fork", "spawn"), default="fork",
                    help="how part processes start (fork: no re-import; spawn if fork misbehaves)")
    ap.add_argument("--render", type=Path, default=None, metavar="RESULTS.jsonl",
                    help="run nothing: write --benchmarks-md's sections from a results file (e.g. one "
                         "fetched from the device machine)")
    args = ap.parse_args(argv)
    if args.render:
        write_markdown(args.render, args.benchmarks_md)
        print(f"{args.benchmarks_md}: sections written from {args.render}")
        return 0
    sz = SMOKE if args.smoke else Sizes()
    device = args.device or ("cpu" if args.smoke else "auto")
    budget = args.budget or (300.0 if args.smoke else 450.0)
    wanted = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = [p for p in wanted if p not in PARTS]
    if unknown:
        ap.error(f"unknown part(s) {', '.join(unknown)}; choose from {', '.join(PARTS)}")
    parts = ["env"] + [p for p in PARTS if p in wanted and p != "env"]
    start_method = args.start_method
    if start_method == "fork":
        preimport()
    start = time.monotonic()
    deadline = start + budget
    records = {}
    with tempfile.TemporaryDirectory(prefix="gpu_suite_") as tmp:
        for name in parts:
            left = deadline - time.monotonic()
            if left < max(sz.min_part_s, 1.0):
                records[name] = {"part": name, "status": "skipped", "seconds": 0.0, "figures": {},
                                 "sections": {}, "notes": [],
                                 "error": f"global deadline: {left:.0f} s left of {budget:.0f}",
                                 "targets": [target_result(t, None, op, thr)
                                             for _, op, thr, t, _ in TARGETS.get(name, [])]}
                print(f"[gpu_suite] {name}: skipped ({left:.0f} s left)", flush=True)
                continue
            print(f"[gpu_suite] {name} (time box {min(sz.budgets[name], left):.0f} s) ...", flush=True)
            rec = records[name] = run_part(name, sz, device, min(sz.budgets[name], left), Path(tmp),
                                           start_method)
            print(f"[gpu_suite] {name}: {rec['status']} in {rec['seconds']:.0f} s", flush=True)
            if name == "env" and rec["status"] != "ok" and start_method == "fork":
                # a forked child that cannot start CUDA (the parent touched the driver) still can when spawned
                print(f"[gpu_suite] env failed when forked "
                      f"({rec.get('error', '').strip().splitlines()[-1:]}); "
                      "trying spawned processes", flush=True)
                retry = run_part(name, sz, device, sz.budgets[name], Path(tmp), "spawn")
                if retry["status"] == "ok":
                    start_method = "spawn"
                    retry["notes"].append(f"forked: {rec.get('error', '').strip().splitlines()[-1:]}; "
                                          "parts ran in spawned processes")
                    records[name] = retry
    env = records["env"].get("figures", {})
    stamp = datetime.date.today().isoformat()
    dev_type = env.get("device") or "unknown-device"  # the env part failed: no device was named
    hw = env.get("gpu") if dev_type == "cuda" else dev_type + ("-smoke" if args.smoke else "")
    jsonl = args.out / f"{stamp}-{slug(hw or 'unknown')}.jsonl"
    if args.no_write:
        print_summary(records, env, Path("(not written)"), Path("(not written)"), time.monotonic() - start)
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    with open(jsonl, "a") as f:
        for name in parts:
            rec = {"date": stamp, "smoke": args.smoke, **records[name]}
            f.write(json.dumps(rec, default=_jsonable) + "\n")
    write_markdown(jsonl, args.benchmarks_md, parts)
    print_summary(records, env, jsonl, args.benchmarks_md, time.monotonic() - start)
    return 0


def write_markdown(jsonl: Path, md: Path, parts: list[str] | None = None) -> None:
    """BENCHMARKS.md sections of `parts` (default: every part in the file) from their newest records in a
    results file, and the suite's summary over the newest record of every part."""
    latest = latest_records(jsonl)
    env = latest.get("env", {}).get("figures", {})
    for name in parts or list(latest):  # a part writes a section once its figures are complete
        for section, body in latest.get(name, {}).get("sections", {}).items():
            write_section(section, body + "\n\n_Written by `benchmarks/gpu_suite.py`._", md)
    write_section(f"gpu-suite-{env.get('device') or 'unknown-device'}", summary_section(latest, env), md)


if __name__ == "__main__":
    sys.exit(main())
