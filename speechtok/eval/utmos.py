"""Naturalness estimate: UTMOS22 "strong learner" (Saeki et al. 2022, "UTMOS: UTokyo-SaruLab System for
VoiceMOS Challenge 2022"), the UTMOS of codec and TTS papers, as tarepan/SpeechMOS packages it (torch.hub
`utmos22_strong`, checkpoint `utmos22_strong_step7459_v1.pt`): wav2vec 2.0 base features + the one
data-domain and one judge embedding SpeechMOS fixed it to (rows stored in the checkpoint) → BLSTM →
per-frame scores, averaged and mapped to 2·s + 3. Plain PyTorch with the same parameter names, so that
checkpoint loads as it is; nothing is downloaded."""

from __future__ import annotations

import math
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

CHECKPOINT = "utmos22_strong_step7459_v1.pt"
MIN_SAMPLES = 400  # at 16 kHz: the receptive field of wav2vec 2.0's strided convolutions (25 ms)


class _PosConv(nn.Module):
    """wav2vec 2.0's convolutional position embedding: a grouped conv under (old-style) weight norm over
    dim 2, kept as its `weight_g` / `weight_v` parameters; the last frame is cut (even kernel)."""

    def __init__(self, dim: int = 768, kernel: int = 128, groups: int = 16):
        super().__init__()
        self.weight_g = nn.Parameter(torch.empty(1, 1, kernel))
        self.weight_v = nn.Parameter(torch.empty(dim, dim // groups, kernel))
        self.bias = nn.Parameter(torch.empty(dim))
        self.groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, D, T] → [B, D, T]
        v = self.weight_v
        w = v * (self.weight_g / v.pow(2).sum(dim=(0, 1), keepdim=True).sqrt())
        return F.conv1d(x, w, self.bias, padding=w.shape[-1] // 2, groups=self.groups)[..., :-1]


class _Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (nn.Linear(dim, dim) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, T, D]
        b, t, d = x.shape
        q, k, v = (p(x).view(b, t, self.heads, d // self.heads).transpose(1, 2)
                   for p in (self.q_proj, self.k_proj, self.v_proj))
        return self.out_proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, t, d))


class _Layer(nn.Module):
    """Post-LN transformer layer (wav2vec 2.0 base)."""

    def __init__(self, dim: int = 768, ffn: int = 3072, heads: int = 12):
        super().__init__()
        self.self_attn = _Attention(dim, heads)
        self.fc1, self.fc2 = nn.Linear(dim, ffn), nn.Linear(ffn, dim)
        self.self_attn_layer_norm, self.final_layer_norm = nn.LayerNorm(dim), nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.self_attn_layer_norm(x + self.self_attn(x))
        return self.final_layer_norm(x + self.fc2(F.gelu(self.fc1(x))))


class _Encoder(nn.Module):
    def __init__(self, dim: int = 768, layers: int = 12):
        super().__init__()
        self.pos_conv = nn.Sequential(_PosConv(dim))
        self.layer_norm = nn.LayerNorm(dim)
        self.layers = nn.ModuleList(_Layer(dim) for _ in range(layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, T, D]
        x = self.layer_norm(x + F.gelu(self.pos_conv[0](x.transpose(1, 2))).transpose(1, 2))
        for layer in self.layers:
            x = layer(x)
        return x


def _conv_block(n_in: int, n_out: int, kernel: int, stride: int, group_norm: bool) -> nn.Sequential:
    """Conv (no bias), [dropout slot], GroupNorm on the first block only, GELU: the original's indices."""
    norm = [nn.GroupNorm(n_out, n_out)] if group_norm else []
    conv = nn.Conv1d(n_in, n_out, kernel, stride=stride, bias=False)
    return nn.Sequential(conv, nn.Identity(), *norm, nn.GELU())


class _Wav2Vec2(nn.Module):
    """wav2vec 2.0 base (fairseq layout): 7 strided convs (320× down, 50 Hz at 16 kHz) → LayerNorm →
    projection to 768 → convolutional position embedding → 12 post-LN transformer layers."""

    def __init__(self):
        super().__init__()
        convs = [(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512, 2, 2)] * 2
        self.feature_extractor = nn.Module()
        self.feature_extractor.conv_layers = nn.ModuleList(
            _conv_block(1 if i == 0 else 512, c, k, s, i == 0) for i, (c, k, s) in enumerate(convs))
        self.layer_norm = nn.LayerNorm(512)
        self.post_extract_proj = nn.Linear(512, 768)
        self.encoder = _Encoder(768)
        self.mask_emb = nn.Parameter(torch.empty(768))  # unused at inference; in the checkpoint

    def forward(self, wav: torch.Tensor) -> torch.Tensor:  # [B, samples] → [B, frames, 768]
        x = wav[:, None]
        for conv in self.feature_extractor.conv_layers:
            x = conv(x)
        return self.encoder(self.post_extract_proj(self.layer_norm(x.transpose(1, 2))))


class UTMOS22Strong(nn.Module):
    """16 kHz waveform [B, samples] → MOS [B]; `forward_frames` also gives the SSL features and the
    per-frame scores."""

    def __init__(self):
        super().__init__()
        self.wav2vec2 = _Wav2Vec2()
        self.domain_emb = nn.Parameter(torch.empty(1, 128), requires_grad=False)
        self.judge_emb = nn.Parameter(torch.empty(1, 128), requires_grad=False)
        self.blstm = nn.LSTM(768 + 128 + 128, 512, batch_first=True, bidirectional=True)
        self.projection = nn.Sequential(nn.Linear(1024, 2048), nn.ReLU(), nn.Linear(2048, 1))

    def forward_frames(self, wav: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(SSL features [B, F, 768], per-frame scores [B, F])."""
        ssl = self.wav2vec2(wav)
        b, f, _ = ssl.shape
        x = torch.cat([ssl, self.domain_emb.expand(b, f, -1), self.judge_emb.expand(b, f, -1)], dim=2)
        return ssl, self.projection(self.blstm(x)[0])[..., 0]

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        return self.forward_frames(wav)[1].mean(1) * 2 + 3


def sinc_resample(x: torch.Tensor, orig: int, new: int, zeros: int = 6,
                  rolloff: float = 0.99) -> torch.Tensor:
    """torchaudio.functional.resample's default (which SpeechMOS' model calls on its input): a Hann-windowed
    sinc low-pass at `rolloff` × the lower Nyquist, `zeros` zero crossings each side, one polyphase filter
    per output phase, computed in x's dtype; [..., T] → [..., ceil(T · new / orig)]."""
    if orig == new:
        return x
    g = math.gcd(orig, new)
    orig, new = orig // g, new // g
    cutoff = min(orig, new) * rolloff
    width = math.ceil(zeros * orig / cutoff)
    taps = torch.arange(-width, width + orig, dtype=x.dtype, device=x.device) / orig
    t = (taps[None] - torch.arange(new, dtype=x.dtype, device=x.device)[:, None] / new) * cutoff
    t = t.clamp(-zeros, zeros)
    window = torch.cos(t * math.pi / zeros / 2) ** 2
    t = t * math.pi
    kernel = torch.where(t == 0, torch.ones_like(t), t.sin() / t) * window * (cutoff / orig)
    flat = x.reshape(-1, x.shape[-1])
    y = F.conv1d(F.pad(flat, (width, width + orig))[:, None], kernel[:, None], stride=orig)
    y = y.transpose(1, 2).reshape(flat.shape[0], -1)[:, : math.ceil(new * flat.shape[-1] / orig)]
    return y.reshape(*x.shape[:-1], -1)


class UTMOS:
    """Non-intrusive MOS (1–5 scale) of one signal, from a local UTMOS22 strong checkpoint. Input handling as
    SpeechMOS': float32 waveform as it is (no normalisation), resampled to 16 kHz with torchaudio's sinc
    resampler (`sinc_resample`); the domain and judge embeddings come with the checkpoint."""

    backend = "utmos22_strong"
    model = f"UTMOS22 strong learner (tarepan/SpeechMOS {CHECKPOINT} layout)"
    sample_rate = 16000

    def __init__(self, path: str | Path, device: str | torch.device = "cpu"):
        from speechtok.eval.models import files_sha256

        path = Path(path)
        if not path.is_file():
            raise ValueError(f"{path}: no UTMOS checkpoint there (want SpeechMOS' {CHECKPOINT})")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise ValueError(f"{path}: not a torch state dict ({' '.join(str(e).split())[:120]})") from None
        self.net = load_utmos_state(state, str(path)).to(device).eval()
        self.device = torch.device(device)
        self.model_sha256 = files_sha256([path])

    @torch.inference_mode()
    def score(self, wav: np.ndarray, sr: int) -> float:
        """MOS of one signal; a one-line ValueError when it is shorter than wav2vec 2.0's 25 ms."""
        x = torch.from_numpy(np.ascontiguousarray(wav, dtype=np.float32))[None].to(self.device)
        x = sinc_resample(x, sr, self.sample_rate)
        if x.shape[-1] < MIN_SAMPLES:
            raise ValueError(f"{1000 * len(wav) / sr:.1f} ms of audio: shorter than 25 ms, the least UTMOS "
                             f"reads (wav2vec 2.0's convolutions need {MIN_SAMPLES} samples at 16 kHz)")
        with no_tf32():
            return float(self.net(x)[0])


@contextmanager
def no_tf32():
    """Full fp32 (no TF32) in cuDNN convolutions and CUDA matmuls, the previous settings restored after: with
    TF32, GPU scores differed from CPU ones by up to 8.9e-5 (H200)."""
    conv, matmul = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = conv, matmul


def load_utmos_state(state, where: str) -> UTMOS22Strong:
    """A `UTMOS22Strong` holding `state` (the SpeechMOS state dict); a one-line ValueError naming `where`
    when keys or shapes differ."""
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{where}: not a UTMOS22 strong state dict (want SpeechMOS' {CHECKPOINT})")
    with torch.device("meta"):
        net = UTMOS22Strong()
    want = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    missing, extra = sorted(set(want) - set(state)), sorted(set(state) - set(want))
    shapes = [k for k in want if k in state and tuple(state[k].shape) != want[k]]
    if missing or extra or shapes:
        parts = [f"{len(missing)} missing (e.g. {missing[0]})" if missing else "",
                 f"{len(extra)} unexpected (e.g. {extra[0]})" if extra else "",
                 f"{len(shapes)} of another shape (e.g. {shapes[0]}: {tuple(state[shapes[0]].shape)}, want "
                 f"{want[shapes[0]]})" if shapes else ""]
        raise ValueError(f"{where}: not a UTMOS22 strong state dict (want SpeechMOS' {CHECKPOINT}): keys "
                         + ", ".join(p for p in parts if p))
    net.load_state_dict({k: v.float() for k, v in state.items()}, assign=True)
    net.blstm.flatten_parameters()
    return net
