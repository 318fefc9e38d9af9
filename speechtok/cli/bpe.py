"""`tok bpe train`: Acoustic BPE merges over the unit or codec-token streams of encoded shards."""

from __future__ import annotations

import math

import click

from speechtok.cli.common import fail, fail_with, lock_output, output_option


@click.group("bpe")
def bpe() -> None:
    """Acoustic BPE (Shen et al., 2024) over unit or codec-token streams."""


@bpe.command("train")
@click.argument("shards", type=click.Path(exists=True))
@output_option("DIR", "Folder to write: tokenizer.json (Hugging Face tokenizers) and bpe.json.")
@click.option("--vocab-size", type=click.IntRange(min=2), required=True,
              help="Base codes (k, or n_q × codebook size) plus the merged tokens to learn.")
@click.option("--stream", default=None, metavar="NAME", help="Which token stream (default: the first one).")
@click.option("--min-frequency", type=click.IntRange(min=1), default=2, show_default=True)
@click.option("--max-token-frames", type=click.IntRange(min=1), default=None,
              help="The most frames one merged token may span.")
@click.option("--no-verify", is_flag=True, help="Skip the shards' checksum check.")
def train_cmd(shards, output, vocab_size, stream, min_frequency, max_token_frames, no_verify):
    """Learn BPE merges over STREAM of SHARDS (units as written, run-length or not; codec frames flattened
    codebook by codebook) and report the sequence-length reduction and bitrate on them."""
    from speechtok.shards import ShardError, read_manifest, read_shards
    from speechtok.tokenizers.unit_bpe import stream_source, train_bpe
    from speechtok.unit_stream import manifest_dedup

    lock_output(output, "tok bpe train", folder=True)
    try:
        _, manifest = read_manifest(shards)
        cards = manifest["tokenizers"]
        name = stream or next(iter(cards))
        if name not in cards:
            fail(f"{shards}: no stream '{name}' (streams: {', '.join(cards)})")
        card = cards[name]
        source = stream_source(name, card, manifest_dedup(manifest, name))
        size, n_q = (card["k"], 1) if card["type"] == "semantic" else (card["codebook_size"], card["n_q"])
        streams, seconds = [], 0.0
        for sample in read_shards(shards, verify=not no_verify):
            if name not in sample or "duration" not in sample:
                fail(f"{shards}: sample {sample.get('id', sample['__key__'])} has no '{name}' tokens or "
                     f"duration")
            streams.append(sample[name])
            seconds += float(sample["duration"])
        model = train_bpe(streams, size, vocab_size, n_q, min_frequency, max_token_frames, source)
    except ShardError as e:
        fail(str(e))
    except ValueError as e:
        fail(f"{shards}: {e}")
    codes = sum(int(s.size) for s in streams)
    tokens = sum(len(model.encode(s)) for s in streams)
    report = {"stream": name, "vocab_size": model.vocab_size, "codes": codes, "tokens": tokens,
              "length_reduction": codes / max(tokens, 1),
              "bitrate_codes_bps": codes * math.log2(size) / max(seconds, 1e-9),
              "bitrate_tokens_bps": tokens * math.log2(model.vocab_size) / max(seconds, 1e-9)}
    try:
        model.save(output, trained_on=report)
    except OSError as e:
        fail_with(e)
    click.echo(f"{name}: {model.vocab_size} tokens ({model.vocab_size - size * n_q} merged); {codes:,} codes "
               f"→ {tokens:,} tokens = {report['length_reduction']:.2f}x shorter; "
               f"{report['bitrate_codes_bps']:.0f} → {report['bitrate_tokens_bps']:.0f} bit/s -> {output}")
