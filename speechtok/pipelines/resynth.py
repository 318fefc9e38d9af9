"""Audio → tokens (or mel) → audio, through a codec decoder, a unit HiFi-GAN or a Vocos. An F0-conditioned
unit HiFi-GAN also reads the F0 contour, tracked as its F0 stream was: the input's own, or another file's
(F0 transfer: that contour time-stretched onto the input's units). A speaker-conditioned one speaks with
the voice of a speaker it was trained on (`speaker`: speaker transfer; default its first)."""

from __future__ import annotations

import numpy as np
import torch

from speechtok.audio import AudioError, resample
from speechtok.vocoders.f0_input import stretch


class F0SourceError(ValueError):
    """The audio whose F0 contour is to be transferred (`tok resynth --f0-from`) has none to give."""


def vocoder_stream(cfg) -> dict:
    """The units a unit HiFi-GAN reads (for vocoders saved before the record: from dedup, k and the rate)."""
    from speechtok.unit_stream import unit_stream

    return cfg.unit_stream or unit_stream(None, cfg.dedup, cfg.k, cfg.frame_rate)


@torch.inference_mode()
def units_to_audio(vocoder, units: np.ndarray, speaker: int | None = None,
                   f0: np.ndarray | None = None, precision: str = "fp32") -> np.ndarray:
    """Frame-level units (deduplicated ones are expanded by the vocoder's duration predictor) → waveform,
    synthesized in `precision` (vocoders.precision); `f0`: an F0-conditioned vocoder's input at the units'
    frames (f0_input.py; None: all unvoiced)."""
    from speechtok.tokenizers.semantic import run_length
    from speechtok.vocoders.precision import vocoder_precision

    device = next(vocoder.parameters()).device
    x = torch.as_tensor(np.asarray(units, dtype=np.int64), device=device)[None]
    if vocoder.cfg.dedup:
        x = vocoder.expand(torch.as_tensor(run_length(x[0].cpu().numpy())[0], device=device)[None])
    spk = torch.tensor([speaker or 0], device=device) if vocoder.cfg.num_speakers else None
    f0_in = torch.from_numpy(stretch(f0, x.shape[1]))[None].to(device) if f0 is not None else None
    with vocoder_precision(precision, device):
        return vocoder(x, spk, f0_in)[0].float().cpu().numpy()


class Resynthesis:
    """A tokenizer and/or a vocoder, loaded and checked once: audio → tokens (units, codec codes or mel) →
    audio. The one route of `tok resynth`, which `tok eval codecs` also times and scores. The vocoder
    synthesizes in `vocoder_precision` (fp32, tf32 or bf16: vocoders.precision)."""

    def __init__(self, tokenizer: str | None, vocoder_dir: str | None, device: torch.device,
                 vocoder_precision: str = "fp32", speaker: str | None = None):
        from speechtok.prosody.f0_tokenizer import f0_from_card
        from speechtok.tokenizers.codec import Codec
        from speechtok.tokenizers.load import load_tokenizer
        from speechtok.tokenizers.semantic import SemanticTokenizer
        from speechtok.unit_stream import check_unit_streams, unit_stream
        from speechtok.vocoders.hifigan import UnitHiFiGAN
        from speechtok.vocoders.precision import check_vocoder_precision
        from speechtok.vocoders.train import load_vocoder

        check_vocoder_precision(vocoder_precision, device)
        self.precision = vocoder_precision
        self.f0_tracker, self.speaker = None, None
        self.tok = load_tokenizer(tokenizer, device=device) if tokenizer else None
        self.voc = load_vocoder(vocoder_dir, device) if vocoder_dir else None
        if isinstance(self.voc, UnitHiFiGAN):
            if not isinstance(self.tok, SemanticTokenizer):
                raise ValueError("a unit HiFi-GAN needs the semantic tokenizer it was trained on (-t KM_DIR)")
            # `encode` gives frame-level units from a `dedup: true` tokenizer too: any unit vocoder reads them
            check_unit_streams(unit_stream(self.tok.card(), dedup=False), tokenizer,
                               vocoder_stream(self.voc.cfg), vocoder_dir)
            self.kind = "units"
            self.speaker = self.voc.speaker_index(speaker)
            self.f0_tracker = f0_from_card(self.voc.cfg.f0_card, device=device) if self.voc.cfg.f0 else None
        elif isinstance(self.tok, SemanticTokenizer):
            raise ValueError("semantic units need a unit vocoder (--vocoder DIR of a unit HiFi-GAN)")
        elif speaker is not None:
            raise ValueError("a speaker (speaker transfer) needs a speaker-conditioned unit HiFi-GAN")
        elif self.voc is None:
            self.kind = "codec"
        elif self.voc.is_codec:
            if not isinstance(self.tok, Codec):
                raise ValueError("a codec-token Vocos needs the codec (-t encodec:MODEL:nq=N)")
            self.kind = "codec+vocos"
        else:
            self.kind = "mel"
        self.device = device
        self.input_rate = self.tok.sample_rate if self.kind in ("units", "codec") else self.voc.sample_rate
        self.sample_rate = self.voc.cfg.sample_rate if self.kind == "units" else (
            self.tok.sample_rate if self.kind == "codec" else self.voc.sample_rate)

    @torch.inference_mode()
    def encode(self, wav: np.ndarray, sr: int, f0_from: tuple[np.ndarray, int] | None = None):
        """Frame-level units [F] (numpy; with their F0 input for an F0-conditioned vocoder: the input's
        contour or that of `f0_from` = (audio, rate), F0 transfer), (codes [1, n_q, F], frames) or a mel
        [1, n_mels, F], from audio."""
        x = torch.from_numpy(np.ascontiguousarray(resample(wav, sr, self.input_rate), dtype=np.float32))[None]
        if self.kind == "units":  # frame-level whatever the card says: a dedup vocoder deduplicates them
            units = self.tok.encode_batch(x, torch.tensor([x.shape[1]]))[0]
            if len(units) == 0:
                raise AudioError(f"too short ({len(wav) / sr:.3f} s) for one unit frame of the tokenizer")
            if not self.needs_f0:
                return units
            if f0_from is None:
                return units, self.f0_input(wav, sr, len(units))
            return units, stretch(self.f0_input(*f0_from, transfer=True), len(units))
        if self.kind == "mel":
            return self.voc.feature_extractor(x.to(self.device))
        lengths = torch.tensor([x.shape[1]])
        return self.tok.encode(x.to(self.device) if self.kind == "codec+vocos" else x, lengths)

    @property
    def needs_f0(self) -> bool:
        return self.kind == "units" and self.f0_tracker is not None

    def f0_input(self, wav: np.ndarray, sr: int, n: int | None = None, transfer: bool = False) -> np.ndarray:
        """The vocoder's F0 input from audio: at its `n` unit frames (the same audio's units), or at the
        audio's own unit frame count (F0 to transfer, stretched by `encode`; `transfer`: a contour without
        a voiced frame is refused, F0SourceError, rather than heard as all-unvoiced output)."""
        from speechtok.vocoders.f0_input import f0_input

        x = resample(wav, sr, self.f0_tracker.sample_rate)
        x = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        f0_hz = self.f0_tracker.f0_batch(x[None], torch.tensor([x.shape[0]]))[0]
        if transfer and not (f0_hz > 0).any():
            raise F0SourceError(f"no voiced frame ({len(wav) / sr:.2f} s, {self.f0_tracker.tracker.name} "
                                "tracker): nothing to transfer; give speech with a pitch")
        rate, unit_rate = self.f0_tracker.frame_rate, self.voc.cfg.frame_rate
        n = int(len(f0_hz) * unit_rate / rate) if n is None else n
        return f0_input(f0_hz, rate, unit_rate, n, self.voc.cfg.f0_norm)

    @torch.inference_mode()
    def decode(self, tokens) -> np.ndarray:
        """What `encode` gave → waveform at `sample_rate`."""
        if self.kind == "units":
            units, f0 = tokens if self.needs_f0 else (tokens, None)
            return units_to_audio(self.voc, units, self.speaker, f0=f0, precision=self.precision)
        if self.kind == "codec":
            codes, frames = tokens
            out, samples = self.tok.decode(codes, frames)
            return out[0, : int(samples[0])].cpu().numpy()
        return self.decode_batch([tokens])[0]

    @torch.inference_mode()
    def decode_batch(self, tokens: list) -> list[np.ndarray]:
        """What `encode` gave for several utterances → their waveforms; a Vocos synthesizes them in one padded
        batch, each row as it would be alone (Vocos.decode_batch); units and codecs go one at a time."""
        from speechtok.vocoders.precision import vocoder_precision

        if self.kind in ("units", "codec"):
            return [self.decode(t) for t in tokens]
        with vocoder_precision(self.precision, self.device):
            if self.kind == "mel":
                rows = self.voc.decode_batch([t[0] for t in tokens])
            else:  # codec+vocos: one bandwidth (the route's codec) for all rows
                feats = [self.voc.feature_extractor(codes[:, :, : int(frames[0])].transpose(0, 1))[0]
                         for codes, frames in tokens]
                rows = self.voc.decode_batch(feats, self.voc.bandwidth_id(len(tokens[0][0][0])))
        return [r.float().cpu().numpy() for r in rows]

    def codes(self, tokens) -> np.ndarray | None:
        """The discrete codes [n_q, F] of what `encode` gave (None for a mel)."""
        if self.kind == "units":
            return np.asarray(tokens[0] if self.needs_f0 else tokens, dtype=np.int64)[None]
        if self.kind == "mel":
            return None
        codes, frames = tokens
        return codes[0, :, : int(frames[0])].cpu().numpy()

    def describe(self, tokens) -> str:
        if self.kind == "mel":
            return "mel -> Vocos"
        c = self.codes(tokens)
        if self.kind == "units":
            voice = f" (speaker {self.voc.cfg.speakers[self.speaker]})" if self.speaker is not None else ""
            return f"{c.shape[1]} units{' + F0' if self.needs_f0 else ''} -> unit HiFi-GAN{voice}"
        return f"{c.shape[0]} x {c.shape[1]} codes" + (" -> Vocos" if self.kind == "codec+vocos" else "")


def resynthesize(wav: np.ndarray, sr: int, tokenizer: str | None, vocoder_dir: str | None,
                 device: torch.device, f0_from: tuple[np.ndarray, int] | None = None,
                 vocoder_precision: str = "fp32", speaker: str | None = None) -> tuple[np.ndarray, int, str]:
    """(waveform, sample rate, what it went through); `f0_from`: (audio, rate) whose F0 contour replaces
    the input's (F0 transfer through an F0-conditioned unit HiFi-GAN); `speaker`: the voice of this speaker
    of a speaker-conditioned unit HiFi-GAN (speaker transfer)."""
    r = Resynthesis(tokenizer, vocoder_dir, device, vocoder_precision, speaker)
    if f0_from is not None and not r.needs_f0:
        raise ValueError("F0 transfer needs an F0-conditioned unit HiFi-GAN (trained with `f0: STREAM`)")
    tokens = r.encode(wav, sr, f0_from)
    return r.decode(tokens), r.sample_rate, r.describe(tokens)
