"""GAN discriminators and losses for vocoder training: multi-period (HiFi-GAN), multi-scale (MelGAN /
HiFi-GAN) and multi-resolution spectrogram (UnivNet / Vocos) discriminators, least-squares adversarial
loss, feature matching and an L1 log-mel loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

from speechtok.vocoders.mel import MelSpectrogram, log_mel

LRELU = 0.1


def _features(convs: nn.ModuleList, post: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Scores and every layer's activations (for feature matching)."""
    feats = []
    for conv in convs:
        x = F.leaky_relu(conv(x), LRELU)
        feats.append(x)
    x = post(x)
    feats.append(x)
    return x.flatten(1), feats


class PeriodDiscriminator(nn.Module):
    """The waveform folded into [T / p, p] and read by 2-D convolutions along time."""

    def __init__(self, period: int, ch: int = 32):
        super().__init__()
        self.period = period
        chans = [1, ch, ch * 4, ch * 16, ch * 32]
        self.convs = nn.ModuleList(weight_norm(nn.Conv2d(a, b, (5, 1), (3, 1), padding=(2, 0)))
                                   for a, b in zip(chans[:-1], chans[1:]))
        self.convs.append(weight_norm(nn.Conv2d(chans[-1], chans[-1], (5, 1), padding=(2, 0))))
        self.post = weight_norm(nn.Conv2d(chans[-1], 1, (3, 1), padding=(1, 0)))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        B, T = x.shape
        if T % self.period:
            x = F.pad(x, (0, self.period - T % self.period), mode="reflect")
        return _features(self.convs, self.post, x.view(B, 1, -1, self.period))


class ScaleDiscriminator(nn.Module):
    """Grouped 1-D convolutions over the (average-pooled) waveform."""

    def __init__(self, ch: int = 16):
        super().__init__()
        spec = [(1, ch, 15, 1, 1), (ch, ch * 4, 41, 4, 4), (ch * 4, ch * 16, 41, 4, 16), (ch * 16, ch * 16, 41, 4, 16),
                (ch * 16, ch * 16, 5, 1, 1)]
        self.convs = nn.ModuleList(weight_norm(nn.Conv1d(a, b, k, s, groups=g, padding=k // 2)) for a, b, k, s, g in spec)
        self.post = weight_norm(nn.Conv1d(ch * 16, 1, 3, padding=1))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        return _features(self.convs, self.post, x[:, None])


class ResolutionDiscriminator(nn.Module):
    """2-D convolutions over one STFT magnitude."""

    def __init__(self, n_fft: int, hop: int, ch: int = 32):
        super().__init__()
        self.n_fft, self.hop = n_fft, hop
        self.register_buffer("window", torch.hann_window(n_fft))
        self.convs = nn.ModuleList([weight_norm(nn.Conv2d(1, ch, (7, 5), padding=(3, 2)))] +
                                   [weight_norm(nn.Conv2d(ch, ch, (5, 3), (2, 1), padding=(2, 1))) for _ in range(3)] +
                                   [weight_norm(nn.Conv2d(ch, ch, 3, padding=1))])
        self.post = weight_norm(nn.Conv2d(ch, 1, 3, padding=1))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        spec = torch.stft(x, self.n_fft, self.hop, window=self.window, return_complex=True).abs()[:, None]
        return _features(self.convs, self.post, spec)


class Discriminators(nn.Module):
    """MPD (periods 2, 3, 5, 7, 11) + MSD (3 scales) + MRD (3 STFT resolutions)."""

    def __init__(self, periods=(2, 3, 5, 7, 11), scales: int = 3, resolutions=((1024, 256), (512, 128), (256, 64)),
                 ch: int = 32):
        super().__init__()
        self.discs = nn.ModuleList([PeriodDiscriminator(p, ch) for p in periods] +
                                   [ScaleDiscriminator(ch // 2) for _ in range(scales)] +
                                   [ResolutionDiscriminator(n, h, ch) for n, h in resolutions])
        self.pool_levels = [0] * len(periods) + list(range(scales)) + [0] * len(resolutions)

    def forward(self, x: torch.Tensor) -> list[tuple[torch.Tensor, list[torch.Tensor]]]:
        out = []
        for d, level in zip(self.discs, self.pool_levels):
            y = x
            for _ in range(level):
                y = F.avg_pool1d(y[:, None], 4, 2, padding=2)[:, 0]
            out.append(d(y))
        return out


def discriminator_loss(real, fake) -> torch.Tensor:
    return sum(torch.mean((1 - r) ** 2) + torch.mean(f ** 2) for (r, _), (f, _) in zip(real, fake))


def generator_adv_loss(fake) -> torch.Tensor:
    return sum(torch.mean((1 - f) ** 2) for f, _ in fake)


def feature_matching_loss(real, fake) -> torch.Tensor:
    return sum(F.l1_loss(fr, ff) for (_, rs), (_, fs) in zip(real, fake) for fr, ff in zip(rs, fs))


class MelLoss(nn.Module):
    """L1 distance of log-mel spectrograms (80 mels, 1024-point FFT, hop 256 at 22-24 kHz, scaled to the rate)."""

    def __init__(self, sample_rate: int):
        super().__init__()
        scale = sample_rate / 24000
        n_fft = int(2 ** round(torch.log2(torch.tensor(1024 * scale)).item()))
        self.mel = MelSpectrogram(sample_rate, n_fft, n_fft // 4, 80, center=True)

    def forward(self, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        return F.l1_loss(log_mel(self.mel, fake), log_mel(self.mel, real))
