"""One decoding core for every autoregressive stage (the token LM, the acoustic model, and later a depth
transformer): a `StepModel` turns the tokens of one step into the logits of the next, over a preallocated
static KV cache; `Decoder` samples every step on the device and feeds the result back.

What a stage predicts is data, not code: each step has S streams (1 for an LM, n_q for a delay pattern),
and three device tables say, per (row, step, stream), which tokens may be drawn (`classes[klass]`: a row
of allowed-token masks), whether the token is already known (`known` ≥ 0: a voice prompt, a pattern's
empty slot) and, per row, the seed of its noise. A step is then a fixed sequence of tensor ops with fixed
shapes and no host synchronisation: compiled once per (batch, cache length) bucket with
`mode="reduce-overhead"` (CUDA graphs) and `fullgraph=True`, it replays without Python in between.
The result is copied to the host once, at the end (or once per chunk when streaming).

Sampling is Gumbel-max with counter-based noise: the noise of (row seed, step, stream, token) is a hash
of those integers, so a row draws the same tokens alone or in any batch, eager or compiled, on any device,
and no generator state lives in the graph."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Protocol

import torch
from torch import nn

M32 = 0xFFFFFFFF


@dataclass(frozen=True)
class Sampler:
    """How a token is drawn from the allowed ones: argmax at temperature 0, else from the softmax at
    `temperature`, restricted to the `top_k` most likely and to the smallest set of mass `top_p`."""
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None


def _mix(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash (lowbias32-style) in int64 ops whose products stay below 2^63."""
    x = x & M32
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & M32
    x = x ^ (x >> 15)
    x = (x * 0x1B873593) & M32
    return x ^ (x >> 16)


def uniform_noise(seeds: torch.Tensor, step: torch.Tensor, streams: int, vocab: int,
                  first_stream: int = 0) -> torch.Tensor:
    """Uniform (0, 1) noise [B, streams, vocab], a pure function of (seed of the row, step, stream, token);
    the streams are `first_stream`, `first_stream` + 1, …"""
    device = seeds.device
    key = _mix(_mix(seeds.long() & 0x7FFFFFFF) ^ step.long())  # [B]
    stream = torch.arange(first_stream, first_stream + streams, device=device)
    key = _mix(key[:, None] + stream * 0x632BE5AB)  # [B, S]
    token = (torch.arange(vocab, device=device) * 0x9E3779B1) & M32
    h = _mix(_mix(key[..., None] ^ token) + key[..., None])
    return ((h >> 8).float() + 0.5) * (1.0 / (1 << 24))


def sample(logits: torch.Tensor, allowed: torch.Tensor, sampler: Sampler, seeds: torch.Tensor,
           step: torch.Tensor, first_stream: int = 0) -> torch.Tensor:
    """One token per (row, stream) of `logits` [B, S, V] among `allowed` [B, S, V]; the noise of row b is
    seeded by `seeds[b]` and `step`, so a row's draw does not depend on the batch. The streams are
    `first_stream`, … of the step (a model drawing its streams one at a time gets the same noise)."""
    logits = logits.float().masked_fill(~allowed, float("-inf"))
    if sampler.temperature <= 0:
        return logits.argmax(-1)
    logits = logits / sampler.temperature
    if sampler.top_k:
        kth = torch.topk(logits, min(sampler.top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if sampler.top_p is not None and sampler.top_p < 1:
        ordered, order = torch.sort(logits, dim=-1, descending=True)
        probs = torch.softmax(ordered, -1)
        drop = (probs.cumsum(-1) - probs) >= sampler.top_p  # the most likely token always stays
        logits = logits.scatter(-1, order, ordered.masked_fill(drop, float("-inf")))
    u = uniform_noise(seeds, step, logits.shape[1], logits.shape[2], first_stream)
    return (logits - torch.log(-torch.log(u))).argmax(-1)  # Gumbel-max: a draw from softmax(logits)


class StepModel(Protocol):
    """A model behind the core: `step(tokens [B, S], t)` feeds the tokens of generation step `t` (a 0-d
    device tensor) through its static cache and returns the logits [B, S, V] of step t + 1. A model whose
    streams depend on each other within a step (a depth transformer) returns a state instead and has a
    `draw` with `draw_step`'s signature that draws the step's tokens from it, stream by stream."""

    def step(self, tokens: torch.Tensor, t: torch.Tensor) -> torch.Tensor: ...


def draw_step(logits: torch.Tensor, allowed: torch.Tensor, known: torch.Tensor, sampler: Sampler,
              seeds: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The tokens [B, S] of step `t`: the known ones, the others drawn from `logits` [B, S, V] at once."""
    return torch.where(known >= 0, known, sample(logits, allowed, sampler, seeds, t))


@dataclass
class Plan:
    """What to generate, as device tables over rows B, steps N and streams S."""
    classes: torch.Tensor  # [C, V] bool: the tokens each class allows
    klass: torch.Tensor  # [B, N, S] long: the class of every slot
    known: torch.Tensor  # [B, N, S] long: the forced token of a slot, or -1 to sample it
    seeds: torch.Tensor  # [B] long: the noise seed of every row
    stop_token: int | None = None  # once a row draws it, the row draws only it


def bucket(n: int, size: int = 256) -> int:
    """`n` rounded up to a multiple of `size`: cache lengths in buckets, one compiled graph per bucket."""
    return -(-n // size) * size


class Decoder(nn.Module):
    """Samples `plan`'s N steps from `model`, given the logits (or state) of step 0 (the prefill's); `run`
    returns the tokens [B, N, S]. Every tensor that a step reads or writes is a buffer with a fixed
    address, shaped by the batch and buckets of N (64) and of the cache length (256), never by the exact
    lengths."""

    def __init__(self, model: nn.Module, plan: Plan, first_logits: torch.Tensor, sampler: Sampler):
        super().__init__()
        self.model, self.sampler, self.stop_token = model, sampler, plan.stop_token
        B, N, S = plan.known.shape
        device = first_logits.device
        self.steps, room = N, bucket(N, 64) - N  # tables padded to a bucket: one graph for many lengths
        self.register_buffer("classes", plan.classes.to(device), persistent=False)
        klass = nn.functional.pad(plan.klass, (0, 0, 0, room))
        known = nn.functional.pad(plan.known, (0, 0, 0, room), value=-1)
        self.register_buffer("klass", klass.to(device), persistent=False)
        self.register_buffer("known", known.to(device), persistent=False)
        self.register_buffer("seeds", plan.seeds.to(device), persistent=False)
        self.register_buffer("logits", first_logits.float().clone(), persistent=False)
        out = torch.zeros(B, N + room, S, dtype=torch.long, device=device)
        self.register_buffer("out", out, persistent=False)
        self.register_buffer("t", torch.zeros((), dtype=torch.long, device=device), persistent=False)
        self.register_buffer("finished", torch.zeros(B, dtype=torch.bool, device=device), persistent=False)
        for b in self.buffers():
            torch._dynamo.mark_static_address(b)
        self._compiled = None

    def step(self) -> None:
        """Draw step t from the logits in hand, write it, feed it to the model for step t + 1's logits."""
        t = self.t
        at = t.view(1)
        known = self.known.index_select(1, at)[:, 0]  # [B, S]
        allowed = self.classes[self.klass.index_select(1, at)[:, 0]]  # [B, S, V]
        draw = getattr(self.model, "draw", draw_step)
        tokens = draw(self.logits, allowed, known, self.sampler, self.seeds, t)
        if self.stop_token is not None:
            tokens = torch.where(self.finished[:, None], self.stop_token, tokens)
            self.finished.logical_or_((tokens == self.stop_token).any(-1))
        self.out.index_copy_(1, at, tokens[:, None])
        self.logits.copy_(self.model.step(tokens, t))
        self.t.add_(1)

    def compiled_step(self, backend: str = "inductor") -> Callable[[], None]:
        """`step` compiled whole (one graph; CUDA graphs on a GPU), once per decoder."""
        if self._compiled is None:
            limit = max(torch._dynamo.config.recompile_limit, 64)  # stages and buckets share `step`'s code
            torch._dynamo.config.recompile_limit = limit
            mode = "reduce-overhead" if backend == "inductor" else None
            self._compiled = torch.compile(self.step, mode=mode, fullgraph=True, dynamic=False,
                                           backend=backend)
        return self._compiled

    def run(self, compiled: bool | str = False, chunk: int = 64,
            on_chunk: Callable[[int], bool | None] | None = None) -> torch.Tensor:
        """All N steps (eager, or compiled with the backend named by `compiled`), then one copy to the host.
        With `on_chunk`, every `chunk` steps the host waits for the device (the one sync inside the loop)
        and `on_chunk(steps done)` may read the buffers and return True to stop early."""
        step = self.compiled_step("inductor" if compiled is True else compiled) if compiled else self.step
        done = 0
        while done < self.steps:
            for _ in range(min(chunk, self.steps - done)):
                step()
            done = min(done + chunk, self.steps)
            if on_chunk is not None:
                if self.t.device.type == "cuda":
                    torch.cuda.synchronize(self.t.device)
                if on_chunk(done):
                    break
        return self.out[:, :done].cpu()

    def all_finished(self) -> bool:
        """Whether every row has drawn the stop token (a host sync)."""
        return bool(self.finished.all())


class Progress:
    """A line of steps done, steps/s and × real time (with `seconds_per_step` of speech) per call, for a
    stage's `run(on_chunk=...)`; the wall clock counts from construction."""

    def __init__(self, name: str, steps: int, seconds_per_step: float | None, echo: Callable[[str], None]):
        self.name, self.steps, self.per_step, self.echo = name, steps, seconds_per_step, echo
        self.start = time.perf_counter()

    def __call__(self, done: int) -> None:
        dt = max(time.perf_counter() - self.start, 1e-9)
        rt = f", {done * self.per_step / dt:.2f}x real time" if self.per_step else ""
        self.echo(f"{self.name}: step {done}/{self.steps}, {done / dt:.1f} steps/s{rt}")
