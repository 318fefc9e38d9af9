"""Harmonic excitation of an F0-conditioned unit HiFi-GAN (`f0_source: harmonic`): the neural source-filter
idea of NSF-HiFiGAN (Wang & Yamagishi 2019; DiffSinger's and RVC's vocoders). From the F0 input a sum of
sines at F0 and its harmonics is made at the sample rate, and a strided convolution adds it to every
upsampling stage. The output's pitch then comes from the excitation instead of being learnt from a
log-F0 channel, which a briefly trained HiFi-GAN does not do (BENCHMARKS.md "prosody-vocoder").

Unlike the reference SourceModuleHnNSF there is no random noise or random initial phase: the phase starts
at 0 and the excitation is 0 where unvoiced, so resynthesis is deterministic and batch-invariant (the
generator makes its own aperiodic part, as a plain HiFi-GAN does). The phase is accumulated per frame in
float64 and wrapped to [0, 1) at each frame, so it stays exact over hours of audio; harmonics at or above
the output's Nyquist frequency are left out (the strided convolutions that bring the excitation to the
lower rates of the early stages filter it as they learn to, as in the reference)."""

from __future__ import annotations

import math

import torch
from torch import nn

from speechtok.vocoders.f0_input import F0_REFERENCE

HARMONICS = 8  # overtones above F0, as DiffSinger's NSF-HiFiGAN (harmonic_num=8)
SINE_AMPLITUDE = 0.1  # SourceModuleHnNSF's sine_amp


def f0_hz(f0_input: torch.Tensor) -> torch.Tensor:
    """The F0 input [B, F0_CHANNELS, T] with `f0_norm: none` (log(F0 / F0_REFERENCE), voiced flag) → F0 in
    Hz [B, T], 0 where unvoiced."""
    voiced = f0_input[:, 1] > 0.5
    return torch.where(voiced, F0_REFERENCE * torch.exp(f0_input[:, 0].double()), 0.0)


def f0_cycles(f0: torch.Tensor, hop: int, sample_rate: int) -> tuple[torch.Tensor, torch.Tensor]:
    """F0 in Hz per frame [B, T] → (F0's cycles so far, wrapped per frame, and F0, both per sample
    [B, T × hop]); F0 constant within a frame. A frame whose F0 is not finite, not positive or not below
    Nyquist is unvoiced (it would make no sound, and a NaN or inf would spoil every later frame's phase)."""
    f0 = torch.where(torch.isfinite(f0) & (f0 > 0) & (f0 < sample_rate / 2), f0.double(), 0.0)
    per_frame = f0 * hop / sample_rate  # cycles of F0 in one frame
    start = torch.cumsum(per_frame, 1) - per_frame  # cycles before each frame
    start = (start - torch.floor(start)).float()  # wrapped: small numbers, float32 from here on
    f0 = f0.float()
    n = torch.arange(hop, device=f0.device, dtype=torch.float32) / sample_rate
    cycles = (start[..., None] + f0[..., None] * n).flatten(1)
    return cycles, f0.repeat_interleave(hop, 1)


def harmonic(cycles: torch.Tensor, f0: torch.Tensor, k: int, sample_rate: int) -> torch.Tensor:
    """The k-th multiple of F0 (k = 1: F0 itself) of amplitude SINE_AMPLITUDE from `f0_cycles`' output;
    0 where unvoiced or at or above Nyquist."""
    phase = cycles * k
    phase = 2 * math.pi * (phase - torch.floor(phase))
    return SINE_AMPLITUDE * torch.sin(phase) * ((f0 > 0) & (f0 * k < sample_rate / 2))


def sines(f0: torch.Tensor, hop: int, sample_rate: int, harmonics: int = HARMONICS) -> torch.Tensor:
    """F0 in Hz per frame [B, T] (0: unvoiced) → sines at F0 × 1 .. harmonics + 1, [B, harmonics + 1,
    T × hop], the phase continuous across frames."""
    cycles, f0 = f0_cycles(f0, hop, sample_rate)
    return torch.stack([harmonic(cycles, f0, k, sample_rate) for k in range(1, harmonics + 2)], 1)


class HarmonicSource(nn.Module):
    """F0 input → one excitation channel at the sample rate (the harmonics merged by a learnt linear map and
    tanh, as SourceModuleHnNSF), and per upsampling stage a convolution that brings it to that stage's rate
    and width."""

    def __init__(self, sample_rate: int, upsample_rates: list[int], channels: list[int]):
        super().__init__()
        self.sample_rate, self.hop = sample_rate, math.prod(upsample_rates)
        self.merge = nn.Linear(HARMONICS + 1, 1)
        self.convs = nn.ModuleList()
        for i, ch in enumerate(channels):
            s = math.prod(upsample_rates[i + 1:])  # samples per position of stage i
            self.convs.append(nn.Conv1d(1, ch, 2 * s, stride=s, padding=(s + 1) // 2) if s > 1
                              else nn.Conv1d(1, ch, 1))

    def forward(self, f0_input: torch.Tensor) -> torch.Tensor:
        """[B, F0_CHANNELS, T] → the excitation [B, 1, T × hop]: `merge` applied to `sines`, one harmonic at
        a time (not all at the sample rate at once: ten minutes of 16 kHz audio would hold 1.5 GB)."""
        cycles, f0 = f0_cycles(f0_hz(f0_input), self.hop, self.sample_rate)
        w, b = self.merge.weight[0].float(), self.merge.bias[0].float()
        x = b + sum(w[k - 1] * harmonic(cycles, f0, k, self.sample_rate) for k in range(1, HARMONICS + 2))
        return torch.tanh(x)[:, None].to(self.convs[0].weight.dtype)

    def at_stage(self, excitation: torch.Tensor, i: int) -> torch.Tensor:
        """The excitation at upsampling stage i's rate and width [B, channels[i], T × hop / later rates]."""
        return self.convs[i](excitation)
