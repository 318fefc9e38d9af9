"""`tok acoustic train` configuration (see lm/acoustic_train.py for an example). Torch-free, so that the
command checks a config before the heavy imports; mistakes are errors naming the file and key."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from speechtok.lm.vocab import speech_streams
from speechtok.shards import read_manifest
from speechtok.training.config import at_least, build, path_field, read_yaml, sizes_field

# the model sizes a config's `model:` sets, with AcousticConfig's defaults (lm/acoustic.py; a test keeps
# them equal)
SIZES = {"dim": 512, "layers": 8, "heads": 8}
SIZE_NOTES = ("max_len: 2 × (units of a crop + 1 + codec steps of a crop): a crop and as much again of "
              "voice prompt",
              "depth_dim: 256, depth_layers: 2, depth_heads: 4: the depth transformer of pattern: depth",)


@dataclass
class AcousticTrainConfig:
    batch_size: int = at_least(16, 1)
    steps: int = at_least(20000, 1)
    lr: float = 3e-4
    min_lr_ratio: float = at_least(0.1, 0)
    warmup: int = at_least(500, 0)
    weight_decay: float = at_least(0.1, 0)
    betas: tuple[float, float] = (0.9, 0.95)
    clip: float = 1.0
    crop_seconds: float = 10.0
    precision: str = "bf16"
    log_every: int = at_least(10, 1)
    save_every: int = at_least(1000, 1)
    keep_checkpoints: int = at_least(2, 1)
    shuffle_buffer: int = at_least(1000, 1)
    seed: int = 0

    def __post_init__(self):
        if self.precision not in ("bf16", "fp32"):
            raise ValueError(f"precision: bf16 or fp32, not {self.precision!r}")
        if not self.lr > 0 or not self.crop_seconds > 0:
            raise ValueError("lr and crop_seconds must be more than 0")


@dataclass
class AcousticRun:
    output: str = path_field("output")
    shards: list[str] = path_field("input")
    codec: str = field()
    stream: str | None = None  # the semantic stream of the shards (needed when they hold several)
    n_q: int | None = None
    pattern: str = "delay"
    n_coarse: int = 2
    acoustic_delay: int = at_least(1, 0)  # depth: frames by which codebooks ≥ 1 lag codebook 0
    codebook_weights: list[float] = field(default_factory=list)  # depth: per codebook ([]: 100, 1, 1, …)
    text_stream: bool = False  # depth: a time-aligned text stream of the shards' word timings
    text_tokenizer: str = "bytes"  # its tokens: UTF-8 bytes, or a Hugging Face tokenizer (dir or hub id)
    dedup: bool = False
    model: dict = sizes_field(SIZES, SIZE_NOTES)  # AcousticConfig sizes: dim, layers, heads, max_len
    train: AcousticTrainConfig = field(default_factory=AcousticTrainConfig)

    def __post_init__(self):
        if self.text_stream and self.pattern != "depth":
            raise ValueError("text_stream: needs pattern: depth")
        if any(not w >= 0 for w in self.codebook_weights):
            raise ValueError(f"codebook_weights: must be 0 or more, not {self.codebook_weights}")
        if self.codebook_weights and not sum(self.codebook_weights) > 0:
            raise ValueError(f"codebook_weights: all 0 ({self.codebook_weights}) train nothing")
        if self.n_q is not None and not self.n_q >= 1:
            raise ValueError(f"n_q: at least 1 codebook (or leave it out: all of the shards'), "
                             f"not {self.n_q}")
        self.model = {**SIZES, **self.model}  # the sizes --print-config shows, unless the config sets them


def load_acoustic_config(path: str | Path) -> AcousticRun:
    """Parse and check a YAML config (ConfigError naming the file and key on any mistake)."""
    return build(AcousticRun, read_yaml(path), path)


def checked_streams(run: AcousticRun) -> tuple[dict, int]:
    """(the first shards' manifest, codebooks to model): the shards hold the semantic stream (`stream`, or
    their only one) and `codec` with at least `n_q` codebooks, else a ValueError (ShardError for unreadable
    shards)."""
    _, manifest = read_manifest(run.shards[0])
    card = speech_streams(manifest, run.codec, run.stream)[3]
    n_q = run.n_q or card["n_q"]
    if n_q > card["n_q"]:
        raise ValueError(f"{run.codec} has {card['n_q']} codebooks in the shards, {n_q} asked")
    return manifest, n_q
