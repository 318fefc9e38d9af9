"""The feature-extractor interface semantic tokenizers cluster, and `build_features`, which makes one
from the `features` card stored in a tokenizer directory."""

from __future__ import annotations

import torch
from torch import nn


class FeatureExtractor(nn.Module):
    """Waveforms [B, T] (zero-padded, float32, at `sample_rate`) with their lengths → frame features
    [B, F, dim] and frame counts. A frame's features must not depend on the padding or on the other
    utterances of the batch."""

    sample_rate: int
    dim: int

    @property
    def frame_rate(self) -> float:
        raise NotImplementedError

    def num_frames(self, num_samples: torch.Tensor) -> torch.Tensor:
        """Frames produced for utterances of `num_samples` samples (0 when shorter than one frame)."""
        raise NotImplementedError

    def card(self) -> dict:
        """What `build_features` needs to rebuild this extractor, plus checksums."""
        raise NotImplementedError

    def forward(self, wav: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError


def conv_output_length(n: torch.Tensor, kernel: int, stride: int) -> torch.Tensor:
    """Output length of an unpadded 1-d convolution (or framing) over `n` samples."""
    return torch.clamp(torch.div(n - kernel, stride, rounding_mode="floor") + 1, min=0)


def length_mask(lengths: torch.Tensor, size: int) -> torch.Tensor:
    """[B, size] bool, True where the position is inside the utterance."""
    return torch.arange(size, device=lengths.device)[None, :] < lengths[:, None]


def parse_model_spec(model: str, layer: int | None) -> dict:
    """The CLI's `--model` (`mfcc`, `logmel`, or a transformers checkpoint: hub id or local directory)
    and `--layer` → a features card."""
    if model in ("mfcc", "logmel"):
        return {"kind": model}
    if layer is None:
        raise ValueError(f"--layer is required for the self-supervised model '{model}'")
    return {"kind": "ssl", "model": model, "layer": int(layer)}


def determinism_key(device: torch.device, precision: str, batch_invariant: bool) -> dict:
    """The settings that decide tokens bit for bit besides weights and audio: the device kind and the CPU's
    kernel family, precision, torch version, and (unless every utterance is encoded alone) the batch plan."""
    kernels = (torch.backends.cpu.get_cpu_capability() if device.type == "cpu"
               else torch.cuda.get_device_name(device) if device.type == "cuda" else device.type)
    return {"device": device.type, "kernels": kernels, "precision": precision, "torch": torch.__version__,
            "batch_invariant": batch_invariant, "depends_on_batch_plan": not batch_invariant}


def build_features(spec: dict, device: str | torch.device = "cpu",
                   precision: str = "fp32") -> FeatureExtractor:
    """A feature extractor from its card."""
    kind = spec.get("kind")
    if kind in ("mfcc", "logmel") and "win_length" in spec and spec.get("window") != "povey":
        raise ValueError(f"this {kind} tokenizer was made before speechtok's {kind} became Kaldi-compatible "
                         "(Povey window, mel-scale filters, lifter): its centroids do not fit; "
                         "re-run train-kmeans")
    if kind == "mfcc":
        from speechtok.tokenizers.spectral import MFCC

        return MFCC(**{k: v for k, v in spec.items() if k in MFCC.OPTIONS}).to(device)
    if kind == "logmel":
        from speechtok.tokenizers.spectral import LogMel

        return LogMel(**{k: v for k, v in spec.items() if k in LogMel.OPTIONS}).to(device)
    if kind == "ssl":
        from speechtok.tokenizers.ssl_features import SSLFeatures

        return SSLFeatures(spec["model"], spec["layer"], device=device, precision=precision,
                           revision=spec.get("revision"), normalize=spec.get("normalize"))
    raise ValueError(f"unknown feature kind {kind!r} (expected 'ssl', 'mfcc' or 'logmel')")
