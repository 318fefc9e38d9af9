"""The compute precision a vocoder synthesizes in: `fp32` (exact float32, the default), `tf32` (CUDA matmuls
and convolutions on tensor cores with float32 storage) or `bf16` (autocast). One context for every vocoder,
entered around the call, so the models themselves stay plain float32."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

VOCODER_PRECISIONS = ("fp32", "tf32", "bf16")


def check_vocoder_precision(precision: str, device: torch.device) -> None:
    """A precision this device runs: one error naming it otherwise (tf32 exists on CUDA only)."""
    if precision not in VOCODER_PRECISIONS:
        raise ValueError(f"vocoder precision {precision!r}: choose one of {', '.join(VOCODER_PRECISIONS)}")
    if precision == "tf32" and torch.device(device).type != "cuda":
        raise ValueError(f"vocoder precision tf32 needs a CUDA device, not {torch.device(device).type}")


@contextmanager
def vocoder_precision(precision: str, device: torch.device) -> Iterator[None]:
    """Run the block in `precision`; TF32 switches are restored after it (callers take `.float()` outputs)."""
    device = torch.device(device)
    check_vocoder_precision(precision, device)
    if precision == "fp32":
        yield
    elif precision == "bf16":
        with torch.autocast(device.type, dtype=torch.bfloat16):
            yield
    else:
        saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        try:
            yield
        finally:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
