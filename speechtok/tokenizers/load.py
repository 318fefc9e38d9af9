"""`load_tokenizer`: what `tok encode -t` accepts — a semantic tokenizer directory `DIR[:name=NAME]`, or a
codec spec `KIND:MODEL[:nq=N][:name=NAME]` (KIND: encodec, dac, mimi; MODEL: hub id or local directory)."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from speechtok.tokenizers.codec import KINDS, Codec, parse_codec_spec
from speechtok.tokenizers.semantic import CARD_FILE, SemanticTokenizer


def load_tokenizer(spec: str, device: str | torch.device = "cpu", precision: str = "fp32",
                   allow_model_mismatch: bool = False):
    """A `SemanticTokenizer` or a `Codec` from its spec; its `.name` is the shard field it writes
    ("semantic" unless a `:name=` says otherwise, so that two semantic tokenizers can share a pass)."""
    directory, name = semantic_spec(spec)
    if directory is not None:
        tok = SemanticTokenizer.from_dir(directory, device=device, precision=precision,
                                         allow_model_mismatch=allow_model_mismatch)
        tok.name = name
        return tok
    if spec.partition(":")[0] in KINDS:
        opts = parse_codec_spec(spec)
        return Codec(opts["kind"], opts["model"], n_q=opts.get("n_q"), bandwidth=opts.get("bandwidth"),
                     name=opts.get("name"), device=device)
    raise ValueError(f"{spec}: neither a tokenizer directory (no {CARD_FILE}) nor a codec spec "
                     f"({'|'.join(KINDS)}:MODEL[:nq=N])")


def semantic_spec(spec: str) -> tuple[str | None, str]:
    """`DIR[:name=NAME]` → (DIR, NAME or "semantic") when DIR holds a tokenizer card, else (None, "")."""
    if Path(spec, CARD_FILE).exists():
        return spec, "semantic"
    m = re.fullmatch(r"(.+):name=([A-Za-z0-9][\w.-]*)", spec)
    if m and Path(m[1], CARD_FILE).exists():
        return m[1], m[2]
    return None, ""
