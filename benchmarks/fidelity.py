"""Do the offline evaluators separate clean from degraded speech? PocketSphinx WER (against the text the
voices read), Resemblyzer speaker similarity to the clean clip and DNSMOS OVRL on flite speech, clean and
after three degradations: telephone band (8 kHz and back), white noise at 10 dB and 0 dB SNR.

    python benchmarks/fidelity.py                 # 3 flite voices x 4 sentences, CPU

(The vocoder-training part of issue 19's fidelity benchmark is not implemented yet.)"""

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
from speechtok.eval.asr import error_rates, load_asr  # noqa: E402
from speechtok.eval.mos import DNSMOS  # noqa: E402
from speechtok.eval.speaker import load_speaker_encoder, speaker_similarity  # noqa: E402

SENTENCES = ["the quick brown fox jumps over the lazy dog", "speech tokens turn sound into words",
             "seven green apples fell from the tree", "every word has a start and an end",
             "language models learn to speak from units", "the cat sat on the mat today"]
VOICES = ("slt", "awb", "rms")


def noisy(wav: np.ndarray, snr_db: float, rng: np.random.Generator) -> np.ndarray:
    noise = rng.standard_normal(len(wav)).astype(np.float32)
    return wav + noise * np.sqrt((wav ** 2).mean() / (noise ** 2).mean() / 10 ** (snr_db / 10))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sentences", type=int, default=4)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    clips, texts = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for voice in VOICES:
            for i, text in enumerate(SENTENCES[: args.sentences]):
                path = Path(tmp) / f"{voice}_{i}.wav"
                subprocess.run(["flite", "-voice", voice, "-t", text, "-o", str(path)], check=True)
                wav, sr = sf.read(path, dtype="float32")
                clips.append(resample(wav, sr, 16000))
                texts.append(text)
    conditions = {"clean": lambda w: w,
                  "telephone band (8 kHz)": lambda w: resample(resample(w, 16000, 8000), 8000, 16000),
                  "white noise, 10 dB SNR": lambda w: noisy(w, 10, rng),
                  "white noise, 0 dB SNR": lambda w: noisy(w, 0, rng)}
    asr, enc, mos = load_asr("pocketsphinx"), load_speaker_encoder("resemblyzer"), DNSMOS()
    rows = []
    t0 = time.perf_counter()
    for name, degrade in conditions.items():
        wavs = [np.clip(degrade(w), -1, 1).astype(np.float32) for w in clips]
        hyps = asr.transcribe([(w, 16000) for w in wavs])
        e = error_rates(texts, hyps)
        sim = np.mean([speaker_similarity(enc, c, 16000, w, 16000) for c, w in zip(clips, wavs)])
        ovrl = np.mean([mos.score(w, 16000)["dnsmos_ovrl"] for w in wavs])
        rows.append(f"| {name} | {e['wer']:.3f} | {e['cer']:.3f} | {sim:.3f} | {ovrl:.2f} |")
        print(rows[-1], flush=True)
    body = "\n".join([
        "## Offline evaluators on clean and degraded speech (issue #19), cpu\n",
        f"{hardware(torch.device('cpu'))}. {len(clips)} flite utterances ({len(VOICES)} voices x {args.sentences} "
        f"sentences, 16 kHz); `python benchmarks/fidelity.py`. WER/CER: PocketSphinx 5 en-us against the text "
        "the voices read (corpus-level, normalised: lowercase, no punctuation). Similarity: Resemblyzer cosine "
        "to the clean clip. DNSMOS: P.835 OVRL (speechmos ONNX). "
        f"{time.perf_counter() - t0:.0f} s for all conditions (wall time, machine shared with other "
        "jobs).\n",
        "| condition | WER | CER | speaker similarity | DNSMOS OVRL |", "|---|---|---|---|---|", *rows, "",
        "The vocoder part of the fidelity benchmark (mel Vocos / unit HiFi-GAN trained on a synthetic voice) "
        "is not run yet."])
    print(body)
    if not args.no_write:
        write_section("fidelity", body)


if __name__ == "__main__":
    main()
