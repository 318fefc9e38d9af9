"""Stage 2 of AudioLM-style generation: a decoder-only transformer from semantic units to codec tokens.

One sequence is `semantic units, [SEP], codec steps`. A codebook pattern lays the codes [n_q, T] out as
steps [N, streams]; each step's input is the sum of its streams' embeddings, and one head per stream
predicts the next step:

- `delay` (MusicGen): n_q streams, codebook q delayed by q steps; N = T + n_q − 1.
- `coarse_fine` (AudioLM): one stream; the first `n_coarse` codebooks flattened frame by frame, then the
  remaining (fine) codebooks the same way; N = T × n_q.
- `depth` (Moshi's RQ-Transformer, lm/acoustic_depth.py): one step per frame, codebooks ≥ 1 lagging
  codebook 0 by `acoustic_delay` frames (N = T + delay), drawn within a step by a small depth transformer;
  with `text_stream`, a time-aligned text stream before them.
- `valle` (VALL-E, USLM): a step is a frame with its n_q codes; an autoregressive model draws codebook 1,
  then a non-autoregressive one codebooks 2..n_q, a pass per codebook (`lm/acoustic_valle.py`); N = T.

Slots a pattern leaves empty (the delay's corners) hold EMPTY and are neither predicted nor scored. A
voice prompt is codec tokens forced into the first frames, with its semantic units before the target's."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from speechtok.lm.decoding import Decoder, Plan, Sampler, bucket
from speechtok.tokenizers.semantic import run_length
from speechtok.unit_stream import unit_stream
from speechtok.hub import portable_card, resolve_card

CONFIG_FILE = "acoustic.json"
WEIGHTS_FILE = "model.safetensors"


@dataclass
class AcousticConfig:
    k: int  # semantic units
    n_q: int
    codebook_size: int
    pattern: str = "delay"  # delay | coarse_fine | depth | valle
    n_coarse: int = 2
    acoustic_delay: int = 1  # depth: frames by which codebooks ≥ 1 lag codebook 0 (Moshi: 1–2)
    codebook_weights: list = field(default_factory=list)  # depth: loss weight per codebook ([]: 100, 1, …)
    text_stream: bool = False  # depth: a time-aligned text stream predicted before each frame's codes
    text_tokenizer: str = "bytes"  # its tokens: UTF-8 bytes, or a Hugging Face tokenizer (dir or hub id)
    text_vocab: int = 0  # its tokens, PAD and EPAD included (set from the tokenizer)
    depth_dim: int = 256
    depth_layers: int = 2
    depth_heads: int = 4
    dim: int = 512
    layers: int = 8
    heads: int = 8
    max_len: int = 4096
    semantic_rate: float = 50.0
    codec_rate: float = 75.0
    frames_per_unit: float = 1.5  # codec frames per input unit (a frame, or a dedup unit), as in training
    dedup: bool = False
    semantic_stream: str = "semantic"
    codec_stream: str = "encodec"
    codec_card: dict = field(default_factory=dict)
    unit_stream: dict = field(default_factory=dict)  # `speechtok.unit_stream` record of the input units

    def __post_init__(self):
        if self.pattern not in ("delay", "coarse_fine", "depth", "valle"):
            raise ValueError(f"pattern: delay, coarse_fine, depth or valle, not {self.pattern!r}")
        if self.pattern != "depth" and self.text_stream:
            raise ValueError("text_stream needs pattern: depth")
        if self.pattern == "depth" and not 0 <= self.acoustic_delay:
            raise ValueError("acoustic_delay must be 0 or more")
        if self.codebook_weights and len(self.codebook_weights) != self.n_q:
            raise ValueError(f"codebook_weights: one per codebook ({self.n_q}), "
                             f"not {len(self.codebook_weights)}")
        if self.pattern == "valle" and self.n_q < 2:
            raise ValueError("pattern valle needs n_q ≥ 2 (codebook 1 autoregressive, the rest by passes)")
        if self.pattern == "coarse_fine" and not 0 < self.n_coarse <= self.n_q:
            raise ValueError(f"n_coarse must be in 1..{self.n_q}")
        self.check_sizes()

    def check_sizes(self) -> None:
        """Every size at least 1 and each width a multiple of its heads (else a reshape traceback mid-step,
        or a width 0 model that trains at a constant loss)."""
        sizes = {"dim": self.dim, "layers": self.layers, "heads": self.heads}
        if self.pattern == "depth":
            sizes.update(depth_dim=self.depth_dim, depth_layers=self.depth_layers,
                         depth_heads=self.depth_heads)
        for name, size in sizes.items():
            if not (isinstance(size, int) and size >= 1):
                raise ValueError(f"model.{name}: must be a whole number of at least 1, not {size!r}")
        for width, heads in (("dim", "heads"), ("depth_dim", "depth_heads")):
            if width in sizes and sizes[width] % sizes[heads]:
                raise ValueError(f"model.{width}: {sizes[width]} is not a multiple of model.{heads} "
                                 f"({sizes[heads]})")

    @classmethod
    def from_dir(cls, directory: str | Path) -> "AcousticConfig":
        path = Path(directory) / CONFIG_FILE
        if not path.exists():
            raise FileNotFoundError(f"{directory}: no {CONFIG_FILE} (train one with `tok acoustic train`)")
        return cls(**json.loads(path.read_text()))

    def input_stream(self) -> dict:
        """The units this model reads (for models saved before the record: from dedup, k and the rate)."""
        return self.unit_stream or unit_stream(None, self.dedup, self.k, self.semantic_rate)

    def codec_frames(self, n_units: int, deduplicated: bool) -> int:
        """Codec frames for `n_units` input units. Frame-level units fix it by the two frame rates. There is
        no duration model: a deduplicated unit lasts the mean run length of the training data
        (`frames_per_unit`), so the length is right on average, not per utterance."""
        per = self.frames_per_unit if deduplicated else self.codec_rate / self.semantic_rate
        return max(1, int(round(n_units * per)))

    @property
    def streams(self) -> int:
        return {"delay": self.n_q, "coarse_fine": 1}.get(self.pattern, self.n_q + self.text_streams)

    @property
    def text_streams(self) -> int:
        """Streams before the codebooks: the depth pattern's text stream, or none."""
        return int(self.text_stream)

    def n_steps(self, T: int) -> int:
        """Steps of the pattern for T frames."""
        if self.pattern == "coarse_fine":
            return T * self.n_q
        if self.pattern == "valle":
            return T
        return T + (self.n_q - 1 if self.pattern == "delay" else self.frame_delay)

    def positions(self, n_units: int, n_frames: int) -> int:
        """Positions the model uses for `n_units` units then `n_frames` codec frames: the units, [SEP], and
        every step of the pattern but the last (predicted, never fed back); valle's NAR passes read every
        frame, one more."""
        return n_units + self.n_steps(n_frames) + (1 if self.pattern == "valle" else 0)

    @property
    def frame_delay(self) -> int:
        """Depth pattern: steps by which the last frame's codes trail its codebook 0."""
        return self.acoustic_delay if self.n_q > 1 else 0

    @property
    def stream_vocab(self) -> int:
        """Tokens per stream, EMPTY (the last) included."""
        return (self.n_q * self.codebook_size if self.pattern == "coarse_fine" else self.codebook_size) + 1

    @property
    def empty(self) -> int:
        return self.stream_vocab - 1


def frames_per_dedup_unit(samples, semantic_stream: str, codec_stream: str, limit: int = 1000) -> float:
    """Codec frames per deduplicated unit over (the first `limit` of) the training samples: the length rule
    of a dedup acoustic model."""
    frames = units = 0
    for i, s in enumerate(samples):
        if i == limit:
            break
        sem, durations = s[semantic_stream], s.get(semantic_stream + "_durations")
        units += len(run_length(np.repeat(sem, durations) if durations is not None else sem)[0])
        frames += s[codec_stream].shape[-1]
    if not units:
        raise ValueError("no training samples to measure the codec frames per deduplicated unit on")
    return frames / units


def layout(cfg: AcousticConfig, T: int) -> tuple[np.ndarray, np.ndarray]:
    """(codebook, frame) of every codec slot of the step grid [N, n_q or 1]; -1 where the slot is empty (the
    depth pattern's text stream is not in it: see acoustic_depth)."""
    Q = cfg.n_q
    if cfg.pattern in ("delay", "depth"):
        j = np.arange(cfg.n_steps(T))[:, None]
        q = np.arange(Q)[None, :]
        frame = j - (q if cfg.pattern == "delay" else np.minimum(q, 1) * cfg.acoustic_delay)
        ok = (frame >= 0) & (frame < T)
        return np.where(ok, q, -1), np.where(ok, frame, -1)
    if cfg.pattern == "valle":
        q, frame = np.broadcast_arrays(np.arange(Q)[None, :], np.arange(T)[:, None])
        return q, frame
    order = [(q, t) for t in range(T) for q in range(cfg.n_coarse)]
    order += [(q, t) for t in range(T) for q in range(cfg.n_coarse, Q)]
    qt = np.array(order, dtype=np.int64).reshape(-1, 2)
    return qt[:, :1], qt[:, 1:]


def to_steps(cfg: AcousticConfig, codes: np.ndarray) -> np.ndarray:
    """codes [n_q, T] → step tokens [N, streams]."""
    qs, ts = layout(cfg, codes.shape[1])
    tok = codes[np.maximum(qs, 0), np.maximum(ts, 0)].astype(np.int64)
    if cfg.pattern == "coarse_fine":
        tok = tok + qs * cfg.codebook_size
    return np.where(qs >= 0, tok, cfg.empty)


def from_steps(cfg: AcousticConfig, steps: np.ndarray, T: int) -> np.ndarray:
    """step tokens [N, streams] → codes [n_q, T] (a text stream's tokens left out)."""
    qs, ts = layout(cfg, T)
    steps = steps[:, cfg.text_streams:]
    codes = np.zeros((cfg.n_q, T), dtype=np.int64)
    ok = qs >= 0
    codes[qs[ok], ts[ok]] = steps[ok] % cfg.codebook_size
    return codes


def read_config(directory: str | Path) -> AcousticConfig:
    """A trained acoustic model's config (acoustic.json, its codec path resolved) without its weights."""
    d = Path(directory)
    if not (d / CONFIG_FILE).exists():
        raise FileNotFoundError(f"{d}: no {CONFIG_FILE} (train one with `tok acoustic train`)")
    return AcousticConfig(**resolve_card(json.loads((d / CONFIG_FILE).read_text()), d))


class Block(nn.Module):
    """Pre-LN transformer block with causal SDPA, optionally over a static KV cache."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor, kv: tuple[torch.Tensor, torch.Tensor] | None = None,
                at: torch.Tensor | None = None, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Causal over `x` alone (or, with a `mask` [B, 1, 1 or len, len], attends where it says: a
        bidirectional pass); or, with a cache `kv` ([B, heads, L, head dim] each), writes this input's keys
        and values at cache indices `at` [len] and attends to the cache where `mask` [B, 1, len, L]."""
        B, L, D = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(B, L, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        if kv is None:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None)
        else:
            kv[0].index_copy_(2, at, k.to(kv[0].dtype))
            kv[1].index_copy_(2, at, v.to(kv[1].dtype))
            y = F.scaled_dot_product_attention(q, kv[0].to(q.dtype), kv[1].to(q.dtype), attn_mask=mask)
        x = x + self.proj(y.transpose(1, 2).reshape(B, L, D))
        return x + self.mlp(self.ln2(x))


class AcousticModel(nn.Module):
    """Semantic units → codec tokens, in the configured codebook pattern."""

    def __init__(self, cfg: AcousticConfig):
        super().__init__()
        self.cfg = cfg
        self.sem_emb = nn.Embedding(cfg.k, cfg.dim)
        self.sep = nn.Parameter(torch.randn(cfg.dim) * 0.02)
        self.code_emb = nn.ModuleList(nn.Embedding(cfg.stream_vocab, cfg.dim) for _ in range(cfg.streams))
        self.pos_emb = nn.Embedding(cfg.max_len, cfg.dim)
        self.blocks = nn.ModuleList(Block(cfg.dim, cfg.heads) for _ in range(cfg.layers))
        self.ln_f = nn.LayerNorm(cfg.dim)
        self.heads = nn.ModuleList(nn.Linear(cfg.dim, cfg.stream_vocab, bias=False)
                                   for _ in range(cfg.streams))
        self.apply(self._init)

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def embed_steps(self, steps: torch.Tensor) -> torch.Tensor:
        """[B, N, streams] → [B, N, dim]."""
        return sum(emb(steps[..., s]) for s, emb in enumerate(self.code_emb))

    def _run(self, x: torch.Tensor, positions: torch.Tensor, caches: list | None = None,
             at: torch.Tensor | None = None, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.pos_emb(positions)
        for i, block in enumerate(self.blocks):
            x = block(x, None if caches is None else caches[i], at, mask)
        return self.ln_f(x)

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """Hidden states [B, dim] → next-step logits [B, streams, stream_vocab]."""
        return torch.stack([head(h) for head in self.heads], 1)

    def forward(self, semantic: list[torch.Tensor], steps: list[torch.Tensor]) -> torch.Tensor:
        """Mean cross-entropy of the codec steps given the units, over non-empty slots. Sequences of a batch
        are right-padded; attention is causal, so padding never reaches a real position."""
        seqs, where = [], []
        for u, s in zip(semantic, steps):
            x = torch.cat([self.sem_emb(u), self.sep[None], self.embed_steps(s[:-1][None])[0]])
            seqs.append(x)
            where.append(len(u))
        x = nn.utils.rnn.pad_sequence(seqs, batch_first=True)
        if x.shape[1] > self.cfg.max_len:
            raise ValueError(f"sequence of {x.shape[1]} positions exceeds max_len {self.cfg.max_len}")
        h = self._run(x, torch.arange(x.shape[1], device=x.device))
        loss, count = 0.0, 0
        for i, (p, s) in enumerate(zip(where, steps)):
            hs = h[i, p: p + len(s)]
            for j, head in enumerate(self.heads):
                target = s[:, j]
                keep = target != self.cfg.empty
                loss = loss + F.cross_entropy(head(hs[keep]).float(), target[keep], reduction="sum")
                count += int(keep.sum())
        return loss / max(count, 1)

    @torch.no_grad()
    def generate(self, units: np.ndarray, n_frames: int, prompt_codes: np.ndarray | None = None,
                 temperature: float = 1.0, top_k: int | None = None, seed: int = 0,
                 top_p: float | None = None, compiled: bool | str = False) -> np.ndarray:
        """Codes [n_q, n_frames] for `units`; `prompt_codes` [n_q, P] (a voice prompt whose units lead
        `units`) are forced into the first P frames. Temperature 0 is greedy."""
        return self.generate_batch([units], [n_frames], [prompt_codes], temperature, top_k, seed, top_p,
                                   compiled=compiled)[0]

    @torch.no_grad()
    def generate_batch(self, units: list[np.ndarray], n_frames: list[int],
                       prompts: list[np.ndarray | None] | None = None,
                       temperature: float = 1.0, top_k: int | None = None, seed: int = 0,
                       top_p: float | None = None,
                       seeds: list[int] | None = None, compiled: bool | str = False) -> list[np.ndarray]:
        """`generate` for a batch: every row gives what it gives alone with its seed (`seeds`, default
        `seed` for every row), greedy or sampled (tested)."""
        decoder = self.decoder(units, n_frames, prompts, Sampler(temperature, top_k, top_p),
                               seeds or [seed] * len(units))
        out = decoder.run(compiled).numpy()
        return [from_steps(self.cfg, out[i, : len(layout(self.cfg, n)[0])], n)
                for i, n in enumerate(n_frames)]

    def decoder(self, units: list[np.ndarray], n_frames: list[int], prompts: list[np.ndarray | None] | None,
                sampler: Sampler, seeds: list[int]) -> Decoder:
        """The decoding core set up for a batch: prefixes (units, [SEP]) left-padded so every row's [SEP]
        lines up, prefilled into a static cache; the pattern's empty slots and the voice prompts' codes as
        known tokens, each step's codebook as its class of allowed tokens."""
        known, klass = step_tables(self.cfg, n_frames, prompts or [None] * len(units))
        x, pad = self.prefixes(units, known.shape[1])
        steps = AcousticSteps(self, pad, x.shape[1], bucket(x.shape[1] + known.shape[1]))
        first = steps.prefill(x)
        plan = Plan(classes=codebook_classes(self.cfg), klass=torch.from_numpy(klass),
                    known=torch.from_numpy(known), seeds=torch.tensor(seeds, dtype=torch.long))
        return Decoder(steps, plan, first, sampler)

    def prefixes(self, units: list[np.ndarray], n_steps: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(embedded prefixes `units [SEP]` [B, W, dim] left-padded so every row's [SEP] lines up, each row's
        padding [B]), checked to fit `max_len` with `n_steps` steps after them."""
        cfg, device = self.cfg, self.sep.device
        lengths = [len(u) + 1 for u in units]
        W = max(lengths)
        if W + n_steps - 1 > cfg.max_len:
            raise ValueError(f"sequence of {W + n_steps - 1} positions exceeds max_len {cfg.max_len}")
        x = torch.zeros(len(units), W, cfg.dim, device=device, dtype=self.sep.dtype)
        for i, u in enumerate(units):
            sem = self.sem_emb(torch.as_tensor(np.asarray(u, dtype=np.int64), device=device))
            x[i, W - lengths[i]:] = torch.cat([sem, self.sep[None]])
        return x, torch.tensor([W - n for n in lengths], device=device)

    def save(self, directory: str | Path) -> None:
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        (d / CONFIG_FILE).write_text(json.dumps(portable_card(asdict(self.cfg), d), indent=2) + "\n")
        save_file({k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}, d / WEIGHTS_FILE)

    @classmethod
    def from_dir(cls, directory: str | Path, device: str | torch.device = "cpu") -> nn.Module:
        """The trained model in `directory` (of its pattern's class), checksums verified."""
        from speechtok.checksums import verify_checksums

        verify_checksums(directory)  # written by `tok acoustic train`
        model = acoustic_model(read_config(directory))
        model.load_state_dict(load_file(Path(directory) / WEIGHTS_FILE))
        return model.to(device).eval()


def acoustic_model(cfg: AcousticConfig) -> nn.Module:
    """A new model of `cfg`'s pattern: the depth pattern and VALL-E's AR + NAR pair have their own
    (lm/acoustic_depth.py, lm/acoustic_valle.py)."""
    if cfg.pattern == "depth":
        from speechtok.lm.acoustic_depth import DepthModel

        return DepthModel(cfg)
    if cfg.pattern == "valle":
        from speechtok.lm.acoustic_valle import ValleModel

        return ValleModel(cfg)
    return AcousticModel(cfg)


def step_tables(cfg: AcousticConfig, n_frames: list[int], prompts: list[np.ndarray | None]
                ) -> tuple[np.ndarray, np.ndarray]:
    """(known, class) [B, N, streams] of a batch: the known token of every slot (EMPTY in the pattern's
    empty slots and past a row's end, a voice prompt's code in its frames, -1 where one is drawn) and the
    codebook whose tokens a drawn slot allows."""
    B, S = len(n_frames), cfg.streams
    N = max(len(layout(cfg, n)[0]) for n in n_frames)
    known = np.full((B, N, S), cfg.empty, dtype=np.int64)
    klass = np.zeros((B, N, S), dtype=np.int64)
    for i, (n, pc) in enumerate(zip(n_frames, prompts)):
        q, t = layout(cfg, n)
        row = np.where(q >= 0, -1, cfg.empty)
        if pc is not None:
            forced = (q >= 0) & (t < pc.shape[1])
            given = to_steps(cfg, np.pad(pc, ((0, 0), (0, n - pc.shape[1]))))
            row[forced] = given[forced]
        known[i, : len(q)] = row
        klass[i, : len(q)] = np.maximum(q, 0) if cfg.pattern == "coarse_fine" else 0
    return known, klass


def codebook_classes(cfg: AcousticConfig) -> torch.Tensor:
    """[classes, stream_vocab] allowed tokens: a delay stream draws among one codebook's codes (EMPTY is
    never drawn); the coarse/fine stream among the codes of the slot's codebook (one class per codebook)."""
    n = cfg.n_q if cfg.pattern == "coarse_fine" else 1
    tokens = torch.arange(cfg.stream_vocab)
    lo = torch.arange(n)[:, None] * cfg.codebook_size
    return (tokens >= lo) & (tokens < lo + cfg.codebook_size)


class AcousticSteps(nn.Module):
    """The acoustic model as a `StepModel`: a static KV cache of `length` positions per block, the first
    `width` holding the left-padded prefixes (row b's padding: `pad[b]`)."""

    def __init__(self, model: AcousticModel, pad: torch.Tensor, width: int, length: int):
        super().__init__()
        cfg, device = model.cfg, pad.device
        self.model, self.width = model, width  # `width` for the prefill, its tensor for the steps
        autocast = torch.is_autocast_enabled(device.type)
        dtype = torch.get_autocast_dtype(device.type) if autocast else model.sep.dtype
        shape = (len(pad), cfg.heads, length, cfg.dim // cfg.heads)
        self.kv = [tuple(torch.zeros(shape, dtype=dtype, device=device) for _ in "kv") for _ in model.blocks]
        index = torch.arange(length, device=device)
        self.register_buffer("valid", index[None] >= pad[:, None], persistent=False)  # [B, L]
        positions = (index[None] - pad[:, None]).clamp(0, cfg.max_len - 1)
        self.register_buffer("positions", positions, persistent=False)
        self.register_buffer("index", index, persistent=False)
        # the cache index of step 0, as a tensor: prefixes of other widths reuse the compiled step
        self.register_buffer("step_zero", torch.tensor(width, device=device), persistent=False)
        for t in [*self.buffers(), *(x for pair in self.kv for x in pair)]:
            torch._dynamo.mark_static_address(t)

    def prefill(self, x: torch.Tensor) -> torch.Tensor:
        """Prefixes [B, width, dim] into the cache → the logits of the first step."""
        W = self.width
        at = self.index[:W]
        mask = (self.valid[:, None, :] & (self.index[None, :] <= at[:, None]))[:, None]  # [B, 1, W, L]
        mask = mask | (self.index[None, :] == at[:, None])  # padded queries see themselves: no empty row
        h = self.model._run(x, self.positions[:, :W], self.kv, at, mask)
        return self.model.logits(h[:, -1])

    def step(self, tokens: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        at = (t + self.step_zero).view(1)
        x = self.model.embed_steps(tokens[:, None])  # [B, 1, dim]
        mask = (self.valid & (self.index[None] <= at))[:, None, None]  # [B, 1, 1, L]
        h = self.model._run(x, self.positions.index_select(1, at), self.kv, at, mask)
        return self.model.logits(h[:, -1])
