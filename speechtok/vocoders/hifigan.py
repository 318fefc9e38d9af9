"""Unit HiFi-GAN (Polyak et al., 2021, "Speech Resynthesis from Discrete ... Representations"): unit
embeddings (plus an optional speaker embedding) → HiFi-GAN V1 generator (transposed-conv upsampling, each
stage followed by multi-receptive-field residual blocks). For run-length (dedup) units a duration
predictor says how many frames each unit lasts. An F0-conditioned one (config `f0`, the name of the F0
stream it was trained on) also reads F0 per unit frame, concatenated to the unit embedding as
speech-resynthesis' CodeGenerator does (there F0 is VQ-coded; here it is continuous: f0_input.py); with
`f0_source: harmonic` F0 also drives a sine excitation added to every upsampling stage (NSF-HiFiGAN:
harmonic_source.py).

Checkpoints of the original code (facebookresearch/speech-resynthesis `CodeGenerator`, fairseq's
`CodeHiFiGANVocoder`: a `g_XXXXXXXX` file holding {'generator': state_dict} next to its `config.json`) load
unchanged through `from_dir`; `ORIGINAL_NAMES` is the only renaming."""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

from speechtok.torch_files import load_weights
from speechtok.vocoders.f0_input import F0_CHANNELS, check_f0_source
from speechtok.vocoders.harmonic_source import HarmonicSource

CONFIG_FILE = "vocoder.json"
WEIGHTS_FILE = "model.safetensors"
LRELU = 0.1


@dataclass
class UnitHiFiGANConfig:
    k: int
    sample_rate: int = 16000
    frame_rate: float = 50.0
    embed_dim: int = 128
    num_speakers: int = 0
    speaker_dim: int = 128
    dedup: bool = False
    upsample_rates: list[int] = field(default_factory=lambda: [5, 4, 4, 2, 2])
    upsample_kernel_sizes: list[int] = field(default_factory=lambda: [11, 8, 8, 4, 4])
    upsample_initial_channel: int = 512
    resblock_kernel_sizes: list[int] = field(default_factory=lambda: [3, 7, 11])
    resblock_dilation_sizes: list[list[int]] = field(default_factory=lambda: [[1, 3, 5]] * 3)
    speakers: list[str] = field(default_factory=list)  # speaker names, index = embedding row
    duration_hidden: int = 0  # duration predictor width (0: embed_dim)
    unit_stream: dict = field(default_factory=dict)  # `speechtok.unit_stream` record of the units it reads
    f0: str = ""  # F0-conditioned: the F0 stream it was trained on ("": none, as before)
    f0_norm: str = "none"  # log-F0 normalisation of its F0 input (f0_input.F0_NORMS)
    f0_card: dict = field(default_factory=dict)  # the F0 stream's card: how resynthesis tracks F0
    f0_source: str = ""  # "harmonic": F0 also drives a sine excitation (harmonic_source.py; f0_norm none)

    @property
    def hop(self) -> int:
        return int(np.prod(self.upsample_rates))

    def __post_init__(self):
        check_f0_source(self.f0_source, self.f0, self.f0_norm)
        if abs(self.sample_rate / self.frame_rate - self.hop) > 1e-6:
            raise ValueError(f"upsample_rates multiply to {self.hop}, but {self.sample_rate} Hz / "
                             f"{self.frame_rate:g} Hz units need {self.sample_rate / self.frame_rate:g}")


def normal_init(conv: nn.Module, std: float = 0.01) -> nn.Module:
    """HiFi-GAN's N(0, 0.01) weights, drawn before weight norm so that they take effect. (The original's
    init_weights runs after weight_norm and rewrites a recomputed copy: its weights stay at PyTorch's
    default, jik876/hifi-gan issue #145.)"""
    nn.init.normal_(conv.weight, 0.0, std)
    return conv


class ResBlock(nn.Module):
    """Dilated convolutions with residuals (HiFi-GAN ResBlock1)."""

    def __init__(self, ch: int, kernel: int, dilations: list[int]):
        super().__init__()
        self.convs1 = nn.ModuleList(
            weight_norm(normal_init(nn.Conv1d(ch, ch, kernel, dilation=d, padding=(kernel * d - d) // 2)))
            for d in dilations)
        self.convs2 = nn.ModuleList(weight_norm(normal_init(nn.Conv1d(ch, ch, kernel,
                                                                      padding=(kernel - 1) // 2)))
                                    for _ in dilations)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for c1, c2 in zip(self.convs1, self.convs2):
            x = x + c2(F.leaky_relu(c1(F.leaky_relu(x, LRELU)), LRELU))
        return x


class DurationPredictor(nn.Module):
    """Two convolutions → log(1 + frames) per deduplicated unit (fairseq's VariancePredictor)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv1d(dim, hidden, 3, padding=1), nn.Conv1d(hidden, hidden, 3, padding=1)
        self.ln1, self.ln2 = nn.LayerNorm(hidden), nn.LayerNorm(hidden)
        self.out = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, D, T] → [B, T]
        x = self.ln1(F.relu(self.conv1(x)).transpose(1, 2)).transpose(1, 2)
        x = self.ln2(F.relu(self.conv2(x)).transpose(1, 2))
        return self.out(x)[..., 0]


class UnitHiFiGAN(nn.Module):
    def __init__(self, cfg: UnitHiFiGANConfig):
        super().__init__()
        self.cfg = cfg
        self.unit_emb = nn.Embedding(cfg.k, cfg.embed_dim)
        cond = cfg.embed_dim
        if cfg.num_speakers:
            self.speaker_emb = nn.Embedding(cfg.num_speakers, cfg.speaker_dim)
            cond += cfg.speaker_dim
        if cfg.f0:
            cond += F0_CHANNELS
        if cfg.dedup:
            self.duration = DurationPredictor(cfg.embed_dim, cfg.duration_hidden or cfg.embed_dim)
        ch = cfg.upsample_initial_channel
        self.conv_pre = weight_norm(nn.Conv1d(cond, ch, 7, padding=3))
        self.ups = nn.ModuleList()
        self.resblocks = nn.ModuleList()
        for i, (r, k) in enumerate(zip(cfg.upsample_rates, cfg.upsample_kernel_sizes)):
            c_in, c_out = ch // 2 ** i, ch // 2 ** (i + 1)
            self.ups.append(weight_norm(normal_init(nn.ConvTranspose1d(
                c_in, c_out, k, r, padding=(k - r) // 2 + (k - r) % 2, output_padding=(k - r) % 2))))
            self.resblocks.extend(ResBlock(c_out, rk, rd) for rk, rd in zip(cfg.resblock_kernel_sizes,
                                                                              cfg.resblock_dilation_sizes))
        if cfg.f0_source:
            self.source = HarmonicSource(cfg.sample_rate, cfg.upsample_rates,
                                         [ch // 2 ** (i + 1) for i in range(len(cfg.upsample_rates))])
        self.conv_post = weight_norm(normal_init(nn.Conv1d(ch // 2 ** len(cfg.upsample_rates), 1, 7,
                                                           padding=3)))

    def speaker_index(self, name: str | None) -> int | None:
        """The embedding row of speaker `name` (None: none given, row 0 of a speaker-conditioned vocoder);
        a ValueError naming the known speakers otherwise."""
        if name is None:
            return None
        if not self.cfg.num_speakers:
            raise ValueError(f"speaker {name!r}: this vocoder has no speaker embedding (train it with "
                             "--speakers)")
        if name not in self.cfg.speakers:
            names = ", ".join(self.cfg.speakers[:20]) + (", ..." if len(self.cfg.speakers) > 20 else "")
            raise ValueError(f"speaker {name!r} is not one of the vocoder's {len(self.cfg.speakers)} "
                             f"speakers ({names})")
        return self.cfg.speakers.index(name)

    def expand(self, units: torch.Tensor, durations: torch.Tensor | None = None) -> torch.Tensor:
        """Deduplicated units [1, T] → frame-level units, with given or predicted durations."""
        if durations is None:
            log_d = self.duration(self.unit_emb(units).transpose(1, 2))
            durations = torch.clamp(torch.round(torch.expm1(log_d)), min=1).long()
        return torch.repeat_interleave(units[0], durations[0])[None]

    def forward(self, units: torch.Tensor, speaker: torch.Tensor | None = None,
                f0: torch.Tensor | None = None) -> torch.Tensor:
        """Frame-level units [B, T] (+ F0 input [B, F0_CHANNELS, T] of an F0-conditioned vocoder: None reads
        as all unvoiced) → waveform [B, T × hop]."""
        x = self.unit_emb(units).transpose(1, 2)
        if self.cfg.num_speakers:
            if speaker is None:
                raise ValueError("this vocoder is speaker-conditioned: give a speaker id")
            x = torch.cat([x, self.speaker_emb(speaker)[:, :, None].expand(-1, -1, x.shape[-1])], 1)
        if self.cfg.f0:
            if f0 is None:
                f0 = x.new_zeros(x.shape[0], F0_CHANNELS, x.shape[-1])
            if f0.shape != (x.shape[0], F0_CHANNELS, x.shape[-1]):
                raise ValueError(f"F0 input {tuple(f0.shape)}, units {tuple(units.shape)}: "
                                 f"need [{x.shape[0]}, {F0_CHANNELS}, {x.shape[-1]}]")
            x = torch.cat([x, f0.to(x.dtype)], 1)
        excitation = self.source(f0) if self.cfg.f0_source else None
        x = self.conv_pre(x)
        n = len(self.cfg.resblock_kernel_sizes)
        for i, up in enumerate(self.ups):
            x = up(F.leaky_relu(x, LRELU))
            if excitation is not None:
                x = x + self.source.at_stage(excitation, i)
            x = sum(self.resblocks[i * n + j](x) for j in range(n)) / n
        return torch.tanh(self.conv_post(F.leaky_relu(x))).squeeze(1)

    def duration_loss(self, frames: torch.Tensor) -> torch.Tensor:
        """MSE of log(1 + frames) over the runs of frame-level units [B, T] that lie wholly inside the
        segment: a row's first and last run may be cut by the segment's edges, so they do not count (nor
        does padding: each row is predicted on its own runs)."""
        preds, targets = [], []
        for row in frames:
            units, counts = torch.unique_consecutive(row, return_counts=True)
            if len(units) > 2:
                preds.append(self.duration(self.unit_emb(units[None]).transpose(1, 2))[0, 1:-1])
                targets.append(torch.log1p(counts[1:-1].float()))
        if not preds:  # no whole run in the batch: a zero that keeps the graph
            return self.duration.out.bias.sum() * 0
        return F.mse_loss(torch.cat(preds), torch.cat(targets))

    def save(self, directory: str | Path) -> None:
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        (d / CONFIG_FILE).write_text(json.dumps({"kind": "unit-hifigan", **asdict(self.cfg)}, indent=2)
                                     + "\n")
        save_file({k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}, d / WEIGHTS_FILE)

    @classmethod
    def from_dir(cls, directory: str | Path, device: str | torch.device = "cpu") -> "UnitHiFiGAN":
        """Our layout (vocoder.json + model.safetensors) or the original's (config.json + g_XXXXXXXX)."""
        d = Path(directory)
        if not (d / CONFIG_FILE).exists() and is_original_dir(d):
            return load_original(d).to(device).eval()
        raw = json.loads((d / CONFIG_FILE).read_text())
        raw.pop("kind", None)
        model = cls(UnitHiFiGANConfig(**raw))
        model.load_state_dict(load_file(d / WEIGHTS_FILE))
        return model.to(device).eval()


# original (speech-resynthesis / fairseq CodeGenerator) parameter names → ours; weight_g / weight_v of the
# old torch weight_norm are read by the parametrization's own compatibility hook
ORIGINAL_NAMES = [("dict.", "unit_emb."), ("spkr.", "speaker_emb."),
                  ("dur_predictor.conv1.0.", "duration.conv1."),
                  ("dur_predictor.conv2.0.", "duration.conv2."), ("dur_predictor.proj.", "duration.out."),
                  ("dur_predictor.", "duration.")]


def original_checkpoint(d: Path) -> Path | None:
    """The latest g_XXXXXXXX generator checkpoint in `d`, if any."""
    found = sorted(p for p in d.glob("g_*") if re.fullmatch(r"g_\d+", p.name))
    return found[-1] if found else None


def is_original_dir(d: Path) -> bool:
    return (d / "config.json").exists() and original_checkpoint(d) is not None


def original_config(h: dict, where: str) -> UnitHiFiGANConfig:
    """Our config for an original config.json; what we cannot run is one error naming the field."""
    for key, why in (("f0", "original F0-conditioned"), ("embedder_params", "speaker-embedder"),
                     ("lambda_commit_code", "VQ-code"), ("f0_quantizer_path", "F0-quantizer")):
        if h.get(key):
            raise ValueError(f"{where}: {key!r} is set: {why} unit vocoders are not supported")
    if str(h.get("resblock", "1")) != "1":
        raise ValueError(f"{where}: resblock {h['resblock']!r}: only HiFi-GAN ResBlock '1' is supported")
    if any((k - r) % 2 for k, r in zip(h["upsample_kernel_sizes"], h["upsample_rates"])):
        raise ValueError(f"{where}: upsample kernel − rate must be even (the original's padding)")
    dur = h.get("dur_predictor_params") or {}
    if dur and (dur.get("var_pred_kernel_size", 3) != 3
                or dur.get("encoder_embed_dim") != h["embedding_dim"]):
        raise ValueError(f"{where}: dur_predictor_params: only kernel 3 on the unit embeddings is supported")
    speakers = int(h.get("num_speakers", 200)) if h.get("multispkr") else 0
    in_dim = h["embedding_dim"] * (2 if speakers else 1)
    if h.get("model_in_dim", 128) != in_dim:
        raise ValueError(f"{where}: model_in_dim {h.get('model_in_dim', 128)}, but units (+ speaker) give "
                         f"{in_dim}")
    hop = int(np.prod(h["upsample_rates"]))
    return UnitHiFiGANConfig(
        k=h["num_embeddings"], sample_rate=h["sampling_rate"],
        frame_rate=h["sampling_rate"] / h.get("code_hop_size", hop),
        embed_dim=h["embedding_dim"], num_speakers=speakers, speaker_dim=h["embedding_dim"], dedup=bool(dur),
        upsample_rates=list(h["upsample_rates"]), upsample_kernel_sizes=list(h["upsample_kernel_sizes"]),
        upsample_initial_channel=h["upsample_initial_channel"],
        resblock_kernel_sizes=list(h["resblock_kernel_sizes"]),
        resblock_dilation_sizes=[list(x) for x in h["resblock_dilation_sizes"]],
        duration_hidden=dur.get("var_pred_hidden_dim", 0))


def load_original(d: Path) -> UnitHiFiGAN:
    """A speech-resynthesis / fairseq unit HiFi-GAN directory (config.json + g_XXXXXXXX), weights as they
    are."""
    path = original_checkpoint(d)
    model = UnitHiFiGAN(original_config(json.loads((d / "config.json").read_text()), str(d / "config.json")))
    state = load_weights(path)
    if not isinstance(state, dict) or "generator" not in state:
        raise ValueError(f"{path}: no 'generator' state dict (is it a discriminator do_ file?)")

    def rename(key: str) -> str:
        return next((new + key[len(old):] for old, new in ORIGINAL_NAMES if key.startswith(old)), key)

    model.load_state_dict({rename(k): v for k, v in state["generator"].items()})
    return model
