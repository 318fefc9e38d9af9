"""`tok vocoder train` configuration: YAML and command-line options into one checked VocoderTrainConfig.
Torch-free, so that the command checks it before the heavy imports; mistakes are errors naming the file
(or the command-line option) and the key."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from speechtok.training.config import (at_least, build, flow_yaml, more_than, path_field, read_yaml,
                                       sizes_field)
from speechtok.vocoders.f0_input import check_f0_source

OPTION_OF = {"features": "codec"}  # the `tok vocoder train` option of a key, where it has another name

# `model:` sizes and their defaults per kind: UnitHiFiGANConfig's (vocoders/hifigan.py; a test keeps them
# equal), and the Vocos backbone's and features' that vocoders/train.py builds
HIFIGAN_SIZES = {"embed_dim": 128, "speaker_dim": 128, "upsample_initial_channel": 512,
                 "resblock_kernel_sizes": [3, 7, 11],
                 "resblock_dilation_sizes": [[1, 3, 5] for _ in range(3)], "duration_hidden": 0}
VOCOS_SIZES = {"dim": 512, "intermediate_dim": 1536, "num_layers": 8}
VOCOS_MEL_SIZES = {"n_fft": 1024, "hop_length": 256, "n_mels": 100}
VOCOS_CODEC_SIZES = {"feature_dim": 128}
SIZE_NOTES = (f"unit-hifigan: {flow_yaml(HIFIGAN_SIZES)}",
              "unit-hifigan: upsample_rates: the units' hop as factors 5, 4, 3, 2 (largest first); "
              "upsample_kernel_sizes: 2 × each rate; duration_hidden 0: embed_dim",
              f"vocos: {flow_yaml(VOCOS_SIZES)}; with mel features also {flow_yaml(VOCOS_MEL_SIZES)}; "
              f"with codec features {flow_yaml(VOCOS_CODEC_SIZES)}")


@dataclass
class VocoderTrainConfig:
    kind: str  # unit-hifigan | vocos
    shards: str = path_field("input")
    output: str = path_field("output")
    features: str = "mel"  # vocos: mel, or the name of a codec stream in the shards (e.g. encodec)
    stream: str | None = None  # unit-hifigan: the semantic stream of the shards (when they hold several)
    model: dict = sizes_field({}, SIZE_NOTES)  # sizes (unset: these defaults, per kind)
    sample_rate: int | None = None  # vocos mel: default 24000
    dedup: bool = False  # unit-hifigan: deduplicated units and a duration predictor
    speakers: bool = False  # unit-hifigan: a speaker embedding from the samples' `speaker`
    f0: str | None = None  # unit-hifigan: F0-conditioned on this F0 stream (`tok encode -t f0:TRACKER`)
    f0_norm: str = "none"  # with f0: log-F0 as is (none), minus its mean (mean), also over its std (meanstd)
    f0_source: str | None = None  # with f0 and f0_norm none: "harmonic" adds a sine excitation (NSF-HiFiGAN)
    batch_size: int = at_least(16, 1)
    segment_seconds: float = more_than(1.0, 0)
    steps: int = at_least(100_000, 1)
    lr: float = more_than(2e-4, 0)
    warmup: int = at_least(0, 0)
    min_lr_ratio: float = 0.1
    betas: tuple[float, float] = (0.8, 0.99)
    mel_weight: float = 45.0
    fm_weight: float | None = None  # None: the paper's (HiFi-GAN 2, Vocos 1)
    mrd_weight: float | None = None  # vocos: None = the released configs' (0.1 mel, 1.0 codec features)
    adv_start: int = at_least(0, 0)  # steps of mel-only training before the discriminators join
    disc_channels: int = at_least(32, 1)
    log_every: int = at_least(50, 1)
    save_every: int = at_least(5000, 1)
    sample_every: int = at_least(5000, 1)
    keep_checkpoints: int = at_least(2, 1)
    shuffle_buffer: int = at_least(256, 1)
    seed: int = 0

    def __post_init__(self):
        if self.kind not in ("unit-hifigan", "vocos"):
            raise ValueError(f"kind: unit-hifigan or vocos, not {self.kind!r}")
        self.betas = tuple(self.betas)
        if self.f0_norm not in ("none", "mean", "meanstd"):  # vocoders/f0_input.F0_NORMS
            raise ValueError(f"f0_norm: none, mean or meanstd, not {self.f0_norm!r}")
        if self.f0 and self.kind != "unit-hifigan":
            raise ValueError("f0: only a unit-hifigan is F0-conditioned")
        check_f0_source(self.f0_source, self.f0, self.f0_norm)


def load_vocoder_config(path: str | Path | None, overrides: dict | None = None) -> VocoderTrainConfig:
    """Parse and check a YAML config (or none); `overrides` (command-line options, paths absolute) replace
    its keys, and a mistake in one names its option."""
    overrides = overrides or {}
    given_as = {k: command_line(k) for k in overrides}
    raw = {**(read_yaml(path) if path else {}), **overrides}
    return build(VocoderTrainConfig, raw, path or "command line", given_as=given_as)


def command_line(key: str) -> str:
    """Where a key given as a `tok vocoder train` option came from, for error lines."""
    return f"command line: --{OPTION_OF.get(key, key.replace('_', '-'))}"


def vocoded_stream(cfg: VocoderTrainConfig, cards: dict) -> str | None:
    """The shards' stream (name) the vocoder reads: their semantic units (unit HiFi-GAN), a codec stream
    (Vocos on codec features), or None (Vocos on mel); `cards` is the manifest's "tokenizers"."""
    if cfg.kind == "unit-hifigan":
        from speechtok.lm.vocab import semantic_stream

        if not any(c.get("type") == "semantic" for c in cards.values()):
            raise ValueError(f"kind: unit-hifigan needs semantic units, the shards hold {sorted(cards)}")
        try:
            return semantic_stream(cards, cfg.stream)
        except ValueError as e:
            raise ValueError(str(e) if str(e).startswith("stream: ") else f"stream: {e}") from None
    if cfg.features == "mel":
        return None
    if cfg.features not in cards or cards[cfg.features]["type"] != "codec":
        raise ValueError(f"features: 'mel' or a codec stream of the shards ({sorted(cards)})")
    return cfg.features


def check_f0_stream(cfg: VocoderTrainConfig, cards: dict) -> None:
    """`f0:` names an F0 stream of the shards (`cards`: the manifest's "tokenizers"), when given."""
    if cfg.f0 and cards.get(cfg.f0, {}).get("type") != "f0":
        f0_streams = sorted(n for n, c in cards.items() if c.get("type") == "f0")
        raise ValueError(f"f0: {cfg.f0!r} is not an F0 stream of the shards (F0 streams: {f0_streams}; "
                         "write one with `tok encode -t f0:TRACKER`)")
    if cfg.f0 and cards[cfg.f0].get("norm") == "speaker":
        raise ValueError(f"f0: {cfg.f0!r} is normalised per speaker; the vocoder reads F0 in Hz and "
                         "normalises it itself (f0_norm)")
