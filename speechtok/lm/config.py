"""`tok lm train` configuration: one YAML file with `model`, `output`, `data:` and `train:` sections.

    model: runs/llama_speech        # a `tok lm extend-vocab` directory
    output: runs/exp1
    data:
      shards: [shards/manifest.json]
      text: [text/books.txt]
      eval_shards: [shards_dev/manifest.json]
      mix: {speech: 0.3, text: 0.2, interleaved: 0.4, asr: 0.05, tts: 0.05}   # shares of the tokens
      seq_len: 2048
    train:
      batch_size: 8                 # sequences per rank per micro-step
      grad_accum: 4
      steps: 20000
      lr: 3.0e-4

Relative paths are relative to the config file's folder; mistakes are errors naming the file and key
(training/config.py). Torch-free, so that `tok lm train` checks a config before the heavy imports."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from speechtok.training.config import ConfigError, at_least, build, path_field, read_yaml

FORMATS = ("speech", "text", "interleaved", "asr", "tts")  # the sequence formats (lm/sequences.py)


@dataclass
class DataConfig:
    shards: list[str] = path_field("input", default_factory=list)  # manifest.json files or shard folders
    text: list[str] = path_field("input", default_factory=list)  # plain text files, one document a line
    eval_shards: list[str] = path_field("input", default_factory=list)
    mix: dict[str, float] = field(default_factory=lambda: {"speech": 1.0})  # shares of the tokens trained on
    dedup: bool | None = None  # None: as the shards were written
    speech: str = "units"  # the speech tokens: units | codec (the vocabulary's codec stream, frame by frame)
    seq_len: int = at_least(1024, 2)
    shuffle_buffer: int = at_least(1000, 1)
    span_words: tuple[int, int] = (1, 10)  # [fewest, most] words of a span in interleaved sequences
    num_workers: int = at_least(1, 0)
    text_block_bytes: int = at_least(1 << 20, 1)  # text files are split into blocks this big to be shuffled

    def __post_init__(self):
        unknown = set(self.mix) - set(FORMATS)
        if unknown:
            raise ValueError(f"mix: unknown formats {sorted(unknown)}; choose from {FORMATS}")
        if not self.mix or min(self.mix.values()) < 0 or sum(self.mix.values()) <= 0:
            raise ValueError("mix: give non-negative weights that sum to more than 0")
        if self.mix.get("text", 0) > 0 and not self.text:
            raise ValueError("mix asks for text but text lists no files")
        if self.speech not in ("units", "codec"):
            raise ValueError(f"speech: units or codec, not {self.speech!r}")
        if self.speech == "codec" and self.dedup:
            raise ValueError("dedup: true deduplicates units, and speech: codec trains on codec frames "
                             "(never deduplicated): drop one of them")
        self.span_words = tuple(self.span_words)
        if not 1 <= self.span_words[0] <= self.span_words[1]:
            raise ValueError(f"span_words: [fewest, most] words of an interleaved span, 1 <= fewest <= most; "
                             f"not {list(self.span_words)}")


@dataclass
class TrainConfig:
    batch_size: int = at_least(8, 1)
    grad_accum: int = at_least(1, 1)
    steps: int = at_least(1000, 1)
    lr: float = 3e-4
    min_lr_ratio: float = at_least(0.1, 0)  # cosine decays to lr × this
    warmup: int = at_least(100, 0)
    weight_decay: float = at_least(0.1, 0)
    betas: tuple[float, float] = (0.9, 0.95)
    clip: float = 1.0
    precision: str = "bf16"  # bf16 | fp32 (bf16 is autocast over fp32 master weights)
    parallel: str = "auto"  # auto (ddp when several ranks) | ddp | fsdp | none
    compile: bool | str = "auto"  # per-layer torch.compile: auto = on CUDA only; model = the whole model
    attn: str = "sdpa"  # sdpa | flash_attention_2 | eager
    loss: str = "chunked"  # chunked: head + cross-entropy in row chunks, no full fp32 logits | plain
    gradient_checkpointing: bool = False
    log_every: int = at_least(10, 1)
    eval_every: int = at_least(500, 1)  # needs data.eval_shards
    eval_batches: int = at_least(20, 1)  # needs data.eval_shards
    save_every: int = at_least(1000, 1)
    keep_checkpoints: int = at_least(2, 1)
    seed: int = 0

    def __post_init__(self):
        if self.precision not in ("bf16", "fp32"):
            raise ValueError(f"precision: bf16 or fp32, not {self.precision!r}")
        if self.parallel not in ("auto", "ddp", "fsdp", "none"):
            raise ValueError(f"parallel: auto, ddp, fsdp or none, not {self.parallel!r}")
        if self.compile not in (True, False, "auto", "model"):
            raise ValueError(f"compile: true, false, auto or model, not {self.compile!r}")
        if self.loss not in ("chunked", "plain"):
            raise ValueError(f"loss: chunked or plain, not {self.loss!r}")
        if not self.lr > 0:
            raise ValueError(f"lr: must be more than 0, not {self.lr}")
        self.betas = tuple(self.betas)


@dataclass
class RunConfig:
    model: str = path_field("input")
    output: str = path_field("output")
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    from_scratch: bool = False  # initialise the weights instead of loading them


def load_config(path: str | Path) -> RunConfig:
    """Parse and check a YAML config (ConfigError naming the file and key on any mistake)."""
    raw = read_yaml(path)
    run = build(RunConfig, raw, path)
    for key in ("eval_every", "eval_batches"):  # an eval setting with nothing to evaluate is a mistake
        if key in (raw.get("train") or {}) and not run.data.eval_shards:
            raise ConfigError(f"{path}: train.{key}: set, but data.eval_shards is empty "
                              "(nothing to evaluate)")
    limit, where = model_positions(run.model)
    if limit is not None and run.data.seq_len > limit:
        raise ConfigError(f"{path}: data.seq_len: {run.data.seq_len} is more than the {limit} positions of "
                          f"the model ({where}); use seq_len: {limit} or less")
    return run


def model_positions(model: str) -> tuple[int | None, str]:
    """(the longest sequence the model's config.json allows, where it says so), or (None, "") when it does
    not say (transformers will then)."""
    path = Path(model) / "config.json"
    try:
        cfg = json.loads(path.read_text())
    except (OSError, ValueError):
        return None, ""
    for key in ("max_position_embeddings", "n_positions", "max_seq_len"):
        if isinstance(cfg, dict) and isinstance(cfg.get(key), int) and not isinstance(cfg[key], bool):
            return cfg[key], f"{key} in {path}"
    return None, ""
