"""Audio loading throughput of `tok encode` (read, down-mix, resample, pad into length-bucketed batches)
against a plain `soundfile.read` loop on the same files, for 1..N loader processes.

    python benchmarks/loader.py --num-utts 200

The GPU encode target is 10,000x real time per GPU; loading keeps up under torchrun when its rate per
core, times the cores a GPU gets, stays above twice that (20,000x)."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

sys.path.insert(0, str(Path(__file__).parent))
from encode import make_corpus  # noqa: E402
from report import hardware, write_section  # noqa: E402

from speechtok.audio import resample  # noqa: E402
from speechtok.corpus import load_corpus  # noqa: E402
from speechtok.pipelines.batching import iterate_batches, plan_batches, probe_durations  # noqa: E402

GPU_TARGET_XRT = 10_000


def plain_loop(paths: list[Path], rate: int) -> float:
    t0 = time.perf_counter()
    for p in paths:
        wav, sr = sf.read(p, dtype="float32")
        if sr != rate:
            resample(wav, sr, rate)
    return time.perf_counter() - t0


def ours(folder: Path, rate: int, workers: int) -> float:
    t0 = time.perf_counter()
    items = probe_durations(load_corpus(folder), [])
    plan = plan_batches(items, 120.0, 128, 4096)
    for _ in iterate_batches(plan, rate, num_workers=workers):
        pass
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--num-utts", type=int, default=200)
    ap.add_argument("--max-workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        src = make_corpus(Path(tmp) / "wav16k", args.num_utts, 10, 20)
        hours = sum(sf.info(p).duration for p in src) / 3600
        flac44 = Path(tmp) / "flac44k"
        flac44.mkdir()
        for p in src:
            wav, sr = sf.read(p, dtype="float32")
            sf.write(flac44 / (p.stem + ".flac"), resample(wav, sr, 44100), 44100)
        for name, folder in (("16 kHz wav → 16 kHz", Path(tmp) / "wav16k"),
                             ("44.1 kHz flac → 16 kHz", flac44)):
            paths = sorted(folder.iterdir())
            base = plain_loop(paths, 16000)
            for w in sorted({0, 1, 2, args.max_workers}):
                if w > args.max_workers:
                    continue
                s = ours(folder, 16000, w)
                rows.append((name, w, base, s))
                print(name, w, f"{hours * 3600 / base:.0f}x", f"{hours * 3600 / s:.0f}x", flush=True)
    lines = [f"Hardware: {hardware(torch.device('cpu'))}. {args.num_utts} utterances of 10–20 s "
             f"({hours:.2f} h); × real time of audio loaded.", "",
             "| input | loader processes (0 = in the main process) | plain `sf.read` loop ×RT | tok loader "
             "×RT | ratio |",
             "|---|---|---|---|---|"]
    for name, w, base, s in rows:
        lines.append(f"| {name} | {w} | {hours * 3600 / base:,.0f} | {hours * 3600 / s:,.0f} | "
                     f"{base / s:.2f}× |")
    per_core = max(hours * 3600 / s / max(w, 1) for name, w, _, s in rows if "flac" in name)
    lines += ["", f"Per loader process, 44.1 kHz flac with resampling: **{per_core:,.0f}× real time**; "
              f"keeping up with 2 × {GPU_TARGET_XRT:,}× per GPU needs "
              f"**{np.ceil(2 * GPU_TARGET_XRT / per_core):.0f}** loader processes per GPU "
              "(16 kHz wav needs fewer)."]
    body = "## Audio loading (issue #4)\n\n" + "\n".join(lines)
    print(body)
    if not args.no_write:
        write_section("loader-cpu", body)


if __name__ == "__main__":
    main()
