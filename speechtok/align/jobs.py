"""What `tok align` and `tok segment` share: a JSONL output that resumes (finished ids are kept, a torn
last line is dropped, new lines are appended whole), and work spread over processes with a ×RT bar that
stops between items on SIGTERM / SIGINT (raising Interrupted; what was written stays)."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from tqdm import tqdm

from speechtok.stopping import Interrupted, stop_on_signals


def complete_lines(path: Path) -> bytes:
    """A JSONL file's bytes up to its last newline (a torn last line left out); b'' when it does not exist."""
    data = path.read_bytes() if path.exists() else b""
    return data[: data.rfind(b"\n") + 1]


def line_keys(data: bytes, key: str = "id") -> set[str]:
    keys = set()
    for line in data.decode("utf-8", "replace").splitlines():
        try:
            keys.add(str(json.loads(line)[key]))
        except (ValueError, KeyError, TypeError):
            continue
    return keys


class ResumableJsonl:
    """An output manifest written line by line; opening it keeps its complete lines and drops a torn last
    one."""

    def __init__(self, path: str | os.PathLike, key: str = "id"):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        keep = complete_lines(self.path)
        if self.path.exists() and len(keep) != self.path.stat().st_size:
            with open(self.path, "r+b") as f:
                f.truncate(len(keep))
        self.key, self.done = key, line_keys(keep, key)
        self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def append(self, rows: list[dict]) -> None:
        """Write `rows` as whole lines in one write, so an interruption never leaves half of them."""
        data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")
        while data:
            data = data[os.write(self.fd, data):]

    def close(self) -> None:
        os.close(self.fd)

    def merge(self, parts: list[Path]) -> None:
        """Append the complete lines of `parts` (per-rank outputs) whose key is not here yet, then delete
        the parts."""
        for part in parts:
            for line in complete_lines(part).decode("utf-8").splitlines():
                row = json.loads(line)
                if str(row[self.key]) not in self.done:
                    self.append([row])
                    self.done.add(str(row[self.key]))
            part.unlink(missing_ok=True)


_STATE: dict[str, Any] = {}


def _init(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the main process decides
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # pool.terminate() ends a worker at once


def _call(fn: Callable, item: Any) -> Any:
    return fn(_STATE["worker"], item)


def run_jobs(items: list[Any], seconds: list[float], make: Callable[..., Any], make_args: tuple,
             work: Callable[[Any, Any], Any], jobs: int = 1, progress: bool = True,
             desc: str = "") -> Iterator[Any]:
    """work(worker, item) for each item, in order, where worker = make(*make_args), built once here (so a
    bad model fails at once) and inherited by `jobs` > 1 forked processes (one torch thread each). The
    bar counts audio seconds and shows ×RT (audio seconds per wall-clock second). After SIGTERM / SIGINT
    it raises Interrupted once the caller has taken the item at hand (so it can write it first)."""
    # the exact total, and updates never past it: a total rounded down left the bar past 100 % with a
    # negative ETA and a TqdmWarning on short inputs
    bar = tqdm(total=sum(seconds), unit="s", desc=desc, disable=not progress, leave=False,
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
        with stop_on_signals() as stop:  # after the fork: workers keep the default handlers
            for it_seconds in seconds:
                with stop.at_once("inside an item: what was finished is written; rerun the same command to "
                                  "resume"):  # a long recording is not waited for
                    result = next(results)
                done += it_seconds
                bar.update(max(0.0, min(it_seconds, bar.total - bar.n)))
                bar.set_postfix_str(f"{done / max(time.perf_counter() - t0, 1e-9):.1f}×RT", refresh=False)
                yield result
                if stop.signum:  # before the next item starts
                    raise Interrupted(stop.signum, "between items: what was finished is written; rerun the "
                                                   "same command to resume")
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
