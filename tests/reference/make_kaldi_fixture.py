"""Writes tests/fixtures/kaldi_mfcc_fbank.npz: Kaldi-compatible MFCC (+Δ, ΔΔ) and 80-band fbank of two
synthetic speech-like signals (16 kHz and 8 kHz), computed by torchaudio as fairseq's HuBERT
`examples/hubert/simple_kmeans/dump_mfcc_feature.py` does: kaldi.mfcc(sample_frequency=sr, use_energy=False)
then functional.compute_deltas twice, time-major. dither=0.0 (torchaudio's default) for determinism.

The fixture is float32 output of one machine (an AMD EPYC): other CPUs' FFT and GEMM kernels round
differently, and weak bands amplify that in the log (an Intel AVX-512 Xeon differed by up to 5.6e-4), so
tests/test_features.py compares within a per-value float32 error bound (`kaldi_error_bound`), not exactly.

Run in the side environment that has torchaudio (CI does not):
    /work/refenv/bin/python tests/reference/make_kaldi_fixture.py
"""

from pathlib import Path

import numpy as np
import scipy.signal
import torch
import torchaudio

OUT = Path(__file__).parents[1] / "fixtures" / "kaldi_mfcc_fbank.npz"


def speechlike(sr: int, seconds: float, seed: int) -> np.ndarray:
    """Silence (exact zeros), a gliding-pitch vowel through moving formants, a fricative, another vowel."""
    rng = np.random.default_rng(seed)
    n = int(sr * seconds)
    t = np.arange(n) / sr
    f0 = 110 + 60 * t / seconds
    pulses = (np.diff(np.floor(np.cumsum(f0) / sr), prepend=0) > 0).astype(np.float64)
    out = np.zeros(n)
    for lo, hi, formants in [(0.12, 0.5, (700, 1200, 2600)), (0.68, 1.0, (300, 2300, 3000))]:
        a, b = int(lo * n), int(hi * n)
        x = pulses[a:b] + 0.01 * rng.standard_normal(b - a)
        for f in formants:
            if f < sr / 2 - 200:
                r = np.exp(-np.pi * 80 / sr)
                x = scipy.signal.lfilter([1 - r], [1, -2 * r * np.cos(2 * np.pi * f / sr), r * r], x)
        out[a:b] = x * np.hanning(b - a)
    a, b = int(0.52 * n), int(0.66 * n)
    noise = scipy.signal.lfilter([1, -0.9], [1], rng.standard_normal(b - a))
    out[a:b] = 0.05 * noise * np.hanning(b - a)
    return (0.5 * out / np.abs(out).max()).astype(np.float32)


def reference(wav: np.ndarray, sr: int) -> dict:
    x = torch.from_numpy(wav)[None]
    with torch.no_grad():
        mfcc = torchaudio.compliance.kaldi.mfcc(waveform=x, sample_frequency=sr, use_energy=False, dither=0.0)
        d1 = torchaudio.functional.compute_deltas(mfcc.T)
        d2 = torchaudio.functional.compute_deltas(d1)
        fairseq = torch.cat([mfcc.T, d1, d2], 0).T.contiguous()  # dump_mfcc_feature.py's concat, (time, 39)
        fbank = torchaudio.compliance.kaldi.fbank(waveform=x, sample_frequency=sr, num_mel_bins=80,
                                                  dither=0.0)
    return {"mfcc39": fairseq.numpy(), "fbank80": fbank.numpy()}


def main() -> None:
    arrays = {}
    for sr, seconds, seed in [(16000, 0.8, 0), (8000, 0.6, 1)]:
        wav = speechlike(sr, seconds, seed)
        arrays[f"wav_{sr}"] = wav
        for name, value in reference(wav, sr).items():
            arrays[f"{name}_{sr}"] = value
    arrays["versions"] = np.array(f"torch {torch.__version__}, torchaudio {torchaudio.__version__}")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(OUT, **arrays)
    print(OUT, OUT.stat().st_size, "bytes", {k: v.shape for k, v in arrays.items()})


if __name__ == "__main__":
    main()
