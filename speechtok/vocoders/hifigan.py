"""Unit HiFi-GAN (Polyak et al., 2021, "Speech Resynthesis from Discrete ... Representations"): unit
embeddings (plus an optional speaker embedding) → HiFi-GAN V1 generator (transposed-conv upsampling, each
stage followed by multi-receptive-field residual blocks). For run-length (dedup) units a duration
predictor says how many frames each unit lasts."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

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
    unit_stream: dict = field(default_factory=dict)  # `speechtok.unit_stream` record of the units it reads

    @property
    def hop(self) -> int:
        return int(np.prod(self.upsample_rates))

    def __post_init__(self):
        if abs(self.sample_rate / self.frame_rate - self.hop) > 1e-6:
            raise ValueError(f"upsample_rates multiply to {self.hop}, but {self.sample_rate} Hz / "
                             f"{self.frame_rate:g} Hz units need {self.sample_rate / self.frame_rate:g}")


class ResBlock(nn.Module):
    """Dilated convolutions with residuals (HiFi-GAN ResBlock1)."""

    def __init__(self, ch: int, kernel: int, dilations: list[int]):
        super().__init__()
        self.convs1 = nn.ModuleList(weight_norm(nn.Conv1d(ch, ch, kernel, dilation=d, padding=(kernel * d - d) // 2))
                                    for d in dilations)
        self.convs2 = nn.ModuleList(weight_norm(nn.Conv1d(ch, ch, kernel, padding=(kernel - 1) // 2)) for _ in dilations)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for c1, c2 in zip(self.convs1, self.convs2):
            x = x + c2(F.leaky_relu(c1(F.leaky_relu(x, LRELU)), LRELU))
        return x


class DurationPredictor(nn.Module):
    """Two convolutions → log(1 + frames) per deduplicated unit."""

    def __init__(self, dim: int):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv1d(dim, dim, 3, padding=1), nn.Conv1d(dim, dim, 3, padding=1)
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.out = nn.Linear(dim, 1)

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
        if cfg.dedup:
            self.duration = DurationPredictor(cfg.embed_dim)
        ch = cfg.upsample_initial_channel
        self.conv_pre = weight_norm(nn.Conv1d(cond, ch, 7, padding=3))
        self.ups = nn.ModuleList()
        self.resblocks = nn.ModuleList()
        for i, (r, k) in enumerate(zip(cfg.upsample_rates, cfg.upsample_kernel_sizes)):
            c_in, c_out = ch // 2 ** i, ch // 2 ** (i + 1)
            self.ups.append(weight_norm(nn.ConvTranspose1d(c_in, c_out, k, r, padding=(k - r) // 2 + (k - r) % 2,
                                                           output_padding=(k - r) % 2)))
            self.resblocks.extend(ResBlock(c_out, rk, rd) for rk, rd in zip(cfg.resblock_kernel_sizes,
                                                                              cfg.resblock_dilation_sizes))
        self.conv_post = weight_norm(nn.Conv1d(ch // 2 ** len(cfg.upsample_rates), 1, 7, padding=3))

    def expand(self, units: torch.Tensor, durations: torch.Tensor | None = None) -> torch.Tensor:
        """Deduplicated units [1, T] → frame-level units, with given or predicted durations."""
        if durations is None:
            log_d = self.duration(self.unit_emb(units).transpose(1, 2))
            durations = torch.clamp(torch.round(torch.expm1(log_d)), min=1).long()
        return torch.repeat_interleave(units[0], durations[0])[None]

    def forward(self, units: torch.Tensor, speaker: torch.Tensor | None = None) -> torch.Tensor:
        """Frame-level units [B, T] → waveform [B, T × hop]."""
        x = self.unit_emb(units).transpose(1, 2)
        if self.cfg.num_speakers:
            if speaker is None:
                raise ValueError("this vocoder is speaker-conditioned: give a speaker id")
            x = torch.cat([x, self.speaker_emb(speaker)[:, :, None].expand(-1, -1, x.shape[-1])], 1)
        x = self.conv_pre(x)
        n = len(self.cfg.resblock_kernel_sizes)
        for i, up in enumerate(self.ups):
            x = up(F.leaky_relu(x, LRELU))
            x = sum(self.resblocks[i * n + j](x) for j in range(n)) / n
        return torch.tanh(self.conv_post(F.leaky_relu(x))).squeeze(1)

    def duration_loss(self, units: torch.Tensor, durations: torch.Tensor) -> torch.Tensor:
        """MSE of log(1 + frames) for deduplicated units [B, T] and their true durations."""
        pred = self.duration(self.unit_emb(units).transpose(1, 2))
        return F.mse_loss(pred, torch.log1p(durations.float()))

    def save(self, directory: str | Path) -> None:
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        (d / CONFIG_FILE).write_text(json.dumps({"kind": "unit-hifigan", **asdict(self.cfg)}, indent=2) + "\n")
        save_file({k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}, d / WEIGHTS_FILE)

    @classmethod
    def from_dir(cls, directory: str | Path, device: str | torch.device = "cpu") -> "UnitHiFiGAN":
        d = Path(directory)
        raw = json.loads((d / CONFIG_FILE).read_text())
        raw.pop("kind", None)
        model = cls(UnitHiFiGANConfig(**raw))
        model.load_state_dict(load_file(d / WEIGHTS_FILE))
        return model.to(device).eval()
