"""`load_tokenizer`: what `tok encode -t` accepts — a semantic tokenizer directory `DIR[:name=NAME]`, or a
codec spec `KIND:MODEL[:nq=N][:name=NAME]` (KIND: encodec, dac, mimi; MODEL: hub id or local directory)."""

from __future__ import annotations

import torch

from speechtok.tokenizers.codec import Codec
from speechtok.tokenizers.semantic import SemanticTokenizer
from speechtok.tokenizers.spec import check_spec, parse_codec_spec, semantic_spec


def load_tokenizer(spec: str, device: str | torch.device = "cpu", precision: str = "fp32",
                   allow_model_mismatch: bool = False):
    """A `SemanticTokenizer` or a `Codec` from its spec; its `.name` is the shard field it writes
    ("semantic" unless a `:name=` says otherwise, so that two semantic tokenizers can share a pass)."""
    check_spec(spec)  # a ValueError unless a tokenizer directory or a well-formed codec spec
    directory, name = semantic_spec(spec)
    if directory is not None:
        tok = SemanticTokenizer.from_dir(directory, device=device, precision=precision,
                                         allow_model_mismatch=allow_model_mismatch)
        tok.name = name
        return tok
    opts = parse_codec_spec(spec)
    return Codec(opts["kind"], opts["model"], n_q=opts.get("n_q"), bandwidth=opts.get("bandwidth"),
                 name=opts.get("name"), device=device)
