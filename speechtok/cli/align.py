"""`tok align` and `tok segment`: from recordings with transcripts to an aligned, utterance-sized corpus."""

from __future__ import annotations

import sys

import click

from speechtok.cli.common import (POSITIVE, checked_device, corpus_options, exit_interrupted, fail_with,
                                  lock_output, output_option, report_errors)
from speechtok.stopping import Interrupted

aligner_option = click.option(
    "--aligner", "-a", default="pocketsphinx", show_default=True,
    help="'pocketsphinx' (offline US English: words + ARPAbet phones), or a transformers CTC model "
         "(wav2vec2/MMS hub id or local directory with its tokenizer: words, any language).")
jobs_option = click.option("--jobs", "-j", type=click.IntRange(min=1), default=1, show_default=True,
                           help="Processes working in parallel (CPU), one torch thread each.")
# the CPU by default, unlike other commands: --jobs > 1 forks CPU workers that share the loaded aligner
device_option = click.option("--device", default="cpu", show_default=True, metavar="DEVICE",
                             callback=checked_device(auto=False), help="For a CTC model: 'cpu', 'cuda', ...")


def _echo_lines(lines: list[str], prefix: str, limit: int = 20) -> None:
    for line in lines[:limit]:
        click.echo(f"{prefix}: {line}", err=True)
    if len(lines) > limit:
        click.echo(f"... and {len(lines) - limit} more", err=True)


@click.command("align")
@click.argument("corpus", type=click.Path(exists=True))
@output_option("FILE", "The aligned JSONL manifest file to write (or resume).")
@aligner_option
@click.option("--phones/--no-phones", default=True, show_default=True,
              help="Phone alignments too (pocketsphinx; a second, slower pass).")
@jobs_option
@device_option
@click.option("--batch-seconds", type=POSITIVE, default=60.0, show_default=True,
              help="Audio per aligner batch.")
@click.option("--quiet", "-q", is_flag=True)
@corpus_options()
def align_cmd(corpus, output, aligner, phones, jobs, device, batch_seconds, quiet):
    """Add word timings (and phones) to every utterance of CORPUS (folder or JSONL manifest) that has a
    transcript ('text', or a .txt/.lab file beside the audio), writing OUTPUT for `tok encode` and
    `tok eval tokens --alignments`. A rerun resumes; exits 1 when any utterance failed. Under torchrun
    the ranks share the utterances (--device cuda: one GPU per rank)."""
    from speechtok.align.pipeline import align_corpus
    from speechtok.pipelines.encode import dist_info

    rank, world = dist_info()
    lock_output(output, "tok align", folder=False)
    try:
        s = align_corpus(corpus, output, aligner, phones, jobs, device, batch_seconds,
                         not quiet and rank == 0)
    except Interrupted as e:
        exit_interrupted(e)
    except (OSError, ValueError, ImportError) as e:
        fail_with(e)
    _echo_lines(s.notes, "note")
    _echo_lines(s.unplaced, "unplaced")
    report_errors(s.errors)
    click.echo(f"rank {rank}/{world}: {s.line()}" if world > 1 else s.line())
    sys.exit(1 if s.errors else 0)


@click.command("segment")
@click.argument("source", type=click.Path(exists=True))
@output_option("FILE", "The segments JSONL manifest file to write (or resume).")
@click.option("--min-seconds", type=POSITIVE, default=3.0, show_default=True)
@click.option("--max-seconds", type=POSITIVE, default=20.0, show_default=True)
@click.option("--min-pause", type=POSITIVE, default=0.2, show_default=True,
              help="Shortest pause to cut at (s).")
@click.option("--vad", type=click.Choice(["silero", "energy"]), default="silero", show_default=True,
              help="Pause finder for recordings without a transcript (energy: no extra package).")
@aligner_option
@jobs_option
@device_option
@click.option("--quiet", "-q", is_flag=True)
@corpus_options("source")
def segment_cmd(source, output, min_seconds, max_seconds, min_pause, vad, aligner, jobs, device, quiet):
    """Cut long recordings (an audio file, a folder, or a JSONL manifest) into utterances of
    --min-seconds..--max-seconds at pauses. OUTPUT lists start/end into the original files (no audio is
    written). A recording with a transcript is aligned first and cut between words, and each segment
    carries its text and word timings. A rerun resumes."""
    from speechtok.align.segment import segment_corpus

    if not 0 < min_seconds <= max_seconds:
        raise click.UsageError("need 0 < --min-seconds <= --max-seconds")
    lock_output(output, "tok segment", folder=False)
    try:
        s = segment_corpus(source, output, min_seconds, max_seconds, min_pause, vad, aligner, jobs, device,
                           not quiet)
    except Interrupted as e:
        exit_interrupted(e)
    except (OSError, ValueError, ImportError) as e:
        fail_with(e)
    _echo_lines(s.notes, "note")
    report_errors(s.errors)
    click.echo(s.line())
    sys.exit(1 if s.errors else 0)
