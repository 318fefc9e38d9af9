"""Vocoder training objectives as the papers' code trains them. HiFi-GAN (jik876/hifi-gan train.py, also
speech-resynthesis): MPD + MSD, least-squares GAN, feature matching ×2, L1 log-mel ×45 on its own mel
(1024-point FFT, hop 256, 80 Slaney mels). Vocos (gemelo-ai/vocos experiment.py, loss.py): MPD + MRD,
hinge GAN, every term averaged over the sub-discriminators, MRD terms × mrd_weight (released configs: 0.1
for mel, 1.0 for EnCodec features), feature matching ×1, L1 log-mel ×45 (1024 / 256, 100 HTK mels)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from speechtok.vocoders.discriminators import MultiPeriodDiscriminator, MultiResolutionDiscriminator, \
    MultiScaleDiscriminator, Outputs
from speechtok.vocoders.mel import MelSpectrogram


def lsgan_discriminator_loss(real: Outputs, fake: Outputs) -> torch.Tensor:
    return sum(torch.mean((1 - r) ** 2) + torch.mean(f ** 2) for (r, _), (f, _) in zip(real, fake))


def lsgan_generator_loss(fake: Outputs) -> torch.Tensor:
    return sum(torch.mean((1 - f) ** 2) for f, _ in fake)


def hinge_discriminator_loss(real: Outputs, fake: Outputs) -> torch.Tensor:
    return sum(torch.mean(F.relu(1 - r)) + torch.mean(F.relu(1 + f)) for (r, _), (f, _) in zip(real, fake))


def hinge_generator_loss(fake: Outputs) -> torch.Tensor:
    return sum(torch.mean(F.relu(1 - f)) for f, _ in fake)


def feature_matching_loss(real: Outputs, fake: Outputs, skip_first: bool = False) -> torch.Tensor:
    """Σ over sub-discriminators and layers of mean |real − fake| (real features carry no gradient)."""
    start = 1 if skip_first else 0
    return sum(torch.mean(torch.abs(fr.detach() - ff)) for (_, rs), (_, fs) in zip(real, fake)
               for fr, ff in zip(rs[start:], fs[start:]))


class HiFiGANLoss(nn.Module):
    """MPD + MSD with least-squares losses; `mel_l1` is HiFi-GAN's mel_spectrogram (reflect-padded, no
    centring, sqrt(|X|² + 1e-9), log of max(·, 1e-5))."""

    def __init__(self, sample_rate: int, ch: int = 32, mel_weight: float = 45.0, fm_weight: float = 2.0):
        super().__init__()
        self.mpd, self.msd = MultiPeriodDiscriminator(ch), MultiScaleDiscriminator(4 * ch)
        self.mel = MelSpectrogram(sample_rate, 1024, 256, 80, center=False, norm="slaney", mel_scale="slaney",
                                  eps=1e-9)
        self.mel_weight, self.fm_weight = mel_weight, fm_weight

    def log_mel(self, audio: torch.Tensor) -> torch.Tensor:
        pad = (self.mel.n_fft - self.mel.hop_length) // 2
        return torch.log(self.mel(F.pad(audio[:, None], (pad, pad), mode="reflect")[:, 0]).clamp(min=1e-5))

    def discriminator_loss(self, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        return sum(lsgan_discriminator_loss(d(real), d(fake)) for d in (self.mpd, self.msd))

    def generator_loss(self, real: torch.Tensor, fake: torch.Tensor, adversarial: bool = True
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        """(total generator loss, unweighted mel L1)."""
        mel = F.l1_loss(self.log_mel(fake), self.log_mel(real))
        total = self.mel_weight * mel
        if adversarial:
            for d in (self.mpd, self.msd):
                with torch.no_grad():
                    r = d(real)
                f = d(fake)
                total = total + lsgan_generator_loss(f) + self.fm_weight * feature_matching_loss(r, f)
        return total, mel


class VocosLoss(nn.Module):
    """MPD + MRD with hinge losses, each averaged over its sub-discriminators; `mel_l1` is Vocos'
    MelSpecReconstructionLoss (torchaudio MelSpectrogram 1024 / 256 / 100 mels, log of max(·, 1e-7))."""

    def __init__(self, sample_rate: int, ch: int = 32, mel_weight: float = 45.0, fm_weight: float = 1.0,
                 mrd_weight: float = 0.1):
        super().__init__()
        self.mpd, self.mrd = MultiPeriodDiscriminator(ch), MultiResolutionDiscriminator(ch)
        self.mel = MelSpectrogram(sample_rate, 1024, 256, 100, center=True)
        self.mel_weight, self.fm_weight, self.mrd_weight = mel_weight, fm_weight, mrd_weight

    def log_mel(self, audio: torch.Tensor) -> torch.Tensor:
        return torch.log(self.mel(audio).clamp(min=1e-7))

    def discriminator_loss(self, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        mp = hinge_discriminator_loss(self.mpd(real), self.mpd(fake)) / len(self.mpd.discriminators)
        mrd = hinge_discriminator_loss(self.mrd(real), self.mrd(fake)) / len(self.mrd.discriminators)
        return mp + self.mrd_weight * mrd

    def generator_loss(self, real: torch.Tensor, fake: torch.Tensor, adversarial: bool = True
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        """(total generator loss, unweighted mel L1)."""
        mel = F.l1_loss(self.log_mel(real), self.log_mel(fake))
        total = self.mel_weight * mel
        if adversarial:
            for d, weight, skip_first in ((self.mpd, 1.0, True), (self.mrd, self.mrd_weight, False)):
                with torch.no_grad():
                    r = d(real)
                f = d(fake)
                n = len(d.discriminators)
                total = total + weight * (hinge_generator_loss(f) / n
                                          + self.fm_weight * feature_matching_loss(r, f, skip_first) / n)
        return total, mel


def vocoder_loss(kind: str, sample_rate: int, codec_features: bool, ch: int = 32, mel_weight: float = 45.0,
                 fm_weight: float | None = None, mrd_weight: float | None = None) -> HiFiGANLoss | VocosLoss:
    """The objective of `kind` ('unit-hifigan' or 'vocos'); None weights take the paper's values."""
    if kind == "unit-hifigan":
        return HiFiGANLoss(sample_rate, ch, mel_weight, 2.0 if fm_weight is None else fm_weight)
    default_mrd = 1.0 if codec_features else 0.1
    return VocosLoss(sample_rate, ch, mel_weight, 1.0 if fm_weight is None else fm_weight,
                     default_mrd if mrd_weight is None else mrd_weight)
