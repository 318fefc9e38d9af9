"""`tok generate`: LM → semantic units → acoustic model → codec tokens → waveform (AudioLM's chain)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from speechtok.lm.generate import SamplingOptions, generate_units, speech_prompt
from speechtok.lm.vocab import SpeechVocab
from speechtok.tokenizers.semantic import run_length


@dataclass
class Generated:
    units: np.ndarray  # the continuation's semantic units
    codes: np.ndarray | None = None  # [n_q, frames]
    wav: np.ndarray | None = None
    sample_rate: int | None = None


def load_lm(lm_dir: str | Path, device: torch.device):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from speechtok.hub import check_model_ref

    lm_dir = check_model_ref(lm_dir)
    model = AutoModelForCausalLM.from_pretrained(lm_dir).to(device).eval()
    return model, AutoTokenizer.from_pretrained(lm_dir), SpeechVocab.load(lm_dir)


def prompt_units(tokenizer_dir: str | Path | None, audio: str, dedup: bool) -> np.ndarray:
    """Semantic units of a prompt file, as the LM saw them in training."""
    from speechtok.tokenizers.semantic import SemanticTokenizer

    if tokenizer_dir is None:
        raise ValueError("an audio prompt needs the semantic tokenizer (--tokenizer KM_DIR) to encode it")
    units = SemanticTokenizer.from_dir(tokenizer_dir).encode(audio)
    return run_length(units)[0] if dedup else units


def generate_speech(lm_dir: str | Path, acoustic_dir: str | Path | None = None, tokenizer_dir: str | Path | None = None,
                    prompt_audio: str | None = None, prompt_text: str | None = None, voice: str | None = None,
                    opts: SamplingOptions | None = None, device: str | torch.device = "cpu") -> Generated:
    """Stage 1 always; stage 2 and the codec decoder when `acoustic_dir` is given. `voice` (an audio file)
    sets the speaker: its codec tokens lead the acoustic stage, its units lead the target's."""
    opts = opts or SamplingOptions()
    device = torch.device(device)
    model, tokenizer, vocab = load_lm(lm_dir, device)
    units = prompt_units(tokenizer_dir, prompt_audio, vocab.dedup) if prompt_audio else None
    prompt = speech_prompt(tokenizer, vocab, units=units, text=prompt_text)
    out = generate_units(model, tokenizer, vocab, [prompt], opts)[0]
    if len(out) == 0:
        raise ValueError("the LM ended the speech at once (no units generated); try another seed or temperature")
    result = Generated(units=out)
    if acoustic_dir is None:
        return result
    del model
    return synthesize(result, acoustic_dir, tokenizer_dir, voice, opts, device)


def synthesize(gen: Generated, acoustic_dir: str | Path, tokenizer_dir: str | Path | None, voice: str | None,
               opts: SamplingOptions, device: torch.device) -> Generated:
    """Units → codec tokens (acoustic model) → waveform (codec decoder)."""
    from speechtok.audio import load_utterance
    from speechtok.corpus import Utterance
    from speechtok.lm.acoustic import AcousticModel
    from speechtok.tokenizers.codec import Codec

    acoustic = AcousticModel.from_dir(acoustic_dir, device)
    cfg = acoustic.cfg
    if gen.units.max(initial=0) >= cfg.k:
        raise ValueError(f"{acoustic_dir}: trained for {cfg.k} units, the LM produced unit {gen.units.max()}")
    codec = Codec.from_card({**cfg.codec_card, "n_q": cfg.n_q}, device=device)
    units, prompt_codes = gen.units, None
    if voice is not None:
        wav = torch.from_numpy(load_utterance(Utterance(id="voice", path=voice), codec.sample_rate))
        codes, n = codec.encode(wav[None], torch.tensor([len(wav)]))
        prompt_codes = codes[0, : cfg.n_q, : int(n[0])].cpu().numpy()
        units = np.concatenate([prompt_units(tokenizer_dir, voice, cfg.dedup), units])
    P = 0 if prompt_codes is None else prompt_codes.shape[1]
    n_frames = P + max(1, int(round(len(gen.units) * cfg.frames_per_unit)))
    codes = acoustic.generate(units, n_frames, prompt_codes, temperature=opts.temperature, top_k=opts.top_k,
                              seed=opts.seed)[:, P:]
    wav, samples = codec.decode(torch.from_numpy(codes)[None])
    gen.codes, gen.sample_rate = codes, codec.sample_rate
    gen.wav = wav[0, : int(samples[0])].float().cpu().numpy()
    return gen
