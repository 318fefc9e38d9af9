"""`tok lm train` configuration: one YAML file with `model`, `output`, `data:` and `train:` sections.

    model: runs/llama_speech        # a `tok lm extend-vocab` directory
    output: runs/exp1
    data:
      shards: [shards/manifest.json]
      text: [text/books.txt]
      eval_shards: [shards_dev/manifest.json]
      mix: {speech: 0.3, text: 0.2, interleaved: 0.4, asr: 0.05, tts: 0.05}
      seq_len: 2048
    train:
      batch_size: 8                 # sequences per rank per micro-step
      grad_accum: 4
      steps: 20000
      lr: 3.0e-4
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path

import yaml

from speechtok.lm.data import DataConfig


@dataclass
class TrainConfig:
    batch_size: int = 8
    grad_accum: int = 1
    steps: int = 1000
    lr: float = 3e-4
    min_lr_ratio: float = 0.1  # cosine decays to lr × this
    warmup: int = 100
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    clip: float = 1.0
    precision: str = "bf16"  # bf16 | fp32 (bf16 is autocast over fp32 master weights)
    parallel: str = "auto"  # auto (ddp when several ranks) | ddp | fsdp | none
    compile: bool = False
    attn: str = "sdpa"  # sdpa | flash_attention_2 | eager
    gradient_checkpointing: bool = False
    log_every: int = 10
    eval_every: int = 500
    eval_batches: int = 20
    save_every: int = 1000
    keep_checkpoints: int = 2
    seed: int = 0

    def __post_init__(self):
        if self.precision not in ("bf16", "fp32"):
            raise ValueError(f"train.precision: bf16 or fp32, not {self.precision!r}")
        if self.parallel not in ("auto", "ddp", "fsdp", "none"):
            raise ValueError(f"train.parallel: auto, ddp, fsdp or none, not {self.parallel!r}")
        self.betas = tuple(self.betas)


@dataclass
class RunConfig:
    model: str
    output: str
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    from_scratch: bool = False  # initialise the weights instead of loading them


def _build(cls, raw: dict, where: str):
    names = {f.name for f in fields(cls)}
    unknown = set(raw) - names
    if unknown:
        raise ValueError(f"{where}: unknown keys {sorted(unknown)} (known: {sorted(names)})")
    return cls(**raw)


def load_config(path: str | Path) -> RunConfig:
    """Parse and check a YAML config; relative paths are taken relative to the file."""
    path = Path(path)
    raw = yaml.safe_load(path.read_text()) or {}
    base = path.parent

    def rel(p: str) -> str:
        return str(p if Path(p).is_absolute() or not (base / p).exists() else base / p)

    data = _build(DataConfig, raw.pop("data", {}) or {}, f"{path}: data")
    data.shards, data.text, data.eval_shards = ([rel(p) for p in xs] for xs in (data.shards, data.text, data.eval_shards))
    train = _build(TrainConfig, raw.pop("train", {}) or {}, f"{path}: train")
    run = _build(RunConfig, {**raw, "data": data, "train": train}, str(path))
    run.model, run.output = rel(run.model), str(run.output if Path(run.output).is_absolute() else base / run.output)
    return run
