"""GAN discriminators for vocoder training, laid out as the originals: multi-period (HiFi-GAN), multi-scale
(HiFi-GAN: three scales, the first spectral-normed, AvgPool1d(4, 2, padding=2) between them) and
multi-resolution band-split complex-STFT (DAC, as Vocos uses it). Each returns (scores, feature maps); the
channel widths scale with `ch` (the originals: 32 for MPD/MRD, 128 for MSD)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm, weight_norm

LRELU = 0.1
Outputs = list[tuple[torch.Tensor, list[torch.Tensor]]]  # per sub-discriminator: (scores, feature maps)


def _run(convs: nn.ModuleList, post: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Scores and every layer's activations (for feature matching)."""
    feats = []
    for conv in convs:
        x = F.leaky_relu(conv(x), LRELU)
        feats.append(x)
    x = post(x)
    feats.append(x)
    return x.flatten(1), feats


class PeriodDiscriminator(nn.Module):
    """The waveform folded into [T / p, p] and read by 2-D convolutions along time (HiFi-GAN
    DiscriminatorP)."""

    def __init__(self, period: int, ch: int = 32):
        super().__init__()
        self.period = period
        chans = [1, ch, ch * 4, ch * 16, ch * 32]
        self.convs = nn.ModuleList(weight_norm(nn.Conv2d(a, b, (5, 1), (3, 1), padding=(2, 0)))
                                   for a, b in zip(chans[:-1], chans[1:]))
        self.convs.append(weight_norm(nn.Conv2d(chans[-1], chans[-1], (5, 1), padding=(2, 0))))
        self.conv_post = weight_norm(nn.Conv2d(chans[-1], 1, (3, 1), padding=(1, 0)))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        B, T = x.shape
        if T % self.period:
            x = F.pad(x, (0, self.period - T % self.period), mode="reflect")
        return _run(self.convs, self.conv_post, x.view(B, 1, -1, self.period))


class MultiPeriodDiscriminator(nn.Module):
    def __init__(self, ch: int = 32, periods: tuple[int, ...] = (2, 3, 5, 7, 11)):
        super().__init__()
        self.discriminators = nn.ModuleList(PeriodDiscriminator(p, ch) for p in periods)

    def forward(self, x: torch.Tensor) -> Outputs:
        return [d(x) for d in self.discriminators]


class ScaleDiscriminator(nn.Module):
    """Strided, grouped 1-D convolutions over the waveform (HiFi-GAN DiscriminatorS)."""

    def __init__(self, ch: int = 128, spectral: bool = False):
        super().__init__()
        norm = spectral_norm if spectral else weight_norm
        c = [1, ch, ch, ch * 2, ch * 4, ch * 8, ch * 8, ch * 8]
        spec = [(15, 1, 1, 7), (41, 2, 4, 20), (41, 2, 16, 20), (41, 4, 16, 20), (41, 4, 16, 20),
                (41, 1, 16, 20), (5, 1, 1, 2)]  # kernel, stride, groups, padding
        self.convs = nn.ModuleList(norm(nn.Conv1d(c[i], c[i + 1], k, s, groups=g, padding=p))
                                   for i, (k, s, g, p) in enumerate(spec))
        self.conv_post = norm(nn.Conv1d(c[-1], 1, 3, padding=1))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        return _run(self.convs, self.conv_post, x[:, None])


class MultiScaleDiscriminator(nn.Module):
    """Raw, ×2 and ×4 average-pooled waveform; the raw-scale discriminator is spectral-normed."""

    def __init__(self, ch: int = 128):
        super().__init__()
        self.discriminators = nn.ModuleList([ScaleDiscriminator(ch, spectral=True), ScaleDiscriminator(ch),
                                             ScaleDiscriminator(ch)])
        self.meanpool = nn.AvgPool1d(4, 2, padding=2)

    def forward(self, x: torch.Tensor) -> Outputs:
        out = []
        for i, d in enumerate(self.discriminators):
            if i:
                x = self.meanpool(x[:, None])[:, 0]
            out.append(d(x))
        return out


class ResolutionDiscriminator(nn.Module):
    """2-D convolutions over the real and imaginary STFT of the DC-removed, peak-normalised waveform, one
    stack per frequency band (DAC / Vocos DiscriminatorR). Feature maps skip each stack's first layer, as
    the original."""

    BANDS = ((0.0, 0.1), (0.1, 0.25), (0.25, 0.5), (0.5, 0.75), (0.75, 1.0))

    def __init__(self, window_length: int, ch: int = 32):
        super().__init__()
        self.window_length, self.hop = window_length, window_length // 4
        self.register_buffer("window", torch.hann_window(window_length), persistent=False)
        bins = window_length // 2 + 1
        self.bands = [(int(a * bins), int(b * bins)) for a, b in self.BANDS]

        def stack() -> nn.ModuleList:
            return nn.ModuleList([weight_norm(nn.Conv2d(2, ch, (3, 9), padding=(1, 4)))] +
                                 [weight_norm(nn.Conv2d(ch, ch, (3, 9), (1, 2), padding=(1, 4)))
                                  for _ in range(3)] +
                                 [weight_norm(nn.Conv2d(ch, ch, (3, 3), padding=(1, 1)))])

        self.band_convs = nn.ModuleList(stack() for _ in self.bands)
        self.conv_post = weight_norm(nn.Conv2d(ch, 1, (3, 3), padding=(1, 1)))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        x = x - x.mean(-1, keepdim=True)
        x = 0.8 * x / (x.abs().amax(-1, keepdim=True) + 1e-9)
        spec = torch.stft(x, self.window_length, self.hop, window=self.window, center=True,
                          pad_mode="reflect", return_complex=True)
        spec = torch.view_as_real(spec).permute(0, 3, 2, 1)  # [B, 2 (re, im), frames, bins]
        feats, outs = [], []
        for (lo, hi), stack in zip(self.bands, self.band_convs):
            h = spec[..., lo:hi]
            for i, conv in enumerate(stack):
                h = F.leaky_relu(conv(h), LRELU)
                if i:
                    feats.append(h)
            outs.append(h)
        x = self.conv_post(torch.cat(outs, -1))
        feats.append(x)
        return x.flatten(1), feats


class MultiResolutionDiscriminator(nn.Module):
    def __init__(self, ch: int = 32, fft_sizes: tuple[int, ...] = (2048, 1024, 512)):
        super().__init__()
        self.discriminators = nn.ModuleList(ResolutionDiscriminator(n, ch) for n in fft_sizes)

    def forward(self, x: torch.Tensor) -> Outputs:
        return [d(x) for d in self.discriminators]
