"""Pitch and style tokenizer directories (`tokenizer.json`, plus model weights for the F0 VQ-VAE): written by
`tok prosody train`, read by `tok encode -t DIR`; the card's own checksum and the weights' are checked."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from speechtok.tokenizers.card import check_card
from speechtok.tokenizers.spec import CARD_FILE


def read_card(directory: str | Path) -> dict:
    """A prosody tokenizer's card, refusing an edited one."""
    path = Path(directory, CARD_FILE)
    try:
        card = json.loads(path.read_text())
    except ValueError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    check_card(card, str(path))
    return card


def save_card(tok, directory: str | Path) -> Path:
    """Write `tok`'s card into `directory` (created)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / CARD_FILE).write_text(json.dumps(tok.card(), indent=2) + "\n")
    return directory


def load_prosody_tokenizer(directory: str | Path, kind: str, device: str | torch.device = "cpu",
                           precision: str = "fp32"):
    """The pitch (bins or VQ-VAE) or style tokenizer saved in `directory`."""
    card = read_card(directory)
    if kind == "pitch" and card.get("method") == "bins":
        from speechtok.prosody.pitch_bins import PitchBins

        return PitchBins.from_card(card, device=device)
    if kind == "pitch" and card.get("method") == "vqvae":
        from speechtok.prosody.f0_vqvae import PitchVQVAE

        return PitchVQVAE.from_dir(directory, card, device=device)
    if kind == "style":
        from speechtok.prosody.style import StyleTokenizer

        return StyleTokenizer.from_dir(directory, card, device=device, precision=precision)
    raise ValueError(f"{Path(directory, CARD_FILE)}: unknown {kind} tokenizer method {card.get('method')!r}")
