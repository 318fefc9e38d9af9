"""What every `tok` command shares: one line per error on stderr, the exit codes, and the exit for a
fatal error.

Exit codes (README, "Exit codes"): 0 all done; 1 done, but some inputs were skipped (listed in
errors.jsonl); 2 usage or configuration error (bad option, config or input file); 3 environment error
(disk full, no permission, read-only file system, output folder locked by another job); 128 + N stopped by
signal N (130 SIGINT, 143 SIGTERM) after leaving the output resumable."""

from __future__ import annotations

import errno
import functools
import re
import signal
import sys

import click

from speechtok.corpus import CorpusError, CorpusSource

EXIT_OK = 0
EXIT_SKIPPED = 1
EXIT_USAGE = 2
EXIT_ENVIRONMENT = 3
EXIT_SIGINT = 128 + signal.SIGINT
EXIT_SIGTERM = 128 + signal.SIGTERM

# errnos that say something about the machine, not about what the user asked for
ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.EIO,
                      errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.EBUSY, errno.ETXTBSY}


# the device types torch.device accepts, so that a typo fails before torch is imported
TORCH_DEVICE = re.compile(r"(cpu|cuda|ipu|xpu|mkldnn|opengl|opencl|ideep|hip|ve|fpga|maia|xla|lazy|vulkan|mps|"
                          r"meta|hpu|mtia|privateuseone)(:\d+)?")


def checked_device(auto: bool = True):
    """A click callback refusing a --device value that torch.device would refuse (and 'auto' unless `auto`)."""
    def check(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
        if value is None or (auto and value == "auto") or TORCH_DEVICE.fullmatch(value):
            return value
        raise click.BadParameter(f"{value!r}: {'auto, ' if auto else ''}cpu, cuda, cuda:N, mps, xpu, ...")
    return check


# `--device` of every command that runs a model (align/segment default to the CPU: see cli/align.py)
device_option = click.option("--device", default="auto", show_default=True, metavar="DEVICE",
                             callback=checked_device(),
                             help="'auto' (this process's GPU, LOCAL_RANK under torchrun, else the CPU), "
                                  "'cpu', 'cuda', 'cuda:1', ...")


def device_or_fail(device: str):
    """The torch.device for --device (see pipelines.batching.resolve_device), or a one-line usage error."""
    from speechtok.pipelines.batching import resolve_device

    try:
        return resolve_device(device)
    except ValueError as e:
        fail(str(e))


def output_option(what: str, help: str, required: bool = True):
    """`-o/--output` of every command: `what` "DIR" (a folder the command creates or fills) or "FILE"."""
    assert what in ("DIR", "FILE"), what
    return click.option("-o", "--output", required=required, metavar=what, help=help,
                        type=click.Path(file_okay=what == "FILE", dir_okay=what == "DIR"))


def report_errors(errors: list[CorpusError | str], where: str | None = None, limit: int = 20) -> None:
    """'error: FILE: REASON' for the first `limit` errors, then how many more (and where they all are)."""
    for e in errors[:limit]:
        click.echo(f"error: {e if isinstance(e, str) else f'{e.file}: {e.reason}'}", err=True)
    if len(errors) > limit:
        click.echo(f"... and {len(errors) - limit} more" + (f" (all in {where})" if where else ""), err=True)


def fail(msg: str, code: int = EXIT_USAGE) -> None:
    click.echo(f"error: {msg}", err=True)
    sys.exit(code)


def os_error_line(e: OSError) -> str:
    """'FILE: what went wrong' for an OSError, with a hint for the usual environment problems."""
    what = e.strerror or str(e)
    hint = {errno.ENOSPC: " (disk full: free space, then rerun the same command to resume)",
            errno.EDQUOT: " (quota exceeded: free space, then rerun the same command to resume)",
            errno.EROFS: " (read-only file system: choose another output folder)",
            errno.EACCES: " (no permission: choose another folder or fix its permissions)",
            errno.EPERM: " (not permitted: choose another folder or fix its permissions)"}.get(e.errno, "")
    where = e.filename if e.filename is not None else ""
    return f"{where}: {what}{hint}" if where else f"{what}{hint}"


def fail_os(e: OSError) -> None:
    """One line for an OSError; exit 3 for environment problems, else 2 (a missing or misnamed path)."""
    fail(os_error_line(e), EXIT_ENVIRONMENT if e.errno in ENVIRONMENT_ERRNOS else EXIT_USAGE)


def corpus_options(argument: str = "corpus"):
    """The options of every command that reads a corpus, for the formats that leave a choice (lhotse's
    supervisions, a Hugging Face dataset's columns); the command gets `argument` as a CorpusSource."""
    options = [
        click.option("--supervisions", type=click.Path(exists=True, dir_okay=False), default=None,
                     help="lhotse: the SupervisionSet for a RecordingSet corpus (default: the file "
                          "named like it with 'supervisions' for 'recordings', if there is one)."),
        click.option("--text-column", default=None, metavar="NAME",
                     help="Hugging Face datasets: the transcript column (default text, transcription "
                          "or sentence)."),
        click.option("--speaker-column", default=None, metavar="NAME",
                     help="Hugging Face datasets: the speaker column (default speaker_id, speaker or "
                          "client_id)."),
        click.option("--id-column", default=None, metavar="NAME",
                     help="Hugging Face datasets: the utterance id column (default id, else the row "
                          "number)."),
    ]

    def decorate(command):
        @functools.wraps(command)
        def run(*args, supervisions, text_column, speaker_column, id_column, **kwargs):
            kwargs[argument] = CorpusSource(kwargs[argument], supervisions, text_column, speaker_column,
                                            id_column)
            return command(*args, **kwargs)

        for option in reversed(options):
            run = option(run)
        return run

    return decorate
