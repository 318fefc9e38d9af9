"""Resynthesis quality of a hypothesis waveform against its reference: SI-SDR, STOI (pystoi), wide-band
PESQ (pesq, ITU-T P.862.2), mel-cepstral distortion and F0 RMSE / voicing decision error on WORLD
analysis (pyworld), the latter two along a DTW alignment so that timing changes are not counted."""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from speechtok.audio import resample
from speechtok.eval.dtw import dtw
from speechtok.eval.models import need

FRAME_PERIOD_MS = 5.0
MCEP_ORDER = 24
STOI_MIN_SECONDS = 0.4  # STOI's 30 frames of 25.6 ms at 10 kHz, half overlapping
SI_SDR_CAP_DB = 100.0  # identical signals would give +inf; JSON has no infinity


def _need(module: str):
    return need(module, "eval")


def si_sdr(ref: np.ndarray, hyp: np.ndarray) -> float:
    """Scale-invariant signal-to-distortion ratio in dB (Le Roux et al. 2019), on zero-mean signals."""
    ref = ref.astype(np.float64) - ref.mean()
    hyp = hyp.astype(np.float64) - hyp.mean()
    target = (hyp @ ref) / max(ref @ ref, 1e-20) * ref
    noise = hyp - target
    if noise @ noise <= 1e-20 * max(target @ target, 1e-20):
        return SI_SDR_CAP_DB
    return float(min(SI_SDR_CAP_DB, 10 * math.log10(max(target @ target, 1e-20) / (noise @ noise))))


def stoi(ref: np.ndarray, hyp: np.ndarray, sr: int) -> float:
    """STOI; a ValueError for signals with fewer than its 30 frames of speech (pystoi would crash on very
    short ones and return 1e-5 with a warning on mostly silent ones)."""
    import warnings

    if len(ref) < sr * STOI_MIN_SECONDS:
        raise ValueError(f"{len(ref) / sr * 1000:.1f} ms in common is too short (needs "
                         f"{STOI_MIN_SECONDS * 1000:.0f} ms)")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        value = float(_need("pystoi").stoi(ref, hyp, sr, extended=False))
    if any("Not enough STFT frames" in str(w.message) for w in caught):
        raise ValueError("fewer than 30 frames of speech after removing silence")
    return value


def pesq_wb(ref: np.ndarray, hyp: np.ndarray, sr: int) -> float:
    """Wide-band PESQ (MOS-LQO, 1.04–4.64) at 16 kHz; it aligns the signals itself."""
    pesq = _need("pesq")
    return float(pesq.pesq(16000, resample(ref, sr, 16000), resample(hyp, sr, 16000), "wb"))


@lru_cache(maxsize=16)
def mcep_alpha(sr: int) -> float:
    """The all-pass constant whose frequency warping best fits the mel scale (Fant's, 1 kHz break) at
    `sr`, as SPTK's tools choose it: 0.41 at 16 kHz, 0.466 at 24 kHz."""
    omega = np.arange(1000) * np.pi / 1000
    mel = np.log1p(omega / np.pi * sr / 2 / 1000)
    mel /= mel[-1]
    alphas = np.arange(0, 1, 0.001)[:, None]
    warped = np.arctan2((1 - alphas ** 2) * np.sin(omega), (1 + alphas ** 2) * np.cos(omega) - 2 * alphas)
    warped = np.where(warped < 0, warped + 2 * np.pi, warped)
    warped /= warped[:, -1:]
    return round(float(alphas[np.argmin(((warped - mel) ** 2).mean(1)), 0]), 3)


def freqt(c: np.ndarray, order: int, alpha: float) -> np.ndarray:
    """Frequency warping of cepstra [..., m1+1] → [..., order+1] (SPTK's recursion)."""
    beta = 1 - alpha * alpha
    g = np.zeros(c.shape[:-1] + (order + 1,))
    for i in range(c.shape[-1] - 1, -1, -1):
        d = g.copy()
        g[..., 0] = c[..., i] + alpha * d[..., 0]
        if order >= 1:
            g[..., 1] = beta * d[..., 0] + alpha * d[..., 1]
        for j in range(2, order + 1):
            g[..., j] = d[..., j - 1] + alpha * (d[..., j] - g[..., j - 1])
    return g


def world_features(wav: np.ndarray, sr: int) -> tuple[np.ndarray, np.ndarray]:
    """(F0 in Hz per 5 ms frame, 0 when unvoiced; mel-cepstra [frames, 25]) from WORLD's DIO + StoneMask
    and CheapTrick, the cepstra as SPTK's sp2mc computes them."""
    pw = _need("pyworld")
    x = wav.astype(np.float64)
    f0, t = pw.dio(x, sr, frame_period=FRAME_PERIOD_MS)
    f0 = pw.stonemask(x, f0, t, sr)
    sp = pw.cheaptrick(x, f0, t, sr)
    c = np.fft.irfft(np.log(np.maximum(sp, 1e-16)))
    c[:, 0] /= 2.0
    return f0, freqt(c[:, : c.shape[1] // 2 + 1], MCEP_ORDER, mcep_alpha(sr))


def spectral_metrics(ref: np.ndarray, hyp: np.ndarray, sr: int) -> dict:
    """MCD (dB, c1..c24), F0 RMSE (Hz and cents, frames voiced in both) and voicing decision error, along
    the DTW path of the two mel-cepstrum sequences."""
    f0_r, mc_r = world_features(ref, sr)
    f0_h, mc_h = world_features(hyp, sr)
    a, b = mc_r[:, 1:], mc_h[:, 1:]
    cost = np.sqrt(np.maximum((a * a).sum(1)[:, None] + (b * b).sum(1)[None] - 2 * a @ b.T, 0))
    _, path = dtw(cost, return_path=True)
    i, j = np.array(path).T
    mcd = float(np.mean(10 / np.log(10) * np.sqrt(2 * ((a[i] - b[j]) ** 2).sum(1))))
    vr, vh = f0_r[i] > 0, f0_h[j] > 0
    both = vr & vh
    out = {"mcd_db": mcd, "voicing_error": float(np.mean(vr != vh)), "f0_rmse_hz": None,
           "f0_rmse_cents": None, "voiced_frames": int(both.sum())}
    if both.any():
        fr, fh = f0_r[i][both], f0_h[j][both]
        out["f0_rmse_hz"] = float(np.sqrt(np.mean((fr - fh) ** 2)))
        out["f0_rmse_cents"] = float(np.sqrt(np.mean((1200 * np.log2(fh / fr)) ** 2)))
    return out


def resynth_metrics(ref: np.ndarray, ref_sr: int, hyp: np.ndarray, hyp_sr: int) -> dict:
    """All metrics of one pair, both analysed at the lower of the two rates (`analysis_sample_rate`): the
    higher-rate signal is resampled down, so a band the other never had is not counted as distortion
    (a 16 kHz copy of a 32 kHz file scored MCD 26 dB when analysed at 32 kHz). Both are cut to the shorter
    length for the sample-wise metrics (SI-SDR, STOI, PESQ)."""
    sr = min(ref_sr, hyp_sr)
    ref, hyp = resample(ref, ref_sr, sr), resample(hyp, hyp_sr, sr)
    n = min(len(ref), len(hyp))
    out = {"seconds": len(ref) / sr, "length_difference_s": (len(hyp) - len(ref)) / sr,
           "analysis_sample_rate": sr, "si_sdr_db": si_sdr(ref[:n], hyp[:n])}
    for name, metric in (("stoi", stoi), ("pesq_wb", pesq_wb)):
        try:  # STOI needs 30 frames of speech (~0.4 s); PESQ refuses signals without speech activity
            out[name] = metric(ref[:n], hyp[:n], sr)
        except Exception as e:
            reason = " ".join(str(e).split())[:120] or type(e).__name__
            out[name], out[f"{name.split('_')[0]}_error"] = None, reason
    out.update(spectral_metrics(ref, hyp, sr))
    return out

