"""The `depth` codebook pattern (Moshi's RQ-Transformer) and its text stream ("inner monologue").

A temporal transformer steps over frames (the acoustic model's: `units [SEP] steps`, each step's input the
sum of its tokens' embeddings); from its state a small depth transformer draws the step's tokens one
after another: the text token (with `text_stream`), then codebook 0, 1, …, n_q − 1, each position
reading the temporal state (its own projection) and the token drawn before it. Codebooks ≥ 1 lag
codebook 0 by `acoustic_delay` frames, as Moshi's acoustic tokens lag its semantic one, so a frame's fine
codes are drawn knowing the next frames' first codebook.

The text stream is at the codec frame rate, aligned with codebook 0: each word's tokens from its start
frame on, PAD between words and EPAD in the frame before a word's first token where that frame is
padding (Moshi's end-of-padding marker); a word that starts before the previous one's tokens end is
shifted to start right after them (the stream then trails the speech until the next pause). Text ids:
the tokenizer's, then PAD, EPAD; EMPTY (never drawn, never scored) after them.

Generation prompted with text constrains the text slot on the device: at a word boundary it may be PAD,
EPAD or the word's first token; after EPAD or inside a word only the next token; once the text is
spoken only PAD. A per-row position into the text advances when its next token is drawn."""

from __future__ import annotations

import dataclasses
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from speechtok.lm.acoustic import (AcousticConfig, AcousticModel, AcousticSteps, Block, codebook_classes,
                                   step_tables)
from speechtok.lm.decoding import Decoder, Plan, Sampler, bucket, sample


class TextTokens:
    """The text stream's tokenizer: UTF-8 bytes (`bytes`) or a Hugging Face tokenizer (a directory or hub
    id); ids 0..n − 1 its tokens, then PAD and EPAD (`vocab` = n + 2 drawable ids), EMPTY = `vocab`."""

    def __init__(self, name: str = "bytes"):
        self.name, self.tok = name, None
        if name != "bytes":
            from transformers import AutoTokenizer

            try:
                self.tok = AutoTokenizer.from_pretrained(name)
            except Exception as e:  # transformers: OSError, ValueError, KeyError, ... for what it cannot read
                why = " ".join(str(e).split())[:200] or type(e).__name__
                raise ValueError(f"text_tokenizer: {name!r} is not a Hugging Face tokenizer (a folder or hub "
                                 f"id) nor 'bytes' ({type(e).__name__}: {why})") from None
        self.n = 256 if self.tok is None else len(self.tok)
        self.pad, self.epad, self.empty = self.n, self.n + 1, self.n + 2
        self.vocab = self.n + 2

    def word_ids(self, words: list[str]) -> list[list[int]]:
        """Each word's ids as in the running text: every word but the first with the space before it."""
        texts = [w if i == 0 else " " + w for i, w in enumerate(words)]
        if self.tok is None:
            return [list(t.encode("utf-8")) for t in texts]
        return [self.tok(t, add_special_tokens=False)["input_ids"] for t in texts]

    def decode(self, ids: list[int]) -> str:
        if self.tok is None:
            return bytes(ids).decode("utf-8", errors="replace")
        return self.tok.decode(ids)


@lru_cache(maxsize=4)
def text_tokens(name: str) -> TextTokens:
    return TextTokens(name)


def place_words(word_ids: list[list[int]], starts: list[int], T: int, pad: int, epad: int) -> np.ndarray:
    """The text stream [T] of words with token ids `word_ids` starting at frames `starts`: tokens from the
    start frame (or right after the previous word's tokens when they overrun it), PAD between, EPAD in
    the padding frame before a word; tokens past T are cut."""
    out = np.full(T, pad, dtype=np.int64)
    free = 0  # the first frame after the previous word's tokens
    for ids, start in zip(word_ids, starts):
        if not ids:
            continue
        f = max(int(start), free)
        if f >= T:
            break
        if f > free:
            out[f - 1] = epad
        n = min(len(ids), T - f)
        out[f: f + n] = ids[:n]
        free = f + len(ids)
    return out


def text_frames(cfg: AcousticConfig, words: list[dict] | None, T: int) -> np.ndarray:
    """The text stream [T] of an utterance's word timings (seconds from its start, as `tok align` and the
    manifest give them); all EMPTY (not scored) without them."""
    tt = text_tokens(cfg.text_tokenizer)
    if not words:
        return np.full(T, tt.empty, dtype=np.int64)
    starts = [int(round(w["start"] * cfg.codec_rate)) for w in words]
    return place_words(tt.word_ids([w["word"] for w in words]), starts, T, tt.pad, tt.epad)


def with_text(cfg: AcousticConfig, steps: np.ndarray, text: np.ndarray) -> np.ndarray:
    """Codec steps [N, n_q] and a text stream [T] → depth steps [N, 1 + n_q] (text first, EMPTY after T)."""
    column = np.full(len(steps), text_tokens(cfg.text_tokenizer).empty, dtype=np.int64)
    column[: len(text)] = text
    return np.concatenate([column[:, None], steps], 1)


def depth_tables(cfg: AcousticConfig, n_frames: list[int], prompts: list[np.ndarray | None]
                 ) -> tuple[np.ndarray, np.ndarray]:
    """(known, class) [B, N, streams]: the codec slots as `step_tables` makes them (class 0), the text slot
    drawn in every frame (class 1) and EMPTY after a row's last frame."""
    known, klass = step_tables(dataclasses.replace(cfg, text_stream=False), n_frames, prompts)
    if not cfg.text_stream:
        return known, klass
    text = np.full(known.shape[:2], text_tokens(cfg.text_tokenizer).empty, dtype=np.int64)
    for i, n in enumerate(n_frames):
        text[i, :n] = -1
    text_class = np.ones_like(text)[..., None]
    return np.concatenate([text[..., None], known], 2), np.concatenate([text_class, klass], 2)


def depth_classes(cfg: AcousticConfig) -> torch.Tensor:
    """[2, V] allowed tokens: class 0 a codebook's codes, class 1 the text tokens with PAD and EPAD."""
    V = max(cfg.stream_vocab, cfg.text_vocab + 1)
    codes = F.pad(codebook_classes(cfg), (0, V - cfg.stream_vocab))
    return torch.cat([codes, (torch.arange(V) < cfg.text_vocab)[None]])


class DepthModel(AcousticModel):
    """Semantic units → codec tokens (and text) in the depth pattern: AcousticModel's temporal transformer
    (same parameter names, so its static cache, prefill, save and load apply) with a depth transformer in
    place of its per-stream heads."""

    def __init__(self, cfg: AcousticConfig):
        nn.Module.__init__(self)
        self.cfg = cfg
        vocabs = [cfg.text_vocab + 1] * cfg.text_streams + [cfg.stream_vocab] * cfg.n_q  # EMPTY included
        self.sem_emb = nn.Embedding(cfg.k, cfg.dim)
        self.sep = nn.Parameter(torch.randn(cfg.dim) * 0.02)
        self.code_emb = nn.ModuleList(nn.Embedding(v, cfg.dim) for v in vocabs)
        self.pos_emb = nn.Embedding(cfg.max_len, cfg.dim)
        self.blocks = nn.ModuleList(Block(cfg.dim, cfg.heads) for _ in range(cfg.layers))
        self.ln_f = nn.LayerNorm(cfg.dim)
        D = cfg.depth_dim
        self.depth_in = nn.ModuleList(nn.Linear(cfg.dim, D) for _ in vocabs)  # the temporal state, per slot
        self.depth_emb = nn.ModuleList(nn.Embedding(v, D) for v in vocabs[:-1])  # the token before a position
        self.depth_blocks = nn.ModuleList(Block(D, cfg.depth_heads) for _ in range(cfg.depth_layers))
        self.depth_ln = nn.LayerNorm(D)
        self.heads = nn.ModuleList(nn.Linear(D, v - 1, bias=False) for v in vocabs)  # EMPTY is never drawn
        self.apply(self._init)

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """The temporal state [B, dim] itself: the depth transformer draws a step's tokens from it."""
        return h

    def depth_logits(self, state: torch.Tensor, tokens: torch.Tensor) -> list[torch.Tensor]:
        """Logits [M, V_s] of every stream s of M steps, from their temporal states [M, dim] and tokens
        [M, S] (position s reads the state and token s − 1; causal, so it never sees token s)."""
        x = torch.stack([proj(state) for proj in self.depth_in], 1)
        x = x + F.pad(torch.stack([emb(tokens[:, s]) for s, emb in enumerate(self.depth_emb)], 1),
                      (0, 0, 1, 0))
        h = self.depth_run(x)
        return [head(h[:, s]) for s, head in enumerate(self.heads)]

    def depth_run(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.depth_blocks:
            x = block(x)
        return self.depth_ln(x)

    def codebook_weights(self) -> list[float]:
        """Loss weight per codebook: as configured, else Moshi's 100 for codebook 0 and 1 for the others."""
        return list(self.cfg.codebook_weights) or [100.0] + [1.0] * (self.cfg.n_q - 1)

    def forward(self, semantic: list[torch.Tensor], steps: list[torch.Tensor]) -> torch.Tensor:
        """Training loss over non-EMPTY slots, as Moshi's: the text stream's mean cross-entropy plus the
        codebooks' mean cross-entropies weighted by `codebook_weights`."""
        x = nn.utils.rnn.pad_sequence([torch.cat([self.sem_emb(u), self.sep[None],
                                                  self.embed_steps(s[:-1][None])[0]])
                                       for u, s in zip(semantic, steps)], batch_first=True)
        if x.shape[1] > self.cfg.max_len:
            raise ValueError(f"sequence of {x.shape[1]} positions exceeds max_len {self.cfg.max_len}")
        h = self._run(x, torch.arange(x.shape[1], device=x.device))
        state = torch.cat([h[i, len(u): len(u) + len(s)] for i, (u, s) in enumerate(zip(semantic, steps))])
        tokens = torch.cat(steps)
        logits = self.depth_logits(state, tokens)
        ts, weights = self.cfg.text_streams, self.codebook_weights()
        total, weight = 0.0, 0.0
        for q, w in enumerate(weights):
            target = tokens[:, ts + q]
            keep = target != self.cfg.empty
            total = total + w * F.cross_entropy(logits[ts + q][keep].float(), target[keep], reduction="sum")
            weight = weight + w * keep.sum()
        loss = total / weight.clamp(min=1)
        if ts:
            target = tokens[:, 0]
            keep = target != self.cfg.text_vocab
            text = F.cross_entropy(logits[0][keep].float(), target[keep], reduction="sum")
            loss = loss + text / keep.sum().clamp(min=1)
        return loss

    def decoder(self, units: list[np.ndarray], n_frames: list[int], prompts: list[np.ndarray | None] | None,
                sampler: Sampler, seeds: list[int], texts: list[str | None] | None = None) -> Decoder:
        """The decoding core set up as AcousticModel's, the depth transformer drawing each step; `texts`
        (one per row, or None) constrain a text-stream model's text to those words after the voice prompt."""
        B = len(units)
        prompts = prompts or [None] * B
        known, klass = depth_tables(self.cfg, n_frames, prompts)
        x, pad = self.prefixes(units, known.shape[1])
        starts = [0 if p is None else p.shape[1] for p in prompts]
        steps = DepthSteps(self, pad, x.shape[1], bucket(x.shape[1] + known.shape[1]), texts or [None] * B,
                           starts)
        first = steps.prefill(x)
        plan = Plan(classes=depth_classes(self.cfg), klass=torch.from_numpy(klass),
                    known=torch.from_numpy(known), seeds=torch.tensor(seeds, dtype=torch.long))
        return Decoder(steps, plan, first, sampler)


def text_table(tt: TextTokens, texts: list[str | None]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ids [B, L] padded with PAD, word-start flags [B, L], lengths [B]) of each row's text; L in buckets
    of 64, so that texts of other lengths reuse a compiled step."""
    rows = [tt.word_ids(t.split()) if t else [] for t in texts]
    L = bucket(max([sum(map(len, r)) for r in rows] + [0]) + 1, 64)
    ids = np.full((len(rows), L), tt.pad, dtype=np.int64)
    first = np.zeros((len(rows), L), dtype=bool)
    lengths = np.zeros(len(rows), dtype=np.int64)
    for i, words in enumerate(rows):
        at = 0
        for w in words:
            ids[i, at: at + len(w)] = w
            first[i, at] = len(w) > 0
            at += len(w)
        lengths[i] = at
    return ids, first, lengths


class DepthSteps(AcousticSteps):
    """The depth model as a `StepModel`: the temporal step of AcousticSteps, and `draw`, which runs the
    depth transformer position by position with the core's sampler; the text constraint's state (each
    row's position in its text, whether it just drew EPAD) lives in device buffers."""

    def __init__(self, model: DepthModel, pad: torch.Tensor, width: int, length: int,
                 texts: list[str | None], starts: list[int]):
        super().__init__(model, pad, width, length)
        cfg, device = model.cfg, pad.device
        self.tt = text_tokens(cfg.text_tokenizer) if cfg.text_stream else None
        if any(texts) and self.tt is None:
            raise ValueError("a text prompt needs an acoustic model with a text stream (text_stream: true)")
        if self.tt is not None:
            ids, first, lengths = text_table(self.tt, texts)
            B = len(texts)
            tables = {"text_ids": torch.from_numpy(ids), "text_first": torch.from_numpy(first),
                      "text_len": torch.from_numpy(lengths),
                      "text_on": torch.tensor([bool(x) for x in texts]),
                      "text_from": torch.tensor(starts), "text_pos": torch.zeros(B, dtype=torch.long),
                      "after_epad": torch.zeros(B, dtype=torch.bool)}
            for name, value in tables.items():
                self.register_buffer(name, value.to(device), persistent=False)
                torch._dynamo.mark_static_address(getattr(self, name))

    def text_rule(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(allowed text tokens [B, text vocab], the next token of each row's text [B], whether the
        constraint applies [B]) at step `t`."""
        tt, at = self.tt, self.text_pos[:, None]
        nxt = self.text_ids.gather(1, at)[:, 0]
        done = self.text_pos >= self.text_len
        boundary = self.text_first.gather(1, at)[:, 0] & ~done & ~self.after_epad
        inside = ~boundary & ~done  # inside a word, or after EPAD: only the next token
        vocab = torch.arange(tt.vocab, device=nxt.device)
        allowed = ((vocab == nxt[:, None]) | ((vocab == tt.pad) & ~inside[:, None])
                   | ((vocab == tt.epad) & boundary[:, None]))
        active = self.text_on & (t >= self.text_from)
        return allowed | ~active[:, None], nxt, active & ~done

    def draw(self, state: torch.Tensor, allowed: torch.Tensor, known: torch.Tensor, sampler: Sampler,
             seeds: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The tokens [B, S] of step `t`, stream by stream through the depth transformer (no cache: S
        positions at most), each drawn with the core's sampler and noise of (seed, step, stream)."""
        model, tokens, x = self.model, [], []
        for s, head in enumerate(model.heads):
            inp = model.depth_in[s](state.to(model.sep.dtype))
            x.append(inp if s == 0 else inp + model.depth_emb[s - 1](tokens[-1]))
            logits = head(model.depth_run(torch.stack(x, 1))[:, -1])
            ok = allowed[:, s, : logits.shape[-1]]
            if s < model.cfg.text_streams:
                rule, nxt, active = self.text_rule(t)
                ok = ok & rule
            token = sample(logits[:, None], ok[:, None], sampler, seeds, t, first_stream=s)[:, 0]
            token = torch.where(known[:, s] >= 0, known[:, s], token)
            if s < model.cfg.text_streams:
                self.text_pos.add_((active & (token == nxt)).long())
                self.after_epad.copy_(active & (token == self.tt.epad))
            tokens.append(token)
        return torch.stack(tokens, 1)


def text_words(cfg: AcousticConfig, text: np.ndarray) -> list[dict]:
    """Words with start and end times (seconds) from a generated text stream [T]: a word is a run of
    tokens between padding, split where a token starts with a space."""
    tt = text_tokens(cfg.text_tokenizer)
    words, ids, start = [], [], 0

    def flush(end: int) -> None:
        word = tt.decode(ids).strip()
        if word:
            words.append({"word": word, "start": start / cfg.codec_rate, "end": end / cfg.codec_rate})
        ids.clear()

    for f, token in enumerate(int(x) for x in text):
        if token >= tt.n or tt.decode([token]).startswith(" "):
            flush(f)
        if token < tt.n:
            if not ids:
                start = f
            ids.append(token)
    flush(len(text))
    return words
