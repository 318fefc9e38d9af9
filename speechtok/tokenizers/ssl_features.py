"""Hidden states of a self-supervised speech model (HuBERT, WavLM, wav2vec2 in `transformers`), cut at a
layer: layers above it are dropped, so never computed.

Batching must not change an utterance's features. Two things in these models see across time: the
padding (handled by the attention mask) and, in the *-base models, a GroupNorm over time after the first
convolution (transformers issue #21534). We replace that one normalisation by the same statistics taken
over each utterance's own frames, so a padded batch gives the features of each utterance alone."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import torch
from torch import nn

from speechtok.hub import check_model_ref
from speechtok.shards import sha256_of
from speechtok.tokenizers.features import FeatureExtractor, conv_output_length, length_mask

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class MaskedConvFeatureEncoder(nn.Module):
    """The model's convolutional feature encoder, with the first layer's GroupNorm computed per
    utterance over its valid frames only. The caller sets `lengths` (samples, on the model's device) and
    `padded` (whether any row is shorter than the input: known on the host, so no device sync) before
    each forward; `padded` None: worked out from `lengths` (a sync)."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.conv_layers = encoder.conv_layers
        self.lengths: torch.Tensor | None = None
        self.padded: bool | None = None

    def forward(self, input_values: torch.Tensor) -> torch.Tensor:
        h = input_values[:, None]
        lengths = self.lengths
        padded = lengths is not None and (self.padded if self.padded is not None
                                          else bool((lengths < input_values.shape[-1]).any()))
        for i, layer in enumerate(self.conv_layers):
            norm = getattr(layer, "layer_norm", None)
            if i == 0 and isinstance(norm, nn.GroupNorm) and padded:
                h = layer.activation(self._masked_group_norm(layer.conv(h), norm, layer.conv))
            else:
                h = layer(h)
        return h

    def _masked_group_norm(self, h: torch.Tensor, norm: nn.GroupNorm, conv: nn.Conv1d) -> torch.Tensor:
        """Per-channel statistics over each utterance's valid frames, then one fused scale-and-shift pass.
        fp32 input: sums as batched mat-vec products, all in fp32. bf16 input (autocast): the masked
        values and their squares stay bf16, their sums accumulate in fp32, and the scale-and-shift pass
        writes bf16 — half the memory traffic over [B, 512, 3,200 per second]."""
        n = conv_output_length(self.lengths, conv.kernel_size[0], conv.stride[0])
        mask = length_mask(n, h.shape[-1])
        count = torch.clamp(n, min=1).float()[:, None, None]
        dtype = h.dtype
        if dtype == torch.bfloat16:
            hm = h * mask[:, None, :].to(h.dtype)
            mean = hm.sum(-1, keepdim=True, dtype=torch.float32) / count  # [B, C, 1]
            square = (hm * hm).sum(-1, keepdim=True, dtype=torch.float32) / count
        else:
            hf, maskf = h.float(), mask.float()[:, :, None]  # [B, T, 1]
            mean = torch.bmm(hf, maskf) / count
            square = torch.bmm(hf * hf, maskf) / count
            h = hf
        var = torch.clamp(square - mean * mean, min=0)
        scale = torch.rsqrt(var + norm.eps) * norm.weight.float()[None, :, None]
        shift = norm.bias.float()[None, :, None] - mean * scale
        return torch.addcmul(shift.to(h.dtype), h, scale.to(h.dtype)).to(dtype)


def weights_checksum(model_ref: str, revision: str | None = None) -> str | None:
    """sha256 over the checkpoint's weight files (local directory or the local hub cache), or None."""
    files: list[Path] = []
    if os.path.isdir(model_ref):
        root = Path(model_ref)
        files = sorted(p for p in root.iterdir() if p.suffix in (".safetensors", ".bin") and p.is_file())
    else:
        try:
            from huggingface_hub import try_to_load_from_cache

            for name in ("model.safetensors", "pytorch_model.bin"):
                hit = try_to_load_from_cache(model_ref, name, revision=revision)
                if isinstance(hit, str):
                    files = [Path(hit)]
                    break
        except Exception:
            return None
    return sha256_of(*files) if files else None


def preprocessor_normalize(model_ref: str, revision: str | None) -> bool | None:
    """The checkpoint's preprocessor `do_normalize` (zero mean, unit variance per waveform), or None when
    its preprocessor_config.json cannot be found (e.g. absent from an offline cache)."""
    try:
        if os.path.isdir(model_ref):
            path = Path(model_ref) / "preprocessor_config.json"
            return bool(json.loads(path.read_text()).get("do_normalize", False)) if path.exists() else None
        from huggingface_hub import try_to_load_from_cache

        hit = try_to_load_from_cache(model_ref, "preprocessor_config.json", revision=revision)
        if not isinstance(hit, str):
            from transformers import AutoFeatureExtractor

            return bool(getattr(AutoFeatureExtractor.from_pretrained(model_ref, revision=revision),
                                "do_normalize", False))
        return bool(json.loads(Path(hit).read_text()).get("do_normalize", False))
    except Exception:
        return None


def resolve_normalize(model_ref: str, revision: str | None, card_value: bool | None) -> bool:
    """The tokenizer card's `normalize` is the truth: the preprocessor config may only confirm it (a
    disagreement is an error naming both) and is consulted alone only for a new tokenizer."""
    found = preprocessor_normalize(model_ref, revision)
    if card_value is None:
        return bool(found)
    if found is not None and found != bool(card_value):
        raise ValueError(f"{model_ref}: the tokenizer card says normalize={bool(card_value)} but the "
                         f"checkpoint's preprocessor_config.json says do_normalize={found}")
    return bool(card_value)


class SSLFeatures(FeatureExtractor):
    """Layer `layer` (1 = first transformer layer; equals transformers' `hidden_states[layer]`) of a
    HuBERT / WavLM / wav2vec2 checkpoint given as a hub id or a local directory. `normalize` (from a
    tokenizer card) overrides the preprocessor config, which must not contradict it."""

    def __init__(self, model_ref: str, layer: int, device: str | torch.device = "cpu",
                 precision: str = "fp32", revision: str | None = None, normalize: bool | None = None):
        super().__init__()
        from transformers import AutoConfig, AutoModel

        model_ref = check_model_ref(model_ref)
        try:
            config = AutoConfig.from_pretrained(model_ref, revision=revision)
        except Exception as e:
            raise ValueError(f"{model_ref}: cannot load a transformers config "
                             f"({' '.join(str(e).split())[:300]})") from None
        n_layers = config.num_hidden_layers
        if not 1 <= layer <= n_layers:
            raise ValueError(f"{model_ref}: layer must be in 1..{n_layers}, got {layer}")
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
        try:
            model = AutoModel.from_pretrained(model_ref, config=config, revision=revision,
                                              attn_implementation="sdpa")
        except (ValueError, ImportError):
            model = AutoModel.from_pretrained(model_ref, config=config, revision=revision)
        if not (hasattr(model, "feature_extractor") and hasattr(model, "encoder")):
            raise ValueError(f"{model_ref}: {type(model).__name__} is not a wav2vec2-style speech encoder")
        model.encoder.layers = model.encoder.layers[:layer]
        if getattr(config, "do_stable_layer_norm", False):
            # pre-LN ("large") models apply a final LayerNorm after the last layer; fairseq's
            # extract_features(output_layer=L) and transformers' hidden_states[L] do not, for every L
            model.encoder.layer_norm = nn.Identity()
        model.feature_extractor = MaskedConvFeatureEncoder(model.feature_extractor)
        for attr in ("masked_spec_embed",):  # training-only parameters
            if hasattr(model, attr):
                setattr(model, attr, None)
        self.model = model.eval().requires_grad_(False).to(device)
        self.model_ref, self.layer, self.revision = model_ref, layer, revision
        self.model_type = config.model_type
        self.precision = precision
        self.sample_rate = 16000
        self.dim = config.hidden_size
        self.convs = list(zip(config.conv_kernel, config.conv_stride))
        self.normalize = resolve_normalize(model_ref, revision, normalize)
        self.min_samples = 1
        for k, s in reversed(self.convs):
            self.min_samples = (self.min_samples - 1) * s + k
        self._checksum: str | None = None

    @property
    def hop(self) -> int:
        hop = 1
        for _, s in self.convs:
            hop *= s
        return hop

    @property
    def frame_rate(self) -> float:
        return self.sample_rate / self.hop

    def num_frames(self, num_samples: torch.Tensor) -> torch.Tensor:
        n = torch.as_tensor(num_samples)
        for k, s in self.convs:
            n = conv_output_length(n, k, s)
        return n

    def card(self) -> dict:
        if self._checksum is None:
            self._checksum = weights_checksum(self.model_ref, self.revision) or ""
        card = {"kind": "ssl", "model": self.model_ref, "model_type": self.model_type, "layer": self.layer,
                "normalize": self.normalize, "weights_sha256": self._checksum or None}
        if self.revision:
            card["revision"] = self.revision
        return card

    @torch.inference_mode()
    def forward(self, wav: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        device = next(self.model.parameters()).device
        width = max(wav.shape[1], self.min_samples)
        padded = bool((lengths < width).any()) if lengths.device.type == "cpu" else None  # on the host: free
        wav, lengths = wav.to(device, non_blocking=True).float(), lengths.to(device, non_blocking=True)
        if wav.shape[1] < width:
            wav = nn.functional.pad(wav, (0, width - wav.shape[1]))
        mask = length_mask(lengths, wav.shape[1])
        wav = wav * mask
        if self.normalize:
            count = torch.clamp(lengths, min=1)[:, None].float()
            mean = wav.sum(1, keepdim=True) / count
            var = (((wav - mean) * mask) ** 2).sum(1, keepdim=True) / count
            wav = (wav - mean) * torch.rsqrt(var + 1e-7) * mask
        self.model.feature_extractor.lengths = lengths
        self.model.feature_extractor.padded = padded
        dtype = PRECISIONS[self.precision]
        with torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else contextlib.nullcontext():
            # no padding (known on the host): no mask, so transformers skips its mask and the device sync
            # in checking it (`padding_mask.all()`); the result is the same
            hidden = self.model(wav,
                                attention_mask=None if padded is False else mask.long()).last_hidden_state
        n = self.num_frames(lengths)
        hidden = hidden.float()
        return hidden * length_mask(n, hidden.shape[1])[..., None], n
