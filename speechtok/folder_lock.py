"""An exclusive lock on an output folder, so two jobs never write into one folder at once.

`fcntl.flock` on a lock file: the kernel releases it when its holder dies (SIGKILL included), so a lock
left by a killed job is never stale; the file's text (pid, host, start time) only names the holder in the
refusal. On file systems without flock (some NFS mounts) the lock cannot be taken and the job refuses to
start rather than run unprotected."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import time
from pathlib import Path


class FolderLocked(Exception):
    """The folder is locked by another running job (or the lock cannot be taken)."""


class FolderLock:
    """`with FolderLock(folder / ".lock"): ...` — holds the lock for the block; raises FolderLocked.
    `target` is what the lock guards, named in the refusal (default: the lock file's folder)."""

    def __init__(self, path: str | Path, what: str = "job", target: str | Path | None = None):
        self.path, self.what = Path(path), what
        self.target = Path(target) if target is not None else self.path.parent
        self._fd: int | None = None

    def __enter__(self) -> "FolderLock":
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise FolderLocked(f"{self.target}: another {self.what} is writing here "
                                   f"({self.holder()}); wait for it to finish, or write to another "
                                   f"folder") from None
            raise FolderLocked(f"{self.path}: cannot lock the output folder ({e.strerror}); "
                               "use a local file system") from None
        self._fd = fd
        info = json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                           "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}) + "\n"
        os.pwrite(fd, info.encode(), 0)
        os.ftruncate(fd, len(info.encode()))
        return self

    def holder(self) -> str:
        """'pid P on host H since T' from the lock file (as far as it can be read)."""
        try:
            info = json.loads(self.path.read_text())
            return f"pid {info['pid']} on host {info['host']} since {info['started']}"
        except (OSError, ValueError, KeyError, TypeError):
            return "holder unknown"

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
