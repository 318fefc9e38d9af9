"""Magnitude mel spectrogram in plain PyTorch, laid out like torchaudio's `MelSpectrogram` (buffers
`spectrogram.window` and `mel_scale.fb`) so that published Vocos state dicts load into it unchanged."""

from __future__ import annotations

import math

import torch
from torch import nn


def hz_to_mel(f: torch.Tensor, scale: str) -> torch.Tensor:
    if scale == "htk":
        return 2595.0 * torch.log10(1.0 + f / 700.0)
    f_sp, min_log_hz = 200.0 / 3, 1000.0  # slaney: linear below 1 kHz, logarithmic above
    min_log_mel, logstep = min_log_hz / f_sp, math.log(6.4) / 27.0
    return torch.where(f >= min_log_hz, min_log_mel + torch.log(f.clamp(min=1e-10) / min_log_hz) / logstep,
                       f / f_sp)


def mel_to_hz(m: torch.Tensor, scale: str) -> torch.Tensor:
    if scale == "htk":
        return 700.0 * (10.0 ** (m / 2595.0) - 1.0)
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, math.log(6.4) / 27.0
    return torch.where(m >= min_log_mel, min_log_hz * torch.exp(logstep * (m - min_log_mel)), f_sp * m)


def mel_filterbank(n_freqs: int, f_min: float, f_max: float, n_mels: int, sample_rate: int,
                   norm: str | None = None, scale: str = "htk") -> torch.Tensor:
    """Triangular filters [n_freqs, n_mels] (torchaudio's `melscale_fbanks` convention)."""
    freqs = torch.linspace(0, sample_rate // 2, n_freqs)
    m_min, m_max = (float(hz_to_mel(torch.tensor(float(f), dtype=torch.float64), scale))
                    for f in (f_min, f_max))
    m = torch.linspace(m_min, m_max, n_mels + 2)  # ends in float64, as torchaudio's Python-float ends
    f_pts = mel_to_hz(m, scale)
    diff = f_pts[1:] - f_pts[:-1]
    slopes = f_pts[None, :] - freqs[:, None]
    down = -slopes[:, :-2] / diff[:-1]
    up = slopes[:, 2:] / diff[1:]
    fb = torch.clamp(torch.minimum(down, up), min=0.0)
    if norm == "slaney":
        fb = fb * (2.0 / (f_pts[2: n_mels + 2] - f_pts[:n_mels]))[None]
    return fb


class _Window(nn.Module):
    def __init__(self, n: int):
        super().__init__()
        self.register_buffer("window", torch.hann_window(n))


class _MelScale(nn.Module):
    def __init__(self, fb: torch.Tensor):
        super().__init__()
        self.register_buffer("fb", fb)


class MelSpectrogram(nn.Module):
    """|STFT| (power 1) → mel, [B, T] → [B, n_mels, frames]. `eps` > 0 takes the magnitude as
    sqrt(re² + im² + eps), as HiFi-GAN's mel_spectrogram does."""

    def __init__(self, sample_rate: int = 24000, n_fft: int = 1024, hop_length: int = 256, n_mels: int = 100,
                 center: bool = True, f_min: float = 0.0, f_max: float | None = None, norm: str | None = None,
                 mel_scale: str = "htk", eps: float = 0.0):
        super().__init__()
        self.n_fft, self.hop_length, self.center, self.eps = n_fft, hop_length, center, eps
        self.spectrogram = _Window(n_fft)
        self.mel_scale = _MelScale(mel_filterbank(n_fft // 2 + 1, f_min, f_max or sample_rate / 2, n_mels,
                                                  sample_rate, norm, mel_scale))

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        spec = torch.stft(audio, self.n_fft, self.hop_length, window=self.spectrogram.window,
                          center=self.center, pad_mode="reflect", return_complex=True)
        spec = torch.sqrt(torch.view_as_real(spec).square().sum(-1) + self.eps) if self.eps else spec.abs()
        return torch.matmul(spec.transpose(-1, -2), self.mel_scale.fb).transpose(-1, -2)


def log_mel(mel: MelSpectrogram, audio: torch.Tensor) -> torch.Tensor:
    return torch.log(mel(audio).clamp(min=1e-5))
