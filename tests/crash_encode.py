"""Run `tok encode` and SIGKILL this process at a chosen point of the write path (test helper).

    python crash_encode.py WHERE N -- <tok encode args>

WHERE: 'write' (inside a shard, at the N-th sample), 'rename' (N-th shard renamed, before its journal
line), 'journal' (after the N-th journal line), 'manifest' (before the manifest)."""

import os
import signal
import sys

from speechtok import shards
from speechtok.cli.main import cli
from speechtok.pipelines import encode

where, n = sys.argv[1], int(sys.argv[2])
args = sys.argv[sys.argv.index("--") + 1:]
calls = {"count": 0}


def die_on_nth(fn):
    def wrapped(*a, **kw):
        calls["count"] += 1
        if calls["count"] == n and where != "journal":
            os.kill(os.getpid(), signal.SIGKILL)
        out = fn(*a, **kw)
        if calls["count"] == n and where == "journal":
            os.kill(os.getpid(), signal.SIGKILL)
        return out
    return wrapped


if where == "write":
    shards.ShardWriter.write = die_on_nth(shards.ShardWriter.write)
elif where == "rename":
    original = shards.ShardWriter.finish_shard

    def finish_without_journal(self):
        self.on_shard_done, callback = None, self.on_shard_done
        original(self)
        self.on_shard_done = callback
        if self.shards and callback is not None:
            die_on_nth(lambda: None)()
            callback(self.shards[-1])
    shards.ShardWriter.finish_shard = finish_without_journal
elif where == "journal":
    encode.Journal.append = die_on_nth(encode.Journal.append)
elif where == "manifest":
    encode.write_manifest = die_on_nth(encode.write_manifest)
sys.exit(cli.main(["encode", *args], standalone_mode=True))
