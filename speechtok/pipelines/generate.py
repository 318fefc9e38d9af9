"""`tok generate`: LM → semantic units → acoustic model → codec tokens → waveform (AudioLM's chain)."""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from speechtok.checksums import verify_checksums
from speechtok.lm.decoding import Progress, Sampler
from speechtok.lm.generate import SamplingOptions, generate_ids, generated_streams, speech_prompt
from speechtok.lm.vocab import SpeechVocab
from speechtok.tokenizers.semantic import run_length
from speechtok.unit_stream import check_unit_streams, unit_stream


@dataclass
class Generated:
    units: np.ndarray  # the continuation's semantic units
    stream: dict  # what they are (`speechtok.unit_stream` record: the LM's)
    source: str  # who made them (the LM directory), for messages
    codes: np.ndarray | None = None  # [n_q, frames]
    wav: np.ndarray | None = None
    sample_rate: int | None = None
    voice_seconds: float | None = None  # how much of the voice prompt was used (None: all of it, or no voice)
    first_audio: float | None = None  # streamed: seconds from the start of stage 1 to the first audio out
    words: list[dict] | None = None  # a text-stream acoustic model's words, with times (seconds)


def load_lm(lm_dir: str | Path, device: torch.device):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from speechtok.hub import check_model_ref

    lm_dir = check_model_ref(lm_dir)
    if Path(lm_dir).is_dir():
        verify_checksums(lm_dir)  # written by `tok lm train`
    model = AutoModelForCausalLM.from_pretrained(lm_dir).to(device).eval()
    return model, AutoTokenizer.from_pretrained(lm_dir), SpeechVocab.load(lm_dir)


def tokenizer_stream(tokenizer_dir: str | Path) -> dict:
    """The (frame-level) units a semantic tokenizer directory makes."""
    from speechtok.tokenizers.semantic import CARD_FILE

    path = Path(tokenizer_dir) / CARD_FILE
    if not path.exists():
        raise FileNotFoundError(f"{tokenizer_dir}: not a semantic tokenizer directory (no {CARD_FILE})")
    return unit_stream(json.loads(path.read_text()), dedup=False)


def prompt_units(tokenizer_dir: str | Path | None, audio: str, dedup: bool,
                 seconds: float | None = None) -> np.ndarray:
    """Semantic units of a prompt file (its first `seconds`), as the LM saw them in training."""
    from speechtok.tokenizers.semantic import SemanticTokenizer

    if tokenizer_dir is None:
        raise ValueError("an audio prompt needs the semantic tokenizer (--tokenizer KM_DIR) to encode it")
    units = SemanticTokenizer.from_dir(tokenizer_dir).encode(*readable_audio(audio, seconds))
    return run_length(units)[0] if dedup else units


def readable_audio(path: str, seconds: float | None = None) -> tuple[np.ndarray, int]:
    """(samples, rate) of a prompt or voice file's first `seconds`; one that cannot be read (not audio,
    empty, NaN samples) is a ValueError naming it."""
    from speechtok.audio import AudioError, read_audio

    try:
        return read_audio(path, 0.0, seconds)
    except AudioError as e:
        raise ValueError(f"{path}: {e}") from None


def generate_speech(lm_dir: str | Path, acoustic_dir: str | Path | None = None,
                    tokenizer_dir: str | Path | None = None,
                    prompt_audio: str | None = None, prompt_text: str | None = None, voice: str | None = None,
                    opts: SamplingOptions | None = None, device: str | torch.device = "cpu",
                    vocoder_dir: str | Path | None = None, voice_seconds: float | None = None,
                    echo: Callable[[str], None] | None = None,
                    on_audio: Callable[[np.ndarray, int], None] | None = None,
                    vocoder_precision: str = "fp32", text: str | None = None, speaker: str | None = None,
                    pitch_dir: str | Path | None = None) -> Generated:
    """Stage 1 always; then the acoustic model and codec decoder (`acoustic_dir`) or a unit HiFi-GAN
    (`vocoder_dir`). Every stage's unit stream is checked against the LM's before anything runs. `voice`
    (an audio file) sets the speaker: its codec tokens lead the acoustic stage, its units the target's; only
    its first `voice_seconds` are used (default: as much as fits the acoustic model with `max_new_tokens`
    units), and that is checked before anything is generated. `echo` gets progress lines (steps, × real
    time); `on_audio(samples, sample_rate)` streams the acoustic stage's waveform chunk by chunk. `text`:
    the words a depth model with a text stream speaks (its text stream constrained to them). With a unit
    HiFi-GAN: `speaker` picks its voice (a speaker-conditioned one) and the level of decoded pitch; an
    expressive LM's pitch tokens are decoded to the F0 an F0-conditioned one hears (`pitch_decoder`; an F0
    VQ-VAE's weights from `pitch_dir`)."""
    from speechtok.lm.acoustic import read_config
    from speechtok.pipelines.resynth import units_to_audio, vocoder_stream
    from speechtok.vocoders.hifigan import UnitHiFiGAN

    opts = opts or SamplingOptions()
    device = torch.device(device)
    acoustic = read_config(acoustic_dir) if acoustic_dir is not None else None
    if acoustic is not None and on_audio is not None and acoustic.pattern == "valle":
        raise ValueError(f"{acoustic_dir}: pattern valle cannot stream (its NAR passes draw codebooks 2.. of "
                         "all frames at once); drop --stream")
    if acoustic is not None and voice is not None:
        voice_seconds = fit_voice_prompt(acoustic, opts.max_new_tokens, voice_seconds)
    for audio in (prompt_audio, voice if acoustic is not None else None):  # before any stage runs
        if audio is not None:
            readable_audio(audio, voice_seconds if audio is voice else None)
    lm_vocab = SpeechVocab.load(lm_dir)
    try:
        made = lm_vocab.unit_stream()
    except ValueError as e:  # an LM of codec tokens
        raise ValueError(f"{lm_dir}: {e}; tok generate generates units") from None
    if tokenizer_dir is not None:
        check_unit_streams(tokenizer_stream(tokenizer_dir), str(tokenizer_dir), made, str(lm_dir))
    if acoustic is not None:
        check_unit_streams(made, str(lm_dir), acoustic.input_stream(), str(acoustic_dir))
    if text is not None and (acoustic is None or not acoustic.text_stream):
        raise ValueError(f"{acoustic_dir}: a text for the acoustic stage needs a model trained with "
                         "pattern: depth and text_stream: true")
    voc = UnitHiFiGAN.from_dir(vocoder_dir, device) if vocoder_dir is not None else None
    if voc is not None:
        check_unit_streams(made, str(lm_dir), vocoder_stream(voc.cfg), str(vocoder_dir))
        pitch = pitch_decoder(SpeechVocab.load(lm_dir), voc, pitch_dir, speaker)
        # a speaker names the vocoder's voice; with no voices to pick, only the pitch level (checked there)
        speaker_row = voc.speaker_index(speaker) if voc.cfg.num_speakers or pitch is None else None
    model, tokenizer, vocab = load_lm(lm_dir, device)
    units = prompt_units(tokenizer_dir, prompt_audio, vocab.dedup) if prompt_audio else None
    prompt = speech_prompt(tokenizer, vocab, units=units, text=prompt_text)
    start = time.perf_counter()
    progress = Progress("LM", opts.max_new_tokens, unit_seconds(made, acoustic), echo) if echo else None
    ids = generate_ids(model, tokenizer, vocab, [prompt], opts, progress=progress)[0]
    streams = generated_streams(vocab, ids)
    out = streams["units"]
    if len(out) == 0:
        raise ValueError("the LM ended the speech at once (no units generated); try another seed or "
                         "temperature")
    result = Generated(units=out, stream=made, source=str(lm_dir))
    del model
    if acoustic_dir is not None:
        return synthesize(result, acoustic_dir, tokenizer_dir, voice, opts, device, voice_seconds, echo,
                          on_audio, start, text)
    if voc is not None:  # deduplicated units: the vocoder's duration predictor gives their lengths
        f0 = pitch(streams["pitch"]) if pitch is not None else None
        if f0 is not None and echo is not None:
            voiced = f"{int(f0[1].sum())} of {f0.shape[1]} frames voiced"
            echo(f"{len(streams['pitch'])} pitch tokens -> F0 ({voiced})")
        result.wav = units_to_audio(voc, result.units, speaker_row, f0=f0, precision=vocoder_precision)
        result.sample_rate = voc.cfg.sample_rate
    return result


def pitch_decoder(vocab: SpeechVocab, voc, pitch_dir: str | Path | None, speaker: str | None):
    """pitch tokens → the F0 input of `voc` (at the pitch contour's frames; `units_to_audio` stretches it onto
    the units), or None when the vocoder is not F0-conditioned or the LM makes no pitch tokens (the
    vocoder then hears all frames unvoiced)."""
    from speechtok.prosody.pitch_decode import load_pitch_tokenizer, pitch_contour, speaker_level
    from speechtok.vocoders.f0_input import f0_features

    if not voc.cfg.f0 or not vocab.pitch_stream:
        if pitch_dir is not None:  # it would be ignored
            why = "the vocoder is not F0-conditioned" if not voc.cfg.f0 else "the LM makes no pitch tokens"
            raise ValueError(f"{pitch_dir}: --pitch-tokenizer decodes an expressive LM's pitch tokens to the "
                             f"F0 of an F0-conditioned vocoder, but {why}; drop it")
        return None
    card = vocab.tokenizer_cards[vocab.pitch_stream]
    tok = load_pitch_tokenizer(card, None if pitch_dir is None else str(pitch_dir))
    known = speaker is None or speaker in (card.get("speakers") or {}) or not voc.cfg.num_speakers
    level = speaker_level(card, speaker if known else None)  # a voice of the vocoder with no level: the mean
    return lambda tokens: f0_features(pitch_contour(tok, tokens, level)[0], voc.cfg.f0_norm)


def unit_seconds(stream: dict, acoustic=None) -> float | None:
    """Seconds of speech per unit: a frame for frame-level units, the acoustic model's mean run length for
    deduplicated ones (None without it)."""
    if not stream["dedup"]:
        return 1.0 / stream["frame_rate"]
    return acoustic.frames_per_unit / acoustic.codec_rate if acoustic is not None else None


def synthesize(gen: Generated, acoustic_dir: str | Path, tokenizer_dir: str | Path | None, voice: str | None,
               opts: SamplingOptions, device: torch.device, voice_seconds: float | None = None,
               echo: Callable[[str], None] | None = None,
               on_audio: Callable[[np.ndarray, int], None] | None = None,
               start: float | None = None, text: str | None = None) -> Generated:
    """Units → codec tokens (acoustic model) → waveform (codec decoder). Frame-level units last one frame
    each; deduplicated ones (only into a model trained on them) the mean run length of its training data.
    With `on_audio`, the frames are decoded (`CodecStream`) and handed over as they complete."""
    from speechtok.audio import resample
    from speechtok.lm.acoustic import AcousticModel, from_steps
    from speechtok.tokenizers.codec import Codec

    acoustic = AcousticModel.from_dir(acoustic_dir, device)
    cfg = acoustic.cfg
    check_unit_streams(gen.stream, gen.source, cfg.input_stream(), str(acoustic_dir))
    if voice is not None and tokenizer_dir is not None:
        check_unit_streams(tokenizer_stream(tokenizer_dir), str(tokenizer_dir), cfg.input_stream(),
                           str(acoustic_dir))
    codec = Codec.from_card({**cfg.codec_card, "n_q": cfg.n_q}, device=device)
    n_new = cfg.codec_frames(len(gen.units), deduplicated=gen.stream["dedup"])
    units, prompt_codes = gen.units, None
    if cfg.dedup and not gen.stream["dedup"]:
        units = run_length(units)[0]
    if voice is not None:
        wav = torch.from_numpy(resample(*readable_audio(voice, voice_seconds), codec.sample_rate))
        codes, n = codec.encode(wav[None], torch.tensor([len(wav)]))
        prompt_codes = codes[0, : cfg.n_q, : int(n[0])].cpu().numpy()
        units = np.concatenate([prompt_units(tokenizer_dir, voice, cfg.dedup, voice_seconds), units])
    P = 0 if prompt_codes is None else prompt_codes.shape[1]
    n_frames = P + n_new
    if (need := acoustic_positions(cfg, len(units), n_frames)) > cfg.max_len:
        raise ValueError(f"{acoustic_dir}: the voice prompt and {len(gen.units)} units need {need} "
                         f"positions, the acoustic model holds {cfg.max_len}: "
                         f"shorten --voice-seconds or --max-units")
    texts = {"texts": [text]} if text is not None else {}  # a depth model's text prompt
    decoder = acoustic.decoder([units], [n_frames], [prompt_codes], Sampler(opts.temperature, opts.top_k),
                               [opts.seed], **texts)
    progress = Progress("acoustic", decoder.steps, pattern_step_seconds(cfg), echo) if echo else None
    stream, on_chunk = None, progress
    if on_audio is not None:
        from speechtok.tokenizers.codec_stream import CodecStream

        stream, ready, pieces = CodecStream(codec, skip_frames=P), frames_ready(cfg, n_frames), []
        start = time.perf_counter() if start is None else start

        def stream_chunk(done: int) -> None:
            if progress is not None:
                progress(done)
            steps = np.full((decoder.steps, cfg.streams), cfg.empty, dtype=np.int64)
            steps[:done] = decoder.out[0, :done].cpu().numpy()
            piece = stream.push(from_steps(cfg, steps, n_frames)[:, stream.codes.shape[1]: ready(done)])
            if len(piece):
                gen.first_audio = time.perf_counter() - start if gen.first_audio is None else gen.first_audio
                on_audio(piece, codec.sample_rate)
                pieces.append(piece)

        on_chunk = stream_chunk
    steps = decoder.run(opts.compile, on_chunk=on_chunk)[0].numpy()
    codes = from_steps(cfg, steps, n_frames)[:, P:]
    if cfg.text_stream:
        from speechtok.lm.acoustic_depth import text_words

        gen.words = text_words(cfg, steps[P:n_frames, 0])
    gen.codes, gen.sample_rate, gen.voice_seconds = codes, codec.sample_rate, voice_seconds
    if stream is not None:
        gen.wav = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.float32)
        return gen
    wav, samples = codec.decode(torch.from_numpy(codes)[None])
    gen.wav = wav[0, : int(samples[0])].float().cpu().numpy()
    return gen


def pattern_step_seconds(cfg) -> float:
    """Seconds of audio per acoustic step: a frame (delay, depth; valle's AR steps) or a codebook of a frame
    (coarse/fine)."""
    return 1.0 / cfg.codec_rate / (cfg.n_q if cfg.pattern == "coarse_fine" else 1)


def frames_ready(cfg, n_frames: int) -> Callable[[int], int]:
    """steps done → frames of which every code has been drawn (a prefix of the frames, in both patterns)."""
    from speechtok.lm.acoustic import layout

    qs, ts = layout(cfg, n_frames)
    last = np.zeros(n_frames, dtype=np.int64)
    step = np.broadcast_to(np.arange(len(qs))[:, None], qs.shape)
    np.maximum.at(last, ts[qs >= 0], step[qs >= 0])
    last = np.maximum.accumulate(last)
    return lambda done: int(np.searchsorted(last, done))


def acoustic_positions(cfg, n_units: int, n_frames: int) -> int:
    """Positions the acoustic model uses for `n_units` units then `n_frames` codec frames."""
    return cfg.positions(n_units, n_frames)


def fit_voice_prompt(cfg, max_units: int, voice_seconds: float | None) -> float:
    """The seconds of a voice prompt to use so that it and a continuation of up to `max_units` units fit the
    acoustic model's `max_len` (a prompt second counting as `semantic_rate` units, undeduplicated, and
    `codec_rate` frames); `voice_seconds` when it fits, else a ValueError saying what does."""
    frames = int(round(max_units * cfg.frames_per_unit)) + 1
    per_second = cfg.semantic_rate + cfg.codec_rate * (cfg.n_q if cfg.pattern == "coarse_fine" else 1)
    room = cfg.max_len - acoustic_positions(cfg, max_units + 1, frames)
    fits = math.floor(max(0.0, room / per_second) * 10) / 10
    if fits <= 0:
        most = max(0, int(max_units * cfg.max_len / max(1, acoustic_positions(cfg, max_units, frames))) - 1)
        raise ValueError(f"a voice prompt and up to {max_units} units do not fit the acoustic model's "
                         f"max_len {cfg.max_len}: lower --max-units (about {most} fit without a voice)")
    if voice_seconds is not None and voice_seconds > fits:
        raise ValueError(f"a {voice_seconds:g} s voice prompt and up to {max_units} units exceed the "
                         f"acoustic model's max_len {cfg.max_len}: at most {fits:g} s fit (--voice-seconds), "
                         "or lower --max-units")
    return fits if voice_seconds is None else voice_seconds
