"""Pitch tokens back to an F0 contour, so that generated pitch is heard (`tok generate` with an expressive LM
and an F0-conditioned unit HiFi-GAN): bins decode to their bin's median, VQ-VAE codes through its decoder
(to the 5 ms grid), both normalised log-F0 to which a speaker's level is put back — the speaker's log-F0
mean and std recorded in the pitch tokenizer's card (`--speaker`), else the mean over the card's speakers,
else DEFAULT_LEVEL. The vocoder then reads the contour as it reads a tracked one (`f0_input.f0_features`
with its own normalisation), stretched onto the units (as Spirit-LM's expressive vocoder spreads pitch
tokens over the units)."""

from __future__ import annotations

import numpy as np

from speechtok.prosody.normalize import denormalize

DEFAULT_LEVEL = (float(np.log(150.0)), 0.2)  # log-F0 mean and std without any speaker statistics


def speaker_level(card: dict, speaker: str | None = None) -> tuple[float, float]:
    """(log-F0 mean, std) to decode normalised pitch with: `speaker`'s from the card's `speakers`, else the
    mean over them, else DEFAULT_LEVEL."""
    table = card.get("speakers") or {}
    if speaker is not None:
        if speaker not in table:
            raise ValueError(f"speaker {speaker!r} has no F0 statistics in the pitch tokenizer's card "
                             f"(speakers: {', '.join(sorted(table)) or 'none'})")
        return table[speaker]["logf0_mean"], table[speaker]["logf0_std"]
    if not table:
        return DEFAULT_LEVEL
    return (float(np.mean([s["logf0_mean"] for s in table.values()])),
            float(np.mean([s["logf0_std"] for s in table.values()])))


def pitch_contour(tok, tokens: np.ndarray, level: tuple[float, float]) -> tuple[np.ndarray, float]:
    """Pitch tokens of a PitchBins or PitchVQVAE → (F0 in Hz per frame, 0 where unvoiced; frames per
    second: the tokens' rate for bins, the F0 grid's for the VQ-VAE decoder)."""
    from speechtok.prosody.pitch_bins import PitchBins

    tokens = np.asarray(tokens, dtype=np.int64)
    if isinstance(tok, PitchBins):
        x, norm, rate = tok.decode(tokens), tok.norm, tok.frame_rate
    else:
        x = tok.decode(tokens) if len(tokens) else np.zeros(0)
        norm, rate = tok.model.cfg.norm, tok.f0.frame_rate
    log = denormalize(x, norm, level)
    return np.where(np.isnan(log), 0.0, np.exp(np.nan_to_num(log))), rate


def load_pitch_tokenizer(card: dict, directory: str | None = None):
    """The pitch tokenizer an LM's vocabulary card names: bins from the card alone, the VQ-VAE from
    `directory` (its weights must match the card's checksum)."""
    if card.get("method") == "bins":
        from speechtok.prosody.pitch_bins import PitchBins

        if directory is not None:  # it would be ignored
            raise ValueError(f"{directory}: the LM's pitch tokens are pitch bins, decoded from the card the "
                             "LM keeps; drop --pitch-tokenizer (it is for an F0 VQ-VAE's tokens)")
        return PitchBins.from_card(card)
    if directory is None:
        raise ValueError("the LM's pitch tokens come from an F0 VQ-VAE: give its folder "
                         "(--pitch-tokenizer DIR) to decode them to F0")
    from speechtok.prosody.load import load_prosody_tokenizer

    tok = load_prosody_tokenizer(directory, "pitch")
    if tok.card().get("weights", {}).get("sha256") != card.get("weights", {}).get("sha256"):
        raise ValueError(f"{directory}: not the F0 VQ-VAE the LM's pitch tokens came from (weights differ)")
    return tok
