"""Integrity of tokenizer cards (`tokenizer.json`): the card carries a sha256 of its own content, so an
edited field (a removed checksum, a changed hop_length or sample_rate) is refused, and the model weights
are checked against the sha256 the card recorded."""

from __future__ import annotations

import hashlib
import json

CARD_CHECKSUM = "card_sha256"


class ModelMismatch(ValueError):
    """The model weights differ from those the tokenizer card was made with."""


LOCATION_KEYS = ("model", "model_path")  # where the model lies: rewritten when a folder moves, not sealed


def card_checksum(card: dict) -> str:
    """sha256 of the card's canonical JSON, its own checksum field and the model's location left out (the
    weights themselves are checked against their own sha256)."""
    body = {k: v for k, v in card.items() if k != CARD_CHECKSUM}
    if isinstance(body.get("features"), dict):
        body["features"] = {k: v for k, v in body["features"].items() if k not in LOCATION_KEYS}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()


def seal_card(card: dict) -> dict:
    """The card with its checksum (computed over everything else) as its last field."""
    body = {k: v for k, v in card.items() if k != CARD_CHECKSUM}
    return {**body, CARD_CHECKSUM: card_checksum(body)}


def check_card(card: dict, where: str) -> None:
    """Refuse a card whose checksum is missing or does not match its content (an edited card)."""
    if not isinstance(card.get(CARD_CHECKSUM), str):
        raise ValueError(f"{where}: no '{CARD_CHECKSUM}' (the card was edited, or written by an older "
                         f"speechtok); its settings cannot be trusted: make the tokenizer again")
    if card_checksum(card) != card[CARD_CHECKSUM]:
        raise ValueError(f"{where}: content does not match its '{CARD_CHECKSUM}'; the card was edited or "
                         f"corrupted (feature settings, checksums or k must stay as written)")


def check_weights(expected: str | None, actual: str | None, model: str, where: str, allow: bool) -> bool:
    """Whether the weights match the card's sha256 (True when the card records none). A mismatch
    raises ModelMismatch unless `allow` (a deliberate swap), in which case it returns False."""
    if expected is None or expected == actual:
        return True
    if allow:
        return False
    found = f"sha256 {actual[:12]}..." if actual else "no weight files found to check"
    raise ModelMismatch(f"{where}: model weights of {model} do not match the card ({found}, the card says "
                        f"{expected[:12]}...); pass --allow-model-mismatch to use them anyway")
