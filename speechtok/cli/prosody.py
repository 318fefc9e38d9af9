"""`tok prosody train`: pitch tokenizers (pGSLM bins, F0 VQ-VAE) from the F0 stream of shards, and style
tokenizers (k-means over pooled encoder features) from a corpus."""

from __future__ import annotations

import sys

import click

from speechtok.cli.common import (EXIT_SKIPPED, device_option, device_or_fail, exit_interrupted, fail,
                                  fail_os, lock_output, output_option, report_errors)
from speechtok.stopping import Interrupted, NonFinite

METHODS = ("bins", "vqvae", "style")


@click.group("prosody")
def prosody() -> None:
    """Pitch and style tokens (Expressive tokens in the README)."""


@prosody.command("train")
@click.argument("source", type=click.Path(exists=True))
@output_option("DIR", "Tokenizer folder to write (tokenizer.json, weights); use it as tok encode -t DIR.")
@click.option("--method", type=click.Choice(METHODS), required=True,
              help="bins: pGSLM equal-mass bins of log-F0; vqvae: F0 VQ-VAE at 12.5 Hz (needs a 200 Hz F0 "
                   "stream); style: k-means over pooled features of 1 s segments (SOURCE: a corpus).")
@click.option("--stream", default="f0", show_default=True, help="bins / vqvae: the F0 stream of the shards.")
@click.option("--bins", "n_bins", type=click.IntRange(min=2), default=32, show_default=True)
@click.option("--norm", type=click.Choice(["none", "mean", "meanstd"]), default="mean", show_default=True,
              help="bins: log-F0 minus the utterance's mean (pGSLM), also over its std, or as is.")
@click.option("--codes", type=click.IntRange(min=2), default=64, show_default=True,
              help="vqvae: codebook size; style: number of style tokens (k).")
@click.option("--steps", type=click.IntRange(min=1), default=2000, show_default=True,
              help="vqvae: training steps.")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True,
              help="vqvae: F0 windows of 208 frames (1.04 s) per step.")
@click.option("--model", "features", default="logmel", show_default=True,
              help="style: encoder: mfcc, logmel (weight-free) or a transformers audio model (hub id or "
                   "folder).")
@click.option("--layer", type=int, help="style: the transformers model's hidden layer to pool.")
@click.option("--segment-seconds", type=click.FloatRange(min=0.1), default=1.0, show_default=True,
              help="style: one token per segment of this length (Spirit-LM: 1 s).")
@click.option("--seed", type=int, default=0, show_default=True)
@device_option
def train_cmd(source, output, method, stream, n_bins, norm, codes, steps, batch_size, features, layer,
              segment_seconds, seed, device):
    """Fit a pitch tokenizer on the F0 stream of the shards SOURCE (bins, vqvae), or a style tokenizer on
    the corpus SOURCE (style)."""
    dev = str(device_or_fail(device))
    lock_output(output, "tok prosody train", folder=True)
    skipped: list = []
    try:
        if method == "bins":
            from speechtok.prosody.train import train_bins

            tok = train_bins(source, output, stream, n_bins, norm)
        elif method == "vqvae":
            from speechtok.prosody.train import train_vqvae

            tok = train_vqvae(source, output, stream, steps=steps, codes=codes, batch_size=batch_size,
                              seed=seed, device=dev,
                              log=lambda line: click.echo(line, err=True))
        else:
            from speechtok.prosody.style import train_style

            tok = train_style(source, output, features, layer, k=codes, segment_seconds=segment_seconds,
                              seed=seed, device=dev, errors=skipped)
    except Interrupted as e:  # vqvae: checkpoint saved, the same command resumes
        exit_interrupted(e)
    except NonFinite as e:
        fail(str(e), EXIT_SKIPPED)
    except OSError as e:  # environment: exit 3
        report_errors(skipped)
        fail_os(e)
    except (ValueError, KeyError) as e:  # usage or bad input (ShardError included): exit 2, as the trainers
        report_errors(skipped)
        fail(str(e))
    report_errors(skipped)  # style: utterances left out of the clusters (exit 1)
    click.echo(f"{method}: {tok.codebook_size} tokens at {tok.frame_rate:g} Hz -> {output}"
               + (f" ({len(skipped)} inputs skipped)" if skipped else ""))
    if skipped:
        sys.exit(EXIT_SKIPPED)
