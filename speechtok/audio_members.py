"""Audio files stored inside container files, read one at a time without unpacking the container: a member
of an uncompressed tar (Lhotse Shar: named by cut id, any extension), or a row of an arrow or parquet file
(a Hugging Face `Audio` column's `bytes`, member 'COLUMN/ROW'). Each process keeps its own small caches
(a tar's member index, an arrow file's memory map, the last parquet row groups read)."""

from __future__ import annotations

import tarfile
from functools import lru_cache
from pathlib import Path


def member_bytes(path: str, member: str) -> bytes:
    """The bytes of `member` inside the container `path`; KeyError / ValueError / OSError say why not."""
    if path.endswith(".tar"):
        offset, size = _tar_index(path)[member]
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read(size)
    column, row = member.rsplit("/", 1)
    if path.endswith(".parquet"):
        return _parquet_cell(path, column, int(row))
    return _arrow_cell(path, column, int(row))


@lru_cache(maxsize=8)
def _tar_index(path: str) -> dict[str, tuple[int, int]]:
    """Member name without its extension → (data offset, size), leaving out Shar's `.json` sidecars."""
    index = {}
    with tarfile.open(path, "r:") as tar:
        for m in tar:
            if m.isfile() and not m.name.endswith(".json"):
                index[m.name.rsplit(".", 1)[0]] = (m.offset_data, m.size)
    return index


@lru_cache(maxsize=8)
def _arrow_table(path: str):
    """An arrow file (IPC stream, as `datasets` writes, or IPC file), memory-mapped: nothing is copied."""
    import pyarrow as pa

    source = pa.memory_map(path)
    try:
        return pa.ipc.open_stream(source).read_all()
    except pa.ArrowInvalid:
        return pa.ipc.open_file(pa.memory_map(path)).read_all()


def _arrow_cell(path: str, column: str, row: int) -> bytes:
    return _cell_bytes(_arrow_table(path).column(column)[row].as_py(), path)


@lru_cache(maxsize=1)
def _parquet_file(path: str):
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    starts = [0]
    for g in range(pf.metadata.num_row_groups):
        starts.append(starts[-1] + pf.metadata.row_group(g).num_rows)
    return pf, starts


@lru_cache(maxsize=4)
def _parquet_group(path: str, group: int, column: str):
    pf, _ = _parquet_file(path)
    return pf.read_row_group(group, columns=[column]).column(column)


def _parquet_cell(path: str, column: str, row: int) -> bytes:
    import bisect

    _, starts = _parquet_file(path)
    group = bisect.bisect_right(starts, row) - 1
    return _cell_bytes(_parquet_group(path, group, column)[row - starts[group]].as_py(), path)


def _cell_bytes(cell, container: str) -> bytes:
    """The audio of a Hugging Face Audio cell ({'bytes': ..., 'path': ...}): its bytes, else the file at its
    path (relative to the container's folder)."""
    cell = cell if isinstance(cell, dict) else {}
    if cell.get("bytes"):
        return cell["bytes"]
    if not cell.get("path"):
        raise ValueError("the dataset row holds neither audio bytes nor a path")
    with open(Path(container).parent / cell["path"], "rb") as f:  # an absolute path stays as it is
        return f.read()
