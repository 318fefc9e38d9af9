"""What every `tok` command shares: one line per error on stderr, the exit codes, and the exit for a
fatal error.

Exit codes (README, "Exit codes"): 0 all done; 1 done, but some inputs were skipped (listed in
errors.jsonl); 2 usage or configuration error (bad option, config or input file); 3 environment error
(disk full, no permission, read-only file system, output folder locked by another job); 128 + N stopped by
signal N (130 SIGINT, 143 SIGTERM) after leaving the output resumable."""

from __future__ import annotations

import errno
import functools
import math
import os
import re
import signal
import sys
from pathlib import Path

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
TORCH_DEVICE = re.compile(r"(cpu|cuda|ipu|xpu|mkldnn|opengl|opencl|ideep|hip|ve|fpga|maia|xla|lazy|vulkan|"
                          r"mps|meta|hpu|mtia|privateuseone)(:\d+)?")


def checked_device(auto: bool = True):
    """A click callback refusing a --device value that torch.device would refuse (and 'auto' unless
    `auto`)."""
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


# the choices are vocoders.precision.VOCODER_PRECISIONS, spelled out so that --help does not import torch
vocoder_precision_option = click.option(
    "--vocoder-precision", type=click.Choice(["fp32", "tf32", "bf16"]), default="fp32", show_default=True,
    help="Vocoder compute: fp32 (exact), tf32 (CUDA tensor cores, float32 storage) or bf16 (autocast); "
         "BENCHMARKS.md `vocoder-*` reports each one's speed and waveform difference from fp32.")


def vocoder_device_or_fail(device: str, precision: str):
    """--device's torch.device, checked to run --vocoder-precision (tf32 needs CUDA), or a one-line usage
    error."""
    from speechtok.vocoders.precision import check_vocoder_precision

    dev = device_or_fail(device)
    try:
        check_vocoder_precision(precision, dev)
    except ValueError as e:
        fail(f"--vocoder-precision: {e}")
    return dev


def device_or_fail(device: str):
    """The torch.device for --device (see pipelines.batching.resolve_device), or a one-line usage error."""
    from speechtok.pipelines.batching import resolve_device

    try:
        return resolve_device(device)
    except ValueError as e:
        fail(str(e))


class FiniteRange(click.FloatRange):
    """click's FloatRange that also refuses nan and inf (which pass its comparisons), naming the option."""

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return number


# a number of seconds, or another size that must be a finite number above 0
POSITIVE = FiniteRange(min=0, min_open=True)


def output_option(what: str, help: str, required: bool = True):
    """`-o/--output` of every command: `what` "DIR" (a folder the command creates or fills) or "FILE"."""
    assert what in ("DIR", "FILE"), what
    return click.option("-o", "--output", required=required, metavar=what, help=help,
                        type=click.Path(file_okay=what == "FILE", dir_okay=what == "DIR"))


def output_lock_file(output: str | os.PathLike, folder: bool) -> Path:
    """The lock file of an output folder (OUTPUT/.lock.rRRR, as `tok encode`'s) or file (.NAME.lock.rRRR
    beside it) for this torchrun rank (0 outside torchrun)."""
    out, rank = Path(output), int(os.environ.get("RANK", 0))
    return out / f".lock.r{rank:03d}" if folder else out.parent / f".{out.name}.lock.r{rank:03d}"


def lock_output(output: str | os.PathLike, what: str, folder: bool) -> Path:
    """Hold the lock on this command's output until the command ends: a second writer of the same output
    folder (`folder`: OUTPUT/.lock.rRRR) or file (a sibling .NAME.lock.rRRR) is refused, exit 3, in one line
    naming the holder's pid and host. Each torchrun rank locks its own file, as `tok encode` does. Creating
    the lock file is also the check, before any work, that the output can be written (read-only, no
    permission: exit 3; a file where a folder should be: exit 2). Returns `output` as a Path."""
    from speechtok.folder_lock import FolderLock, FolderLocked

    home = Path(output) if folder else Path(output).parent
    made = [p for p in (home, *home.parents) if not p.exists()]  # the folders the lock itself creates
    lock = output_lock_file(output, folder)
    try:
        home.mkdir(parents=True, exist_ok=True)
        ctx = click.get_current_context()
        # runs after the lock below is released
        ctx.call_on_close(lambda: _leave_no_trace(lock, made, None if folder else Path(output)))
        ctx.with_resource(FolderLock(lock, what, output))
    except FolderLocked as e:
        fail(str(e), EXIT_ENVIRONMENT)
    except OSError as e:
        if e.errno in (errno.EEXIST, errno.ENOTDIR):  # a file where a folder should be: exit 2
            fail(f"{next(p for p in (home, *home.parents) if p.exists())}: is a file, not a folder")
        e.filename = str(home)  # name the output's folder, not the lock file in it
        fail_os(e)  # no permission, read-only file system: exit 3
    return Path(output)


def _leave_no_trace(lock: Path, made: list[Path], file: Path | None) -> None:
    """A command that wrote nothing leaves no lock file and no folder of its own making (a refused
    command leaves the disk as it found it)."""
    if file is not None and not file.exists():
        lock.unlink(missing_ok=True)
    if not made:
        return
    try:
        if [p.name for p in lock.parent.iterdir()] == [lock.name]:
            lock.unlink()
        for folder in made:  # innermost first
            folder.rmdir()
    except OSError:  # something was written there after all (or the folder is busy): keep it
        pass


def exit_interrupted(e: Exception) -> None:
    """A job stopped by signal N (speechtok.stopping.Interrupted): its one line, saying what a rerun does
    (rank 0 only under torchrun), then exit 128 + N."""
    if int(os.environ.get("RANK", 0)) == 0:
        click.echo(str(e), err=True)
    sys.exit(128 + e.signum)


def report_errors(errors: list[CorpusError | str], where: str | None = None, limit: int = 20) -> None:
    """'error: FILE: REASON' for the first `limit` errors, then how many more (and where they all are)."""
    for e in errors[:limit]:
        click.echo(f"error: {e if isinstance(e, str) else f'{e.file}: {e.reason}'}", err=True)
    if len(errors) > limit:
        click.echo(f"... and {len(errors) - limit} more" + (f" (all in {where})" if where else ""), err=True)


def fail(msg: str, code: int = EXIT_USAGE) -> None:
    """The one way a command ends on an error: 'error: MSG' on stderr, then exit `code`."""
    click.echo(f"error: {msg}", err=True)
    sys.exit(code)


class OneLineError(click.ClickException):
    """A click error (a bad option, a missing argument, a UsageError a command raises) shown as every other
    error is: one line 'error: ...' naming the command and where its help is, exit 2."""

    exit_code = EXIT_USAGE

    def __init__(self, e: click.ClickException):
        ctx = getattr(e, "ctx", None)
        where = f"{ctx.command_path}: " if ctx is not None else ""
        hint = f" (see '{ctx.command_path} --help')" if isinstance(e, click.UsageError) and ctx else ""
        super().__init__(f"{where}{' '.join(e.format_message().split())}{hint}")

    def show(self, file=None) -> None:
        click.echo(f"error: {self.format_message()}", err=True)


class OneLineErrorGroup(click.Group):
    """The `tok` group: click's own errors, in any subcommand, end like the commands' own (`OneLineError`);
    `tok GROUP` alone still prints that group's help."""

    def make_context(self, *args, **kwargs) -> click.Context:
        try:
            return super().make_context(*args, **kwargs)
        except click.exceptions.NoArgsIsHelpError:
            raise
        except click.ClickException as e:
            raise OneLineError(e) from None

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (click.exceptions.NoArgsIsHelpError, OneLineError):
            raise
        except click.ClickException as e:
            raise OneLineError(e) from None


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


def fail_with(e: Exception) -> None:
    """One line for an error that ends a command: an OSError as `fail_os` says, anything else (a bad input,
    option or configuration) exit 2."""
    if isinstance(e, OSError):
        fail_os(e)
    fail(str(e))


def check_audio_suffix(path: str) -> None:
    """Before any work: the extension of an audio OUTPUT names a format soundfile writes (else exit 2)."""
    import soundfile as sf

    if Path(path).suffix[1:].upper() not in sf.available_formats():
        fail(f"{path}: no audio format for the extension '{Path(path).suffix}' (use .wav or .flac)")


def write_output_file(path: Path, write, shown: Path | None = None) -> None:
    """`write(path)` (np.save, soundfile.write, ...), its failure one line naming `shown` (default `path`),
    exit 3 (soundfile says only 'System error' for a full disk or a folder that went away)."""
    try:
        write(path)
    except OSError as e:
        e.filename = str(shown or e.filename or path)
        fail_os(e)
    except RuntimeError as e:  # soundfile's LibsndfileError
        fail(f"{shown or path}: cannot write ({' '.join(str(e).split())})", EXIT_ENVIRONMENT)


def write_whole_file(path: Path, write) -> None:
    """`write_output_file`, but `write` fills a hidden sibling (.NAME.partial.EXT: soundfile reads the
    format from the extension) that is renamed onto `path` once whole, so a signal or a full disk never
    leaves a half-written OUTPUT that a rerun or a reader would take for done."""
    path = Path(path)
    partial = path.with_name(f".{path.name}.partial{path.suffix}")
    try:
        write_output_file(partial, lambda tmp: (write(tmp), os.replace(tmp, path)), shown=path)
    finally:
        partial.unlink(missing_ok=True)


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
