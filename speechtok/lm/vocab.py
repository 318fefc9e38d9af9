"""Audio tokens in a Hugging Face causal LM's vocabulary: `<s_i>` for semantic unit i, `<c{q}_{i}>` for entry
i of codebook q, `<p_i>` / `<st_i>` for pitch and style tokens (expressive sequences), and the modality
markers `[TEXT]` / `[SPEECH]`. Each kind occupies one contiguous id range, so unit ↔ token id is an offset;
the ranges are stored in `speech_vocab.json` beside the model. With Acoustic BPE (`tok bpe train`), `<s_i>`
for i ≥ k are the merged tokens, units go through the BPE on their way in and out (exactly), and the BPE
tokenizer is kept in `speech_bpe/` beside the model. A BPE of the codec stream does the same for codec
frames: the n_q codebooks flattened frame by frame, `<c_j>` for j ≥ n_q·codebook_size the merged tokens,
kept in `speech_bpe_codec/`. A BPE is only accepted for the codes it was trained on
(`UnitBPE.check_source`)."""

from __future__ import annotations

import json
import pickle
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from speechtok.torch_files import refusal
from speechtok.unit_stream import manifest_dedup, unit_stream

if TYPE_CHECKING:  # torch is imported where it is used: `tok generate` checks its LM folder before it
    import torch

VOCAB_FILE = "speech_vocab.json"
BPE_DIR = "speech_bpe"
CODEC_BPE_DIR = "speech_bpe_codec"
TEXT, SPEECH = "[TEXT]", "[SPEECH]"


def semantic_token(i: int) -> str:
    return f"<s_{i}>"


def codec_token(q: int, i: int) -> str:
    return f"<c{q}_{i}>"


def codec_tokens(n_q: int, codebook_size: int, bpe_tokens: int = 0) -> list[str]:
    """The codec range: `<c{q}_{i}>` codebook by codebook, then a codec BPE's merged tokens `<c_j>`."""
    base = [codec_token(q, i) for q in range(n_q) for i in range(codebook_size)]
    return base + [f"<c_{j}>" for j in range(len(base), bpe_tokens)]


EXPRESSIVE_TOKENS = {"pitch": "<p_{}>", "style": "<st_{}>"}


@dataclass
class SpeechVocab:
    """Where the audio tokens sit in the LM's vocabulary."""

    semantic_stream: str  # field name in the shards, e.g. "semantic"
    k: int
    semantic_first_id: int
    text_id: int
    speech_id: int
    dedup: bool = False
    frame_rate: float = 50.0
    codec_stream: str | None = None
    n_q: int = 0
    codebook_size: int = 0
    codec_first_id: int = -1
    tokenizer_cards: dict = field(default_factory=dict)
    bpe_tokens: int = 0  # with Acoustic BPE: the semantic tokens (k units + merges), else 0
    codec_bpe_tokens: int = 0  # with a codec BPE: the codec tokens (n_q × codebook size + merges), else 0
    speech: str = "units"  # the speech tokens the LM was trained on: units | codec (data.speech)
    bpe = None  # its UnitBPE (not a field: loaded from speech_bpe/)
    codec_bpe = None  # the codec stream's UnitBPE (speech_bpe_codec/)

    @property
    def semantic_tokens(self) -> int:
        """How many `<s_i>` tokens the LM has: k, or the BPE vocabulary."""
        return self.bpe_tokens or self.k
    pitch_stream: str | None = None  # expressive: pitch and style streams merged with the units by time
    pitch_k: int = 0
    pitch_first_id: int = -1
    pitch_rate: float = 0.0
    style_stream: str | None = None
    style_k: int = 0
    style_first_id: int = -1
    style_rate: float = 0.0

    @property
    def expressive(self) -> bool:
        return bool(self.pitch_stream or self.style_stream)

    def range_of(self, kind: str) -> tuple[int, int]:
        """(first id, count) of the "units", "pitch" or "style" tokens ((-1, 0) when absent)."""
        if kind == "units":
            return self.semantic_first_id, self.semantic_tokens
        return getattr(self, f"{kind}_first_id"), getattr(self, f"{kind}_k")

    def token_id(self, kind: str, token: int) -> int:
        first, k = self.range_of(kind)
        if not 0 <= token < k:
            raise ValueError(f"{kind} token {token} outside [0, {k})")
        return first + token

    def unit_stream(self) -> dict:
        """The units this LM reads and writes (`speechtok.unit_stream`); a ValueError for an LM trained on
        codec tokens, which makes none."""
        if self.speech != "units":
            raise ValueError(f"trained on {self.speech} tokens (data.speech: {self.speech}), not units")
        card = self.tokenizer_cards.get(self.semantic_stream)
        return unit_stream(card, self.dedup, self.k, self.frame_rate)

    def units_to_ids(self, units: np.ndarray) -> np.ndarray:
        units = np.asarray(units, dtype=np.int64)
        if units.size and (units.min() < 0 or units.max() >= self.k):
            raise ValueError(f"unit ids must lie in [0, {self.k}), got {units.min()}..{units.max()}")
        if self.bpe is not None:
            return self.bpe.encode(units) + self.semantic_first_id
        return units + self.semantic_first_id

    def ids_to_units(self, ids: np.ndarray | torch.Tensor) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int64)
        if ids.size and not self.is_semantic(ids).all():
            raise ValueError("not every id is a semantic token")
        if self.bpe is not None:
            return self.bpe.decode(ids - self.semantic_first_id)
        return ids - self.semantic_first_id

    def is_semantic(self, ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids)
        return (ids >= self.semantic_first_id) & (ids < self.semantic_first_id + self.semantic_tokens)

    def is_codec(self, ids: np.ndarray) -> np.ndarray:
        """Which ids are codec tokens (the codebooks' codes and a codec BPE's merges)."""
        ids = np.asarray(ids)
        count = self.codec_bpe_tokens or self.n_q * self.codebook_size
        return (ids >= self.codec_first_id) & (ids < self.codec_first_id + count)

    def codes_to_ids(self, codes: np.ndarray) -> np.ndarray:
        """[n_q, T] codes → [n_q, T] token ids (codebook q has its own range); with a codec BPE, the frames
        flattened and merged: [n] ids."""
        codes = np.asarray(codes, dtype=np.int64)
        if self.codec_bpe is not None:
            return self.codec_bpe.encode(codes) + self.codec_first_id
        q = np.arange(codes.shape[0])[:, None]
        return self.codec_first_id + q * self.codebook_size + codes

    def ids_to_codes(self, ids: np.ndarray) -> np.ndarray:
        """The inverse of `codes_to_ids`: [n_q, T] codes."""
        ids = np.asarray(ids, dtype=np.int64) - self.codec_first_id
        if self.codec_bpe is not None:
            return self.codec_bpe.decode(ids)
        return ids % self.codebook_size

    def codec_sequence(self, codes: np.ndarray) -> np.ndarray:
        """[n_q, T] codes → the LM's [n] codec token ids, frame by frame (q0 q1 … of each frame), merged by
        the codec BPE when there is one."""
        ids = self.codes_to_ids(codes)
        return ids if self.codec_bpe is not None else ids.T.reshape(-1)

    def sequence_codes(self, ids: np.ndarray) -> np.ndarray:
        """The inverse of `codec_sequence`: [n_q, T] codes."""
        ids = np.asarray(ids, dtype=np.int64)
        if self.codec_bpe is None:
            if ids.size % self.n_q:
                raise ValueError(f"{ids.size} codec tokens do not make whole frames of {self.n_q} codebooks")
            ids = ids.reshape(-1, self.n_q).T
        return self.ids_to_codes(ids)

    def save(self, directory: str | Path) -> None:
        (Path(directory) / VOCAB_FILE).write_text(json.dumps(asdict(self), indent=2) + "\n")
        for bpe, folder in ((self.bpe, BPE_DIR), (self.codec_bpe, CODEC_BPE_DIR)):
            if bpe is not None:
                bpe.save(Path(directory) / folder)

    @classmethod
    def load(cls, directory: str | Path) -> "SpeechVocab":
        path = Path(directory) / VOCAB_FILE
        if not path.exists():
            raise FileNotFoundError(f"{path}: not a speechtok LM directory (run `tok lm extend-vocab` first)")
        vocab = cls(**json.loads(path.read_text()))
        from speechtok.tokenizers.unit_bpe import UnitBPE

        if vocab.bpe_tokens:
            vocab.bpe = UnitBPE.load(Path(directory) / BPE_DIR)
        if vocab.codec_bpe_tokens:
            vocab.codec_bpe = UnitBPE.load(Path(directory) / CODEC_BPE_DIR)
        return vocab


class TokenClash(ValueError):
    """The base tokenizer already has one of the tokens to add."""


def _add_contiguous(tokenizer, tokens: list[str]) -> int:
    """Add `tokens` as whole (never split, never normalised) tokens in one call and return the id of the
    first; refuses if any already exists or the new ids are not contiguous. Linear in the vocabulary size:
    `get_vocab()` copies the whole vocabulary, so it is read once, not once per token."""
    from tokenizers import AddedToken

    existing = tokenizer.get_vocab()
    clash = [t for t in tokens if t in existing]
    if clash:
        raise TokenClash(f"the tokenizer already has {clash[:3]}...; was it extended before?")
    tokenizer.add_tokens([AddedToken(t, normalized=False, special=False, single_word=False) for t in tokens])
    ids = tokenizer.convert_tokens_to_ids(tokens)
    if ids != list(range(ids[0], ids[0] + len(tokens))):
        raise RuntimeError("added tokens did not get contiguous ids")
    return ids[0]


def semantic_stream(cards: dict, stream: str | None = None) -> str:
    """The semantic stream (shard field) a stage reads from shards whose manifest has these tokenizer
    `cards`: `stream` when given, else the only one; a ValueError says which there are."""
    semantic = [name for name, c in cards.items() if c.get("type") == "semantic"]
    if stream is not None:
        if stream not in semantic:
            raise ValueError(f"stream: no semantic stream {stream!r} in the shards "
                             f"(they hold {semantic or 'none'})")
        return stream
    if len(semantic) != 1:
        raise ValueError(f"the shards hold {len(semantic)} semantic streams {semantic}; choose one with "
                         "--stream NAME (in a config: stream: NAME)" if semantic else
                         f"the shards hold no semantic stream (only {sorted(cards)})")
    return semantic[0]


def speech_streams(manifest: dict, codec: str | None,
                   stream: str | None = None) -> tuple[str, dict, str | None, dict | None]:
    """(semantic field, its card, codec field or None, its card) from a shard manifest; `stream` chooses
    among several semantic streams (see `semantic_stream`)."""
    cards = manifest["tokenizers"]
    name = semantic_stream(cards, stream)
    if codec is not None and codec not in cards:
        raise ValueError(f"no codec '{codec}' in the manifest (it has {sorted(cards)})")
    if codec is not None and cards[codec].get("type") != "codec":
        codecs = sorted(k for k, c in cards.items() if c.get("type") == "codec")
        raise ValueError(f"'{codec}' is a {cards[codec].get('type')} stream, not a codec's "
                         f"(codec streams: {codecs or 'none'})")
    return name, cards[name], codec, cards[codec] if codec else None


def check_bpes(manifest: dict, codec: str | None, n_q: int | None, stream: str | None, bpe=None,
               codec_bpe=None, shards: str = "the shards") -> None:
    """Refuse, naming the BPE's bpe.json, a semantic `bpe` or a `codec_bpe` that was not trained on the
    codes these shards give the LM (tokenizer, k or codebooks, frame rate, dedup; `shards` names them)."""
    from speechtok.tokenizers.unit_bpe import stream_source

    sem_name, sem, codec_name, cc = speech_streams(manifest, codec, stream)
    if bpe is not None:
        made = stream_source(sem_name, sem, manifest_dedup(manifest, sem_name))
        bpe.check_source(made, f"{shards}'s stream '{sem_name}'")
    if codec_bpe is not None:
        if cc is None:
            raise ValueError(f"{codec_bpe.path}: a codec BPE needs the codec stream "
                             f"(--codec {codec_bpe.stream})")
        codec_bpe.check_source(stream_source(codec_name, cc, False, n_q), f"{shards}'s stream '{codec_name}'")


def extend_vocab(model, tokenizer, manifest: dict, codec: str | None = None, n_q: int | None = None,
                 pad_to_multiple_of: int = 64, seed: int = 0, stream: str | None = None,
                 bpe=None, pitch: str | None = None, style: str | None = None, codec_bpe=None) -> SpeechVocab:
    """Add the audio tokens of a shard manifest to `tokenizer` and resize `model`'s embeddings and output
    head; new rows are drawn from the mean and covariance of the existing ones (transformers'
    mean_resizing), so the new tokens start where the model's logits are sensible. With `bpe` (a UnitBPE
    trained on the semantic stream), its merged tokens are added after the k units; with `codec_bpe` (one
    trained on the codec stream's n_q codebooks), after the codec tokens. `stream` chooses the semantic
    stream when the shards hold several."""
    sem_name, sem, codec_name, cc = speech_streams(manifest, codec, stream)
    check_bpes(manifest, codec, n_q, stream, bpe, codec_bpe)
    if bpe is not None and (pitch or style):
        raise ValueError("Acoustic BPE and expressive (pitch / style) tokens cannot be combined yet: a "
                         "merged token spans several unit frames, which have no single start time")
    tokenizer.add_special_tokens({"additional_special_tokens": [TEXT, SPEECH]})
    text_id, speech_id = tokenizer.convert_tokens_to_ids([TEXT, SPEECH])
    count = sem["k"] if bpe is None else bpe.vocab_size
    first = _add_contiguous(tokenizer, [semantic_token(i) for i in range(count)])
    vocab = SpeechVocab(semantic_stream=sem_name, k=sem["k"], semantic_first_id=first, text_id=text_id,
                        speech_id=speech_id, dedup=manifest_dedup(manifest, sem_name),
                        frame_rate=sem["frame_rate"], tokenizer_cards={sem_name: sem},
                        bpe_tokens=0 if bpe is None else bpe.vocab_size)
    vocab.bpe = bpe
    if cc is not None:
        nq = n_q or cc["n_q"]
        if nq > cc["n_q"]:
            raise ValueError(f"{codec_name} has {cc['n_q']} codebooks in the shards, {nq} asked")
        vocab.codec_stream, vocab.n_q, vocab.codebook_size = codec_name, nq, cc["codebook_size"]
        vocab.codec_bpe_tokens = 0 if codec_bpe is None else codec_bpe.vocab_size
        vocab.codec_bpe = codec_bpe
        vocab.codec_first_id = _add_contiguous(tokenizer, codec_tokens(nq, cc["codebook_size"],
                                                                       vocab.codec_bpe_tokens))
        vocab.tokenizer_cards[codec_name] = cc
    for kind, name in (("pitch", pitch), ("style", style)):
        if name is not None:
            add_expressive(vocab, tokenizer, manifest, kind, name)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    import torch

    with torch.random.fork_rng(devices=[]):  # the new rows are drawn at random: make them reproducible
        torch.manual_seed(seed)
        model.resize_token_embeddings(len(tokenizer), pad_to_multiple_of=pad_to_multiple_of,
                                      mean_resizing=True)
    return vocab


def add_expressive(vocab: SpeechVocab, tokenizer, manifest: dict, kind: str, name: str) -> None:
    """Add the `kind` ("pitch" or "style") tokens of shard stream `name` as one contiguous range."""
    card = manifest["tokenizers"].get(name)
    if card is None or card.get("type") != kind:
        found = [k for k, c in manifest["tokenizers"].items() if c.get("type") == kind]
        raise ValueError(f"no {kind} stream '{name}' in the manifest ({kind} streams: {found or 'none'})")
    k = int(card["codebook_size"])
    first = _add_contiguous(tokenizer, [EXPRESSIVE_TOKENS[kind].format(i) for i in range(k)])
    for key, value in (("stream", name), ("k", k), ("first_id", first), ("rate", float(card["frame_rate"]))):
        setattr(vocab, f"{kind}_{key}", value)
    vocab.tokenizer_cards[name] = card


def load_base(base: str, from_scratch: bool = False, dtype: torch.dtype | None = None):
    """(model, tokenizer) from a hub id or a local directory; with `from_scratch` only the config and
    tokenizer are read and the weights are freshly initialised (fp32 unless `dtype` says otherwise)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from speechtok.hub import check_model_ref

    base, dtype = check_model_ref(base), dtype or torch.float32
    tokenizer = AutoTokenizer.from_pretrained(base)
    if from_scratch:
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(base), dtype=dtype)
        return model, tokenizer
    try:
        model = AutoModelForCausalLM.from_pretrained(base, dtype=dtype)
    except pickle.UnpicklingError as e:  # a pytorch_model*.bin that torch.load(weights_only=True) refuses
        bins = sorted(Path(base).glob("pytorch_model*.bin"))
        raise refusal(bins[0] if len(bins) == 1 else base, e) from None
    return model, tokenizer
