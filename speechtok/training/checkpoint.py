"""Sharded checkpoints that load without running code from the files.

    out/checkpoints/step_0000400/state/      torch.distributed.checkpoint (DCP): models + optimizers, each
                                             rank writing its own shards (no full state gathered anywhere)
    out/checkpoints/step_0000400/meta.json   step, world size, data position, anything the trainer adds
    out/checkpoints/step_0000400/rng_rank<r>.json   each rank's Python / NumPy / torch RNG state
    out/checkpoints/step_0000400/sha256.json  the sha256 of every file above, verified before loading
    out/checkpoints/latest                   the name of the newest complete checkpoint

A checkpoint is written into `.tmp_step_…`, fsynced, and renamed into place; then `latest` moves. DCP
reshards on load, so a run resumes on a different number of ranks. A damaged file (a flipped bit) is
refused on resume, naming it; a failed write (a full disk) leaves the previous checkpoint in place.
Loading never unpickles arbitrary objects: DCP's metadata is read with an allow-list unpickler, its
non-tensor values with `torch.load(weights_only=True)`, and the rest is JSON."""

from __future__ import annotations

import io
import json
import os
import pickle
import random
import shutil
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.state_dict import (get_model_state_dict, get_state_dict,
                                                     set_model_state_dict, set_state_dict)

from speechtok.checksums import ChecksumError, verify_checksums, write_checksums
from speechtok.training.config import ConfigError


class CheckpointError(ConfigError):
    """A checkpoint that cannot be used: the message names it and says why."""


def barrier(world: int) -> None:
    if world > 1:
        dist.barrier()


def _fsync_tree(root: Path) -> None:
    for d, _, files in os.walk(root):
        for name in files:
            with open(Path(d) / name, "rb") as f:
                os.fsync(f.fileno())
        fd = os.open(d, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _write_json(path: Path, obj: Any) -> None:
    with open(path, "w") as f:
        json.dump(obj, f)
        f.flush()
        os.fsync(f.fileno())


# RNG state as JSON: what resume needs to continue dropout and other draws the same way.
def rng_state() -> dict:
    state = {"python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
             "numpy": _np_state_to_json(np.random.get_state(legacy=False)),
             "torch": torch.get_rng_state().tolist()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state().tolist()
    return state


def _np_state_to_json(s: dict) -> dict:
    return {**s, "state": {k: (v.tolist() if isinstance(v, np.ndarray) else v)
                           for k, v in s["state"].items()}}


def set_rng_state(state: dict) -> None:
    v, internal, gauss = state["python"]
    random.setstate((v, tuple(internal), gauss))
    np_state = state["numpy"]
    np.random.set_state({**np_state, "state": {k: (np.array(x, dtype=np.uint64) if isinstance(x, list) else x)
                                               for k, x in np_state["state"].items()}})
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(torch.tensor(state["cuda"], dtype=torch.uint8))


# Reading DCP metadata without running code: only the classes DCP itself writes there.
_DCP_CLASSES = {
    "torch.distributed.checkpoint.metadata": {"Metadata", "TensorStorageMetadata", "TensorProperties",
                                              "ChunkStorageMetadata", "BytesStorageMetadata", "MetadataIndex",
                                              "StorageMeta", "_MEM_FORMAT_ENCODING"},
    "torch.distributed.checkpoint.filesystem": {"_StorageInfo"},
    "torch.serialization": {"_get_layout"},
    "pathlib": {"PosixPath", "PurePosixPath", "WindowsPath", "PureWindowsPath"},
    "collections": {"OrderedDict"},
}


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if name in _DCP_CLASSES.get(module, ()):
            return super().find_class(module, name)
        if module == "torch" and (name == "Size" or isinstance(getattr(torch, name, None),
                                                               (torch.dtype, torch.layout,
                                                                torch.memory_format))):
            return getattr(torch, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed in checkpoint metadata")


class SafeReader(dcp.FileSystemReader):
    """DCP's file reader with the metadata unpickled through the allow-list above."""

    def read_metadata(self, *args, **kwargs):
        rank = kwargs.get("rank")
        path = Path(self.path) / (".metadata" if rank is None else f"__{rank}.metadata")
        with open(path, "rb") as f:
            try:
                metadata = _MetadataUnpickler(f).load()
            except Exception as e:  # noqa: BLE001 - whatever a crafted file raises, refuse it in one line
                raise CheckpointError(f"{path}: refused: {e}") from None
        from torch.distributed.checkpoint.metadata import Metadata, StorageMeta

        if not isinstance(metadata, Metadata):
            raise CheckpointError(f"{path}: refused: not DCP metadata")
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


class SafeLoadPlanner(DefaultLoadPlanner):
    """DCP's planner with non-tensor values loaded by `torch.load(weights_only=True)`."""

    def load_bytes(self, read_item, value: io.BytesIO) -> None:
        try:
            obj = torch.load(value, weights_only=True)
        except pickle.UnpicklingError as e:
            raise CheckpointError(f"checkpoint value {read_item.dest_index.fqn}: refused: {e}") from None
        if self.flatten_state_dict:
            from torch.distributed.checkpoint._traverse import set_element

            set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], obj)
        else:
            self.state_dict[read_item.dest_index.fqn] = obj


def _unwrapped(e: CheckpointException, where: Path) -> BaseException:
    """The error behind DCP's CheckpointException (an OSError such as a full disk, or ours), so that it
    ends in one line with its own exit code rather than a traceback of every rank's stack."""
    for exc, _ in e.failures.values():
        if isinstance(exc, OSError) and exc.filename is None:
            exc.filename = str(where)
        if isinstance(exc, (OSError, CheckpointError, ChecksumError)):
            return exc
    first = next(iter(e.failures.values()), (e, None))[0]
    return CheckpointError(f"{where}: {type(first).__name__}: {first}")


def _state(parts: dict) -> dict:
    """{name: {"model": …, "optim": …}} for every (model, optimizer or None) part, sharded as trained."""
    out = {}
    for name, (model, opt) in parts.items():
        if opt is None:
            out[name] = {"model": get_model_state_dict(model)}
        else:
            msd, osd = get_state_dict(model, opt)
            out[name] = {"model": msd, "optim": osd}
    return out


def save_checkpoint(out: Path, step: int, parts: dict, meta: dict, rank: int, world: int, keep: int) -> Path:
    """out/checkpoints/step_NNNNNNN from every rank's shards (a collective under DDP/FSDP)."""
    root = out / "checkpoints"
    tmp, final = root / f".tmp_step_{step:07d}", root / f"step_{step:07d}"
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier(world)
    try:
        with warnings.catch_warnings():  # "assuming the intent is to save in a single process": it is
            warnings.filterwarnings("ignore", message="torch.distributed is disabled")
            dcp.save(_state(parts), storage_writer=dcp.FileSystemWriter(str(tmp / "state"), sync_files=True))
        _write_json(tmp / f"rng_rank{rank}.json", rng_state())
        barrier(world)
        if rank == 0:
            _write_json(tmp / "meta.json", {"step": step, "world_size": world, **meta})
            write_checksums(tmp)
            _fsync_tree(tmp)
    except (CheckpointException, OSError) as e:  # a full disk: the previous checkpoint stays the latest
        if rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
        raise (_unwrapped(e, tmp) if isinstance(e, CheckpointException) else e) from None
    if rank == 0:
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        (root / "latest.tmp").write_text(final.name)
        os.replace(root / "latest.tmp", root / "latest")
        old = sorted(p for p in root.glob("step_*") if p != final)
        for p in old[: max(0, len(old) - keep + 1)]:
            shutil.rmtree(p, ignore_errors=True)
    barrier(world)
    return final


def latest_checkpoint(out: Path) -> Path | None:
    latest = out / "checkpoints" / "latest"
    if not latest.exists():
        return None
    ckpt = out / "checkpoints" / latest.read_text().strip()
    if not (ckpt / "meta.json").exists() or not (ckpt / "state").is_dir():
        raise CheckpointError(f"{ckpt}: not a complete checkpoint of this version (no meta.json or state/); "
                              "start a new output folder or remove the checkpoints")
    return ckpt


def _check_shapes(ckpt: Path, state: dict, reader: SafeReader) -> None:
    """Refuse a checkpoint whose tensors do not fit the configured model, naming the first mismatch."""
    from torch.distributed.checkpoint._nested_dict import flatten_state_dict
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    saved = reader.read_metadata().state_dict_metadata
    flat, _ = flatten_state_dict(state)
    models = tuple(f"{name}.model." for name in state)
    extra = sorted(k for k in saved if k.startswith(models) and k not in flat)
    if extra:  # a module the configured model lacks (an F0 source, a duration predictor) would be dropped
        raise CheckpointError(f"{ckpt}: has {extra[0]}, which the configured model lacks; the model changed "
                              "since this checkpoint (use the settings it was trained with, or a new output "
                              "folder)")
    for key, value in flat.items():
        if not isinstance(value, torch.Tensor):
            continue
        if key not in saved:
            raise CheckpointError(f"{ckpt}: has no {key}; the model changed since this checkpoint (use the "
                                  "settings it was trained with, or a new output folder)")
        meta = saved[key]
        shape = tuple(value.shape)  # a DTensor's shape is its global shape
        if isinstance(meta, TensorStorageMetadata) and tuple(meta.size) != shape:
            raise CheckpointError(f"{ckpt}: {key} is {tuple(meta.size)} in the checkpoint but {shape} in the "
                                  "configured model; the model size changed (use the settings it was trained "
                                  "with, or a new output folder)")


def load_checkpoint(out: Path, parts: dict, rank: int) -> dict | None:
    """Restore the latest checkpoint into `parts` (any world size); its meta.json, or None when there is
    none."""
    ckpt = latest_checkpoint(out)
    if ckpt is None:
        return None
    try:
        meta = json.loads((ckpt / "meta.json").read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{ckpt / 'meta.json'}: not valid JSON ({e})") from None
    if not verify_checksums(ckpt):
        print(f"note: {ckpt}: no sha256.json (saved by an older version): resuming unverified",
              file=sys.stderr)
    state = _state(parts)
    reader = SafeReader(str(ckpt / "state"))
    _check_shapes(ckpt, state, reader)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="torch.distributed is disabled")
            dcp.load(state, storage_reader=reader, planner=SafeLoadPlanner())
    except CheckpointException as e:
        raise _unwrapped(e, ckpt) from None
    for name, (model, opt) in parts.items():
        if opt is None:
            set_model_state_dict(model, state[name]["model"])
        else:
            set_state_dict(model, opt, model_state_dict=state[name]["model"],
                           optim_state_dict=state[name]["optim"])
    rng = ckpt / f"rng_rank{rank}.json"
    if rng.exists():  # a rank that did not exist when saving keeps the seeded state
        set_rng_state(json.loads(rng.read_text()))
    return meta
