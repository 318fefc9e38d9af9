"""What every `tok` command shares: one line per error on stderr, and the exit for a fatal one."""

from __future__ import annotations

import sys

import click

from speechtok.corpus import CorpusError


def report_errors(errors: list[CorpusError | str], where: str | None = None, limit: int = 20) -> None:
    """'error: FILE: REASON' for the first `limit` errors, then how many more (and where they all are)."""
    for e in errors[:limit]:
        click.echo(f"error: {e if isinstance(e, str) else f'{e.file}: {e.reason}'}", err=True)
    if len(errors) > limit:
        click.echo(f"... and {len(errors) - limit} more" + (f" (all in {where})" if where else ""), err=True)


def fail(msg: str, code: int = 2) -> None:
    """Exit codes: 2 usage or config error, 3 environment error (disk, permissions, lock)."""
    click.echo(f"error: {msg}", err=True)
    sys.exit(code)
