"""The semantic-unit stream a stage was trained on — which tokenizer (sha256 of its card's identity), how
many units, their frame rate, deduplicated or frame-level — and the one rule for chaining stages.

The LM keeps its record in `speech_vocab.json` (its tokenizer card and dedup flag), the acoustic model in
`acoustic.json` and the unit HiFi-GAN in `vocoder.json` (`unit_stream`). Frame-level units may feed a stage
trained on deduplicated ones (it run-length encodes them and knows their exact length); deduplicated units
cannot feed a frame-level stage: nothing in the chain knows how long each unit lasts."""

from __future__ import annotations

import hashlib
import json

IDENTITY = ("type", "features", "k", "sample_rate", "frame_rate", "centroids")  # what fixes the units


def tokenizer_sha256(card: dict) -> str:
    """sha256 of what in a semantic tokenizer card decides its units (features, centroids' checksum, k,
    rates); where the model lies (a path that changes when a folder moves), the weights' checksum, dedup
    and k-means statistics are left out."""
    body = {k: card.get(k) for k in IDENTITY}
    if isinstance(body["features"], dict):
        body["features"] = {k: v for k, v in body["features"].items()
                            if k not in ("weights_sha256", "model", "model_path")}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def manifest_dedup(manifest: dict, name: str) -> bool:
    """Whether shard stream `name` was written deduplicated: a manifest keeps one flag, or one per stream."""
    dedup = manifest.get("dedup", False)
    return bool(dedup.get(name, False) if isinstance(dedup, dict) else dedup)


def unit_stream(card: dict | None, dedup: bool, k: int | None = None,
                frame_rate: float | None = None) -> dict:
    """The record of a unit stream, from its tokenizer card; without a card (artefacts made before records
    existed) from the k and frame rate a stage kept, its tokenizer unknown."""
    if card:
        k, frame_rate = card["k"], card["frame_rate"]
    return {"tokenizer_sha256": tokenizer_sha256(card) if card else None, "k": int(k),
            "frame_rate": float(frame_rate), "dedup": bool(dedup)}


def check_unit_streams(made: dict, maker: str, used: dict, user: str) -> None:
    """Refuse, in one line naming both values, to feed the units `maker` makes to `user` unless `user` was
    trained on them (see the module docstring for dedup)."""
    a, b = made.get("tokenizer_sha256"), used.get("tokenizer_sha256")
    if a and b and a != b:
        raise ValueError(f"{maker} makes units of another tokenizer (k={made['k']}, {made['frame_rate']:g} "
                         f"Hz, sha256 {a[:12]}...) than {user} was trained on (k={used['k']}, "
                         f"{used['frame_rate']:g} Hz, sha256 {b[:12]}...); use stages trained on the same "
                         "tokenizer")
    if made["k"] != used["k"]:
        raise ValueError(f"{maker} makes units of k={made['k']}, but {user} was trained on k={used['k']}")
    if made["frame_rate"] != used["frame_rate"]:
        raise ValueError(f"{maker} makes {made['frame_rate']:g} Hz units, but {user} was trained on "
                         f"{used['frame_rate']:g} Hz units")
    if made["dedup"] and not used["dedup"]:
        raise ValueError(f"{maker} makes deduplicated units (dedup: true), but {user} was trained on "
                         "frame-level units (dedup: false) and nothing in the chain knows their durations; "
                         "use a stage trained with dedup: true, or an LM trained with dedup: false")
