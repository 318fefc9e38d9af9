"""Weight-free features that work offline: log-mel filterbanks and Kaldi-style MFCC (+Δ, ΔΔ), 25 ms
windows every 10 ms, frames cut only from real samples (Kaldi's snip-edges), so padding never leaks."""

from __future__ import annotations

import math

import torch

from speechtok.tokenizers.features import FeatureExtractor, conv_output_length, length_mask


def mel_filterbank(n_fft: int, n_mels: int, sample_rate: int, fmin: float, fmax: float) -> torch.Tensor:
    """[n_fft//2+1, n_mels] triangular filters on the HTK mel scale."""
    def to_mel(f):
        return 1127.0 * math.log(1.0 + f / 700.0)

    mels = torch.linspace(to_mel(fmin), to_mel(fmax), n_mels + 2, dtype=torch.float64)
    hz = 700.0 * (torch.exp(mels / 1127.0) - 1.0)
    bins = torch.linspace(0, sample_rate / 2, n_fft // 2 + 1, dtype=torch.float64)
    lo, mid, hi = hz[:-2, None], hz[1:-1, None], hz[2:, None]
    up = (bins[None] - lo) / (mid - lo)
    down = (hi - bins[None]) / (hi - mid)
    return torch.clamp(torch.minimum(up, down), min=0).T.float().contiguous()


def dct_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """[n_in, n_out] orthonormal DCT-II, as Kaldi uses for cepstra."""
    n = torch.arange(n_in, dtype=torch.float64)
    k = torch.arange(n_out, dtype=torch.float64)
    m = torch.cos(math.pi / n_in * (n[:, None] + 0.5) * k[None, :]) * math.sqrt(2.0 / n_in)
    m[:, 0] /= math.sqrt(2.0)
    return m.float()


class LogMel(FeatureExtractor):
    """Log mel-filterbank energies."""

    OPTIONS = ("sample_rate", "n_mels", "win_length", "hop_length", "n_fft")

    def __init__(self, sample_rate: int = 16000, n_mels: int = 80, win_length: int = 400,
                 hop_length: int = 160, n_fft: int = 512):
        super().__init__()
        self.sample_rate, self.n_mels = sample_rate, n_mels
        self.win_length, self.hop_length, self.n_fft = win_length, hop_length, n_fft
        self.dim = n_mels
        self.register_buffer("window", torch.hann_window(win_length, periodic=False), persistent=False)
        self.register_buffer("fbank", mel_filterbank(n_fft, n_mels, sample_rate, 20.0, sample_rate / 2),
                             persistent=False)

    @property
    def frame_rate(self) -> float:
        return self.sample_rate / self.hop_length

    def num_frames(self, num_samples: torch.Tensor) -> torch.Tensor:
        return conv_output_length(torch.as_tensor(num_samples), self.win_length, self.hop_length)

    def card(self) -> dict:
        return {"kind": "logmel", **{k: getattr(self, k) for k in self.OPTIONS}}

    def log_mel(self, wav: torch.Tensor) -> torch.Tensor:
        wav = wav.float()
        if wav.shape[-1] < self.win_length:
            wav = torch.nn.functional.pad(wav, (0, self.win_length - wav.shape[-1]))
        frames = wav.unfold(-1, self.win_length, self.hop_length)  # [B, F, win]
        frames = frames - frames.mean(-1, keepdim=True)  # remove DC per frame
        frames = torch.cat([frames[..., :1] * 0.03, frames[..., 1:] - 0.97 * frames[..., :-1]], -1)  # pre-emphasis
        spec = torch.fft.rfft(frames * self.window, n=self.n_fft).abs().pow(2)
        return torch.log(torch.clamp(spec @ self.fbank, min=1e-10))

    def forward(self, wav: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = self.num_frames(lengths)
        feats = self.log_mel(wav)[:, : int(n.max()) if len(n) else 0]
        return feats * length_mask(n, feats.shape[1])[..., None], n


class MFCC(LogMel):
    """13 cepstra from 23 mel bands with Δ and ΔΔ (39 dims, as fairseq's HuBERT iteration-1 targets).
    Deltas are computed within each utterance, repeating its edge frames."""

    OPTIONS = ("sample_rate", "n_mels", "n_ceps", "win_length", "hop_length", "n_fft")

    def __init__(self, sample_rate: int = 16000, n_mels: int = 23, n_ceps: int = 13, win_length: int = 400,
                 hop_length: int = 160, n_fft: int = 512):
        super().__init__(sample_rate, n_mels, win_length, hop_length, n_fft)
        self.n_ceps = n_ceps
        self.dim = 3 * n_ceps
        self.register_buffer("dct", dct_matrix(n_mels, n_ceps), persistent=False)

    def card(self) -> dict:
        return {"kind": "mfcc", **{k: getattr(self, k) for k in self.OPTIONS}}

    @staticmethod
    def delta(x: torch.Tensor, n: torch.Tensor, width: int = 2) -> torch.Tensor:
        """Regression deltas over ±width frames, clamping frame indices to each utterance's own range."""
        t = torch.arange(x.shape[1], device=x.device)
        last = torch.clamp(n - 1, min=0)[:, None]
        out = torch.zeros_like(x)
        for k in range(1, width + 1):
            ahead = torch.minimum(t[None] + k, last)
            behind = torch.clamp(t[None] - k, min=0).expand_as(ahead)
            gather = lambda idx: torch.gather(x, 1, idx[..., None].expand(-1, -1, x.shape[2]))  # noqa: E731
            out = out + k * (gather(ahead) - gather(behind))
        return out / (2 * sum(k * k for k in range(1, width + 1)))

    def forward(self, wav: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = self.num_frames(lengths)
        ceps = (self.log_mel(wav) @ self.dct)[:, : int(n.max()) if len(n) else 0]
        d1 = self.delta(ceps, n)
        d2 = self.delta(d1, n)
        feats = torch.cat([ceps, d1, d2], -1)
        return feats * length_mask(n, feats.shape[1])[..., None], n
