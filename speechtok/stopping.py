"""Why a long command stops before the end, shared by `tok encode` and the trainers: SIGTERM / SIGINT
(the job finishes what it is doing, leaves its output resumable and exits 128 + N), or numbers that are no
longer finite (a trainer stops, exit 1, keeping its last good checkpoint)."""

from __future__ import annotations

import signal
import sys
import threading
from contextlib import contextmanager
from typing import Iterator


class Interrupted(Exception):
    """SIGTERM or SIGINT: the job stopped where its output is resumable; `detail` says where."""

    def __init__(self, signum: int, detail: str = ""):
        super().__init__(f"stopped by {signal.Signals(signum).name}" + (f" {detail}" if detail else ""))
        self.signum, self.detail = signum, detail


class NonFinite(Exception):
    """A trainer's loss, gradient norm or weights became infinite or NaN: the run stops without saving."""


class StopFlag:
    """The first SIGTERM / SIGINT's number, once one came. Inside `at_once(detail)` (work whose loss costs
    only a rerun of it: a long batch's forward, one utterance's alignment) a signal raises Interrupted
    at once instead of waiting for the work to end."""

    signum: int | None = None
    detail: str | None = None  # set inside at_once

    @contextmanager
    def at_once(self, detail: str) -> Iterator[None]:
        if self.signum is not None:
            raise Interrupted(self.signum, detail)
        self.detail = detail
        try:
            yield
        finally:
            self.detail = None


@contextmanager
def stop_on_signals() -> Iterator[StopFlag]:
    """SIGTERM / SIGINT only set the flag (the job checks it between its steps or items); a second one
    raises Interrupted at once, with the first signal's number. Outside the main thread: no handlers."""
    flag = StopFlag()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum, frame):
        if flag.signum is not None:
            raise Interrupted(flag.signum, "(a second signal: stopped at once)")
        flag.signum = signum
        if flag.detail is not None:
            detail, flag.detail = flag.detail, None
            raise Interrupted(signum, detail)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield flag
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _exit_handler(what: str):
    def handler(signum, frame):
        print(f"stopped by {signal.Signals(signum).name}: {what}", file=sys.stderr, flush=True)
        raise SystemExit(128 + signum)
    return handler


def exit_on_signals_until_replaced() -> None:
    """From `tok`'s start (its imports take seconds) until a command installs its own handlers: SIGTERM /
    SIGINT end the process with one line and exit 128 + N, not click's "Aborted!" (exit 1) or a silent 143;
    SystemExit unwinds, so a lock already taken is released."""
    if threading.current_thread() is threading.main_thread():
        handler = _exit_handler("rerun the command")
        for s in (signal.SIGTERM, signal.SIGINT):
            signal.signal(s, handler)


@contextmanager
def exit_on_signals(what: str) -> Iterator[None]:
    """For a command with nothing to resume (an evaluation, one file): SIGTERM / SIGINT end it at once with
    one line, `stopped by SIGINT: ` + `what` (what is lost), and exit 128 + N, instead of click's
    "Aborted!" (exit 1) or a silent 143. Outside the main thread: no handlers."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    previous = {s: signal.signal(s, _exit_handler(what)) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
