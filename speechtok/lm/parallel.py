"""Process groups and parallelism, applied to a plain Hugging Face model as a separate step."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import nn


def init_distributed(device: str = "auto") -> tuple[int, int, torch.device]:
    """(rank, world size, device); starts the process group under torchrun (NCCL on GPUs, gloo on CPU).
    `device` as `resolve_device` takes it: "auto" and "cuda" are this rank's GPU (LOCAL_RANK)."""
    from speechtok.pipelines.batching import resolve_device

    world = int(os.environ.get("WORLD_SIZE", "1"))
    device = resolve_device(device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                device_id=device if device.type == "cuda" else None)
    return (dist.get_rank() if world > 1 else 0), world, device


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The model's repeated blocks (the classes transformers marks as not to be split across devices)."""
    names = set(getattr(model, "_no_split_modules", None) or [])
    layers = [m for m in model.modules() if type(m).__name__ in names]
    if not layers:
        raise ValueError(f"cannot find the decoder layers of {type(model).__name__}")
    return layers


def parallelize(model: nn.Module, mode: str, world: int, device: torch.device, precision: str,
                compile_layers: bool = False, checkpointing: bool = False) -> nn.Module:
    """Activation checkpointing, per-layer torch.compile, then DDP or FSDP2 (one shard group per layer)."""
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if compile_layers:
        for layer in decoder_layers(model):
            layer.compile()
    mode = ("ddp" if world > 1 else "none") if mode == "auto" else mode
    if world == 1:  # one process: nothing to shard or sync (a run saved under FSDP resumes here too)
        mode = "none"
    if mode == "fsdp":
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16 if precision == "bf16" else torch.float32,
                                  reduce_dtype=torch.float32)
        for layer in decoder_layers(model):
            fully_shard(layer, mp_policy=mp)
        fully_shard(model, mp_policy=mp)
        return model
    if mode == "ddp" and world > 1:
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    return model
