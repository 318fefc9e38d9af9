"""Where a model comes from: a local directory, the Hugging Face cache, or the hub. Every model loader calls
`check_model_ref` first, so that an unreachable hub fails at once with a hint instead of after ~30 s of
retries."""

from __future__ import annotations

import os
import socket
from functools import lru_cache
from pathlib import Path
from urllib.parse import urlparse

_TRUE = {"1", "on", "yes", "true"}


class ModelUnavailable(OSError, ValueError):
    """A model reference that is neither a local directory nor reachable on the hub; the message says why
    (an OSError like transformers' own, and a ValueError like every other bad argument to a loader)."""


def hub_offline() -> bool:
    """Offline mode as huggingface_hub and transformers read it from the environment."""
    names = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    return any(os.environ.get(k, "").strip().lower() in _TRUE for k in names)


@lru_cache(maxsize=4)
def hub_reachable(endpoint: str, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to the hub's host opens within `timeout` seconds (once per process)."""
    url = urlparse(endpoint)
    try:
        port = url.port or (443 if url.scheme == "https" else 80)
        socket.create_connection((url.hostname, port), timeout).close()
        return True
    except OSError:
        return False


def _cached(repo_id: str) -> bool:
    """Whether the local Hugging Face cache holds a snapshot of `repo_id` (usable offline)."""
    from huggingface_hub.constants import HF_HUB_CACHE

    snapshots = Path(HF_HUB_CACHE) / f"models--{repo_id.replace('/', '--')}" / "snapshots"
    return snapshots.is_dir() and any(snapshots.iterdir())


def check_model_ref(ref: str | Path) -> str:
    """`ref` as a string when it is a local directory, a cached hub id, or a hub id with the hub reachable;
    otherwise a ModelUnavailable naming it, with what to do."""
    ref = str(ref)
    path = Path(ref).expanduser()
    if path.is_dir():
        return str(path)
    if path.exists():
        raise ModelUnavailable(f"{ref}: is a file; a model is a directory (or a hub id)")
    if ref.startswith(("/", ".", "~")) or ref.count("/") > 1 or "\\" in ref:
        raise ModelUnavailable(f"{ref}: no such directory")
    if _cached(ref):
        return ref
    if hub_offline():
        raise ModelUnavailable(f"{ref}: not a local directory and offline mode is set (HF_HUB_OFFLINE=1); "
                               "pass a local directory, or unset HF_HUB_OFFLINE to download it")
    if not hub_reachable(os.environ.get("HF_ENDPOINT", "https://huggingface.co")):
        raise ModelUnavailable(f"{ref}: not a local directory and the hub is unreachable (offline: "
                               "HF_HUB_OFFLINE=1); pass a local directory")
    return ref


def portable_card(card: dict, base: str | Path) -> dict:
    """A copy of `card` (nested) in which every local model directory under a "model" key is written
    relative to `base`, the folder of the JSON file that stores it ("./…" or "../…"), with its absolute path
    as "model_path": a tree moved together keeps working, and an artefact moved alone still finds the
    model where it was. Hub ids are kept as they are."""
    out = {}
    for k, v in card.items():
        if isinstance(v, dict):
            out[k] = portable_card(v, base)
        elif k == "model" and isinstance(v, str) and Path(v).is_dir():
            absolute = Path(v).resolve()
            rel = os.path.relpath(absolute, Path(base).resolve())
            out[k], out["model_path"] = (rel if rel.startswith("..") else f"./{rel}"), str(absolute)
        else:
            out[k] = v
    return out


def resolve_card(card: dict, base: str | Path) -> dict:
    """The inverse of `portable_card`: "./…" / "../…" model directories are looked up relative to `base`,
    then at the recorded "model_path"; one found in neither stays `base`/… so that loading it names the
    missing directory (reading the JSON alone never fails)."""
    out = {}
    for k, v in card.items():
        if isinstance(v, dict):
            out[k] = resolve_card(v, base)
        elif k == "model" and isinstance(v, str) and v.startswith(("./", "../")):
            here, there = Path(base) / v, card.get("model_path")
            if here.is_dir():
                out[k] = str(here.resolve())
            else:
                out[k] = there if there and Path(there).is_dir() else str(here)
        elif k != "model_path":
            out[k] = v
    return out
