"""The state of a `tok encode` job on disk, and what keeps it safe to stop, rerun and share a machine:

- `progress[.rRRR].jsonl`, the journal: a header (the job's fingerprint: tokenizers and options; the
  corpus fingerprint; the settings tokens depend on bit for bit), then one line per finished shard, then
  `done`. It is created before the first shard is written; a torn last line (a full disk, a kill) is dropped
  with a note, and the shard it recorded is written again.
- `corpus-index.jsonl`: one `[id, digest]` per utterance (the digest covers the resolved path, the file's
  size and mtime, the span and the labels); its sha256 is the corpus fingerprint, and a changed corpus is
  refused with a line saying what changed (an appended one is accepted with `--append`).
- SIGTERM / SIGINT set a flag that the encoder checks after each batch (`stop_on_signals`, shared with the
  trainers in speechtok/stopping.py)."""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

from tqdm import tqdm

from speechtok.corpus import Utterance
from speechtok.shards import MANIFEST, shard_problem, write_text_atomic

LOCK_FILE = ".lock"
CORPUS_INDEX = "corpus-index.jsonl"
ERRORS_FILE = "errors.jsonl"


class JobMismatch(ValueError):
    """The output folder holds another job, or this job's corpus changed since it started."""


def note(msg: str) -> None:
    tqdm.write(f"note: {msg}", file=sys.stderr)


def utterance_digest(u: Utterance) -> str:
    """What the shards depend on for one utterance: resolved path, file size and mtime, span, labels."""
    try:
        st = os.stat(u.path)
        size, mtime = st.st_size, st.st_mtime_ns
    except OSError:
        size = mtime = -1
    entry = [u.id, os.path.abspath(u.path), size, mtime, u.start, u.end, u.labels()]
    return hashlib.sha256(json.dumps(entry, sort_keys=True, ensure_ascii=True).encode()).hexdigest()[:16]


def corpus_index(utts: list[Utterance]) -> list[list[str]]:
    return [[u.id, utterance_digest(u)] for u in utts]


def index_text(index: list[list[str]]) -> str:
    return "".join(json.dumps(x, ensure_ascii=True) + "\n" for x in index)


def index_sha(index: list[list[str]]) -> str:
    return hashlib.sha256(index_text(index).encode()).hexdigest()


def read_index(path: Path) -> list[list[str]] | None:
    try:
        return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    except (OSError, ValueError):
        return None


def describe_change(old: list[list[str]], new: list[list[str]]) -> tuple[str, bool]:
    """(what changed from `old` to `new`, in one line; whether `new` is `old` plus appended utterances)."""
    if len(new) > len(old) and new[: len(old)] == old:
        return f"{len(new) - len(old)} new utterances appended (the first is '{new[len(old)][0]}')", True
    first = next((i for i, (a, b) in enumerate(zip(old, new)) if a != b), min(len(old), len(new)))
    before, after = dict(map(tuple, old)), dict(map(tuple, new))
    parts = []
    if first < min(len(old), len(new)):
        was, now = old[first][0], new[first][0]
        parts.append(f"utterance {first + 1} was '{was}', now '{now}'" if was != now else
                     f"utterance {first + 1} '{now}' changed (file, span or labels)")
    added = sum(k not in before for k in after)
    removed = sum(k not in after for k in before)
    changed = sum(k in before and before[k] != h for k, h in after.items())
    if added:
        parts.append(f"{added} added")
    if removed:
        parts.append(f"{removed} removed")
    if changed:
        parts.append(f"{changed} changed")
    if [k for k, _ in old if k in after] != [k for k, _ in new if k in before]:
        parts.append("reordered")
    return ", ".join(parts) or "its content differs", False


def read_journal(path: Path) -> tuple[dict, list[dict], dict | None]:
    """(header, shard lines, done line) of a journal. A torn or garbled line ends it: it and anything
    after it are dropped with a note naming the file (the shards they recorded are written again)."""
    header, shards, done = None, [], None
    for n, raw in enumerate(path.read_bytes().split(b"\n"), 1):
        if not raw.strip():
            continue
        try:
            line = json.loads(raw)
        except ValueError:
            line = None
        ok = isinstance(line, dict) and ("job" in line if header is None else
                                         "done" in line or {"shard", "next_pos"} <= line.keys())
        if not ok:
            if header is None:
                raise JobMismatch(f"{path}: line {n} is not a journal header; the journal is damaged, "
                                  "write to a new folder")
            note(f"{path}: dropped a torn line {n} and what follows it; those shards are written again")
            break
        if header is None:
            header = line
        elif "done" in line:
            done = line
        else:
            shards.append(line)
    if header is None:
        raise JobMismatch(f"{path}: empty journal; write to a new folder")
    if done is not None and done["done"] != len(shards):
        done = None
    return header, shards, done


class Journal:
    """`progress[.rRRR].jsonl` of one rank: the header, one line per finished shard (with the counters
    and the load errors up to it), and `done` once the rank has finished."""

    def __init__(self, path: Path, fingerprint: str, corpus: str, settings: dict | None = None):
        self.path, self.fingerprint, self.corpus, self.settings = path, fingerprint, corpus, settings
        self.shards: list[dict] = []
        self.done: dict | None = None

    def open(self, out_dir: Path, index: list[list[str]], append: bool, write_index: bool, mine: str) -> None:
        """Create the journal of a new job, or load this job's; refuse another job or a changed corpus
        (an appended one only with `append`)."""
        if not self.path.exists():
            if any(out_dir.glob(mine)):
                raise JobMismatch(f"{out_dir}: already holds shards of another job (no {self.path.name}); "
                                  "write to a new folder")
            self._rewrite()
        else:
            header, self.shards, self.done = read_journal(self.path)
            if header.get("job") != self.fingerprint:
                raise JobMismatch(f"{out_dir}: holds an encode job with other inputs or options; rerun the "
                                  f"same command to resume it, or write to a new folder")
            settings_differ(out_dir, header.get("tokens"), self.settings)
            if header.get("corpus") != self.corpus:
                old = read_index(out_dir / CORPUS_INDEX)
                trusted = old is not None and index_sha(old) == header.get("corpus")
                change, appended = describe_change(old, index) if trusted else ("its content differs", False)
                if not (appended and append):
                    hint = ("rerun with --append to encode them" if appended else
                            "restore it, or write to a new folder")
                    raise JobMismatch(f"the corpus changed since the job in {out_dir} started: {change}; "
                                      f"{hint}")
                note(f"--append: {change}; encoding them into new shards")
                self.done = None
                self._rewrite()
        if write_index:
            text = index_text(index)
            path = out_dir / CORPUS_INDEX
            if not path.exists() or path.read_text() != text:
                write_text_atomic(path, text)

    def damaged(self, out_dir: Path) -> list[tuple[int, str]]:
        """(index, why) of each journaled shard that is missing or no longer matches its sha256."""
        out = []
        for i, line in enumerate(self.shards):
            why = shard_problem(out_dir / line["shard"]["name"], line["shard"])
            if why is not None:
                out.append((i, why))
        return out

    def _rewrite(self) -> None:
        header = {"job": self.fingerprint, "corpus": self.corpus}
        if self.settings is not None:
            header["tokens"] = self.settings
        lines = ([header] + self.shards
                 + ([self.done] if self.done else []))
        write_text_atomic(self.path, "".join(json.dumps(x, ensure_ascii=True) + "\n" for x in lines))

    def append(self, line: dict) -> None:
        try:
            with open(self.path, "a") as f:
                f.write(json.dumps(line, ensure_ascii=True) + "\n")
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            e.filename = e.filename or str(self.path)
            raise
        self.shards.append(line)

    def replace(self, i: int, record: dict) -> None:
        """A repaired shard's record (the same file written again)."""
        self.shards[i] = {**self.shards[i], "shard": record}
        self._rewrite()

    def finish(self, line: dict) -> None:
        self.done = {"done": len(self.shards), **line}
        self._rewrite()


def settings_differ(out_dir: Path, recorded: dict | None, now: dict | None) -> None:
    """Refuse to resume a job whose tokens were made with other settings (a journal written before they
    were recorded is trusted): one line naming the setting and both values."""
    if recorded is None or now is None or recorded == now:
        return
    key = next(k for k in list(recorded) + list(now) if recorded.get(k) != now.get(k))
    raise JobMismatch(f"{out_dir}: its tokens were made with {key}={recorded.get(key)} and this run has "
                      f"{key}={now.get(key)}; tokens depend on it bit for bit: rerun with the job's settings "
                      "to resume it, or write to a new folder")


def remove_temporaries(out_dir: Path, rank: int, world: int) -> None:
    """`.tmp` files a killed run of this rank left behind."""
    suffix = f".r{rank:03d}" if world > 1 else ""
    patterns = [f"shard-r{rank:03d}-*.tar.tmp" if world > 1 else "shard-[0-9]*.tar.tmp",
                f"progress{suffix}.jsonl.tmp", f"progress{suffix}.tmp"]
    if rank == 0:
        patterns += [MANIFEST + ".tmp", ERRORS_FILE + ".tmp", CORPUS_INDEX + ".tmp"]
    for pattern in patterns:
        for p in out_dir.glob(pattern):
            p.unlink(missing_ok=True)
