"""`tok`: the command line."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from speechtok.cli.common import (EXIT_ENVIRONMENT, EXIT_SKIPPED, POSITIVE, OneLineErrorGroup,
                                  check_audio_suffix, corpus_options, device_option, device_or_fail, fail,
                                  fail_os, fail_with, lock_output, output_option, report_errors,
                                  vocoder_device_or_fail, vocoder_precision_option, write_output_file,
                                  write_whole_file)
from speechtok.stopping import Interrupted, exit_on_signals, exit_on_signals_until_replaced
from speechtok.corpus import CorpusError


def _quiet_transformers() -> None:
    # environment variables rather than an import: importing transformers costs seconds
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


@click.group(cls=OneLineErrorGroup)
@click.version_option(package_name="speechtok")
def cli() -> None:
    """speechtok: turn speech corpora into discrete tokens, and back."""
    _quiet_transformers()


model_option = click.option("--model", "-m", required=True,
                            help="'mfcc', 'logmel', or a HuBERT/WavLM/wav2vec2 checkpoint (hub id or local "
                                 "directory).")
layer_option = click.option("--layer", "-l", type=int, default=None,
                            help="Transformer layer whose output is clustered (1 = first), for checkpoints.")
precision_option = click.option("--precision", type=click.Choice(["auto", "fp32", "bf16", "fp16"]),
                                default="auto", show_default=True,
                                help="Model compute precision (auto: bf16 on GPU, fp32 on CPU).")


overwrite_option = click.option("--overwrite", is_flag=True,
                                help="Replace the tokenizer in OUTPUT (shards, LMs and vocoders made with "
                                     "it no longer match it).")


def tokenizer_output(output: str, overwrite: bool) -> None:
    """Before any work: OUTPUT holds no tokenizer (unless `overwrite`)."""
    from speechtok.tokenizers.semantic import CENTROIDS_FILE
    from speechtok.tokenizers.spec import CARD_FILE

    held = [name for name in (CARD_FILE, CENTROIDS_FILE) if (Path(output) / name).exists()]
    if held and not overwrite:
        fail(f"{output}: holds a tokenizer ({', '.join(held)}) that shards, LMs and vocoders may depend on; "
             "write to another folder, or pass --overwrite to replace it")


def _features(model: str, layer: int | None, device: str, precision: str):
    from speechtok.pipelines.encode import encode_device_defaults
    from speechtok.tokenizers.features import build_features, parse_model_spec

    dev = device_or_fail(device)
    if precision == "auto":
        precision = encode_device_defaults(dev)["precision"]
    try:
        return build_features(parse_model_spec(model, layer), device=dev, precision=precision), dev
    except (ValueError, OSError) as e:
        fail_with(e)


@cli.command("train-kmeans")
@click.argument("corpus", type=click.Path(exists=True))
@model_option
@layer_option
@click.option("-k", "--clusters", "k", type=click.IntRange(min=1), required=True, help="Number of units.")
@output_option("DIR", "Tokenizer folder to write (tokenizer.json, centroids.npy).")
@click.option("--max-frames", type=click.IntRange(min=1), default=1_000_000, show_default=True,
              help="Cap on frames sampled.")
@click.option("--iters", type=click.IntRange(min=1), default=20, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--backend", type=click.Choice(["auto", "faiss", "torch"]), default="auto", show_default=True)
@click.option("--feature-cache", type=click.Path(file_okay=False), default=None,
              help="Write the frames to this folder (fp16 chunks) and stream k-means over all of them "
                   "from disk (torch, exact Lloyd; resumes from its checkpoint; under torchrun the ranks "
                   "share it).")
@click.option("--kmeans", "algorithm", type=click.Choice(["lloyd", "mini-batch"]), default="lloyd",
              show_default=True,
              help="With --feature-cache: full Lloyd iterations, or mini-batch k-means (--iters passes of "
                   "--batch-frames random frames a step, sklearn MiniBatchKMeans' update).")
@click.option("--batch-frames", type=click.IntRange(min=1), default=10_000, show_default=True,
              help="Frames a mini-batch step (fairseq's simple_kmeans uses 10,000).")
@click.option("--dedup/--no-dedup", default=False, show_default=True, help="Default for `tok encode`.")
@click.option("--batch-seconds", type=POSITIVE, default=None,
              help="Padded audio per batch (default 180 on GPU, 20 on CPU).")
@click.option("--num-workers", type=click.IntRange(min=0), default=None, help="Audio loading processes.")
@overwrite_option
@device_option
@precision_option
@click.option("--quiet", "-q", is_flag=True)
@corpus_options()
def train_kmeans_cmd(corpus, model, layer, k, output, max_frames, iters, seed, backend, feature_cache,
                     algorithm, batch_frames, dedup, batch_seconds, num_workers, overwrite, device, precision,
                     quiet):
    """Learn k-means units on features of CORPUS (a folder, a JSONL manifest, lhotse manifests or Shar, or a
    Hugging Face dataset: README "Preparing a corpus")."""
    from speechtok.pipelines.encode import encode_device_defaults
    from speechtok.pipelines.train_kmeans import train_tokenizer

    if algorithm == "mini-batch" and feature_cache is None:
        raise click.UsageError("--kmeans mini-batch runs on the feature cache: give --feature-cache DIR")
    lock_output(output, "tok train-kmeans", folder=True)
    tokenizer_output(output, overwrite)
    click.get_current_context().with_resource(exit_on_signals("no tokenizer was written; rerun the command"))
    features, dev = _features(model, layer, device, precision)
    defaults = encode_device_defaults(dev)
    workers = defaults["num_workers"] if num_workers is None else num_workers
    batch_seconds = defaults["max_batch_seconds"] if batch_seconds is None else batch_seconds
    errors: list[CorpusError] = []
    try:
        tok, result = train_tokenizer(corpus, features, k, output, max_frames=max_frames, seed=seed,
                                      iters=iters, backend=backend, device=str(dev), dedup=dedup,
                                      max_batch_seconds=batch_seconds,
                                      num_workers=workers, progress=not quiet, errors=errors,
                                      feature_cache=feature_cache,
                                      batch_frames=batch_frames if algorithm == "mini-batch" else None)
    except (ValueError, RuntimeError, OSError) as e:
        report_errors(errors)
        fail_with(e)
    report_errors(errors)
    steps = "steps" if algorithm == "mini-batch" else "iterations"
    click.echo(f"k-means: k={k} on {tok.meta['kmeans']['frames']} frames, {result.backend}, "
               f"{result.iterations} {steps}, {result.seconds:.2f} s, inertia {result.inertia:.4f} "
               f"-> {output}" + (f" ({len(errors)} inputs skipped)" if errors else ""))
    if errors:  # the tokenizer is written, without them
        sys.exit(EXIT_SKIPPED)


@cli.command("import-kmeans")
@click.argument("checkpoint", type=click.Path(exists=True, dir_okay=False))
@model_option
@layer_option
@output_option("DIR", "Tokenizer folder to write (tokenizer.json, centroids.npy).")
@click.option("--trust-pickle", is_flag=True,
              help="Allow unpickling (sklearn/joblib checkpoints can run code).")
@click.option("--dedup/--no-dedup", default=False, show_default=True)
@overwrite_option
def import_kmeans_cmd(checkpoint, model, layer, output, trust_pickle, dedup, overwrite):
    """Convert a fairseq/textlesslib k-means CHECKPOINT (joblib pickle, .npy, .pt) into a tokenizer
    directory."""
    from speechtok.tokenizers.kmeans import load_kmeans_checkpoint
    from speechtok.shards import sha256_of
    from speechtok.tokenizers.semantic import SemanticTokenizer

    lock_output(output, "tok import-kmeans", folder=True)
    tokenizer_output(output, overwrite)
    try:
        centroids = load_kmeans_checkpoint(checkpoint, trust_pickle=trust_pickle)
    except (PermissionError, ValueError, OSError) as e:
        fail(str(e))
    features, _ = _features(model, layer, "cpu", "fp32")
    meta = {"imported_from": {"file": Path(checkpoint).name, "sha256": sha256_of(checkpoint)}}
    try:
        tok = SemanticTokenizer(features, centroids, dedup=dedup, meta=meta)
    except ValueError as e:
        fail(f"{checkpoint}: {e}")
    write_output_file(Path(output), tok.save)
    click.echo(f"imported k={tok.k} centroids of dim {centroids.shape[1]} -> {output}")


@cli.command("encode")
@click.argument("corpus", type=click.Path(exists=True))
@click.option("-t", "--tokenizer", "tokenizers", required=True, multiple=True,
              help="A semantic tokenizer DIR[:name=NAME], or a codec KIND:MODEL[:nq=N][:name=NAME] "
                   "(KIND: encodec, dac, mimi). Repeat for several tokenizers in one pass.")
@output_option("DIR", "Folder to create or resume: shards and manifest.json.")
@click.option("--dedup/--no-dedup", default=None,
              help="Run-length units plus durations (default: the tokenizer's).")
@click.option("--bpe", type=click.Path(exists=True, file_okay=False), multiple=True,
              help="A `tok bpe train` folder: also write its token ids of the stream it was trained on "
                   "as the stream STREAM_bpe (the stream itself is kept). Repeatable.")
@click.option("--batch-seconds", type=POSITIVE, default=None,
              help="Padded audio per batch (default 180 on GPU, 20 on CPU).")
@click.option("--batch-size", type=click.IntRange(min=1), default=128, show_default=True,
              help="Utterances per batch at most.")
@click.option("--num-workers", type=click.IntRange(min=0), default=None,
              help="Audio loading processes (default: one per core on GPU; on CPU 2, or 0 with 4 cores or "
                   "fewer).")
@click.option("--shard-max-mb", type=POSITIVE, default=256.0, show_default=True)
@click.option("--shard-max-count", type=click.IntRange(min=1), default=10_000, show_default=True)
@click.option("--strict", is_flag=True, help="Stop at the first bad input (a rerun resumes).")
@click.option("--append", is_flag=True, help="Accept a corpus that grew at its end since the job started: "
              "encode only the new utterances.")
@click.option("--allow-model-mismatch", is_flag=True,
              help="Use model weights that differ from the tokenizer card's sha256 (a deliberate swap).")
@click.option("--batch-invariant", is_flag=True,
              help="Encode every utterance alone: tokens bit for bit independent of the batch plan (batched "
                   "kernels round differently and can flip a near-tie token; BENCHMARKS.md "
                   "batch-invariance), at the cost of batching.")
@device_option
@precision_option
@click.option("--quiet", "-q", is_flag=True)
@corpus_options()
def encode_cmd(corpus, tokenizers, output, dedup, bpe, batch_seconds, batch_size, num_workers, shard_max_mb,
               shard_max_count, strict, append, allow_model_mismatch, batch_invariant, device, precision,
               quiet):
    """Tokenize CORPUS (a folder, a JSONL manifest, lhotse manifests or Shar, or a Hugging Face dataset)
    into webdataset shards under OUTPUT.

    Rerunning the same command after an interruption resumes it (and repairs shards that no longer match
    their checksum). Under torchrun, each rank encodes a contiguous part of the corpus and rank 0 writes one
    manifest. Exits 0 when all went in, 1 when some inputs were skipped, 2 for a usage error (or another job
    or a changed corpus in OUTPUT), 3 for an environment error (disk full, permissions, OUTPUT locked by a
    running job), 143/130 after SIGTERM/SIGINT."""
    from speechtok.tokenizers.spec import check_spec

    from speechtok.tokenizers.unit_bpe import UnitBPE

    try:  # before torch is imported: a typo costs a fraction of a second, not the imports
        for t in tokenizers:
            check_spec(t)
        bpes = tuple(UnitBPE.load(folder) for folder in bpe)
    except OSError as e:
        fail_os(e)
    except ValueError as e:
        fail(str(e))
    from speechtok.folder_lock import FolderLocked
    from speechtok.pipelines.encode import (ERRORS_FILE, EncodeOptions, StrictError, dist_info, encode_corpus,
                                            encode_device_defaults)
    from speechtok.tokenizers.load import load_tokenizer

    dev = device_or_fail(device)
    defaults = encode_device_defaults(dev)
    try:
        prec = defaults["precision"] if precision == "auto" else precision
        toks = [load_tokenizer(t, device=dev, precision=prec, allow_model_mismatch=allow_model_mismatch)
                for t in tokenizers]
        for t in toks:
            if batch_invariant and not hasattr(t, "batch_invariant"):
                raise ValueError(f"--batch-invariant: {t.name} has no batch-invariant mode (it encodes each "
                                 "utterance alone already or is not a model)")
            if batch_invariant:
                t.batch_invariant = True
    except OSError as e:
        fail_os(e)
    except ValueError as e:
        fail(str(e))
    opts = EncodeOptions(dedup=dedup, max_batch_size=batch_size,
                         max_batch_seconds=defaults["max_batch_seconds"] if batch_seconds is None
                         else batch_seconds,
                         num_workers=defaults["num_workers"] if num_workers is None else num_workers,
                         shard_max_bytes=max(1, int(shard_max_mb * (1 << 20))),
                         shard_max_count=shard_max_count,
                         progress=not quiet, strict=strict, append=append, bpe=bpes)
    rank, _ = dist_info()
    opts.progress = opts.progress and rank == 0
    try:
        summary = encode_corpus(corpus, toks, output, opts)
    except StrictError as e:
        click.echo(f"error: {e}", err=True)
        click.echo("stopped (--strict); rerun without --strict to skip bad inputs, or fix them and rerun",
                   err=True)
        sys.exit(EXIT_SKIPPED)
    except (Interrupted, KeyboardInterrupt) as e:
        import signal

        signum = getattr(e, "signum", signal.SIGINT)
        click.echo(f"stopped by {signal.Signals(signum).name}: finished shards are kept in {output} (no .tmp "
                   f"left); rerun the same command to resume", err=True)
        sys.exit(128 + signum)
    except FolderLocked as e:
        fail(str(e), EXIT_ENVIRONMENT)
    except OSError as e:
        fail_os(e)
    except ValueError as e:
        fail(str(e))
    if rank == 0:
        report_errors(summary.errors, str(Path(output) / ERRORS_FILE))
        click.echo(summary.line())
    sys.exit(EXIT_SKIPPED if summary.errors else 0)


@cli.command("decode")
@click.argument("shards", type=click.Path(exists=True))
@output_option("DIR", "Folder for the wav files.")
@click.option("--codec", "codec_name", default=None,
              help="Which codec field to decode (default: the only one).")
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True)
@click.option("--no-verify", is_flag=True,
              help="Skip checking the shards' sizes and sha256 against the manifest.")
@click.option("--allow-model-mismatch", is_flag=True,
              help="Decode with codec weights that differ from the sha256 the manifest recorded.")
@device_option
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def decode_cmd(shards, output, codec_name, batch_size, no_verify, allow_model_mismatch, device, quiet):
    """Write audio decoded from the codec tokens in SHARDS (one KEY.wav per utterance; KEY made safe as a
    file name)."""
    from speechtok.pipelines.decode import decode_shards

    lock_output(output, "tok decode", folder=True)
    click.get_current_context().with_resource(exit_on_signals(
        f"the wav files in {output} are whole (each written atomically); rerun the command to decode the "
        f"rest"))
    try:
        n, seconds = decode_shards(shards, output, codec_name, device_or_fail(device), batch_size,
                                   verify=not no_verify, allow_model_mismatch=allow_model_mismatch,
                                   progress=not quiet)
    except OSError as e:
        fail_os(e)
    except ValueError as e:  # ShardError included
        fail(str(e))
    click.echo(f"decoded {n} utterances, {seconds:.1f} s of audio -> {output}")


def read_f0_source(path: str | None):
    """(audio, rate) of the --f0-from file, or None; an unreadable one is one error line naming it."""
    from speechtok.audio import AudioError, read_audio

    if path is None:
        return None
    try:
        return read_audio(path)
    except AudioError as e:
        fail(f"{path}: {e}")


@cli.command("resynth")
@click.argument("audio", type=click.Path(exists=True, dir_okay=False))
@click.option("-t", "--tokenizer", default=None,
              help="Codec KIND:MODEL[:nq=N], or a semantic tokenizer directory (with --vocoder).")
@click.option("--vocoder", "vocoder_dir", default=None,
              help="Unit HiFi-GAN or Vocos directory (or Vocos hub id); a mel Vocos needs no tokenizer.")
@click.option("--f0-from", "f0_from", type=click.Path(exists=True, dir_okay=False), default=None,
              help="F0 transfer: speak AUDIO's units with this file's F0 contour (time-stretched onto them); "
                   "needs an F0-conditioned unit HiFi-GAN.")
@click.option("--speaker", default=None,
              help="Speaker transfer: speak AUDIO's units with this speaker's voice (a speaker the unit "
                   "HiFi-GAN was trained with --speakers on; default its first).")
@output_option("FILE", "The wav file to write.")
@device_option
@vocoder_precision_option
def resynth_cmd(audio, tokenizer, vocoder_dir, output, device, f0_from, speaker, vocoder_precision):
    """Round-trip one file: AUDIO → tokens (or mel) → OUTPUT wav, through a codec's decoder or a vocoder."""
    import soundfile as sf

    from speechtok.audio import AudioError, read_audio
    from speechtok.pipelines.resynth import F0SourceError, resynthesize

    if tokenizer is None and vocoder_dir is None:
        raise click.UsageError("give -t CODEC, or --vocoder DIR (with -t for units or codec tokens)")
    dev = vocoder_device_or_fail(device, vocoder_precision)
    check_audio_suffix(output)
    output = lock_output(output, "tok resynth", folder=False)
    click.get_current_context().with_resource(exit_on_signals(f"{output} was not written; rerun the command"))
    try:
        wav, sr = read_audio(audio)
        other = read_f0_source(f0_from)
        out, out_sr, what = resynthesize(wav, sr, tokenizer, vocoder_dir, dev, other, vocoder_precision,
                                         speaker)
    except AudioError as e:
        fail(f"{audio}: {e}")
    except F0SourceError as e:
        fail(f"{f0_from}: {e}")
    except (ValueError, OSError) as e:
        fail_with(e)
    write_whole_file(output, lambda path: sf.write(path, out, out_sr))
    click.echo(f"{audio}: {len(wav) / sr:.2f} s -> {what} -> {len(out) / out_sr:.2f} s -> {output}")


@cli.command("show")
@click.argument("shards", type=click.Path(exists=True))
@click.option("-n", "--num", "n", type=click.IntRange(min=0), default=3, show_default=True,
              help="Samples to print.")
@click.option("--full", is_flag=True,
              help="Print every value of every array (default: dtype, shape, first values).")
@click.option("--no-verify", is_flag=True, help="Skip checksum verification.")
def show_cmd(shards, n, full, no_verify):
    """Print a shard folder's manifest summary and its first N samples: metadata, and per array its dtype,
    shape and first values (`--full` for all of them)."""
    from speechtok.shards import ShardError, manifest_shards, read_manifest, read_shards

    try:
        _, manifest = read_manifest(shards)
        manifest_shards(shards, verify=not no_verify)
        click.echo(f"{manifest['num_utterances']} utterances, {manifest['seconds'] / 3600:.3f} h, "
                   f"{len(manifest['shards'])} shards, tokenizers: {', '.join(manifest['tokenizers'])}")
        for i, sample in enumerate(read_shards(shards, verify=False)):  # verified above, once
            if i >= n:
                break
            arrays = {k: v for k, v in sample.items() if hasattr(v, "dtype")}
            meta = {k: v for k, v in sample.items() if k not in arrays}
            click.echo(json.dumps(meta, ensure_ascii=False))
            for k, v in arrays.items():
                click.echo(f"  {k}: {v.dtype} {list(v.shape)} {_array_preview(v, full)}")
    except (ShardError, KeyError, TypeError) as e:
        fail(str(e) if isinstance(e, ShardError) else f"{shards}: manifest lacks or garbles a field ({e})")


def _array_preview(v, full: bool, first: int = 20) -> str:
    """All values (`full`), or the first `first` of each row (of the first 4 rows of a 2-D+ array)."""
    if full:
        return json.dumps(v.tolist())
    if v.ndim <= 1:
        return f"{v[:first].tolist()}{' ...' if v.size > first else ''}"
    rows = v.reshape(v.shape[0], -1)
    text = "; ".join(f"{r[:first].tolist()}{' ...' if r.size > first else ''}" for r in rows[:4])
    return f"[{text}{'; ...' if len(rows) > 4 else ''}]"


from speechtok.cli.align import align_cmd, segment_cmd  # noqa: E402
from speechtok.cli.bpe import bpe  # noqa: E402
from speechtok.cli.eval import eval_group  # noqa: E402
from speechtok.cli.lm import acoustic, generate_cmd, lm  # noqa: E402
from speechtok.cli.prosody import prosody  # noqa: E402
from speechtok.cli.vocoder import vocoder  # noqa: E402

cli.add_command(lm)
cli.add_command(acoustic)
cli.add_command(generate_cmd)
cli.add_command(vocoder)
cli.add_command(prosody)
cli.add_command(eval_group)
cli.add_command(align_cmd)
cli.add_command(segment_cmd)
cli.add_command(bpe)

if __name__ == "__main__":
    exit_on_signals_until_replaced()
    cli()
