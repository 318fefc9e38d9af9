"""The optional evaluators' models: lazy imports that name the extra to install, and checksums that say
which model produced a report's numbers."""

from __future__ import annotations

from pathlib import Path


def need(module: str, extra: str):
    """Import an optional metric's package, or say which extra installs it."""
    import importlib
    import warnings

    try:
        with warnings.catch_warnings():  # pyworld and webrtcvad import the deprecated pkg_resources
            warnings.filterwarnings("ignore", message="pkg_resources is deprecated")
            return importlib.import_module(module)
    except ImportError:
        raise ImportError(f"this metric needs '{module}': pip install 'speechtok[{extra}]'") from None


def files_sha256(paths: list[str | Path]) -> str:
    """One sha256 over the files' bytes in the given order: the identity of a model made of several files."""
    from speechtok.shards import sha256_of

    return sha256_of(*paths)


def hf_weights_sha256(name_or_path: str) -> str | None:
    """sha256 of a transformers checkpoint's weight file(s), local dir or hub cache; None if not found."""
    from transformers.utils import cached_file

    for name in ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json"):
        try:
            path = cached_file(name_or_path, name, _raise_exceptions_for_missing_entries=False)
        except Exception:
            path = None
        if path:
            return files_sha256([path])
    return None


def model_entry(m) -> dict:
    """A report's record of the evaluator behind a metric (anything with backend, model, model_sha256)."""
    return {"backend": m.backend, "model": m.model, "model_sha256": m.model_sha256}


def model_note(title: str, entry: dict) -> str:
    """One Markdown line naming a metric's backend, model and checksum."""
    return (f"{title}: backend `{entry['backend']}` ({entry['model']}, "
            f"sha256 `{str(entry['model_sha256'])[:16]}`).\n")
