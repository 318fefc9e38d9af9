"""`load_tokenizer`: what `tok encode -t` accepts — a semantic tokenizer directory, or a codec spec
`KIND:MODEL[:nq=N][:name=NAME]` (KIND: encodec, dac, mimi; MODEL: hub id or local directory)."""

from __future__ import annotations

from pathlib import Path

import torch

from speechtok.tokenizers.codec import KINDS, Codec, parse_codec_spec
from speechtok.tokenizers.semantic import CARD_FILE, SemanticTokenizer


def load_tokenizer(spec: str, device: str | torch.device = "cpu", precision: str = "fp32",
                   allow_model_mismatch: bool = False):
    """A `SemanticTokenizer` or a `Codec` from its spec; its `.name` is the shard field it writes."""
    if Path(spec, CARD_FILE).exists():
        tok = SemanticTokenizer.from_dir(spec, device=device, precision=precision,
                                         allow_model_mismatch=allow_model_mismatch)
        tok.name = "semantic"
        return tok
    if spec.partition(":")[0] in KINDS:
        opts = parse_codec_spec(spec)
        return Codec(opts["kind"], opts["model"], n_q=opts.get("n_q"), bandwidth=opts.get("bandwidth"),
                     name=opts.get("name"), device=device)
    raise ValueError(f"{spec}: neither a tokenizer directory (no {CARD_FILE}) nor a codec spec "
                     f"({'|'.join(KINDS)}:MODEL[:nq=N])")
