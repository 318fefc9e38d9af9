"""`tok lm`: extend an LLM's vocabulary with audio tokens, and train it."""

from __future__ import annotations

import json
from pathlib import Path

import click


@click.group("lm")
def lm() -> None:
    """Token language models: vocabulary extension and training."""


@lm.command("extend-vocab")
@click.argument("base")
@click.option("-m", "--manifest", required=True, type=click.Path(exists=True),
              help="Shard manifest.json (or its folder) whose tokenizers define the audio tokens.")
@click.option("-o", "--output", required=True, type=click.Path(), help="Directory for model + tokenizer.")
@click.option("--codec", default=None, help="Also add the tokens of this codec stream (e.g. 'encodec').")
@click.option("--n-q", type=int, default=None, help="Codebooks of --codec to add (default: all in the shards).")
@click.option("--from-scratch", is_flag=True, help="Take BASE's config and tokenizer; initialise new weights.")
def extend_vocab_cmd(base, manifest, output, codec, n_q, from_scratch):
    """Add <s_i> units, codec tokens and [TEXT]/[SPEECH] to BASE (hub id or local directory)."""
    from speechtok.lm.vocab import extend_vocab, load_base
    from speechtok.shards import ShardError, read_manifest

    try:
        _, man = read_manifest(manifest)
        model, tokenizer = load_base(base, from_scratch)
        old = len(tokenizer)
        vocab = extend_vocab(model, tokenizer, man, codec, n_q)
    except (ValueError, OSError, ShardError) as e:
        raise click.ClickException(str(e)) from None
    out = Path(output)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    vocab.save(out)
    click.echo(f"{base}: vocabulary {old} -> {len(tokenizer)} (embeddings {model.get_input_embeddings().weight.shape[0]}); "
               f"units <s_0>..<s_{vocab.k - 1}> at ids {vocab.semantic_first_id}..{vocab.semantic_first_id + vocab.k - 1}"
               + (f", {vocab.n_q}x{vocab.codebook_size} {vocab.codec_stream} tokens from id {vocab.codec_first_id}"
                  if vocab.codec_stream else "") + f" -> {out}")


@lm.command("train")
@click.argument("config", type=click.Path(exists=True, dir_okay=False))
@click.option("--stop-after", type=int, default=None, help="Stop after this many steps (a checkpoint is saved).")
def train_cmd(config, stop_after):
    """Train a token LM as CONFIG (YAML) says; rerunning resumes from the latest checkpoint."""
    from speechtok.lm.config import load_config
    from speechtok.lm.train import train

    try:
        run = load_config(config)
    except (ValueError, OSError, TypeError) as e:
        raise click.ClickException(f"{config}: {e}") from None
    result = train(run, stop_after=stop_after)
    click.echo(json.dumps(result))
