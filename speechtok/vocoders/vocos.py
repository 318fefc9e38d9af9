"""Vocos (Siuzdak, 2023): ConvNeXt backbone at the frame rate and an inverse-STFT head, so there is no
upsampling stack. Two inputs: a log-mel spectrogram, or the summed codebook embeddings of EnCodec tokens.

Checkpoints load from the original format (`config.yaml` with class_path / init_args for
feature_extractor, backbone and head, and `pytorch_model.bin`), from a local directory or a hub id: module
and parameter names follow the original, so its state dicts load as they are."""

from __future__ import annotations

from pathlib import Path

import torch
import yaml
from torch import nn

from speechtok.torch_files import load_weights
from speechtok.vocoders.mel import MelSpectrogram


class MelFeatures(nn.Module):
    """Log-mel features of audio: [B, T] → [B, n_mels, frames]."""

    def __init__(self, sample_rate: int = 24000, n_fft: int = 1024, hop_length: int = 256, n_mels: int = 100,
                 padding: str = "center", f_min: float = 0.0, f_max: float | None = None,
                 norm: str | None = None, mel_scale: str = "htk"):
        super().__init__()
        if padding not in ("center", "same"):
            raise ValueError("padding must be 'center' or 'same'")
        self.padding, self.hop_length = padding, hop_length
        self.mel_spec = MelSpectrogram(sample_rate, n_fft, hop_length, n_mels, padding == "center", f_min,
                                       f_max, norm, mel_scale)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        if self.padding == "same":
            pad = self.mel_spec.n_fft - self.hop_length
            audio = nn.functional.pad(audio, (pad // 2, pad // 2), mode="reflect")
        return torch.log(self.mel_spec(audio).clamp(min=1e-7))


class CodecFeatures(nn.Module):
    """EnCodec tokens → summed codebook embeddings: codes [n_q, B, frames] → [B, dim, frames]. The
    embeddings of all codebooks sit in one table, codebook q at rows q·bins … (q+1)·bins − 1."""

    def __init__(self, codebook_size: int = 1024, n_q: int = 32, dim: int = 128,
                 bandwidths=(1.5, 3.0, 6.0, 12.0),
                 encodec_model: str = "encodec_24khz", train_codebooks: bool = False,
                 sample_rate: int = 24000):
        super().__init__()
        self.bins, self.bandwidths, self.encodec_model = codebook_size, list(bandwidths), encodec_model
        self.codebook_weights = nn.Parameter(torch.randn(n_q * codebook_size, dim) * 0.1,
                                             requires_grad=train_codebooks)

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        offsets = torch.arange(len(codes), device=codes.device) * self.bins
        return nn.functional.embedding(codes + offsets[:, None, None],
                                       self.codebook_weights).sum(0).transpose(1, 2)


class AdaLayerNorm(nn.Module):
    """LayerNorm whose scale and shift are looked up per condition (EnCodec bandwidth)."""

    def __init__(self, num_embeddings: int, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps, self.dim = eps, dim
        self.scale, self.shift = nn.Embedding(num_embeddings, dim), nn.Embedding(num_embeddings, dim)
        nn.init.ones_(self.scale.weight)
        nn.init.zeros_(self.shift.weight)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return nn.functional.layer_norm(x, (self.dim,), eps=self.eps) * self.scale(cond) + self.shift(cond)


class ConvNeXtBlock(nn.Module):
    def __init__(self, dim: int, intermediate_dim: int, layer_scale: float,
                 adanorm_num_embeddings: int | None):
        super().__init__()
        self.dwconv = nn.Conv1d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.adanorm = adanorm_num_embeddings is not None
        self.norm = AdaLayerNorm(adanorm_num_embeddings, dim) if self.adanorm else nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1, self.act, self.pwconv2 = (nn.Linear(dim, intermediate_dim), nn.GELU(),
                                                nn.Linear(intermediate_dim, dim))
        self.gamma = nn.Parameter(layer_scale * torch.ones(dim)) if layer_scale > 0 else None

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        y = self.dwconv(x).transpose(1, 2)
        y = self.norm(y, cond) if self.adanorm else self.norm(y)
        y = self.pwconv2(self.act(self.pwconv1(y)))
        if self.gamma is not None:
            y = self.gamma * y
        return x + y.transpose(1, 2)


class VocosBackbone(nn.Module):
    """[B, C, frames] → [B, frames, dim] at the same frame rate."""

    def __init__(self, input_channels: int, dim: int, intermediate_dim: int, num_layers: int,
                 layer_scale_init_value: float | None = None, adanorm_num_embeddings: int | None = None):
        super().__init__()
        self.embed = nn.Conv1d(input_channels, dim, kernel_size=7, padding=3)
        self.adanorm = adanorm_num_embeddings is not None
        self.norm = AdaLayerNorm(adanorm_num_embeddings, dim) if self.adanorm else nn.LayerNorm(dim, eps=1e-6)
        scale = layer_scale_init_value or 1 / num_layers
        self.convnext = nn.ModuleList(ConvNeXtBlock(dim, intermediate_dim, scale, adanorm_num_embeddings)
                                      for _ in range(num_layers))
        self.final_layer_norm = nn.LayerNorm(dim, eps=1e-6)
        for m in self.modules():
            if isinstance(m, (nn.Conv1d, nn.Linear)):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        """`mask` [B, 1, frames] (1 inside a row, 0 in its padding) zeroes the padding before every
        convolution, so each row sees the zeros it would see alone: a padded batch equals its rows alone."""
        x = self.embed(x if mask is None else x * mask).transpose(1, 2)
        x = (self.norm(x, cond) if self.adanorm else self.norm(x)).transpose(1, 2)
        for block in self.convnext:
            x = block(x if mask is None else x * mask, cond)
        return self.final_layer_norm(x.transpose(1, 2))


class ISTFT(nn.Module):
    """Inverse STFT with 'center' (torch.istft) or 'same' padding (overlap-add, trimmed like a conv)."""

    def __init__(self, n_fft: int, hop_length: int, win_length: int, padding: str = "same"):
        super().__init__()
        self.n_fft, self.hop_length, self.win_length, self.padding = n_fft, hop_length, win_length, padding
        self.register_buffer("window", torch.hann_window(win_length))

    def forward(self, spec: torch.Tensor, frames: torch.Tensor | None = None) -> torch.Tensor:
        if frames is not None:
            return self.overlap_add_rows(spec, frames)
        if self.padding == "center":
            return torch.istft(spec, self.n_fft, self.hop_length, self.win_length, self.window, center=True)
        pad = (self.win_length - self.hop_length) // 2
        T = spec.shape[-1]
        frames = torch.fft.irfft(spec, self.n_fft, dim=1, norm="backward") * self.window[None, :, None]
        size = (T - 1) * self.hop_length + self.win_length
        fold = dict(output_size=(1, size), kernel_size=(1, self.win_length), stride=(1, self.hop_length))
        y = nn.functional.fold(frames, **fold)[:, 0, 0, pad:-pad]
        env = nn.functional.fold(self.window.square()[None, :, None].expand(1, -1, T),
                                 **fold)[0, 0, 0, pad:-pad]
        return y / env.clamp(min=1e-11)

    def overlap_add_rows(self, spec: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        """A padded batch, row b holding `frames[b]` frames: overlap-add and window envelope of that row's
        frames only, so its first (frames[b] − 1)·hop ('center') or frames[b]·hop ('same') samples are what
        the row gives alone; the rest is padding."""
        T = spec.shape[-1]
        inside = (torch.arange(T, device=spec.device) < frames.to(spec.device)[:, None]).to(self.window.dtype)
        frames_t = torch.fft.irfft(spec, self.n_fft, dim=1, norm="backward") * self.window[None, :, None]
        size = (T - 1) * self.hop_length + self.win_length
        fold = dict(output_size=(1, size), kernel_size=(1, self.win_length), stride=(1, self.hop_length))
        y = nn.functional.fold(frames_t * inside[:, None], **fold)[:, 0, 0]
        env = nn.functional.fold(self.window.square()[None, :, None] * inside[:, None], **fold)[:, 0, 0]
        start, length = ((self.n_fft // 2, (T - 1) * self.hop_length) if self.padding == "center"
                         else ((self.win_length - self.hop_length) // 2, T * self.hop_length))
        return (y / env.clamp(min=1e-11))[:, start:start + length]


class ISTFTHead(nn.Module):
    """Frames → magnitude and phase per STFT bin → waveform."""

    def __init__(self, dim: int, n_fft: int, hop_length: int, padding: str = "same"):
        super().__init__()
        self.out = nn.Linear(dim, n_fft + 2)
        self.istft = ISTFT(n_fft, hop_length, n_fft, padding)

    def forward(self, x: torch.Tensor, frames: torch.Tensor | None = None) -> torch.Tensor:
        mag, phase = self.out(x).transpose(1, 2).float().chunk(2, dim=1)
        mag = torch.exp(mag).clamp(max=1e2)
        return self.istft(mag * torch.exp(1j * phase), frames)


_CLASSES = {"MelSpectrogramFeatures": MelFeatures, "EncodecFeatures": CodecFeatures,
            "VocosBackbone": VocosBackbone, "ISTFTHead": ISTFTHead}


class Vocos(nn.Module):
    """feature_extractor → backbone → head. `decode(features)` is the vocoder proper."""

    def __init__(self, config: dict):
        super().__init__()
        self.config = config
        parts = {}
        for part in ("feature_extractor", "backbone", "head"):
            name = config[part]["class_path"].rsplit(".", 1)[-1]
            if name not in _CLASSES:
                raise ValueError(f"unsupported Vocos {part} {config[part]['class_path']!r} (have "
                                 f"{sorted(_CLASSES)})")
            args = dict(config[part].get("init_args", {}))
            if name == "EncodecFeatures":
                args.setdefault("n_q", _encodec_n_q(args.get("bandwidths", [1.5, 3.0, 6.0, 12.0])))
            parts[part] = _CLASSES[name](**args)
        self.feature_extractor, self.backbone, self.head = (parts["feature_extractor"], parts["backbone"],
                                                            parts["head"])

    @property
    def sample_rate(self) -> int:
        fe = self.config["feature_extractor"].get("init_args", {})
        return int(fe.get("sample_rate", 24000))

    @property
    def hop_length(self) -> int:
        return self.head.istft.hop_length

    @property
    def is_codec(self) -> bool:
        return isinstance(self.feature_extractor, CodecFeatures)

    def decode(self, features: torch.Tensor, bandwidth_id: int | None = None,
               frames: torch.Tensor | None = None) -> torch.Tensor:
        """Features [B, C, T] → waveform [B, samples]. With `frames` [B] (row b's frames, the rest padding)
        each row is synthesized as it would be alone; `waveform_lengths` says where each row ends."""
        cond = None
        if self.backbone.adanorm:
            if bandwidth_id is None:
                raise ValueError("this Vocos is conditioned on the EnCodec bandwidth: give bandwidth_id")
            cond = torch.tensor([bandwidth_id], device=features.device)
        mask = None
        if frames is not None:
            frames = frames.to(features.device)
            mask = (torch.arange(features.shape[-1], device=features.device) < frames[:, None])[:, None]
        return self.head(self.backbone(features, cond, mask), frames)

    def waveform_lengths(self, frames: torch.Tensor) -> torch.Tensor:
        """Samples `decode` gives for rows of `frames` frames ((frames − 1)·hop for 'center', frames·hop
        for 'same' padding)."""
        return (frames - int(self.head.istft.padding == "center")) * self.hop_length

    def decode_batch(self, features: list[torch.Tensor],
                     bandwidth_id: int | None = None) -> list[torch.Tensor]:
        """Several utterances' features [C, T_i] in one padded batch → each one's waveform, as alone."""
        frames = torch.tensor([f.shape[-1] for f in features])
        padded = nn.utils.rnn.pad_sequence([f.transpose(0, 1) for f in features], batch_first=True)
        uneven = bool((frames != frames[0]).any())  # equal rows need no mask: the plain (alone) path
        out = self.decode(padded.transpose(1, 2), bandwidth_id, frames if uneven else None)
        return [row[:n] for row, n in zip(out, self.waveform_lengths(frames).tolist())]

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        """Copy synthesis from audio (mel variant)."""
        return self.decode(self.feature_extractor(audio))

    def codes_to_audio(self, codes: torch.Tensor, bandwidth_id: int | None = None) -> torch.Tensor:
        """EnCodec codes [n_q, B, frames] → waveform [B, frames × hop]; the bandwidth id defaults to the
        one whose codebook count matches."""
        if not self.is_codec:
            raise ValueError("this Vocos takes mel features, not codec tokens")
        if bandwidth_id is None:
            bandwidth_id = self.bandwidth_id(len(codes))
        return self.decode(self.feature_extractor(codes), bandwidth_id)

    def bandwidth_id(self, n_q: int) -> int | None:
        """The EnCodec bandwidth id whose codebook count is `n_q` (None for a Vocos not conditioned on it)."""
        if not self.backbone.adanorm:
            return None
        counts = [_encodec_n_q([b]) for b in self.feature_extractor.bandwidths]
        if n_q not in counts:
            raise ValueError(f"{n_q} codebooks; this Vocos was trained on {counts}")
        return counts.index(n_q)

    def save_pretrained(self, directory: str | Path) -> None:
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        (d / "config.yaml").write_text(yaml.safe_dump(self.config, sort_keys=False))
        torch.save(self.state_dict(), d / "pytorch_model.bin")

    @classmethod
    def from_pretrained(cls, ref: str | Path, device: str | torch.device = "cpu") -> "Vocos":
        """A local directory or a hub id holding config.yaml + pytorch_model.bin (the original layout)."""
        from speechtok.hub import check_model_ref

        d = Path(check_model_ref(ref))
        if d.is_dir():
            config_path, weights_path = d / "config.yaml", d / "pytorch_model.bin"
        else:
            from huggingface_hub import hf_hub_download

            config_path = hf_hub_download(str(ref), "config.yaml")
            weights_path = hf_hub_download(str(ref), "pytorch_model.bin")
        model = cls(yaml.safe_load(Path(config_path).read_text()))
        state = load_weights(weights_path)
        # the original EncodecFeatures also holds the whole encodec encoder; tokens come from our Codec
        # instead
        state = {k: v for k, v in state.items() if not k.startswith("feature_extractor.encodec.")}
        model.load_state_dict(state)
        return model.to(device).eval()


def _encodec_n_q(bandwidths) -> int:
    """Codebooks EnCodec 24 kHz uses at the largest bandwidth (75 Hz × 10 bits = 0.75 kbps each)."""
    return int(round(max(bandwidths) * 1000 / 750))
