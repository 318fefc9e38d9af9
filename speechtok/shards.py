"""Token shards: webdataset-compatible tar files written deterministically (same input → same bytes),
under a temporary name then renamed, and read back with checksum verification. Readers accept only
regular-file members with relative names (no links, devices, absolute or `..` paths)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tarfile
from pathlib import Path, PurePosixPath
from typing import Iterator

import numpy as np

MANIFEST = "manifest.json"
SHARD_PATTERN = "shard-{:06d}.tar"


class ShardError(ValueError):
    """A shard that is missing, truncated, corrupt, or does not match the manifest."""


def smallest_int_dtype(max_value: int) -> np.dtype:
    """The smallest unsigned integer dtype that holds 0..max_value."""
    for dt in (np.uint8, np.uint16, np.uint32):
        if max_value <= np.iinfo(dt).max:
            return np.dtype(dt)
    return np.dtype(np.int64)


def npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def sample_key(utt_id: str) -> str:
    """A webdataset key for an id: webdataset splits a name at its first dot, so dots (and path
    separators) become '_'. The true id is kept in the sample's json."""
    return re.sub(r"[./\\\s]", "_", utt_id)


def _tar_member_size(n: int) -> int:
    return 512 + (n + 511) // 512 * 512


class ShardWriter:
    """Writes samples into `shard-NNNNNN.tar` files of at most `max_count` samples and about
    `max_bytes` bytes; each shard is written as `.tmp`, fsynced and renamed when full."""

    def __init__(self, out_dir: str | Path, max_bytes: int = 1 << 30, max_count: int = 100_000,
                 start_index: int = 0, pattern: str | None = None):
        self.out_dir = Path(out_dir)
        self.pattern = pattern or SHARD_PATTERN
        self.on_shard_done = None  # called with each finished shard's record, once it is in place
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.max_bytes, self.max_count = max_bytes, max_count
        self.index = start_index
        self.shards: list[dict] = []
        self._tar: tarfile.TarFile | None = None
        self._count = 0
        self._bytes = 0

    def _open(self) -> None:
        name = self.pattern.format(self.index)
        self._path = self.out_dir / name
        self._tmp = self.out_dir / (name + ".tmp")
        self._file = open(self._tmp, "wb")
        self._tar = tarfile.open(fileobj=self._file, mode="w", format=tarfile.GNU_FORMAT)
        self._count, self._bytes = 0, 1024

    def write(self, key: str, files: dict[str, bytes]) -> None:
        """Add one sample: `files` maps an extension ('json', 'semantic.npy') to its bytes."""
        size = sum(_tar_member_size(len(v)) for v in files.values())
        if self._tar is not None and (self._count >= self.max_count or self._bytes + size > self.max_bytes):
            self.finish_shard()
        if self._tar is None:
            self._open()
        try:
            for ext, data in files.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size, info.mtime, info.mode = len(data), 0, 0o644
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                self._tar.addfile(info, io.BytesIO(data))
        except OSError as e:
            raise _named(e, self._tmp)
        self._count += 1
        self._bytes += size

    def finish_shard(self) -> None:
        if self._tar is None:
            return
        try:
            self._tar.close()
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
        except OSError as e:
            raise _named(e, self._tmp)
        os.replace(self._tmp, self._path)
        record = {"name": self._path.name, "num_samples": self._count,
                  "bytes": self._path.stat().st_size, "sha256": sha256_of(self._path)}
        self.shards.append(record)
        self._tar = None
        self.index += 1
        if self.on_shard_done is not None:
            self.on_shard_done(record)

    def close(self) -> list[dict]:
        self.finish_shard()
        return self.shards

    def abort(self) -> None:
        """Drop the shard being written (its `.tmp`); finished shards stay."""
        if self._tar is None:
            return
        self._tar = None
        try:
            self._file.close()
        except OSError:
            pass  # e.g. the disk is full: the file goes anyway
        self._tmp.unlink(missing_ok=True)


def _named(e: OSError, path: Path) -> OSError:
    """The OSError with the file it concerns (tarfile's writes raise it without one)."""
    if e.filename is None:
        e.filename = str(path)
    return e


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write `path` as `<path>.tmp`, fsync, rename: readers see the old or the new file, never a part."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise _named(e, tmp)
    os.replace(tmp, path)


def sha256_of(*paths: str | Path) -> str:
    """Streaming sha256 over the files' bytes, in the given order (a model of several files hashes as one)."""
    h = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
    return h.hexdigest()


def write_manifest(out_dir: str | Path, manifest: dict) -> None:
    """Write the manifest atomically; it is the last file a job writes."""
    write_text_atomic(Path(out_dir) / MANIFEST, json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")


def read_manifest(path: str | Path) -> tuple[Path, dict]:
    """(shard folder, manifest) from a folder or its manifest.json."""
    path = Path(path)
    mpath = path / MANIFEST if path.is_dir() else path
    if not mpath.exists():
        raise ShardError(f"{mpath}: no manifest (was the encode job finished?)")
    try:
        manifest = json.loads(mpath.read_text())
    except json.JSONDecodeError as e:
        raise ShardError(f"{mpath}: manifest is not valid JSON ({e.msg})") from None
    except UnicodeDecodeError:
        raise ShardError(f"{mpath}: manifest is not text (not a tok encode manifest.json)") from None
    if not isinstance(manifest, dict):
        raise ShardError(f"{mpath}: manifest is not a JSON object (not a tok encode manifest.json)")
    from speechtok.hub import resolve_card  # model paths are stored relative to the shard folder

    if isinstance(manifest.get("tokenizers"), dict):
        manifest["tokenizers"] = resolve_card(manifest["tokenizers"], mpath.parent)
    return mpath.parent, manifest


def decode_sample(key: str, files: dict[str, bytes]) -> dict:
    """Raw tar members of one sample → a dict: the json's fields, arrays for .npy members; `__key__` is
    the member key (a json cannot override it). Raises ValueError for a json that is not an object."""
    out: dict = {}
    for ext, data in files.items():
        if ext == "json":
            meta = json.loads(data)
            if not isinstance(meta, dict):
                raise ValueError("its json is not an object")
            out.update(meta)
        elif ext.endswith(".npy"):
            out[ext[:-4]] = np.load(io.BytesIO(data), allow_pickle=False)
        else:
            out[ext] = data
    out["__key__"] = key
    return out


def unsafe_member(member: tarfile.TarInfo) -> str | None:
    """Why a tar member must not be read (None when it is a plain file with a relative name)."""
    if member.issym() or member.islnk():
        return "a link"
    if member.ischr() or member.isblk() or member.isfifo() or member.isdev():
        return "a device or pipe"
    name = PurePosixPath(member.name)
    if name.is_absolute() or member.name.startswith(("/", "\\")):
        return "an absolute path"
    if ".." in name.parts or ".." in member.name.split("\\"):
        return "a path with '..'"
    if "\0" in member.name:
        return "a name with NUL"
    return None


def iter_tar(path: Path) -> Iterator[tuple[str, dict[str, bytes]]]:
    """Group a tar's members into samples by key (the name up to its first dot). Links, devices,
    absolute and `..` names are refused with a ShardError naming the shard and the member."""
    key, files = None, {}
    try:
        with tarfile.open(path, mode="r") as tar:
            for member in tar:
                if (why := unsafe_member(member)) is not None:
                    raise ShardError(f"{path}: member {member.name!r} is {why}; refusing this shard")
                if not member.isfile():
                    continue  # directories
                k, _, ext = member.name.partition(".")
                if key is not None and k != key:
                    yield key, files
                    files = {}
                key = k
                files[ext] = tar.extractfile(member).read()
    except (tarfile.TarError, OSError, EOFError) as e:
        raise ShardError(f"{path}: truncated or corrupt shard ({' '.join(str(e).split())})") from None
    if key is not None:
        yield key, files


def shard_problem(path: Path, record: dict) -> str | None:
    """Why a shard does not match its manifest record (None when it does): missing, size, or sha256 (a
    streaming hash of the whole file)."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return "shard listed in the manifest is missing"
    if size != record["bytes"]:
        return f"{size} bytes, the manifest says {record['bytes']} (truncated?)"
    if sha256_of(path) != record["sha256"]:
        return "sha256 does not match the manifest (corrupt shard)"
    return None


def listed_shards(folder: Path, manifest: dict) -> list[dict]:
    """The manifest's shard entries, each with a name, or a ShardError naming the manifest."""
    shards = manifest.get("shards")
    if not isinstance(shards, list) or not all(isinstance(s, dict) and "name" in s for s in shards):
        raise ShardError(f"{folder / MANIFEST}: no list of shards (a damaged or unfinished manifest)")
    return shards


def manifest_shards(path: str | Path, verify: bool = True) -> list[Path]:
    """The shard files a manifest (or its folder) lists, in order; with `verify`, every one is checked
    against the manifest first (size and sha256), and the first bad one raises a ShardError naming it."""
    folder, manifest = read_manifest(path)
    out = []
    for shard in listed_shards(folder, manifest):
        spath = folder / shard["name"]
        if verify and (why := shard_problem(spath, shard)) is not None:
            raise ShardError(f"{spath}: {why}")
        out.append(spath)
    return out


def read_shards(path: str | Path, verify: bool = True) -> Iterator[dict]:
    """Decoded samples of every shard a manifest lists, in order; with `verify`, each shard's size and
    sha256 are checked against the manifest before it is read."""
    folder, manifest = read_manifest(path)
    for shard in listed_shards(folder, manifest):
        spath = folder / shard["name"]
        why = shard_problem(spath, shard) if verify else None
        if why is None and not spath.exists():
            why = "shard listed in the manifest is missing"
        if why is not None:
            raise ShardError(f"{spath}: {why}")
        for key, files in iter_tar(spath):
            try:
                yield decode_sample(key, files)
            except ValueError as e:
                raise ShardError(f"{spath}: sample {key!r}: {' '.join(str(e).split())}") from None
