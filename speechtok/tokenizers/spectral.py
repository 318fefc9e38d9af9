"""Weight-free features that work offline, computed as Kaldi does (`compute-fbank-feats`,
`compute-mfcc-feats`, i.e. torchaudio.compliance.kaldi with its defaults and dither 0): 25 ms Povey
windows every 10 ms cut only from real samples (snip-edges, so padding never leaks), DC removal,
pre-emphasis 0.97, triangular filters on the mel scale, log floored at float32 epsilon; MFCC adds the
DCT-II, the cepstral lifter and Δ/ΔΔ, exactly fairseq's HuBERT iteration-1 MFCC
(examples/hubert/simple_kmeans/dump_mfcc_feature.py). Plain torch: no torchaudio needed."""

from __future__ import annotations

import math

import torch

from speechtok.tokenizers.features import FeatureExtractor, conv_output_length, length_mask

WINDOW = "povey"  # recorded in cards: cards without it come from the earlier, non-Kaldi features
LOW_FREQ = 20.0  # Kaldi's --low-freq; --high-freq 0 means the Nyquist frequency
PREEMPHASIS = 0.97
CEPSTRAL_LIFTER = 22.0
LOG_FLOOR = torch.finfo(torch.float32).eps  # Kaldi floors energies at numeric_limits<float>::epsilon()


def mel(f: torch.Tensor | float):
    """Kaldi's (HTK's) mel scale."""
    return 1127.0 * (torch.log(1.0 + f / 700.0) if isinstance(f, torch.Tensor) else math.log(1.0 + f / 700.0))


def kaldi_mel_banks(n_fft: int, n_mels: int, sample_rate: int, low_freq: float = LOW_FREQ) -> torch.Tensor:
    """[n_fft//2+1, n_mels] Kaldi filters: triangles equally spaced *in mel*, with slopes linear in mel,
    from `low_freq` to Nyquist; the Nyquist bin has weight 0 (Kaldi's MelBanks, float32 as there)."""
    lo, hi = mel(low_freq), mel(sample_rate / 2)
    step = (hi - lo) / (n_mels + 1)
    b = torch.arange(n_mels)[None]
    left, centre, right = lo + b * step, lo + (b + 1.0) * step, lo + (b + 2.0) * step
    m = mel(torch.arange(float(n_fft // 2)) * (sample_rate / n_fft))[:, None]
    w = torch.clamp(torch.minimum((m - left) / (centre - left), (right - m) / (right - centre)), min=0)
    return torch.cat([w, torch.zeros(1, n_mels)]).contiguous()


def dct_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """[n_in, n_out] orthonormal DCT-II, as Kaldi uses for cepstra (built in float32 as Kaldi and
    torchaudio do: the features then agree to float32 rounding)."""
    n = torch.arange(float(n_in))
    k = torch.arange(float(n_out))[:, None]
    m = torch.cos(math.pi / float(n_in) * (n + 0.5) * k) * math.sqrt(2.0 / float(n_in))
    m[0] = math.sqrt(1.0 / float(n_in))
    return m.T.contiguous()


def cepstral_lifter(n_ceps: int, q: float = CEPSTRAL_LIFTER) -> torch.Tensor:
    """Kaldi's lifter 1 + q/2 sin(pi i / q), weighting cepstrum i."""
    return 1.0 + 0.5 * q * torch.sin(math.pi * torch.arange(n_ceps) / q)


def povey_window(n: int) -> torch.Tensor:
    """Kaldi's default window: a symmetric Hann window to the power 0.85."""
    return torch.hann_window(n, periodic=False).pow(0.85)  # float32, as Kaldi and torchaudio


class LogMel(FeatureExtractor):
    """Log mel-filterbank energies (Kaldi fbank, 80 bands by default)."""

    OPTIONS = ("sample_rate", "n_mels", "win_length", "hop_length", "n_fft")

    def __init__(self, sample_rate: int = 16000, n_mels: int = 80, win_length: int | None = None,
                 hop_length: int | None = None, n_fft: int | None = None):
        super().__init__()
        self.sample_rate, self.n_mels = sample_rate, n_mels
        self.win_length = win_length or int(sample_rate * 0.025)
        self.hop_length = hop_length or int(sample_rate * 0.010)
        self.n_fft = n_fft or 1 << (self.win_length - 1).bit_length()  # Kaldi's round-to-power-of-two
        self.dim = n_mels
        self.register_buffer("window", povey_window(self.win_length), persistent=False)
        self.register_buffer("fbank", kaldi_mel_banks(self.n_fft, n_mels, sample_rate), persistent=False)

    @property
    def frame_rate(self) -> float:
        return self.sample_rate / self.hop_length

    def num_frames(self, num_samples: torch.Tensor) -> torch.Tensor:
        return conv_output_length(torch.as_tensor(num_samples), self.win_length, self.hop_length)

    def card(self) -> dict:
        return {"kind": "logmel", **{k: getattr(self, k) for k in self.OPTIONS}, "window": WINDOW}

    def power_spectrum(self, wav: torch.Tensor) -> torch.Tensor:
        """[B, T] → [B, F, n_fft//2+1] power of every full window (frames past an utterance's end are junk);
        its sum per frame is the scale of the FFT's rounding error (tests bound the features with it)."""
        wav = wav.to(self.window.device).float()  # callers may hand over CPU batches, as to SSL models
        if wav.shape[-1] < self.win_length:
            wav = torch.nn.functional.pad(wav, (0, self.win_length - wav.shape[-1]))
        frames = wav.unfold(-1, self.win_length, self.hop_length)  # [B, F, win]
        frames = frames - frames.mean(-1, keepdim=True)  # remove DC per frame
        previous = torch.cat([frames[..., :1], frames[..., :-1]], -1)  # x[-1] := x[0], as Kaldi
        frames = frames - PREEMPHASIS * previous
        return torch.fft.rfft(frames * self.window, n=self.n_fft).abs().pow(2)

    def log_mel(self, wav: torch.Tensor) -> torch.Tensor:
        """[B, T] → [B, F, n_mels] for every full window (frames past an utterance's end are junk)."""
        return torch.log(torch.clamp(self.power_spectrum(wav) @ self.fbank, min=LOG_FLOOR))

    def forward(self, wav: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = self.num_frames(lengths)  # on the lengths' device (usually the CPU: no sync for its max)
        feats = self.log_mel(wav)[:, : int(n.max()) if len(n) else 0]
        return feats * length_mask(n.to(feats.device), feats.shape[1])[..., None], n


class MFCC(LogMel):
    """13 cepstra from 23 mel bands (liftered) with Δ and ΔΔ: 39 dims, fairseq's HuBERT iteration-1
    targets. Deltas are computed within each utterance, repeating its edge frames (torchaudio's
    compute_deltas, window 5, replicate padding)."""

    OPTIONS = ("sample_rate", "n_mels", "n_ceps", "win_length", "hop_length", "n_fft")

    def __init__(self, sample_rate: int = 16000, n_mels: int = 23, n_ceps: int = 13,
                 win_length: int | None = None, hop_length: int | None = None, n_fft: int | None = None):
        super().__init__(sample_rate, n_mels, win_length, hop_length, n_fft)
        self.n_ceps = n_ceps
        self.dim = 3 * n_ceps
        self.register_buffer("dct", dct_matrix(n_mels, n_ceps), persistent=False)
        self.register_buffer("lifter", cepstral_lifter(n_ceps), persistent=False)

    def card(self) -> dict:
        return {"kind": "mfcc", **{k: getattr(self, k) for k in self.OPTIONS}, "window": WINDOW}

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
        n = self.num_frames(lengths)  # on the lengths' device (usually the CPU: no sync for its max)
        ceps = (self.log_mel(wav) @ self.dct * self.lifter)[:, : int(n.max()) if len(n) else 0]
        n_here = n.to(ceps.device)
        d1 = self.delta(ceps, n_here)
        d2 = self.delta(d1, n_here)
        feats = torch.cat([ceps, d1, d2], -1)
        return feats * length_mask(n_here, feats.shape[1])[..., None], n
