"""Audio → tokens (or mel) → audio, through a codec decoder, a unit HiFi-GAN or a Vocos."""

from __future__ import annotations

import numpy as np
import torch

from speechtok.audio import resample


def vocoder_stream(cfg) -> dict:
    """The units a unit HiFi-GAN reads (for vocoders saved before the record: from dedup, k and the rate)."""
    from speechtok.unit_stream import unit_stream

    return cfg.unit_stream or unit_stream(None, cfg.dedup, cfg.k, cfg.frame_rate)


@torch.inference_mode()
def units_to_audio(vocoder, units: np.ndarray, speaker: int | None = None) -> np.ndarray:
    """Frame-level units (deduplicated ones are expanded by the vocoder's duration predictor) → waveform."""
    from speechtok.tokenizers.semantic import run_length

    device = next(vocoder.parameters()).device
    x = torch.as_tensor(np.asarray(units, dtype=np.int64), device=device)[None]
    if vocoder.cfg.dedup:
        x = vocoder.expand(torch.as_tensor(run_length(x[0].cpu().numpy())[0], device=device)[None])
    spk = torch.tensor([speaker or 0], device=device) if vocoder.cfg.num_speakers else None
    return vocoder(x, spk)[0].float().cpu().numpy()


@torch.inference_mode()
def resynthesize(wav: np.ndarray, sr: int, tokenizer: str | None, vocoder_dir: str | None,
                 device: torch.device) -> tuple[np.ndarray, int, str]:
    """(waveform, sample rate, what it went through)."""
    from speechtok.tokenizers.codec import Codec
    from speechtok.tokenizers.load import load_tokenizer
    from speechtok.tokenizers.semantic import SemanticTokenizer
    from speechtok.unit_stream import check_unit_streams, unit_stream
    from speechtok.vocoders.hifigan import UnitHiFiGAN
    from speechtok.vocoders.train import load_vocoder

    tok = load_tokenizer(tokenizer, device=device) if tokenizer else None
    voc = load_vocoder(vocoder_dir, device) if vocoder_dir else None
    if isinstance(voc, UnitHiFiGAN):
        if not isinstance(tok, SemanticTokenizer):
            raise ValueError("a unit HiFi-GAN needs the semantic tokenizer it was trained on (-t KM_DIR)")
        check_unit_streams(unit_stream(tok.card(), dedup=False), tokenizer, vocoder_stream(voc.cfg),
                           vocoder_dir)
        units = tok.encode(resample(wav, sr, tok.sample_rate))
        return units_to_audio(voc, units), voc.cfg.sample_rate, f"{len(units)} units -> unit HiFi-GAN"
    if isinstance(tok, SemanticTokenizer):
        raise ValueError("semantic units need a unit vocoder (--vocoder DIR of a unit HiFi-GAN)")
    if voc is None:
        x = torch.from_numpy(resample(wav, sr, tok.sample_rate))[None]
        codes, frames = tok.encode(x, torch.tensor([x.shape[1]]))
        out, samples = tok.decode(codes, frames)
        return out[0, : int(samples[0])].cpu().numpy(), tok.sample_rate, f"{codes.shape[1]} x {int(frames[0])} codes"
    x = torch.from_numpy(resample(wav, sr, voc.sample_rate)).to(device)[None]
    if voc.is_codec:
        if not isinstance(tok, Codec):
            raise ValueError("a codec-token Vocos needs the codec (-t encodec:MODEL:nq=N)")
        codes, frames = tok.encode(x, torch.tensor([x.shape[1]]))
        out = voc.codes_to_audio(codes[:, :, : int(frames[0])].transpose(0, 1))
        return out[0].float().cpu().numpy(), voc.sample_rate, f"{codes.shape[1]} x {int(frames[0])} codes -> Vocos"
    return voc(x)[0].float().cpu().numpy(), voc.sample_rate, "mel -> Vocos"
