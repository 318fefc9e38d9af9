"""Reading torch weight files without running code: `torch.load(weights_only=True)` refuses a pickled object
that is not tensors or plain containers; that refusal (and a file that is not a torch file at all) becomes a
ValueError of one line naming the file, instead of torch's paragraph and a traceback."""

from __future__ import annotations

import pickle
import re
from pathlib import Path

GLOBAL = re.compile(r"GLOBAL ([\w.]+)")


def refusal(path: str | Path, e: Exception) -> ValueError:
    """The one-line error for `path`, which torch.load(weights_only=True) failed to read with `e`."""
    text = str(e)
    if "Weights only load failed" in text:
        found = GLOBAL.search(text)
        what = f"a pickled {found.group(1)}" if found else "pickled objects"
        return ValueError(f"{path}: refused: holds {what}, not only tensors (unpickling it could run code); "
                          "save a plain state dict (torch.save(model.state_dict())) or safetensors instead")
    first = text.strip().splitlines()[0] if text.strip() else type(e).__name__
    return ValueError(f"{path}: not a readable torch file ({first})")


def load_weights(path: str | Path):
    """What the torch file `path` holds, loaded on the CPU without unpickling code (see `refusal`)."""
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as e:
        raise refusal(path, e) from None
