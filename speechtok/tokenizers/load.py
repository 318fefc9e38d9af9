"""`load_tokenizer`: what `tok encode -t` accepts — a tokenizer directory `DIR[:name=NAME]` (semantic units,
or pitch / style tokens from `tok prosody train`), a codec spec `KIND:MODEL[:nq=N][:name=NAME]` (KIND:
encodec, dac, mimi; MODEL: hub id or local directory), or an F0 tracker `f0:TRACKER[:rate=HZ]...`."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from speechtok.tokenizers.codec import Codec
from speechtok.tokenizers.semantic import SemanticTokenizer
from speechtok.tokenizers.spec import CARD_FILE, check_spec, parse_codec_spec, parse_f0_spec, semantic_spec


def load_tokenizer(spec: str, device: str | torch.device = "cpu", precision: str = "fp32",
                   allow_model_mismatch: bool = False):
    """A `SemanticTokenizer`, a `Codec`, an `F0Tokenizer` or a pitch / style tokenizer from its spec; its
    `.name` is the shard field it writes (a directory's card type — "semantic", "pitch", "style" — unless a
    `:name=` says otherwise, so that two tokenizers of a kind can share a pass)."""
    check_spec(spec)  # a ValueError unless a tokenizer directory or a well-formed codec or F0 spec
    directory, name = semantic_spec(spec)
    if directory is not None:
        kind = _card_type(Path(directory, CARD_FILE))
        if kind in ("pitch", "style"):
            from speechtok.prosody.load import load_prosody_tokenizer

            tok = load_prosody_tokenizer(directory, kind, device=device, precision=precision)
        else:
            tok = SemanticTokenizer.from_dir(directory, device=device, precision=precision,
                                             allow_model_mismatch=allow_model_mismatch)
        tok.name = name if spec != directory else tok.name
        return tok
    if spec.startswith("f0:"):
        from speechtok.prosody.f0_tokenizer import F0Tokenizer

        return F0Tokenizer(device=device, **parse_f0_spec(spec))
    opts = parse_codec_spec(spec)
    return Codec(opts["kind"], opts["model"], n_q=opts.get("n_q"), bandwidth=opts.get("bandwidth"),
                 name=opts.get("name"), device=device)


def _card_type(path: Path) -> str | None:
    """The `type` a tokenizer card declares (None when unreadable: the loader then names the problem)."""
    try:
        card = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return card.get("type") if isinstance(card, dict) else None
