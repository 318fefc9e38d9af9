"""F0 trackers against YAAPT (the tracker of pGSLM and speech-resynthesis, the reference here) on espeak-ng
speech whose pitch (-p) and rate (-s) vary: on frames both call voiced, gross pitch error (GPE: more than 20%
off) and F0 RMSE (Hz and cents); voicing decision error (VDE: frames where they disagree on voicing); and
each tracker's speed (× real time, one process), on the 5 ms grid every tracker shares.

    OMP_NUM_THREADS=1 python benchmarks/prosody_trackers.py"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

sys.path.insert(0, str(Path(__file__).parent))
from report import hardware, write_section  # noqa: E402

from speechtok.audio import resample  # noqa: E402
from speechtok.prosody.normalize import CENTS_PER_NEPER, normalize  # noqa: E402
from speechtok.prosody.pitch_bins import fit_bins  # noqa: E402
from speechtok.prosody.trackers import SAMPLE_RATE, Tracker  # noqa: E402

SENTENCES = ["the quick brown fox jumps over the lazy dog", "speech tokens turn sound into words",
             "language models learn to speak from units", "every word has a start and an end"]
VOICES = ["en-us", "en-gb"]
PITCHES = [20, 50, 80]
SPEEDS = [130, 190]


def espeak(text: str, voice: str, pitch: int, speed: int) -> np.ndarray:
    with tempfile.NamedTemporaryFile(suffix=".wav") as f:
        subprocess.run(["espeak-ng", "-v", voice, "-p", str(pitch), "-s", str(speed), "-w", f.name, text],
                       check=True, capture_output=True)
        wav, sr = sf.read(f.name, dtype="float32")
    return resample(wav, sr, SAMPLE_RATE)


def agreement(f0: np.ndarray, ref: np.ndarray) -> dict:
    n = min(len(f0), len(ref))
    f0, ref = f0[:n], ref[:n]
    both = (f0 > 0) & (ref > 0)
    ratio = f0[both] / ref[both]
    gross = np.abs(ratio - 1) > 0.2
    fine = ~gross
    return {"frames": int(both.sum()), "gpe": float(gross.mean()),
            "vde": float(np.mean((f0 > 0) != (ref > 0))),
            "rmse_hz": float(np.sqrt(np.mean((f0[both] - ref[both]) ** 2))),
            "rmse_cents_fine": float(np.sqrt(np.mean((CENTS_PER_NEPER * np.log(ratio[fine])) ** 2)))}


def pitch_token_table(tracks: list[np.ndarray], pitches: list[int], bins: int = 32) -> list[str]:
    """Per espeak -p: median YAAPT F0 and median pGSLM bin token (norm none and mean, bins fitted on all
    these utterances): do pitch tokens separate high and low voices?"""
    rows = [f"| espeak -p | median F0 (Hz) | median bin, norm none | median bin, norm mean ({bins} bins) |",
            "|---|---|---|---|"]
    fitted = {norm: fit_bins(np.concatenate([normalize(t, norm) for t in tracks]), bins)[0]
              for norm in ("none", "mean")}
    for p in PITCHES:
        mine = [t for t, q in zip(tracks, pitches) if q == p]
        f0 = np.concatenate(mine)
        token = {norm: np.median(np.concatenate([1 + np.searchsorted(edges, x[~np.isnan(x)])
                                                 for x in (normalize(t, norm) for t in mine)]))
                 for norm, edges in fitted.items()}
        rows.append(f"| {p} | {np.median(f0[f0 > 0]):.0f} | {token['none']:.0f} | {token['mean']:.0f} |")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--no-write", action="store_true", help="print only, leave BENCHMARKS.md alone")
    args = ap.parse_args()
    settings = [(s, v, p, sp) for s in SENTENCES for v in VOICES for p in PITCHES for sp in SPEEDS]
    wavs = [espeak(*setting) for setting in settings]
    seconds = sum(len(w) for w in wavs) / SAMPLE_RATE
    tracks, speed = {}, {}
    for name in ("yaapt", "world", "pesto"):
        tracker = Tracker(name)
        t0 = time.perf_counter()
        tracks[name] = [tracker(torch.from_numpy(w)[None], torch.tensor([len(w)]))[0] for w in wavs]
        speed[name] = seconds / (time.perf_counter() - t0)
    ref = np.concatenate(tracks["yaapt"])
    rows = ["| tracker | voiced frames (both) | GPE vs YAAPT | VDE vs YAAPT | F0 RMSE (Hz) "
            "| RMSE w/o gross (cents) | × real time |", "|---|---|---|---|---|---|---|"]
    for name in ("yaapt", "world", "pesto"):
        a = agreement(np.concatenate(tracks[name]), ref)
        rows.append(f"| {name} | {a['frames']} | {a['gpe']:.1%} | {a['vde']:.1%} | {a['rmse_hz']:.1f} | "
                    f"{a['rmse_cents_fine']:.0f} | {speed[name]:.1f} |")
    setup = (f"{hardware(torch.device('cpu'))}, torch threads {torch.get_num_threads()}: {len(wavs)} "
             f"espeak-ng utterances ({seconds:.0f} s; {len(SENTENCES)} sentences × voices "
             f"{', '.join(VOICES)} × pitch -p {PITCHES} × rate -s {SPEEDS})")
    body = (f"## F0 trackers vs YAAPT (issue #26), cpu\n\n`benchmarks/prosody_trackers.py` on {setup}, "
            "5 ms frames, F0 range 60–400 Hz for all. GPE: frames both call voiced that are more than 20% "
            "apart; VDE: frames where the voicing decisions differ. Speeds were taken on a machine shared "
            "with other jobs.\n\n" + "\n".join(rows) + "\n\nPitch tokens of the same speech (YAAPT F0):\n\n"
            + "\n".join(pitch_token_table(tracks["yaapt"], [p for _, _, p, _ in settings])))
    print(body)
    if not args.no_write:
        write_section("prosody-trackers", body)


if __name__ == "__main__":
    main()
