"""Run `tok encode` and stop it at a chosen point of the write path (test helper).

    python crash_encode.py WHERE N -- <tok encode args>

SIGKILL at: 'write' (inside a shard, at the N-th sample), 'rename' (N-th shard renamed, before its journal
line), 'journal' (after the N-th journal line), 'manifest' (before the manifest), 'atomic' (the N-th
whole-file write — journal header, corpus index, journal rewrite, errors.jsonl, manifest — after its .tmp
is written, before the rename), 'atomic-after' (right after the N-th whole-file write), 'torn' (half of the
N-th journal line written).
Errors and signals: 'enospc' (the N-th sample's write raises ENOSPC, as on a full disk), 'torn-enospc'
(half of the N-th journal line written, then ENOSPC), 'sigterm' / 'sigint' (the process sends itself that
signal at the N-th sample), 'pause' (at the N-th sample, create $PAUSE_MARKER and wait for $PAUSE_RELEASE).
Tests may also start `run_child` in a forkserver process instead of a new interpreter."""

import errno
import os
import signal
import sys
import time

from speechtok import shards
from speechtok.cli.main import cli
from speechtok.pipelines import encode, encode_job

calls = {"count": 0}
where, n = "", 0


def kill() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def on_nth(fn, before=None, after=None):
    def wrapped(*a, **kw):
        calls["count"] += 1
        if calls["count"] == n and before:
            before(*a, **kw)
        out = fn(*a, **kw)
        if calls["count"] == n and after:
            after()
        return out
    return wrapped


def disk_full(*a, **kw):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def pause(*a, **kw):
    open(os.environ["PAUSE_MARKER"], "w").close()
    while not os.path.exists(os.environ["PAUSE_RELEASE"]):
        time.sleep(0.05)


def torn_open(then):
    """An `open` for the journal whose N-th opened file writes half of a line, then calls `then`."""
    def fake_open(path, mode="r", *a, **kw):
        f = open(path, mode, *a, **kw)
        calls["count"] += 1
        if calls["count"] != n:
            return f

        class Torn:
            def __enter__(self):
                return self

            def __exit__(self, *exc):
                f.close()

            def write(self, text):
                f.write(text[: len(text) // 2])
                f.flush()
                then()
        return Torn()
    return fake_open


def install(point: str, nth: int) -> None:
    """Patch this process so that it stops at the `nth` occurrence of `point`."""
    global where, n
    where, n = point, nth
    calls["count"] = 0
    _install()


def _install() -> None:
    if where == "write":
        shards.ShardWriter.write = on_nth(shards.ShardWriter.write, before=lambda *a, **kw: kill())
    elif where == "enospc":
        shards.ShardWriter.write = on_nth(shards.ShardWriter.write, before=disk_full)
    elif where in ("sigterm", "sigint"):
        signum = signal.SIGTERM if where == "sigterm" else signal.SIGINT
        shards.ShardWriter.write = on_nth(shards.ShardWriter.write,
                                          before=lambda *a, **kw: os.kill(os.getpid(), signum))
    elif where == "pause":
        shards.ShardWriter.write = on_nth(shards.ShardWriter.write, before=pause)
    elif where == "rename":
        original = shards.ShardWriter.finish_shard

        def finish_without_journal(self):
            self.on_shard_done, callback = None, self.on_shard_done
            original(self)
            self.on_shard_done = callback
            if self.shards and callback is not None:
                on_nth(lambda: None, after=kill)()
                callback(self.shards[-1])
        shards.ShardWriter.finish_shard = finish_without_journal
    elif where == "journal":
        encode_job.Journal.append = on_nth(encode_job.Journal.append, after=kill)
    elif where in ("torn", "torn-enospc"):
        encode_job.open = torn_open(kill if where == "torn" else disk_full)  # the journal's appends
    elif where == "manifest":
        encode.write_manifest = on_nth(encode.write_manifest, before=lambda *a, **kw: kill())
    elif where in ("atomic", "atomic-after"):
        real_replace = os.replace

        def replace_then_maybe_die(src, dst, *a, **kw):
            if str(src).endswith(".tmp") and not str(src).endswith(".tar.tmp"):
                calls["count"] += 1
                if calls["count"] == n and where == "atomic":
                    kill()
                real_replace(src, dst, *a, **kw)
                if calls["count"] == n:
                    kill()
                return
            real_replace(src, dst, *a, **kw)
        shards.os.replace = replace_then_maybe_die
    else:
        raise SystemExit(f"unknown kill point {where}")


if __name__ == "__main__":
    install(sys.argv[1], int(sys.argv[2]))
    sys.exit(cli.main(["encode", *sys.argv[sys.argv.index("--") + 1:]], standalone_mode=True))


def run_child(where: str, count: int, args: list[str], env: dict[str, str]) -> None:
    """`tok encode ARGS` stopped at a kill point, in a process forked from a clean forkserver (forking the
    test process itself can deadlock in torch's thread pool once earlier tests have used it)."""
    os.environ.update(env)
    install(where, count)
    sys.exit(cli.main(["encode", *args], standalone_mode=True))
