"""Semantic encode throughput: `tok encode` end to end (read audio, HuBERT-base to layer 6, k-means
assignment, write shards) against the fairseq way — one utterance at a time, fp32 — on the same files.

    python benchmarks/encode.py --device cuda --num-utts 400        # GPU machine
    python benchmarks/encode.py --device cpu --num-utts 12          # CPU smoke run
    python benchmarks/encode.py --null-model --num-utts 300 --min-sec 2 --max-sec 20   # the pipeline alone

`--null-model` runs `tok encode` with a tokenizer that returns at once, so what remains is the pipeline:
reading, batching, writing. It reports the main thread's CPU time per audio-second (the main thread
drives the device: while it runs Python, a GPU waits) and the wall time, for the code on PYTHONPATH;
`--before FILE` adds the figures of an earlier run (`--json FILE`) of another version to the table.

The HuBERT-base architecture is built with random weights (no download); speed does not depend on them.
Token agreement between the two paths is reported too (bf16 vs fp32 on the GPU)."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

sys.path.insert(0, str(Path(__file__).parent))
from report import hardware, write_section  # noqa: E402

from speechtok.pipelines.encode import EncodeOptions, encode_corpus, encode_device_defaults  # noqa: E402
from speechtok.shards import read_shards  # noqa: E402
from speechtok.tokenizers.features import build_features  # noqa: E402
from speechtok.tokenizers.kmeans import assign  # noqa: E402
from speechtok.tokenizers.semantic import SemanticTokenizer  # noqa: E402


def make_corpus(root: Path, n: int, lo: float, hi: float, seed: int = 0, suffix: str = ".wav") -> list[Path]:
    """Speech-like 16 kHz files (`suffix` .wav or .flac): harmonic voiced segments with moving pitch, noise
    bursts, pauses."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        sr, dur = 16000, rng.uniform(lo, hi)
        t = np.arange(int(sr * dur)) / sr
        f0 = 110 + 40 * np.sin(2 * np.pi * rng.uniform(0.5, 3) * t)
        phase = 2 * np.pi * np.cumsum(f0) / sr
        voiced = sum(np.sin(h * phase) / h for h in range(1, 8))
        env = (np.sin(2 * np.pi * rng.uniform(2, 5) * t) > -0.3).astype(np.float32)
        wav = 0.1 * voiced * env + 0.02 * rng.standard_normal(len(t)) * (1 - env)
        p = root / f"utt{i:05d}{suffix}"
        sf.write(p, wav.astype(np.float32), sr)
        paths.append(p)
    return paths


def baseline(paths: list[Path], tok: SemanticTokenizer, device: torch.device) -> tuple[float, dict]:
    """fairseq's dump_hubert_feature + dump_km_label, fused: per file read, fp32 forward, assign."""
    model = tok.features.model
    c = torch.from_numpy(tok.centroids).to(device)
    out = {}
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    with torch.inference_mode():
        for p in paths:
            wav, sr = sf.read(p, dtype="float32")
            x = torch.from_numpy(wav).to(device)[None]
            model.feature_extractor.lengths = None  # plain (unmasked) model, as fairseq runs it
            feats = model(x).last_hidden_state[0]
            out[p.stem] = assign(feats, c)[0].cpu().numpy()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0, out


def bare_forward(paths: list[Path], tok: SemanticTokenizer, max_batch_seconds: float,
                 max_batch_size: int = 128, repeats: int = 1) -> float:
    """Seconds of the feature forward alone (no reading, no assignment, no writing) over `paths`, in
    length-sorted padded batches already on the device: what the model costs without the pipeline."""
    wavs = sorted((sf.read(p, dtype="float32")[0] for p in paths), key=len)
    sr, batches, cur = tok.sample_rate, [], []
    for w in wavs:
        if cur and (len(cur) >= max_batch_size or (len(cur) + 1) * len(w) / sr > max_batch_seconds):
            batches.append(cur)
            cur = []
        cur.append(w)
    batches.append(cur)
    device = tok.device
    padded = []
    for b in batches:
        x = torch.zeros(len(b), max(map(len, b)))
        for i, w in enumerate(b):
            x[i, : len(w)] = torch.from_numpy(w)
        padded.append((x.to(device), torch.tensor([len(w) for w in b], device=device)))
    with torch.inference_mode():
        tok.features(*padded[0])  # warm-up
        sync(device)
        t0 = time.perf_counter()
        for _ in range(repeats):
            for x, n in padded:
                tok.features(x, n)
        sync(device)
    return (time.perf_counter() - t0) / repeats


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure_encode(tmp: Path, paths: list[Path], device: torch.device, layer: int = 6, k: int = 500,
                   precision: str | None = None, batch_seconds: float | None = None,
                   num_workers: int | None = None, hubert_config=None) -> dict:
    """`tok encode` end to end against the fp32 per-utterance loop on `paths`, plus the bare forward's
    time; a random-init HuBERT (base architecture unless `hubert_config`) is saved under `tmp`."""
    from transformers import HubertConfig, HubertModel

    defaults = encode_device_defaults(device)
    precision = precision or defaults["precision"]
    torch.manual_seed(0)
    config = hubert_config or HubertConfig()
    HubertModel(config).save_pretrained(tmp / "hubert")  # random weights: speed does not depend on them
    audio_seconds = sum(sf.info(p).duration for p in paths)
    spec = {"kind": "ssl", "model": str(tmp / "hubert"), "layer": layer}
    centroids = np.random.default_rng(0).normal(0, 0.5, (k, config.hidden_size)).astype(np.float32)
    SemanticTokenizer(build_features(spec), centroids).save(tmp / "km")

    # warm-up both paths (CUDA context, cuDNN autotune) on a few files
    tok32 = SemanticTokenizer.from_dir(tmp / "km", device=device, precision="fp32")
    baseline(paths[:2], tok32, device)
    base_s, base_units = baseline(paths, tok32, device)
    del tok32

    tok = SemanticTokenizer.from_dir(tmp / "km", device=device, precision=precision)
    opts = EncodeOptions(num_workers=defaults["num_workers"] if num_workers is None else num_workers,
                         progress=False)
    opts.max_batch_seconds = batch_seconds or defaults["max_batch_seconds"]
    warm = tmp / "warmup"
    warm.mkdir()
    for p in paths[: min(8, len(paths))]:
        (warm / p.name).symlink_to(p)
    encode_corpus(warm, tok, tmp / "warm_out", opts)
    summary = encode_corpus(paths[0].parent, tok, tmp / "shards", opts)
    shards = read_shards(tmp / "shards")
    agree = np.mean(np.concatenate([s["semantic"] == base_units[s["id"]] for s in shards]))
    forward_s = bare_forward(paths, tok, opts.max_batch_seconds, opts.max_batch_size)
    return {"utterances": len(paths), "audio_seconds": audio_seconds, "layer": layer, "k": k,
            "precision": precision, "baseline_s": base_s, "ours_s": summary.wall_seconds,
            "forward_s": forward_s,
            "baseline_xrt": audio_seconds / base_s, "ours_xrt": audio_seconds / summary.wall_seconds,
            "forward_xrt": audio_seconds / forward_s, "token_agreement": float(agree),
            **{f"stage_{name.replace(' ', '_')}_s": v for name, v in getattr(summary, "stages", {}).items()},
            "tokenizer": tok}


class NullTokenizer(SemanticTokenizer):
    """A tokenizer that returns at once (unit 0 for every MFCC frame): what is measured is the pipeline."""

    def __init__(self, k: int = 500):
        from speechtok.tokenizers.spectral import MFCC

        super().__init__(MFCC(), np.zeros((k, 39), dtype=np.float32))

    def tokens(self, wav: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = self.num_frames(lengths)
        return torch.zeros(len(lengths), int(n.max()), dtype=torch.long), n

    def encode_batch(self, wav: torch.Tensor, lengths: torch.Tensor) -> list[np.ndarray]:
        return [np.zeros(int(f), dtype=np.int64) for f in self.num_frames(lengths)]


NULL_SETTINGS = [("CPU defaults: 20 s batches, no loader process", 20.0, 0),
                 ("CPU defaults: 20 s batches, 2 loader processes", 20.0, 2),
                 ("GPU-sized: 180 s batches, 2 loader processes", 180.0, 2)]


def measure_null(tmp: Path, folder: Path, audio_seconds: float, repeats: int = 3) -> list[dict]:
    """Main-thread CPU time and wall time of `tok encode` with `NullTokenizer`, per audio-second, for each
    of NULL_SETTINGS (best of `repeats`: the machine may be shared)."""
    rows = []
    for label, batch_seconds, workers in NULL_SETTINGS:
        best = None
        for r in range(repeats):
            opts = EncodeOptions(max_batch_seconds=batch_seconds, num_workers=workers, progress=False)
            cpu0, t0 = time.thread_time(), time.perf_counter()
            encode_corpus(folder, NullTokenizer(), tmp / f"null-{batch_seconds:g}-{workers}-{r}", opts)
            main_us = (time.thread_time() - cpu0) / audio_seconds * 1e6
            wall_us = (time.perf_counter() - t0) / audio_seconds * 1e6
            if best is None or wall_us < best["wall_us"]:
                best = {"setting": label, "main_us": main_us, "wall_us": wall_us}
        rows.append(best)
    return rows


def format_null(rows: list[dict], before: list[dict] | None, n: int, hours: float, lo: float,
                hi: float) -> str:
    out = (f"## `tok encode` pipeline alone, null model (issue #28)\n\n"
           f"Hardware: {hardware(torch.device('cpu'))}. `benchmarks/encode.py --null-model`: a tokenizer "
           f"that returns at once; {n} 16 kHz wav files of {lo:g}–{hi:g} s, {hours:.2f} h. µs per "
           f"audio-second, best of 3 (the machine is shared). Main thread: its CPU time "
           f"(`time.thread_time`), the time a GPU would wait for Python; target ≤ 100 µs.\n\n")
    if before:
        out += ("| setting | main thread before | main thread after | wall before | wall after |\n"
                "|---|---|---|---|---|\n")
        for b, a in zip(before, rows):
            out += (f"| {a['setting']} | {b['main_us']:,.0f} | **{a['main_us']:,.0f}** | "
                    f"{b['wall_us']:,.0f} | {a['wall_us']:,.0f} |\n")
    else:
        out += "| setting | main thread | wall |\n|---|---|---|\n"
        out += "".join(f"| {a['setting']} | {a['main_us']:,.0f} | {a['wall_us']:,.0f} |\n" for a in rows)
    return out


def null_main(args) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        paths = make_corpus(tmp / "audio", args.num_utts, args.min_sec, args.max_sec)
        audio_seconds = sum(sf.info(p).duration for p in paths)
        rows = measure_null(tmp, tmp / "audio", audio_seconds)
    if args.json:
        Path(args.json).write_text(json.dumps(rows))
    before = json.loads(Path(args.before).read_text()) if args.before else None
    body = format_null(rows, before, args.num_utts, audio_seconds / 3600, args.min_sec, args.max_sec)
    if args.note:
        body += f"\n{args.note}\n"
    print(body)
    if not args.no_write:
        write_section("encode-null-cpu", body)


def format_encode(r: dict, device: torch.device, lo: float, hi: float) -> str:
    return (f"## Semantic encode (issue #2)\n\n"
            f"Hardware: {hardware(device)}. HuBERT-base architecture (random weights), "
            f"layer {r['layer']}, k={r['k']}; "
            f"{r['utterances']} utterances of {lo:.0f}–{hi:.0f} s, {r['audio_seconds'] / 3600:.2f} h.\n\n"
            f"| path | precision | wall s | × real time |\n|---|---|---|---|\n"
            f"| fairseq-style loop: one utterance at a time (read, forward, assign) | fp32 | "
            f"{r['baseline_s']:.2f} | {r['baseline_xrt']:,.0f} |\n"
            f"| `tok encode` end to end (read, bucketed batches, assign, write shards) | {r['precision']} | "
            f"{r['ours_s']:.2f} | {r['ours_xrt']:,.0f} |\n"
            f"| bare feature forward on device-resident bucketed batches (no I/O, no assignment) | "
            f"{r['precision']} | {r['forward_s']:.2f} | {r['forward_xrt']:,.0f} |\n\n"
            f"Speed-up: **{r['ours_xrt'] / r['baseline_xrt']:.1f}×**. Token agreement with the fp32 loop: "
            f"{r['token_agreement'] * 100:.2f}% of frames.\n\n{format_stages(r)}")


def format_stages(r: dict) -> str:
    """Where `tok encode`'s wall time went, per thread (`EncodeSummary.stages`), and what bounds it."""
    stage = {k[len("stage_"):-2].replace("_", " "): v for k, v in r.items() if k.startswith("stage_")}
    if not stage:
        return ""  # a version before the stages were timed
    main = ["wait for audio", "queue device work", "wait for writer"]
    bound = {"wait for audio": "reading audio (loader workers)",
             "queue device work": "the device or the main "
             "thread's Python", "wait for writer": "writing shards (writer thread)"}[max(main, key=stage.get)]
    return (f"Where the {r['ours_s']:.2f} s went — main thread: "
            + ", ".join(f"{k} {stage[k]:.2f} s" for k in main)
            + "; writer thread: "
            + ", ".join(f"{k} {stage[k]:.2f} s" for k in ("wait for device", "build and write"))
            + f". Bound by {bound}.\n")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--num-utts", type=int, default=400)
    ap.add_argument("--min-sec", type=float, default=10.0)
    ap.add_argument("--max-sec", type=float, default=20.0)
    ap.add_argument("--layer", type=int, default=6)
    ap.add_argument("-k", type=int, default=500)
    ap.add_argument("--precision", default=None, help="default: bf16 on GPU, fp32 on CPU")
    ap.add_argument("--batch-seconds", type=float, default=None)
    ap.add_argument("--num-workers", type=int, default=None)
    ap.add_argument("--no-write", action="store_true", help="do not update BENCHMARKS.md")
    ap.add_argument("--note", default="", help="a sentence added to the section (e.g. shared machine)")
    ap.add_argument("--null-model", action="store_true",
                    help="the pipeline alone (a tokenizer that returns at once)")
    ap.add_argument("--json", default=None, help="--null-model: also write the figures to this file")
    ap.add_argument("--before", default=None,
                    help="--null-model: figures of another version (--json) to compare")
    args = ap.parse_args()
    if args.null_model:
        null_main(args)
        return
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        paths = make_corpus(tmp / "audio", args.num_utts, args.min_sec, args.max_sec)
        r = measure_encode(tmp, paths, device, args.layer, args.k, args.precision, args.batch_seconds,
                           args.num_workers)
    body = format_encode(r, device, args.min_sec, args.max_sec)
    if args.note:
        body += f"\n{args.note}\n"
    print(body)
    if not args.no_write:
        write_section(f"encode-{device.type}", body)


if __name__ == "__main__":
    main()
