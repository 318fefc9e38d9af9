"""Comparisons of float32 results that hold on any x86-64 CPU (AVX2 / AVX-512, Intel / AMD) and thread
count. Kernels round differently per CPU (FFT and GEMM blocking, vectorised exp/log/pow), and a float32
network's rounding error is relative to the magnitudes it sums, not to each output value: a small value
beside large ones carries the large ones' error. So deep-network outputs are compared relative to the
tensor's (or a frame's) scale, in units of float32 ε, and log features in the linear domain.

The constant: over the kernels one machine can emulate (ATEN_CPU_CAPABILITY=default/avx2/avx512,
MKL_CBWR=COMPATIBLE, 1-2 threads; AMD EPYC, torch 2.13) every network comparison in the suite measured
≤ 30 ε·scale against fixtures written on another machine; an Intel AVX-512 Xeon differed from that
machine by up to 3.4× more than the emulated kernels did (Kaldi features, issue 23). 256 ε·scale
(≈ 3e-5 of the scale) keeps ~9× above the worst measurement."""

from __future__ import annotations

import numpy as np
import torch

EPS = float(np.finfo(np.float32).eps)
NETWORK_ULPS = 256


def assert_close_to_scale(actual, expected, ulps: float = NETWORK_ULPS, axis: int | tuple | None = None,
                          what: str = "") -> None:
    """|actual − expected| ≤ ulps·ε·max|expected|, the max over `axis` (a frame) or the whole tensor."""
    a = np.asarray(torch.as_tensor(actual).detach().double())
    e = np.asarray(torch.as_tensor(expected).detach().double())
    assert a.shape == e.shape, (what, a.shape, e.shape)
    scale = np.abs(e).max(axis=axis, keepdims=True) if axis is not None else np.abs(e).max()
    excess = np.abs(a - e) / (EPS * np.maximum(scale, np.finfo(np.float64).tiny))
    beyond = int((excess > ulps).sum())
    assert excess.max() <= ulps, f"{what}: {excess.max():.1f} ε·scale > {ulps} ({beyond} values)"


def assert_log_features_close(actual, expected, axis: int, ulps: float = NETWORK_ULPS,
                              what: str = "") -> None:
    """Log spectral features compared in the linear domain, relative to each frame's strongest band (the
    STFT errs relative to the frame's norm; the log amplifies that in weak bands)."""
    assert_close_to_scale(np.exp(np.asarray(torch.as_tensor(actual).double())),
                          np.exp(np.asarray(torch.as_tensor(expected).double())), ulps, axis, what)
