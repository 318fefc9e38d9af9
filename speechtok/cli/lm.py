"""`tok lm`: extend an LLM's vocabulary with audio tokens, and train it."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import click

from speechtok.cli.common import (POSITIVE, FiniteRange, check_audio_suffix, device_option, device_or_fail,
                                  exit_interrupted, fail, fail_with, lock_output, os_error_line,
                                  output_option, vocoder_device_or_fail, vocoder_precision_option,
                                  write_whole_file)
from speechtok.stopping import exit_on_signals


@contextlib.contextmanager
def training_errors(config: str | None):
    """One line per trainer error: config mistakes and damaged checkpoints exit 2 (the message names the
    file and key), non-finite numbers 1, environment errors (disk full, permissions) 3, and SIGINT/SIGTERM
    128 + N after saving a checkpoint."""
    from speechtok.checksums import ChecksumError
    from speechtok.shards import ShardError
    from speechtok.stopping import Interrupted, NonFinite
    from speechtok.training.config import ConfigError

    where = f"{config}: " if config else ""
    try:
        yield
    except Interrupted as e:
        exit_interrupted(e)
    except NonFinite as e:
        fail(str(e), 1)
    except (ConfigError, ChecksumError) as e:
        fail(str(e), 2)
    except ShardError as e:
        fail(str(e), 2)
    except (ValueError, TypeError) as e:
        fail(f"{where}{e}", 2)
    except OSError as e:
        e.filename = e.filename or config
        fail(os_error_line(e), 3)


def print_config_option(config_class: str):
    """`--print-config`: every key of the trainer's config (`module:Class`) with its default, as YAML."""
    def show(ctx: click.Context, _param, value: bool) -> None:
        if not value or ctx.resilient_parsing:
            return
        import importlib

        from speechtok.training.config import default_yaml

        module, name = config_class.split(":")
        click.echo(default_yaml(getattr(importlib.import_module(module), name)), nl=False)
        ctx.exit(0)
    return click.option("--print-config", is_flag=True, expose_value=False, is_eager=True, callback=show,
                        help="Print every config key with its default (YAML) and exit.")


@click.group("lm")
def lm() -> None:
    """Token language models: vocabulary extension and training."""


@lm.command("extend-vocab")
@click.argument("base")
@click.option("-m", "--manifest", required=True, type=click.Path(exists=True),
              help="Shard manifest.json (or its folder) whose tokenizers define the audio tokens.")
@output_option("DIR", "Folder for the model, its tokenizer and speech_vocab.json.")
@click.option("--codec", default=None, help="Also add the tokens of this codec stream (e.g. 'encodec').")
@click.option("--n-q", type=click.IntRange(min=1), default=None,
              help="Codebooks of --codec to add (default: all in the shards).")
@click.option("--stream", help="The semantic stream of the shards (needed when they hold several, e.g. two "
                               "`-t DIR:name=NAME` of one `tok encode`); the LM reads it in training and "
                               "generation.")
@click.option("--from-scratch", is_flag=True,
              help="Take BASE's config and tokenizer; initialise new weights.")
@click.option("--bpe", type=click.Path(exists=True, file_okay=False), multiple=True,
              help="A `tok bpe train` folder of the semantic stream (units go through it) or of the codec "
                   "stream (codec frames do; implies --codec): add its merged tokens. Repeat for both.")
@click.option("--pitch", default=None, help="Expressive: add <p_i> for this pitch stream (e.g. 'pitch'); "
              "speech spans then merge it with the units by time.")
@click.option("--style", default=None, help="Expressive: add <st_i> for this style stream (e.g. 'style').")
def extend_vocab_cmd(base, manifest, output, codec, n_q, stream, from_scratch, bpe, pitch, style):
    """Add <s_i> units, codec tokens, pitch / style tokens and [TEXT]/[SPEECH] to BASE (hub id or local
    directory)."""
    from speechtok.checksums import CHECKSUMS, write_checksums
    from speechtok.lm.vocab import TokenClash, check_bpes, extend_vocab, load_base, speech_streams
    from speechtok.shards import ShardError, read_manifest
    from speechtok.tokenizers.unit_bpe import UnitBPE

    try:
        _, man = read_manifest(manifest)
        bpes = {}
        for folder in bpe:
            loaded = UnitBPE.load(folder)
            kind = (loaded.source or {}).get("type", "semantic")
            if kind in bpes:
                fail(f"{loaded.path}: a second BPE of {kind} codes (--bpe {bpes[kind].path})")
            bpes[kind] = loaded
    except (ValueError, OSError) as e:
        fail_with(e)
    codec = codec or (bpes["codec"].stream if "codec" in bpes else None)
    try:  # before the model loads
        speech_streams(man, codec, stream)
    except ValueError as e:
        fail(f"{manifest}: {e}")
    try:
        check_bpes(man, codec, n_q, stream, bpes.get("semantic"), bpes.get("codec"), str(manifest))
    except ValueError as e:
        fail(str(e))  # names the bpe.json
    lock_output(output, "tok lm extend-vocab", folder=True)
    try:
        model, tokenizer = load_base(base, from_scratch)
    except (ValueError, OSError) as e:
        fail_with(e)
    old = len(tokenizer)
    try:
        vocab = extend_vocab(model, tokenizer, man, codec, n_q, stream=stream, bpe=bpes.get("semantic"),
                             pitch=pitch, style=style, codec_bpe=bpes.get("codec"))
    except OSError as e:
        fail_with(e)
    except TokenClash as e:
        fail(f"{base}: {e}")
    except (ValueError, ShardError) as e:
        fail(f"{manifest}: {e}")
    out = Path(output)
    try:  # sha256.json last: a save cut short is refused by its readers, not taken for a model
        (out / CHECKSUMS).unlink(missing_ok=True)
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
        vocab.save(out)
        write_checksums(out)
    except OSError as e:
        fail_with(e)
    click.echo(f"{base}: vocabulary {old} -> {len(tokenizer)} (embeddings "
               f"{model.get_input_embeddings().weight.shape[0]}); "
               f"units <s_0>..<s_{vocab.semantic_tokens - 1}> at ids {vocab.semantic_first_id}.."
               f"{vocab.semantic_first_id + vocab.semantic_tokens - 1}"
               + (f" ({vocab.bpe_tokens - vocab.k} of them BPE merges)" if vocab.bpe_tokens else "")
               + (f", {vocab.n_q}x{vocab.codebook_size} {vocab.codec_stream} tokens from id "
                  f"{vocab.codec_first_id}"
                  if vocab.codec_stream else "")
               + (f" (+ {vocab.codec_bpe_tokens - vocab.n_q * vocab.codebook_size} BPE merges)"
                  if vocab.codec_bpe_tokens else "")
               + "".join(f", {vocab.range_of(k)[1]} {k} tokens from id {vocab.range_of(k)[0]}"
                         for k in ("pitch", "style") if getattr(vocab, f"{k}_stream")) + f" -> {out}")


stop_after_option = click.option("--stop-after", type=click.IntRange(min=1), default=None,
                                 help="Stop after this many steps (a checkpoint is saved).")


@lm.command("train")
@click.argument("config", type=click.Path(exists=True, dir_okay=False))
@print_config_option("speechtok.lm.config:RunConfig")
@stop_after_option
@device_option
def train_cmd(config, stop_after, device):
    """Train a token LM as CONFIG (YAML) says; rerunning resumes from the latest checkpoint. The whole
    config is checked before torch is imported."""
    from speechtok.lm.config import load_config
    from speechtok.lm.vocab import SpeechVocab
    from speechtok.training.config import ConfigError

    with training_errors(config):
        run = load_config(config)
        try:
            SpeechVocab.load(run.model)
        except FileNotFoundError as e:
            raise ConfigError(f"{config}: model: {e}") from None
        lock_output(run.output, "tok lm train", folder=True)
        from speechtok.lm.train import train

        device_or_fail(device)  # a GPU that is not there: one line naming --device, not the config
        result = train(run, stop_after=stop_after, device=device)
    click.echo(json.dumps(result))


@lm.command("inspect")
@click.argument("config", type=click.Path(exists=True, dir_okay=False))
@click.option("--world-size", type=click.IntRange(min=1), default=1, show_default=True,
              help="Ranks of the run.")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Loader workers per rank (default: data.num_workers, at least 1).")
@click.option("--epoch", type=click.IntRange(min=0), default=0, show_default=True,
              help="The epoch --ids lists.")
@click.option("--ids", is_flag=True, help="List the ids each rank/worker reads in --epoch.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def inspect_cmd(config, world_size, workers, epoch, ids, as_json):
    """What a `tok lm train` run of CONFIG would read: per source the samples/lines, tokens, share of the
    mix and epochs over the run; with --ids, which ids each rank/worker reads in an epoch."""
    from speechtok.lm.config import load_config

    with training_errors(config):
        run = load_config(config)  # before torch is imported
        from speechtok.lm.inspect import format_report, inspect_run

        report = inspect_run(run, world_size, workers, epoch, ids)
    click.echo(json.dumps(report) if as_json else format_report(report))


@click.group("acoustic")
def acoustic() -> None:
    """The acoustic stage: semantic units → codec tokens."""


@acoustic.command("train")
@click.argument("config", type=click.Path(exists=True, dir_okay=False))
@print_config_option("speechtok.lm.acoustic_config:AcousticRun")
@stop_after_option
@device_option
def acoustic_train_cmd(config, stop_after, device):
    """Train the semantic → codec-token model as CONFIG (YAML) says; rerunning resumes. The config and the
    shards' streams are checked before torch is imported."""
    from speechtok.lm.acoustic_config import checked_streams, load_acoustic_config

    with training_errors(config):
        run = load_acoustic_config(config)
        checked_streams(run)
        lock_output(run.output, "tok acoustic train", folder=True)
        from speechtok.lm.acoustic_train import train_acoustic

        device_or_fail(device)  # a GPU that is not there: one line naming --device, not the config
        result = train_acoustic(run, stop_after=stop_after, device=device)
    click.echo(json.dumps(result))


class StreamedWav:
    """`on_audio` for `generate_speech`: each chunk appended to a wav file as it arrives."""

    def __init__(self, path: Path):
        self.path, self.file = path, None

    def __call__(self, samples, sample_rate: int) -> None:
        if self.file is None:
            import soundfile as sf

            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.file = sf.SoundFile(self.path, "w", samplerate=sample_rate, channels=1, subtype="PCM_16")
        self.file.write(samples)
        self.file.flush()

    def close(self) -> None:
        if self.file is not None:
            self.file.close()

    def discard(self) -> None:
        """A failed run leaves no partial file."""
        self.close()
        self.path.unlink(missing_ok=True)


def check_stage_options(units_only: bool, acoustic_dir, vocoder_dir, **given) -> None:
    """Refuse, before any work, an option of a stage that will not run (it would be silently ignored): the
    acoustic stage's --voice / --voice-seconds, the unit HiFi-GAN's --speaker / --pitch-tokenizer, and
    --acoustic or --vocoder beside a stage that replaces it."""
    stage = "units-only" if units_only else "vocoder" if vocoder_dir is not None else "acoustic"
    if stage != "acoustic" and acoustic_dir is not None:
        raise click.UsageError(f"--acoustic is not used with --{stage}: give one of them")
    if units_only and vocoder_dir is not None:
        raise click.UsageError("--vocoder is not used with --units-only: give one of them")
    needs = {"voice": "acoustic", "voice_seconds": "acoustic",
             "speaker": "vocoder", "pitch_tokenizer": "vocoder"}
    for name, value in given.items():
        if value is not None and needs[name] != stage:
            flag = "--" + name.replace("_", "-")
            raise click.UsageError(f"{flag} is for the {needs[name]} stage (--{needs[name]} DIR), "
                                   f"not --{stage}; it would be ignored")


def warn_unsaid(say: str, words: list[dict], seconds: float) -> None:
    """A warning line when the audio ended before --say's words did (the LM's units set its length), so a
    cut text is not taken for the whole."""
    asked = say.split()
    spoken = [w["word"] for w in words]
    if spoken != asked:
        last = repr(spoken[-1]) if spoken else "none"
        click.echo(f"warning: --say: {len(spoken)} of its {len(asked)} words fit in {seconds:.2f} s of audio "
                   f"(the last one said: {last}); raise --max-units or say less", err=True)


@click.command("generate")
@click.option("--lm", "lm_dir", required=True, type=click.Path(exists=True),
              help="A `tok lm train` final model.")
@click.option("--acoustic", "acoustic_dir", type=click.Path(exists=True),
              help="A `tok acoustic train` final model.")
@click.option("--tokenizer", "tokenizer_dir", type=click.Path(exists=True),
              help="Semantic tokenizer directory, to encode --prompt-audio / --voice.")
@click.option("--prompt-audio", type=click.Path(exists=True), help="Continue this speech.")
@click.option("--prompt-text", help="Speak after this text ([TEXT] … [SPEECH]).")
@click.option("--voice", type=click.Path(exists=True), help="Speaker prompt for the acoustic stage.")
@click.option("--voice-seconds", type=POSITIVE, default=None,
              help="Use the voice prompt's first seconds [default: as much as fits the acoustic model "
                   "with --max-units].")
@click.option("--units-only", is_flag=True, help="Stop after the LM; write the units (.npy).")
@click.option("--vocoder", "vocoder_dir", type=click.Path(exists=True),
              help="Units → audio with a unit HiFi-GAN instead.")
@click.option("--speaker", default=None,
              help="--vocoder: the voice of this speaker of a speaker-conditioned unit HiFi-GAN, and the F0 "
                   "level that an expressive LM's pitch tokens decode to.")
@click.option("--pitch-tokenizer", "pitch_dir", type=click.Path(exists=True, file_okay=False), default=None,
              help="--vocoder: the F0 VQ-VAE folder whose pitch tokens the LM makes (pitch bins need none).")
@output_option("FILE", "The wav file to write, or the units' .npy file with --units-only.")
@click.option("--max-units", type=click.IntRange(min=1), default=500, show_default=True)
@click.option("--temperature", type=FiniteRange(min=0), default=0.8, show_default=True,
              help="0: greedy.")
@click.option("--top-k", type=click.IntRange(min=1), default=None)
@click.option("--top-p", type=click.FloatRange(0, 1, min_open=True), default=None)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--compile", "compiled", is_flag=True,
              help="Compile each stage's decoding step whole (CUDA graphs on a GPU): slow start, fast steps.")
@click.option("--stream", is_flag=True,
              help="Write the audio while the acoustic stage generates it, chunk by chunk (causal codecs: "
                   "EnCodec, Mimi); reports time to first audio.")
@click.option("--quiet", "-q", is_flag=True, help="No progress lines.")
@click.option("--say", help="The words the acoustic stage speaks (a depth model with a text stream): its "
                            "text stream is held to them; OUTPUT's stem + .text.json gets the words and "
                            "their times.")
@device_option
@vocoder_precision_option
def generate_cmd(lm_dir, acoustic_dir, tokenizer_dir, prompt_audio, prompt_text, voice, units_only, output,
                 max_units,
                 temperature, top_k, top_p, seed, compiled, stream, quiet, device, vocoder_dir, voice_seconds,
                 vocoder_precision, say, speaker, pitch_dir):
    """Generate speech: LM → semantic units → acoustic model → codec → OUTPUT."""
    from speechtok.lm.vocab import SpeechVocab

    if not units_only and acoustic_dir is None and vocoder_dir is None:
        raise click.UsageError("give --acoustic DIR, --vocoder DIR (a unit HiFi-GAN), or --units-only")
    if stream and (units_only or vocoder_dir is not None):
        raise click.UsageError("--stream streams the acoustic stage's codec: give --acoustic DIR, not "
                               "--units-only or --vocoder")
    if say is not None and (units_only or acoustic_dir is None or vocoder_dir is not None):
        raise click.UsageError("--say is for the acoustic stage: give --acoustic DIR (pattern: depth with a "
                               "text stream), not --units-only or --vocoder")
    check_stage_options(units_only, acoustic_dir, vocoder_dir, voice=voice, voice_seconds=voice_seconds,
                        speaker=speaker, pitch_tokenizer=pitch_dir)
    if voice_seconds is not None and voice is None:
        raise click.UsageError("--voice-seconds is how much of --voice to use: give --voice FILE")
    if say is not None and not say.split():
        raise click.UsageError("--say: no words to say (an empty text would leave the text stream free)")
    try:  # what can be checked before torch and transformers are imported
        SpeechVocab.load(lm_dir)
    except (ValueError, TypeError, OSError) as e:
        fail_with(e)
    dev = vocoder_device_or_fail(device, vocoder_precision if vocoder_dir and not units_only else "fp32")
    if not units_only:
        check_audio_suffix(output)
    out = lock_output(output, "tok generate", folder=False)
    click.get_current_context().with_resource(exit_on_signals(f"{output} was not written; rerun the command"))
    import numpy as np
    import soundfile as sf

    from speechtok.lm.generate import SamplingOptions
    from speechtok.pipelines.generate import generate_speech
    opts = SamplingOptions(max_new_tokens=max_units, temperature=temperature, top_k=top_k, top_p=top_p,
                           seed=seed, compile=compiled)
    writer = StreamedWav(out) if stream else None
    try:
        gen = generate_speech(lm_dir, None if units_only or vocoder_dir else acoustic_dir, tokenizer_dir,
                              prompt_audio, prompt_text, voice, opts, dev, voice_seconds=voice_seconds,
                              vocoder_dir=None if units_only else vocoder_dir,
                              vocoder_precision=vocoder_precision, speaker=speaker, pitch_dir=pitch_dir,
                              echo=None if quiet else (lambda line: click.echo(line, err=True)),
                              on_audio=writer, text=say)
    except (ValueError, OSError) as e:
        if writer is not None:
            writer.discard()
        fail_with(e)
    except BaseException:  # a signal: a streamed file is not left half written
        if writer is not None:
            writer.discard()
        raise
    if writer is not None:
        writer.close()
        click.echo(f"{len(gen.units)} units -> {gen.codes.shape[0]} x {gen.codes.shape[1]} codes -> "
                   f"{len(gen.wav) / gen.sample_rate:.2f} s -> {out} (streamed; time to first audio "
                   f"{gen.first_audio:.2f} s)")
    elif units_only:
        def save_units(path: Path) -> None:  # np.save(path) would add .npy to another extension
            with open(path, "wb") as f:
                np.save(f, gen.units)

        write_whole_file(out, save_units)
        click.echo(f"{len(gen.units)} units -> {out}")
    else:
        write_whole_file(out, lambda path: sf.write(path, gen.wav, gen.sample_rate))
        via = (f"{gen.codes.shape[0]} x {gen.codes.shape[1]} codes" if gen.codes is not None
               else "unit HiFi-GAN")
        click.echo(f"{len(gen.units)} units -> {via} -> {len(gen.wav) / gen.sample_rate:.2f} s -> {out}")
    if gen.words is not None:  # a text-stream acoustic model: its words with their times, beside the wav
        words = out.with_suffix(".text.json")
        text = json.dumps({"words": gen.words}, indent=1) + "\n"
        write_whole_file(words, lambda path: path.write_text(text))
        click.echo(f"{len(gen.words)} words -> {words}")
        if say is not None:
            warn_unsaid(say, gen.words, len(gen.wav) / gen.sample_rate)
    if not units_only and gen.voice_seconds is not None:
        click.echo(f"voice prompt: at most its first {gen.voice_seconds:g} s (--voice-seconds)")
