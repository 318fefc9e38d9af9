"""What `tok align` and `tok segment` share: a JSONL output that resumes (finished ids are kept, a torn
last line is dropped, new lines are appended whole), and work spread over processes with a ×RT bar."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from tqdm import tqdm


class ResumableJsonl:
    """An output manifest written line by line; opening it keeps its complete lines and drops a torn last
    one."""

    def __init__(self, path: str | os.PathLike, key: str = "id"):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.done: set[str] = set()
        if self.path.exists():
            data = self.path.read_bytes()
            keep = data[: data.rfind(b"\n") + 1]
            if len(keep) != len(data):
                with open(self.path, "r+b") as f:
                    f.truncate(len(keep))
            for line in keep.decode("utf-8", "replace").splitlines():
                try:
                    self.done.add(str(json.loads(line)[key]))
                except (ValueError, KeyError, TypeError):
                    continue
        self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def append(self, rows: list[dict]) -> None:
        """Write `rows` as whole lines in one write, so an interruption never leaves half of them."""
        if rows:
            os.write(self.fd, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8"))

    def close(self) -> None:
        os.close(self.fd)


_STATE: dict[str, Any] = {}


def _init(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _call(fn: Callable, item: Any) -> Any:
    return fn(_STATE["worker"], item)


def run_jobs(items: list[Any], seconds: list[float], make: Callable[..., Any], make_args: tuple,
             work: Callable[[Any, Any], Any], jobs: int = 1, progress: bool = True,
             desc: str = "") -> Iterator[Any]:
    """work(worker, item) for each item, in order, where worker = make(*make_args), built once here (so a
    bad model fails at once) and inherited by `jobs` > 1 forked processes (one torch thread each). The
    bar counts audio seconds and shows ×RT (audio seconds per wall-clock second)."""
    bar = tqdm(total=round(sum(seconds), 1), unit="s", desc=desc, disable=not progress, leave=False,
               bar_format="{desc} {percentage:3.0f}%|{bar}| {n:.0f}/{total:.0f} s audio "
                          "[{elapsed}<{remaining}{postfix}]")
    t0 = time.perf_counter()
    done = 0.0
    pool = None
    try:
        _STATE["worker"] = make(*make_args)
        if jobs <= 1:
            results: Iterator[Any] = (work(_STATE["worker"], it) for it in items)
        else:
            pool = mp.get_context("fork").Pool(jobs, _init, (1,))
            results = pool.imap(_call_with(work), items)
        for it_seconds, result in zip(seconds, results):
            done += it_seconds
            bar.update(it_seconds)
            bar.set_postfix_str(f"{done / max(time.perf_counter() - t0, 1e-9):.1f}×RT", refresh=False)
            yield result
    finally:
        if pool is not None:
            pool.terminate()
        bar.close()
        _STATE.pop("worker", None)


class _call_with:
    """A picklable work(worker, item) bound for Pool.imap."""

    def __init__(self, fn: Callable):
        self.fn = fn

    def __call__(self, item: Any) -> Any:
        return _call(self.fn, item)
