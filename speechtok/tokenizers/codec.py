"""`Codec`: neural RVQ codecs — EnCodec, DAC, Mimi from `transformers` (hub id or local directory) —
behind one interface: waveforms with lengths → codes [B, n_q, F] with frame counts, and back.

Batch exactness: every row of a padded batch gets the codes transformers gives that utterance alone.
transformers' EnCodec and Mimi convolutions pad the right end of their input up to a whole stride (EnCodec
reflects, Mimi pads zeros, Mimi's downsampling repeats the last value), from the batch's length; DAC's pad
zeros on both sides. `_AlonePadding` writes each row's own padding before every convolution instead.
Long inputs are encoded in chunks with context, in bounded memory (see `encode_long`), whatever the batch.
Padding never reaches a row, but batched float rounding (EnCodec's LSTM, Mimi's attention) differs from a
batch of one by ~1e-7 and can flip a near-tie code; `batch_invariant=True` encodes every row alone."""

from __future__ import annotations

import contextlib
import math

import numpy as np
import torch

from torch import nn

from speechtok.hub import check_model_ref
from speechtok.tokenizers.features import determinism_key, length_mask
from speechtok.tokenizers.spec import KINDS
from speechtok.tokenizers.ssl_features import PRECISIONS, weights_checksum


def conv_output_length(n: torch.Tensor, conv: nn.Conv1d) -> torch.Tensor:
    """Output length of `conv` (with its own zero padding) over inputs of `n` samples."""
    k, s, p, d = conv.kernel_size[0], conv.stride[0], conv.padding[0], conv.dilation[0]
    return torch.clamp(torch.div(n + 2 * p - d * (k - 1) - 1, s, rounding_mode="floor") + 1, min=0)


PAD_MODES = ("constant", "reflect", "replicate")  # the pads of transformers' conv wrappers emulated per row


def _write_tails(x: torch.Tensor, lengths: torch.Tensor, left: int, right: torch.Tensor, mode: str,
                 reach: int) -> None:
    """In place, x [B, C, T]: positions [L_i, L_i + reach) of row i get what transformers'
    `_pad1d(x_i[:L_i], (left, right[i]), mode)` puts there for that row alone (`reach` ≥ every position a
    valid output reads past L_i; positions beyond are never read for valid outputs and stay as they are).
    `_pad1d` reflects a row no longer than its largest pad after extending it with zeros, hence M below.
    Only B × C × reach values are written, not the whole activation."""
    if reach <= 0:
        return
    width = x.shape[-1]
    n, r = lengths[:, None], right[:, None]
    q = torch.clamp(n + torch.arange(reach, device=x.device)[None], max=width - 1)  # clamped: same values
    if mode == "reflect":
        m = torch.maximum(n, torch.clamp(r, min=left) + 1)
        src = torch.where(q < m, q, 2 * (m - 1) - q)
        keep = (src < n) & (q < n + r)
    elif mode == "replicate":
        src, keep = torch.minimum(q, n - 1), q < n + r
    else:
        src, keep = q, q < n
    index = q[:, None, :].expand(x.shape[0], x.shape[1], reach)
    values = torch.gather(x, 2, src.clamp(0, width - 1)[:, None, :].expand_as(index))
    x.scatter_(2, index, torch.where(keep[:, None, :], values, torch.zeros((), dtype=x.dtype,
                                                                           device=x.device)))


class _AlonePadding:
    """Forward hooks that give every row of a padded batch what transformers computes for that row alone.
    EnCodec's and Mimi's conv wrappers pad the right end up to a whole stride, computed from the *batch's*
    length (reflect / replicate / zeros), and DAC's plain convolutions pad zeros on both sides; so without
    this the last frames of a shorter row, and all frames of a very short one, would see the padding.
    Before each convolution, just past each row's valid length (only as far as a valid output reads) this
    writes in place what that row's own padding holds (for a wrapper, its input also grows to a whole
    stride, so that the batch's own right padding is empty: never, when the batch width is a multiple of
    the hop); valid lengths are tracked per padded length, and transposed convolutions map L → L × stride.
    Everything past that stays junk that no valid output reads (EnCodec's LSTM and Mimi's attention are
    causal)."""

    WRAPPERS = ("EncodecConv1d", "MimiConv1d")
    TRANSPOSED = ("EncodecConvTranspose1d", "MimiConvTranspose1d")

    def __init__(self, modules: list[nn.Module], wrapped: bool):
        self.valid: dict[int, torch.Tensor] = {}
        self.handles = []
        for module in modules:
            for m in module.modules():
                name = type(m).__name__
                if wrapped and name in self.WRAPPERS:
                    self.handles.append(m.register_forward_pre_hook(self.pad_wrapped))
                elif wrapped and name in self.TRANSPOSED:
                    self.handles.append(m.register_forward_hook(self.transposed))
                elif not wrapped and isinstance(m, nn.Conv1d):
                    self.handles.append(m.register_forward_pre_hook(self.zero_padded))

    def pad_wrapped(self, m: nn.Module, args):
        x = args[0]
        lengths = self.valid.get(x.shape[-1])
        if lengths is None:
            return None
        s, k = int(m.stride), int(m.kernel_size)
        width = -(-x.shape[-1] // s) * s  # the same as x's when the batch width is aligned to the hop
        if width != x.shape[-1]:
            x = nn.functional.pad(x, (0, width - x.shape[-1]))
        out_len = torch.div(lengths + s - 1, s, rounding_mode="floor")
        self.valid.setdefault(width // s, out_len)
        # a valid output reads up to L + right − 1 and, for a row shorter than its pads, zeros up to M < L + k
        _write_tails(x, lengths, k - s, out_len * s - lengths, m.pad_mode,
                     k if m.pad_mode == "reflect" else s - 1)
        return (x, *args[1:])

    def transposed(self, m: nn.Module, args, output):
        lengths = self.valid.get(args[0].shape[-1])
        if lengths is not None:
            self.valid.setdefault(output.shape[-1], lengths * m.conv.stride[0])

    def zero_padded(self, conv: nn.Conv1d, args):
        x = args[0]
        lengths = self.valid.get(x.shape[-1])
        if lengths is None:
            return None
        size = int(conv_output_length(torch.tensor(x.shape[-1]), conv))
        self.valid.setdefault(size, conv_output_length(lengths, conv))
        # a valid output reads at most `padding` positions past L: only those are zeroed
        _write_tails(x, lengths, 0, torch.zeros_like(lengths), "constant", conv.padding[0])
        return (x, *args[1:])

    def __call__(self, lengths: torch.Tensor, size: int) -> "_AlonePadding":
        self.start = {size: lengths}
        return self

    def __enter__(self):
        self.valid = dict(self.start)

    def __exit__(self, *exc):
        self.valid = {}


def encodec_codebooks(cfg, kbps: float) -> int:
    """The codebooks transformers' EnCodec uses at `kbps` (its `get_num_quantizers_for_bandwidth`:
    floor(kbps × 1000 / (log2(codebook size) × frame rate)), at least 1; the RVQ has `num_quantizers`)."""
    per_codebook = math.log2(cfg.codebook_size) * cfg.frame_rate
    return min(cfg.num_quantizers, max(1, math.floor(kbps * 1000 / per_codebook)))


def encodec_bandwidths(cfg) -> dict[int, float]:
    """{codebooks: kbps} over the config's `target_bandwidths` (the lowest kbps per codebook count): the one
    table both nq= and bandwidth= are checked against, and that a refusal offers."""
    out: dict[int, float] = {}
    for kbps in sorted(cfg.target_bandwidths):
        out.setdefault(encodec_codebooks(cfg, kbps), kbps)
    return out


def codebook_choice(kind: str, cfg, model_ref: str, n_q: int | None,
                    bandwidth: float | None) -> tuple[int, float | None]:
    """(codebooks, EnCodec bandwidth or None) for a spec's nq= / bandwidth=, checked against the config
    before any weights load; a refusal lists the valid choices."""
    if kind != "encodec":
        if bandwidth is not None:
            raise ValueError(f"{kind}: choose the number of codebooks with nq=, not bandwidth=")
        total = cfg.n_codebooks if kind == "dac" else cfg.num_quantizers
        n_q = total if n_q is None else n_q
        if not 1 <= n_q <= total:
            raise ValueError(f"{model_ref}: nq must be in 1..{total}, got {n_q}")
        return n_q, None
    choices = encodec_bandwidths(cfg)
    offer = ", ".join(f"nq={q} ({b:g} kbps)" for q, b in choices.items())
    if bandwidth is not None:
        match = [b for b in cfg.target_bandwidths if abs(b - bandwidth) < 1e-6]
        if not match:
            raise ValueError(f"{model_ref}: EnCodec supports {offer}; asked for bandwidth={bandwidth:g}")
        q = encodec_codebooks(cfg, match[0])
        if n_q is not None and n_q != q:
            raise ValueError(f"{model_ref}: bandwidth={bandwidth:g} gives nq={q}, not nq={n_q} "
                             f"(EnCodec supports {offer})")
        return q, match[0]
    if n_q is None:
        n_q = max(choices)
    if n_q not in choices:
        raise ValueError(f"{model_ref}: EnCodec supports {offer}; asked for nq={n_q}")
    return n_q, choices[n_q]


class Codec(nn.Module):
    """A neural audio codec from `transformers`, with `n_q` codebooks."""

    kind = "codec"

    def __init__(self, kind: str, model_ref: str, n_q: int | None = None, bandwidth: float | None = None,
                 name: str | None = None, device: str | torch.device = "cpu", precision: str = "fp32",
                 chunk_seconds: float = 60.0, context_seconds: float = 5.0, batch_invariant: bool = False):
        super().__init__()
        from transformers import AutoConfig, AutoModel

        if kind not in KINDS:
            raise ValueError(f"unknown codec kind {kind!r} ({', '.join(KINDS)})")
        model_ref = check_model_ref(model_ref)
        def cannot_load(e: Exception) -> ValueError:
            return ValueError(f"{model_ref}: cannot load a {KINDS[kind]} ({' '.join(str(e).split())[:300]})")

        try:
            cfg = AutoConfig.from_pretrained(model_ref)
        except Exception as e:
            raise cannot_load(e) from None
        if cfg.model_type != kind:
            raise ValueError(f"{model_ref}: is a {cfg.model_type} model, not a {KINDS[kind]}")
        self.n_q, self.bandwidth = codebook_choice(kind, cfg, model_ref, n_q, bandwidth)
        if kind == "encodec" and cfg.audio_channels != 1:
            raise ValueError(f"{model_ref}: only mono EnCodec models are supported (this one has "
                             f"{cfg.audio_channels} channels)")
        try:
            model = AutoModel.from_pretrained(model_ref)
        except Exception as e:
            raise cannot_load(e) from None
        if type(model).__name__ != KINDS[kind]:
            raise ValueError(f"{model_ref}: is a {type(model).__name__}, not a {KINDS[kind]}")
        self.model = model.eval().requires_grad_(False).to(device)
        self.codec_kind, self.model_ref, self.name = kind, model_ref, name or kind
        self.precision = precision
        self.sample_rate = int(cfg.sampling_rate)
        self.codebook_size = int(cfg.codebook_size)
        if kind == "dac":
            self.hop = int(cfg.hop_length)
            self.causal = False
        else:
            self.hop = int(np.prod(cfg.upsampling_ratios) if kind == "encodec"
                           else round(self.sample_rate / cfg.frame_rate))
            self.causal = bool(cfg.use_causal_conv) and cfg.pad_mode in PAD_MODES
            if kind == "encodec":  # chunked or normalised (48 kHz) and GroupNorm EnCodecs see the whole input
                self.causal &= (cfg.chunk_length is None and not cfg.normalize
                                and cfg.norm_type == "weight_norm")
        # rows of a batch are encoded as if alone (DAC: zeros past each row; causal: each row's own pads);
        # other codecs encode and decode one row at a time
        self.batched = kind == "dac" or self.causal
        self._alone = None
        if kind == "dac":
            self._alone = _AlonePadding([self.model.encoder], wrapped=False)
        elif self.causal:
            self._alone = _AlonePadding([self.model.encoder], wrapped=True)
        self._alone_decoder = (_AlonePadding([self.model.decoder], wrapped=True)
                               if self.causal and cfg.trim_right_ratio == 1.0 else None)
        self.chunk_samples = int(chunk_seconds * self.sample_rate) // self.hop * self.hop
        self.context_samples = int(context_seconds * self.sample_rate) // self.hop * self.hop
        self.batch_invariant = batch_invariant
        self._checksum: str | None = None

    def determinism_key(self) -> dict:
        """What, besides the weights and the audio, decides the codes bit for bit. Batched kernels (the LSTM's
        and attention's GEMMs, convolutions) round differently for other batch shapes, thread counts and CPU
        or GPU kernels, and a near-tie between two codebook entries can flip (BENCHMARKS.md
        "batch-invariance" measures how often): without `batch_invariant` the batch plan matters too."""
        return determinism_key(self.device, self.precision, self.batch_invariant)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def frame_rate(self) -> float:
        return self.sample_rate / self.hop

    def num_frames(self, num_samples) -> torch.Tensor:
        """Frames for `num_samples` samples: ceil(n / hop) for EnCodec and Mimi (the last frame is
        padded); for DAC, its unpadded conv arithmetic (about n / hop, rounded down)."""
        n = torch.as_tensor(num_samples)
        if self.codec_kind != "dac":
            return torch.div(n + self.hop - 1, self.hop, rounding_mode="floor")
        for m in self.model.encoder.modules():
            if isinstance(m, nn.Conv1d):
                n = conv_output_length(n, m)
        return n

    def card(self) -> dict:
        if self._checksum is None:
            self._checksum = weights_checksum(self.model_ref) or ""
        card = {"type": "codec", "kind": self.codec_kind, "model": self.model_ref, "n_q": self.n_q,
                "codebook_size": self.codebook_size, "sample_rate": self.sample_rate,
                "frame_rate": self.frame_rate,
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
        """Codes [B, n_q, F] of a padded batch; with `batched`, each row's as if encoded alone."""
        # width aligned to the hop: every strided
        if self.causal and self._alone is not None and len(wav) > 1:
            wav = nn.functional.pad(wav, (0, -wav.shape[1] % self.hop))  # conv divides it, nothing regrows
        x = wav[:, None]
        dtype = PRECISIONS[self.precision]
        ragged = self._alone is not None and bool((lengths != wav.shape[1]).any())  # else: already as alone
        with torch.autocast(self.device.type, dtype=dtype, enabled=dtype != torch.float32), \
                (self._alone(lengths, wav.shape[1]) if ragged else contextlib.nullcontext()):
            if self.codec_kind == "encodec":
                mask = length_mask(lengths, wav.shape[1])[:, None]
                return self.model.encode(x, padding_mask=mask, bandwidth=self.bandwidth).audio_codes[0]
            if self.codec_kind == "dac":
                return self.model.encode(x, n_quantizers=self.n_q).audio_codes[:, : self.n_q]
            return self.model.encode(x, num_quantizers=self.n_q).audio_codes

    @torch.inference_mode()
    def encode(self, wav: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Padded waveforms [B, T] at `sample_rate` → codes [B, n_q, F] (int64; zero past each row's
        frame count) and frame counts [B]. Each row's codes are those transformers gives it alone
        (rows longer than `chunk_samples + context_samples`: `encode_long`'s), whatever the batch."""
        wav = wav.to(self.device, non_blocking=True).float()
        lengths = lengths.to(self.device)
        wav = wav * length_mask(lengths, wav.shape[1])
        n = self.num_frames(lengths)
        codes = torch.zeros(len(wav), self.n_q, int(n.max()), dtype=torch.long, device=self.device)
        sizes = lengths.tolist()
        long = [i for i, size in enumerate(sizes) if size > self.chunk_samples + self.context_samples]
        short = [i for i in range(len(sizes)) if i not in long]
        batched = self.batched and not self.batch_invariant  # batch-invariant: every row alone, unpadded
        groups = [short] if batched and short else [[i] for i in short]
        for i in long:
            codes[i, :, : int(n[i])] = self.encode_long(wav[i, : sizes[i]])
        for rows in groups:
            idx = torch.tensor(rows, device=self.device)
            size = max(sizes[i] for i in rows)
            out = self._encode_padded(wav[idx, :size], lengths[idx]).long()
            codes[idx, :, : out.shape[-1]] = out[..., : codes.shape[-1]]
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
    def decode(self, codes: torch.Tensor,
               frames: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Codes [B, n_q, F] (with valid frame counts) → waveforms [B, T] and sample counts, exactly
        frames × hop for every codec (DAC's decoder gives a few samples less for odd strides: zeros are
        appended). Each row is decoded as if alone (causal decoders: batched with each row's own pads)."""
        codes = codes.to(self.device).long()
        if frames is None:
            frames = torch.full((len(codes),), codes.shape[-1], dtype=torch.long)
        frames = frames.to(self.device)
        samples = frames * self.hop
        wav = torch.zeros(len(codes), int(samples.max()), device=self.device)
        if self._alone_decoder is not None:
            with self._alone_decoder(frames, codes.shape[-1]):
                rows = list(self._decode(codes))
        else:
            rows = [self._decode(codes[i: i + 1, :, : int(frames[i])])[0] for i in range(len(codes))]
        for i, r in enumerate(rows):
            r = r[: int(samples[i])]
            wav[i, : len(r)] = r
        return wav, samples

    def _decode(self, codes: torch.Tensor) -> torch.Tensor:
        if self.codec_kind == "encodec":
            return self.model.decode(codes[None], [None]).audio_values[:, 0]
        if self.codec_kind == "dac":
            return self.model.decode(audio_codes=codes).audio_values
        return self.model.decode(codes).audio_values[:, 0]
