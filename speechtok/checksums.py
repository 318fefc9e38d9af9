"""sha256 of every file of a saved model or checkpoint, recorded when it is written and verified when it
is read, so that a damaged file (a flipped bit, a torn copy) is refused in one line instead of resuming or
generating from garbage. `sha256.json` in the folder maps each file's relative path to its sha256; a folder
without it (a hub model, or one saved by an older version) is read unverified."""

from __future__ import annotations

import json
import os
from pathlib import Path

from speechtok.shards import sha256_of

CHECKSUMS = "sha256.json"


class ChecksumError(ValueError):
    """A file whose bytes differ from the sha256 recorded when it was written (or that is missing)."""


def write_checksums(folder: str | Path) -> None:
    """Record the sha256 of every file under `folder` (lock files and sha256.json itself left out)."""
    folder = Path(folder)
    sums = {str(p.relative_to(folder)): sha256_of(p) for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != CHECKSUMS and not p.name.startswith(".lock")}
    tmp = folder / f"{CHECKSUMS}.tmp"
    with open(tmp, "w") as f:
        json.dump(sums, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, folder / CHECKSUMS)


def verify_checksums(folder: str | Path) -> bool:
    """Raise ChecksumError naming the first file that differs from its recorded sha256 (or is missing);
    True when every file was verified, False when `folder` records no checksums."""
    folder = Path(folder)
    path = folder / CHECKSUMS
    if not path.is_file():
        return False
    try:
        sums = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise ChecksumError(f"{path}: not valid JSON ({e}); the folder is damaged") from None
    if not isinstance(sums, dict):
        raise ChecksumError(f"{path}: not a mapping of files to sha256; the folder is damaged")
    for name, want in sorted(sums.items()):
        file = folder / name
        if not file.is_file():
            raise ChecksumError(f"{file}: missing (listed in {CHECKSUMS}); the folder is incomplete")
        got = sha256_of(file)
        if got != want:
            raise ChecksumError(f"{file}: checksum mismatch (sha256 {got[:16]}…, recorded {str(want)[:16]}… "
                                "when it was written): the file is damaged; restore it or use another "
                                "checkpoint")
    return True
