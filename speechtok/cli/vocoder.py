"""`tok vocoder train`: unit HiFi-GAN and Vocos training."""

from __future__ import annotations

import json

import click

from speechtok.cli.common import device_option, device_or_fail, lock_output, output_option
from speechtok.cli.lm import print_config_option, stop_after_option


@click.group("vocoder")
def vocoder() -> None:
    """Vocoders: unit HiFi-GAN and Vocos."""


@vocoder.command("train")
@print_config_option("speechtok.vocoders.train_config:VocoderTrainConfig")
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False),
              help="YAML with any VocoderTrainConfig fields; the options below override it.")
@click.option("--kind", type=click.Choice(["unit-hifigan", "vocos"]))
@click.option("--shards", type=click.Path(exists=True),
              help="Shard folder or manifest.json (its corpus gives the audio).")
@output_option("DIR", "Run folder to create or resume (checkpoints, samples, final/).", required=False)
@click.option("--codec", help="Vocos: the codec stream of the shards it vocodes (e.g. encodec); 'mel' or "
                                "none: mel features.")
@click.option("--features", "features_alias", hidden=True, help="The old name of --codec.")
@click.option("--stream", help="Unit HiFi-GAN: the semantic stream of the shards it vocodes (needed when "
                               "they hold several).")
@click.option("--steps", type=int)
@click.option("--batch-size", type=int)
@click.option("--segment-seconds", type=float)
@click.option("--dedup/--no-dedup", default=None,
              help="Unit HiFi-GAN: deduplicated units + duration predictor.")
@click.option("--speakers/--no-speakers", default=None, help="Unit HiFi-GAN: speaker embedding.")
@click.option("--f0", help="Unit HiFi-GAN: F0-conditioned on this F0 stream of the shards "
                           "(tok encode -t f0:TRACKER).")
@click.option("--f0-source", type=click.Choice(["harmonic"]),
              help="Unit HiFi-GAN with --f0: also a harmonic (sine) excitation at F0, NSF-HiFiGAN style, so "
                   "that the output follows the F0 it is given (needs f0_norm none, the default).")
@stop_after_option
@device_option
def train_cmd(config_path, kind, shards, output, codec, features_alias, stream, steps, batch_size,
              segment_seconds, dedup, speakers, f0, f0_source, stop_after, device):
    """Train a vocoder; rerunning the same command resumes from the latest checkpoint. The config (YAML
    and options) and the shards' streams are checked before torch is imported."""
    from pathlib import Path

    from speechtok.cli.lm import training_errors
    from speechtok.shards import read_manifest
    from speechtok.training.config import ConfigError
    from speechtok.vocoders.train_config import (check_f0_stream, command_line, load_vocoder_config,
                                                 vocoded_stream)

    if codec and features_alias and codec != features_alias:
        raise click.UsageError(f"--codec {codec} and --features {features_alias} (its old name) disagree")
    given = {"kind": kind, "shards": shards, "output": output, "features": codec or features_alias,
             "stream": stream, "steps": steps,
             "batch_size": batch_size, "segment_seconds": segment_seconds, "dedup": dedup,
             "speakers": speakers, "f0": f0, "f0_source": f0_source}
    given = {k: v for k, v in given.items() if v is not None}
    for k in ("shards", "output"):  # command-line paths are relative to the working directory
        if k in given:
            given[k] = str(Path(given[k]).resolve())
    if not config_path:
        missing = [k for k in ("kind", "shards", "output") if k not in given]
        if missing:
            raise click.UsageError(f"give --{' --'.join(missing)} (or --config)")
    with training_errors(config_path):
        cfg = load_vocoder_config(config_path, given)
        try:
            cards = read_manifest(cfg.shards)[1]["tokenizers"]
            vocoded_stream(cfg, cards)
            check_f0_stream(cfg, cards)
        except ValueError as e:  # "key: why", named where the key came from
            key, why = str(e).split(": ", 1)
            if key in given:
                raise ConfigError(f"{command_line(key)}: {why}") from None
            raise ConfigError(f"{config_path or 'command line'}: {e}") from None
        lock_output(cfg.output, "tok vocoder train", folder=True)
        from speechtok.vocoders.train import train_vocoder

        result = train_vocoder(cfg, stop_after, str(device_or_fail(device)))
    click.echo(json.dumps(result))
