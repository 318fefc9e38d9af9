"""`Codec`: neural RVQ codecs — EnCodec, DAC, Mimi from `transformers` (hub id or local directory) —
behind one interface: waveforms with lengths → codes [B, n_q, F] with frame counts, and back.

Batch exactness: EnCodec (24 kHz) and Mimi are causal, so zero padding after an utterance never reaches its
frames. DAC's convolutions look both ways, so every encoder convolution's output is zeroed past each
utterance's valid length (its Snake activations map 0 to 0), which reproduces the utterance alone.
Long inputs are encoded in chunks with context, in bounded memory (see `encode_long`)."""

from __future__ import annotations

import math

import numpy as np
import torch

from torch import nn

from speechtok.hub import check_model_ref
from speechtok.tokenizers.features import length_mask
from speechtok.tokenizers.ssl_features import PRECISIONS, weights_checksum

KINDS = {"encodec": "EncodecModel", "dac": "DacModel", "mimi": "MimiModel"}


def parse_codec_spec(spec: str) -> dict:
    """'encodec:facebook/encodec_24khz:nq=8' → {'kind', 'model', 'n_q'?, 'bandwidth'?, 'name'?}."""
    kind, _, rest = spec.partition(":")
    if kind not in KINDS or not rest:
        raise ValueError(f"{spec!r}: expected KIND:MODEL[:nq=N][:name=NAME] with KIND one of {', '.join(KINDS)}")
    parts = rest.split(":")
    options = {}
    while len(parts) > 1 and "=" in parts[-1]:
        key, _, value = parts.pop().partition("=")
        options[key] = value
    out = {"kind": kind, "model": ":".join(parts)}
    for key, value in options.items():
        if key == "nq":
            out["n_q"] = int(value)
        elif key == "bandwidth":
            out["bandwidth"] = float(value)
        elif key == "name":
            out["name"] = value
        else:
            raise ValueError(f"{spec!r}: unknown option {key!r} (nq, bandwidth, name)")
    return out


class _ConvMask:
    """Forward hooks that zero each Conv1d output past the valid length of every batch row. Valid lengths
    are tracked by padded length: a stride >1 changes it, a stride-1 'same' conv keeps it."""

    def __init__(self, module: nn.Module):
        self.valid: dict[int, torch.Tensor] = {}
        self.handles = [m.register_forward_hook(self.hook) for m in module.modules() if isinstance(m, nn.Conv1d)]

    def hook(self, conv: nn.Conv1d, inputs, output):
        t_in, t_out = inputs[0].shape[-1], output.shape[-1]
        lengths = self.valid.get(t_in)
        if lengths is None:
            return output
        k, s, p, d = conv.kernel_size[0], conv.stride[0], conv.padding[0], conv.dilation[0]
        out_len = torch.clamp(torch.div(lengths + 2 * p - d * (k - 1) - 1, s, rounding_mode="floor") + 1, min=0)
        out_len = torch.minimum(out_len, torch.full_like(out_len, t_out))
        self.valid.setdefault(t_out, out_len)
        return output * length_mask(out_len, t_out)[:, None, :].to(output.dtype)


class Codec(nn.Module):
    """A neural audio codec from `transformers`, with `n_q` codebooks."""

    kind = "codec"

    def __init__(self, kind: str, model_ref: str, n_q: int | None = None, bandwidth: float | None = None,
                 name: str | None = None, device: str | torch.device = "cpu", precision: str = "fp32",
                 chunk_seconds: float = 60.0, context_seconds: float = 5.0):
        super().__init__()
        from transformers import AutoModel

        if kind not in KINDS:
            raise ValueError(f"unknown codec kind {kind!r} ({', '.join(KINDS)})")
        model_ref = check_model_ref(model_ref)
        try:
            model = AutoModel.from_pretrained(model_ref)
        except Exception as e:
            raise ValueError(f"{model_ref}: cannot load a {KINDS[kind]} ({' '.join(str(e).split())[:300]})") from None
        if type(model).__name__ != KINDS[kind]:
            raise ValueError(f"{model_ref}: is a {type(model).__name__}, not a {KINDS[kind]}")
        self.model = model.eval().requires_grad_(False).to(device)
        self.codec_kind, self.model_ref, self.name = kind, model_ref, name or kind
        self.precision = precision
        cfg = model.config
        self.sample_rate = int(cfg.sampling_rate)
        self.codebook_size = int(cfg.codebook_size)
        if kind == "encodec":
            self.hop = int(np.prod(cfg.upsampling_ratios))
            bits = self.sample_rate / self.hop * math.log2(self.codebook_size) / 1000  # kbps per codebook
            if bandwidth is None:
                bandwidth = cfg.target_bandwidths[-1] if n_q is None else n_q * bits
            match = [b for b in cfg.target_bandwidths if abs(b - bandwidth) < 1e-6]
            if not match:
                options = ", ".join(f"nq={round(b / bits)} ({b} kbps)" for b in cfg.target_bandwidths)
                raise ValueError(f"{model_ref}: EnCodec supports {options}; asked for {bandwidth:g} kbps")
            self.bandwidth = match[0]
            self.n_q = round(self.bandwidth / bits)
            self.causal = bool(cfg.use_causal_conv) and cfg.chunk_length is None and not cfg.normalize
            if cfg.audio_channels != 1:
                raise ValueError(f"{model_ref}: only mono EnCodec models are supported (this one has "
                                 f"{cfg.audio_channels} channels)")
        else:
            if bandwidth is not None:
                raise ValueError(f"{kind}: choose the number of codebooks with nq=, not bandwidth=")
            total = cfg.n_codebooks if kind == "dac" else cfg.num_quantizers
            self.n_q = total if n_q is None else n_q
            if not 1 <= self.n_q <= total:
                raise ValueError(f"{model_ref}: nq must be in 1..{total}, got {self.n_q}")
            self.bandwidth = None
            self.hop = int(cfg.hop_length) if kind == "dac" else int(round(self.sample_rate / cfg.frame_rate))
            self.causal = kind == "mimi"
        self._mask = None if self.causal else _ConvMask(self.model.encoder)
        self.chunk_samples = int(chunk_seconds * self.sample_rate) // self.hop * self.hop
        self.context_samples = int(context_seconds * self.sample_rate) // self.hop * self.hop
        self._checksum: str | None = None

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def frame_rate(self) -> float:
        return self.sample_rate / self.hop

    def num_frames(self, num_samples) -> torch.Tensor:
        """Frames for `num_samples` samples: ceil(n / hop) for EnCodec and Mimi (the last frame is
        zero-padded); for DAC, its unpadded conv arithmetic (about n / hop, rounded down)."""
        n = torch.as_tensor(num_samples)
        if self.codec_kind != "dac":
            return torch.div(n + self.hop - 1, self.hop, rounding_mode="floor")
        for m in self.model.encoder.modules():
            if isinstance(m, nn.Conv1d):
                k, s, p, d = m.kernel_size[0], m.stride[0], m.padding[0], m.dilation[0]
                n = torch.clamp(torch.div(n + 2 * p - d * (k - 1) - 1, s, rounding_mode="floor") + 1, min=0)
        return n

    def card(self) -> dict:
        if self._checksum is None:
            self._checksum = weights_checksum(self.model_ref) or ""
        card = {"type": "codec", "kind": self.codec_kind, "model": self.model_ref, "n_q": self.n_q,
                "codebook_size": self.codebook_size, "sample_rate": self.sample_rate, "frame_rate": self.frame_rate,
                "hop_length": self.hop, "weights_sha256": self._checksum or None}
        if self.bandwidth is not None:
            card["bandwidth"] = self.bandwidth
        if self.name != self.codec_kind:
            card["name"] = self.name
        return card

    @classmethod
    def from_card(cls, card: dict, device: str | torch.device = "cpu") -> "Codec":
        return cls(card["kind"], card["model"], n_q=card.get("n_q") if card["kind"] != "encodec" else None,
                   bandwidth=card.get("bandwidth"), name=card.get("name"), device=device)

    def _encode_padded(self, wav: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        x = wav[:, None]
        dtype = PRECISIONS[self.precision]
        with torch.autocast(self.device.type, dtype=dtype, enabled=dtype != torch.float32):
            if self.codec_kind == "encodec":
                mask = length_mask(lengths, wav.shape[1])[:, None]
                return self.model.encode(x, padding_mask=mask, bandwidth=self.bandwidth).audio_codes[0]
            if self.codec_kind == "dac":
                self._mask.valid = {wav.shape[1]: lengths}
                try:
                    return self.model.encode(x, n_quantizers=self.n_q).audio_codes[:, : self.n_q]
                finally:
                    self._mask.valid = {}
            return self.model.encode(x, num_quantizers=self.n_q).audio_codes

    @torch.inference_mode()
    def encode(self, wav: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Padded waveforms [B, T] at `sample_rate` → codes [B, n_q, F] (int64; zero past each row's
        frame count) and frame counts [B]."""
        wav = wav.to(self.device, non_blocking=True).float()
        lengths = lengths.to(self.device)
        wav = wav * length_mask(lengths, wav.shape[1])
        n = self.num_frames(lengths)
        if not self.causal and self.codec_kind == "encodec":  # chunked / normalised EnCodec: one at a time
            rows = [self._encode_padded(wav[i: i + 1, : int(lengths[i])], lengths[i: i + 1])[0] for i in range(len(wav))]
            codes = torch.zeros(len(wav), self.n_q, int(n.max()), dtype=torch.long, device=self.device)
            for i, r in enumerate(rows):
                codes[i, :, : r.shape[-1]] = r[:, : codes.shape[-1]]
        elif len(wav) == 1 and wav.shape[1] > self.chunk_samples + self.context_samples:
            codes = self.encode_long(wav[0, : int(lengths[0])])[None]
        else:
            codes = self._encode_padded(wav, lengths)
        codes = codes[..., : int(n.max())].long()
        return codes * length_mask(n, codes.shape[-1])[:, None, :], n

    def encode_long(self, wav: torch.Tensor) -> torch.Tensor:
        """Codes [n_q, F] of one long waveform, in chunks of `chunk_samples`, each encoded with
        `context_samples` of audio before it (and after it, for non-causal codecs) whose frames are dropped.
        Exact for the convolutions when the context covers their receptive field; EnCodec's LSTM and Mimi's
        attention see only that context (tests measure the agreement)."""
        total = self.num_frames(len(wav))
        out = torch.zeros(self.n_q, int(total), dtype=torch.long, device=self.device)
        right = 0 if self.causal else self.context_samples
        for start in range(0, len(wav), self.chunk_samples):
            a, b = max(0, start - self.context_samples), min(len(wav), start + self.chunk_samples + right)
            seg = wav[a:b]
            codes = self._encode_padded(seg[None], torch.tensor([len(seg)], device=self.device))[0]
            first = (start - a) // self.hop
            count = min(self.chunk_samples // self.hop, int(total) - start // self.hop)
            out[:, start // self.hop: start // self.hop + count] = codes[:, first: first + count]
        return out

    def encode_batch(self, wav: torch.Tensor, lengths: torch.Tensor) -> list[np.ndarray]:
        """The pipeline's interface: one [n_q, F] int64 array per utterance."""
        codes, n = self.encode(wav, lengths)
        codes = codes.cpu().numpy()
        return [codes[i, :, : int(n[i])] for i in range(len(codes))]

    @torch.inference_mode()
    def decode(self, codes: torch.Tensor, frames: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Codes [B, n_q, F] (with valid frame counts) → waveforms [B, T] and sample counts = frames × hop.
        Non-causal decoders (DAC) decode each row alone, so padding cannot reach the valid samples."""
        codes = codes.to(self.device).long()
        if frames is None:
            frames = torch.full((len(codes),), codes.shape[-1], dtype=torch.long)
        frames = frames.to(self.device)
        if self.causal:
            wav = self._decode(codes)
        else:
            rows = [self._decode(codes[i: i + 1, :, : int(frames[i])])[0] for i in range(len(codes))]
            wav = torch.zeros(len(codes), max(len(r) for r in rows), device=self.device)
            for i, r in enumerate(rows):
                wav[i, : len(r)] = r
        samples = torch.minimum(frames * self.hop, torch.full_like(frames, wav.shape[-1]))
        return wav * length_mask(samples, wav.shape[-1]), samples

    def _decode(self, codes: torch.Tensor) -> torch.Tensor:
        if self.codec_kind == "encodec":
            return self.model.decode(codes[None], [None]).audio_values[:, 0]
        if self.codec_kind == "dac":
            return self.model.decode(audio_codes=codes).audio_values
        return self.model.decode(codes).audio_values[:, 0]
