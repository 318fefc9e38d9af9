"""The `valle` codebook pattern (VALL-E; SpeechTokenizer's USLM): an autoregressive (AR) model draws the
first codebook frame by frame from the semantic units, then a non-autoregressive (NAR) model draws
codebooks 2..n_q, one pass per codebook over all frames: T steps and n_q − 1 passes, not n_q × T steps.

The AR stage is an `AcousticModel` with one stream (codebook 1), run by the decoding core (static cache,
compiled step). A NAR pass for codebook j reads `units, [SEP], frames` with bidirectional attention; a
frame's input is the sum of the embeddings of its codebooks below j (a voice prompt's frames: of all its
codebooks), every position adds the embedding of stage j, and stage j's head predicts codebook j of every
frame; its draws use the core's sampler and counter-based noise (a row draws the same alone or batched).
In training, each item draws its stage and a prompt prefix (VALL-E's `prefix_mode` 1: up to half its frames,
all codebooks given, not scored) from torch's generator, whose state the checkpoints save (exact resume)."""

from __future__ import annotations

from dataclasses import replace
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from speechtok.lm.acoustic import AcousticConfig, AcousticModel, Block
from speechtok.lm.decoding import Sampler, sample

NAR_STEP = 1 << 30  # the noise counter of pass j is NAR_STEP + j: no AR step (< max_len) shares it


def ar_config(cfg: AcousticConfig) -> AcousticConfig:
    """The AR stage's config: one stream, codebook 1."""
    return replace(cfg, pattern="delay", n_q=1)


def left_padded(rows: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows [n_i, dim] → ([B, max n_i, dim] padded on the left, padding of each row [B])."""
    W = max(len(r) for r in rows)
    x = torch.stack([F.pad(r, (0, 0, W - len(r), 0)) for r in rows])
    return x, torch.tensor([W - len(r) for r in rows], device=x.device)


class ValleNAR(nn.Module):
    """The NAR model: a bidirectional transformer over `units, [SEP], frames`, a head per codebook 2..n_q."""

    def __init__(self, cfg: AcousticConfig):
        super().__init__()
        self.cfg = cfg
        self.sem_emb = nn.Embedding(cfg.k, cfg.dim)
        self.sep = nn.Parameter(torch.randn(cfg.dim) * 0.02)
        self.code_emb = nn.Embedding(cfg.n_q * cfg.codebook_size, cfg.dim)  # codebook q's code c: q·size + c
        self.stage_emb = nn.Embedding(cfg.n_q, cfg.dim)  # the codebook a pass predicts (1..n_q − 1)
        self.pos_emb = nn.Embedding(cfg.max_len, cfg.dim)
        self.blocks = nn.ModuleList(Block(cfg.dim, cfg.heads) for _ in range(cfg.layers))
        self.ln_f = nn.LayerNorm(cfg.dim)
        self.apply(AcousticModel._init)
        # one tensor, so that every head takes part in every step's gradient (DDP) whatever stages are drawn
        self.heads = nn.Parameter(torch.randn(cfg.n_q - 1, cfg.codebook_size, cfg.dim) * 0.02)

    def prefixes(self, units: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(units, [SEP]) of every row, left-padded so the frames start at one column, and the padding [B]."""
        return left_padded([torch.cat([self.sem_emb(u), self.sep[None]]) for u in units])

    def frames(self, prefix: torch.Tensor, pad: torch.Tensor, codes: torch.Tensor, given: torch.Tensor,
               stage: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Hidden states [B, T, dim] of the frames of a pass: `codes` [B, T, n_q] where `given` [B, T, n_q]
        (the codebooks a frame's input sums), predicting codebook `stage` [B]; frames past `lengths` [B]
        and the prefixes' padding are never attended to."""
        cfg, device = self.cfg, codes.device
        B, W, _ = prefix.shape
        weight = given.to(prefix.dtype)
        frames = sum(self.code_emb(codes[..., q] + q * cfg.codebook_size) * weight[..., q, None]
                     for q in range(cfg.n_q))
        x = torch.cat([prefix, frames], 1) + self.stage_emb(stage)[:, None]
        if x.shape[1] > cfg.max_len:  # the longest prefix and the most frames (as the AR stage checks)
            raise ValueError(f"sequence of {x.shape[1]} positions exceeds max_len {cfg.max_len}")
        index = torch.arange(x.shape[1], device=device)
        x = x + self.pos_emb((index[None] - pad[:, None]).clamp(0, cfg.max_len - 1))
        keys = (index[None] >= pad[:, None]) & (index[None] < W + lengths[:, None])  # [B, L]
        for block in self.blocks:
            x = block(x, mask=keys[:, None, None])
        return self.ln_f(x[:, W:])

    def logits(self, h: torch.Tensor, stage: torch.Tensor) -> torch.Tensor:
        """Frame states [B, T, dim] → logits [B, T, codebook_size] of each row's codebook `stage`."""
        return torch.einsum("btd,bvd->btv", h, self.heads[stage - 1])

    def forward(self, semantic: list[torch.Tensor], steps: list[torch.Tensor]) -> torch.Tensor:
        """Mean cross-entropy of one pass per item (frames × codebooks `steps` [T_i, n_q]): a random stage
        j in 1..n_q − 1 and a random prompt of up to half the frames, scored on the frames after it."""
        cfg, device = self.cfg, steps[0].device
        lengths = torch.tensor([len(s) for s in steps])
        stage = torch.randint(1, cfg.n_q, (len(steps),))  # torch's CPU generator: saved by checkpoints
        prompt = torch.stack([torch.randint(0, len(s) // 2 + 1, ()) for s in steps])
        stage, prompt, lengths = stage.to(device), prompt.to(device), lengths.to(device)
        codes = nn.utils.rnn.pad_sequence(list(steps), batch_first=True)  # [B, T, n_q]
        t = torch.arange(codes.shape[1], device=device)
        given = prompt_or_below(stage, prompt, codes.shape[1], cfg.n_q)
        h = self.frames(*self.prefixes(semantic), codes, given, stage, lengths)
        target = codes.gather(2, stage[:, None, None].expand(-1, codes.shape[1], 1))[..., 0]
        scored = (t[None] >= prompt[:, None]) & (t[None] < lengths[:, None])
        return F.cross_entropy(self.logits(h, stage)[scored].float(), target[scored])

    @torch.no_grad()
    def fill(self, units: list[torch.Tensor], codes: torch.Tensor, prompt: torch.Tensor,
             lengths: torch.Tensor, sampler: Sampler, seeds: torch.Tensor) -> torch.Tensor:
        """Codebooks 2..n_q of `codes` [B, T, n_q] (codebook 1 drawn, a voice prompt's first `prompt` [B]
        frames given whole), one pass per codebook; each frame draws with noise of (row seed, pass, frame),
        on the device with no host synchronisation."""
        cfg = self.cfg
        B, T, _ = codes.shape
        prefix, pad = self.prefixes(units)
        allowed = torch.ones(B, T, cfg.codebook_size, dtype=torch.bool, device=codes.device)
        forced = torch.arange(T, device=codes.device)[None] < prompt[:, None]  # [B, T]
        for j in range(1, cfg.n_q):
            stage = torch.full((B,), j, dtype=torch.long, device=codes.device)
            given = prompt_or_below(stage, prompt, T, cfg.n_q)
            logits = self.logits(self.frames(prefix, pad, codes, given, stage, lengths), stage)
            drawn = sample(logits, allowed, sampler, seeds, torch.tensor(NAR_STEP + j, device=codes.device))
            codes[..., j] = torch.where(forced, codes[..., j], drawn)
        return codes


def prompt_or_below(stage: torch.Tensor, prompt: torch.Tensor, T: int, n_q: int) -> torch.Tensor:
    """[B, T, n_q] the codebooks a pass sums per frame: those below `stage` [B], all of them in the first
    `prompt` [B] frames."""
    device = stage.device
    below = torch.arange(n_q, device=device)[None, None] < stage[:, None, None]
    return below | (torch.arange(T, device=device)[None, :, None] < prompt[:, None, None])


class ValleDecoder:
    """The AR stage on the decoding core (`Decoder`: codebook 1), then the NAR passes: `run` as
    `Decoder.run` (its `on_chunk` sees the AR steps), returning the tokens [B, T, n_q]."""

    def __init__(self, model: "ValleModel", units: list[np.ndarray], n_frames: list[int],
                 prompts: list[np.ndarray | None], sampler: Sampler, seeds: list[int]):
        self.model, self.sampler = model, sampler
        self.ar = model.ar.decoder(units, n_frames, [None if p is None else p[:1] for p in prompts], sampler,
                                   seeds)
        self.steps = self.ar.steps
        device = self.ar.seeds.device
        self.units = [torch.as_tensor(np.asarray(u, dtype=np.int64), device=device) for u in units]
        self.lengths = torch.tensor(n_frames, device=device)
        self.prompt = torch.tensor([0 if p is None else p.shape[1] for p in prompts], device=device)
        codes = np.zeros((len(units), self.steps, model.cfg.n_q), dtype=np.int64)
        for i, p in enumerate(prompts):
            if p is not None:
                codes[i, : p.shape[1]] = p.T
        self.codes = torch.from_numpy(codes).to(device)

    def run(self, compiled: bool | str = False, chunk: int = 64,
            on_chunk: Callable[[int], bool | None] | None = None) -> torch.Tensor:
        """The AR steps (eager or compiled, as `Decoder.run`), then n_q − 1 passes; one copy to the host."""
        self.ar.run(compiled, chunk, on_chunk)
        codes = self.codes.clone()
        codes[..., 0] = self.ar.out[:, : self.steps, 0]
        return self.model.nar.fill(self.units, codes, self.prompt, self.lengths, self.sampler,
                                   self.ar.seeds).cpu()


class ValleModel(nn.Module):
    """Semantic units → codec tokens in the `valle` pattern: `ar` (codebook 1) and `nar` (the others),
    trained together; saved, loaded and generated from as an `AcousticModel` is."""

    def __init__(self, cfg: AcousticConfig):
        super().__init__()
        self.cfg = cfg
        self.ar = AcousticModel(ar_config(cfg))
        self.nar = ValleNAR(cfg)

    def forward(self, semantic: list[torch.Tensor], steps: list[torch.Tensor]) -> torch.Tensor:
        """The AR stage's loss on codebook 1 plus a NAR pass's (frames × codebooks `steps` [T_i, n_q])."""
        return self.ar(semantic, [s[:, :1] for s in steps]) + self.nar(semantic, steps)

    def decoder(self, units: list[np.ndarray], n_frames: list[int], prompts: list[np.ndarray | None] | None,
                sampler: Sampler, seeds: list[int]) -> ValleDecoder:
        """As `AcousticModel.decoder`: the AR stage set up on the core, the NAR passes after it."""
        return ValleDecoder(self, units, n_frames, prompts or [None] * len(units), sampler, seeds)

    # the pattern-independent parts of an acoustic model: they read `cfg`, `decoder` and the weights
    generate = AcousticModel.generate
    generate_batch = AcousticModel.generate_batch
    save = AcousticModel.save
