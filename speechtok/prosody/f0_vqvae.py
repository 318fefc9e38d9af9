"""The F0 VQ-VAE of speech-resynthesis (configs/*/f0_vqvae.json; Spirit-LM's pitch tokenizer): F0 on the 5 ms
grid, 1-d conv encoder downsampling 2^4 = 16× (4 strided convolutions, each followed by a dilated residual
stack, width 32) to 12.5 Hz, one codebook updated by exponential moving averages (decay 0.99, commitment
0.02; as jukebox's bottleneck, codes seeded from encoder outputs and restarted there when their moving
count falls under 1) and a mirrored decoder. Input per frame: the utterance-normalised log-F0 (0 where
unvoiced) and the voiced flag; the decoder gives both back (loss: MSE on voiced frames + voicing
cross-entropy)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from speechtok.prosody.base import FrameTokenizer
from speechtok.prosody.f0_tokenizer import F0Tokenizer, f0_from_card
from speechtok.prosody.normalize import normalize
from speechtok.shards import sha256_of
from speechtok.stopping import Interrupted
from speechtok.tokenizers.card import seal_card

WEIGHTS_FILE = "f0_vqvae.safetensors"


@dataclass
class VQVAEConfig:
    codes: int = 64  # Spirit-LM's pitch vocabulary (speech-resynthesis used 20)
    dim: int = 128
    width: int = 32
    downs: int = 4  # 2^downs: 200 Hz → 12.5 Hz
    depth: int = 4  # residual blocks per level, dilation 3^i
    decay: float = 0.99
    commit: float = 0.02
    norm: str = "meanstd"


class ResStack(nn.Sequential):
    """Dilated residual blocks (jukebox's Resnet1D as speech-resynthesis uses it)."""

    def __init__(self, width: int, depth: int):
        super().__init__(*[Residual(width, 3 ** i) for i in range(depth)])


class Residual(nn.Module):
    def __init__(self, width: int, dilation: int):
        super().__init__()
        self.conv = nn.Sequential(nn.ReLU(), nn.Conv1d(width, width, 3, padding=dilation, dilation=dilation),
                                  nn.ReLU(), nn.Conv1d(width, width, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x)


class F0VQVAE(nn.Module):
    """[B, 2, T] (T a multiple of 2^downs) → codes [B, T / 2^downs] and the reconstruction [B, 2, T]."""

    def __init__(self, cfg: VQVAEConfig):
        super().__init__()
        self.cfg = cfg
        w = cfg.width
        down = [nn.Conv1d(2, w, 3, padding=1)]
        for _ in range(cfg.downs):
            down += [nn.Conv1d(w, w, 4, stride=2, padding=1), ResStack(w, cfg.depth)]
        self.encoder = nn.Sequential(*down, nn.Conv1d(w, cfg.dim, 3, padding=1))
        up = [nn.Conv1d(cfg.dim, w, 3, padding=1)]
        for _ in range(cfg.downs):
            up += [ResStack(w, cfg.depth), nn.ConvTranspose1d(w, w, 4, stride=2, padding=1)]
        self.decoder = nn.Sequential(*up, nn.Conv1d(w, 2, 3, padding=1))
        self.register_buffer("codebook", torch.zeros(cfg.codes, cfg.dim))
        self.register_buffer("ema_count", torch.zeros(cfg.codes))  # all codes start unused: the first
        self.register_buffer("ema_sum", torch.zeros(cfg.codes, cfg.dim))  # batch seeds them

    def quantize(self, z: torch.Tensor) -> torch.Tensor:
        """[B, dim, T'] → nearest code per step [B, T']."""
        flat = z.transpose(1, 2).reshape(-1, z.shape[1])
        c = self.codebook
        d = flat.pow(2).sum(1, keepdim=True) - 2 * flat @ c.T + c.pow(2).sum(1)[None]
        return d.argmin(1).view(z.shape[0], z.shape[2])

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        return self.decoder(F.embedding(codes, self.codebook).transpose(1, 2))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(codes, reconstruction, commitment loss); in training, the codebook's moving averages move."""
        z = self.encoder(x)
        codes = self.quantize(z)
        q = F.embedding(codes, self.codebook).transpose(1, 2)
        if self.training:
            self._ema_update(z.detach(), codes)
        commit = F.mse_loss(z, q.detach())
        return codes, self.decoder(z + (q - z).detach()), commit

    @torch.no_grad()
    def _ema_update(self, z: torch.Tensor, codes: torch.Tensor) -> None:
        flat, idx = z.transpose(1, 2).reshape(-1, z.shape[1]), codes.reshape(-1)
        onehot = F.one_hot(idx, self.cfg.codes).type_as(flat)
        decay = self.cfg.decay
        self.ema_count.mul_(decay).add_(onehot.sum(0), alpha=1 - decay)
        self.ema_sum.mul_(decay).add_(onehot.T @ flat, alpha=1 - decay)
        self.codebook.copy_(self.ema_sum / self.ema_count.clamp(min=1e-5)[:, None])
        dead = self.ema_count < 1.0  # as jukebox: rarely used codes restart on random encoder outputs
        if dead.any():
            pick = torch.randint(len(flat), (int(dead.sum()),), device=flat.device)
            self.codebook[dead] = flat[pick]
            self.ema_sum[dead], self.ema_count[dead] = flat[pick], 1.0


def model_input(f0: np.ndarray, norm: str) -> np.ndarray:
    """F0 in Hz on the 5 ms grid → [2, T]: normalised log-F0 (0 where unvoiced) and the voiced flag."""
    x = normalize(f0, norm)
    voiced = ~np.isnan(x)
    return np.stack([np.where(voiced, x, 0.0), voiced.astype(np.float64)]).astype(np.float32)


def loss_terms(x: torch.Tensor, recon: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(MSE of log-F0 over voiced frames, voicing cross-entropy)."""
    voiced = x[:, 1]
    mse = ((recon[:, 0] - x[:, 0]) ** 2 * voiced).sum() / voiced.sum().clamp(min=1)
    return mse, F.binary_cross_entropy_with_logits(recon[:, 1], voiced)


class PitchVQVAE(FrameTokenizer):
    """Pitch tokens at 12.5 Hz from the F0 VQ-VAE (a `tok encode` tokenizer)."""

    kind = "pitch"
    name = "pitch"

    def __init__(self, f0: F0Tokenizer, model: F0VQVAE, meta: dict | None = None):
        if f0.frame_rate != 200.0:
            raise ValueError(f"the F0 VQ-VAE reads F0 at 200 Hz (5 ms), not {f0.frame_rate:g} Hz")
        self.f0, self.model = f0, model.eval()
        self.meta = dict(meta or {})
        self.stride = 2 ** model.cfg.downs
        self.sample_rate, self.codebook_size = f0.sample_rate, model.cfg.codes

    device = property(lambda self: self.f0.device)

    @property
    def frame_rate(self) -> float:
        return self.f0.frame_rate / self.stride

    def num_frames(self, num_samples) -> torch.Tensor:
        return torch.div(self.f0.num_frames(num_samples), self.stride, rounding_mode="floor")

    @torch.inference_mode()
    def tokens(self, f0: np.ndarray) -> np.ndarray:
        """F0 in Hz on the 5 ms grid → codes (trailing frames short of a whole code dropped)."""
        n = len(f0) // self.stride * self.stride
        if n == 0:
            return np.zeros(0, dtype=np.int64)
        x = torch.from_numpy(model_input(f0[:n], self.model.cfg.norm))[None].to(self.model.codebook.device)
        return self.model.quantize(self.model.encoder(x))[0].cpu().numpy()

    @torch.inference_mode()
    def decode(self, codes: np.ndarray) -> np.ndarray:
        """Codes → normalised log-F0 on the 5 ms grid, NaN where decoded as unvoiced."""
        codes = torch.as_tensor(codes, device=self.model.codebook.device)[None].long()
        out = self.model.decode(codes)[0].cpu()
        return np.where(out[1].numpy() > 0, out[0].numpy(), np.nan)

    def encode_batch(self, wav: torch.Tensor, lengths: torch.Tensor) -> list[np.ndarray]:
        """One utterance at a time through the encoder (its zero padding would otherwise reach the last
        codes of shorter rows: tokens must not depend on the batch)."""
        return [self.tokens(f0) for f0 in self.f0.f0_batch(wav, lengths)]

    def card(self) -> dict:
        weights = {"file": WEIGHTS_FILE, "sha256": self.meta.get("weights_sha256")}
        return seal_card({"type": "pitch", "method": "vqvae", "f0": self.f0.card(),
                          "vqvae": asdict(self.model.cfg), "codebook_size": self.codebook_size,
                          "sample_rate": self.sample_rate, "frame_rate": self.frame_rate, "weights": weights,
                          **{k: v for k, v in self.meta.items() if k != "weights_sha256"}})

    def save(self, directory: str | Path) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()},
                  str(directory / WEIGHTS_FILE))
        self.meta["weights_sha256"] = sha256_of(directory / WEIGHTS_FILE)
        (directory / "tokenizer.json").write_text(json.dumps(self.card(), indent=2) + "\n")
        return directory

    @classmethod
    def from_dir(cls, directory: str | Path, card: dict, device: str | torch.device = "cpu") -> "PitchVQVAE":
        path = Path(directory, card["weights"]["file"])
        if not path.is_file() or sha256_of(path) != card["weights"]["sha256"]:
            raise ValueError(f"{path}: missing or does not match the checksum in tokenizer.json")
        model = F0VQVAE(VQVAEConfig(**card["vqvae"]))
        model.load_state_dict(load_file(str(path)))
        known = ("type", "method", "f0", "vqvae", "codebook_size", "sample_rate", "frame_rate", "weights",
                 "card_sha256")
        meta = {k: v for k, v in card.items() if k not in known}
        meta["weights_sha256"] = card["weights"]["sha256"]
        return cls(f0_from_card(card["f0"], device=device), model.to(device), meta)


def train_vqvae(contours: list[np.ndarray], cfg: VQVAEConfig, steps: int = 2000, batch_size: int = 32,
                segment: int = 208, lr: float = 1e-3, seed: int = 0, device: str = "cpu",
                log=None, run_dir: Path | None = None, save_every: int = 500) -> tuple[F0VQVAE, dict]:
    """Train on random `segment`-frame windows (speech-resynthesis: 16640 samples = 208 frames) of the F0
    contours (Hz, 5 ms grid; shorter ones are repeated to fill a window, as there). Returns the model and
    its last step's losses. Adam (0.8, 0.99) as speech-resynthesis, whose 2e-4 learning rate suits its 400k
    steps; 1e-3 here, for runs of thousands. With `run_dir`, a checkpoint (model, Adam, the window sampler)
    is saved every `save_every` steps and when SIGINT / SIGTERM stops the run (Interrupted), and the same
    call resumes from it exactly."""
    from speechtok.training.checkpoint import load_checkpoint, save_checkpoint
    from speechtok.training.loop import Guard, training_run

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    segment = segment // 2 ** cfg.downs * 2 ** cfg.downs
    data = [model_input(np.tile(c, -(-segment // max(len(c), 1))) if len(c) < segment else c, cfg.norm)
            for c in contours if len(c) and (c > 0).any()]
    if not data:
        raise ValueError("no voiced F0 frames to train the F0 VQ-VAE on")
    model = F0VQVAE(cfg).to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=lr, betas=(0.8, 0.99))
    parts, settings = {"vqvae": (model, opt)}, {"batch_size": batch_size, "segment": segment, "lr": lr,
                                                "seed": seed, "utterances": len(data)}
    meta = (load_checkpoint(run_dir, parts, 0) if run_dir is not None else None) or {}
    check_resumed_settings(meta, settings, run_dir)
    step = meta.get("step", 0)
    if "sampler" in meta:
        rng.bit_generator.state = meta["sampler"]
    with training_run(1) as stop:
        guard = Guard(stop, Path(run_dir or "."), 1, torch.device(device))
        first, signum, mse, bce = step, None, torch.zeros(()), torch.zeros(())
        while step < steps and not signum:
            rows = rng.integers(len(data), size=batch_size)
            starts = [int(rng.integers(data[r].shape[1] - segment + 1)) for r in rows]
            x = torch.from_numpy(np.stack([data[r][:, s: s + segment] for r, s in zip(rows, starts)]))
            x = x.to(device)
            _, recon, commit = model(x)
            mse, bce = loss_terms(x, recon)
            loss = mse + bce + cfg.commit * commit
            opt.zero_grad()
            loss.backward()
            opt.step()
            guard.watch(loss=loss)
            step += 1
            if log is not None and step % max(1, steps // 10) == 0:
                log(f"step {step}/{steps}: log-F0 MSE {mse.item():.4f}, voicing BCE {bce.item():.4f}")
            signum = guard.stop_signal()
            if run_dir is not None and step < steps and (step % save_every == 0 or signum):
                guard.check(step, [model])
                save_checkpoint(run_dir, step, parts, {"sampler": rng.bit_generator.state,
                                                       "settings": settings}, 0, 1, 1)
        if signum:
            raise guard.interrupted(signum, step, first) if run_dir is not None else Interrupted(signum)
        guard.check(step, [model])
    return model.eval(), {"steps": steps, "final_mse": mse.item(), "final_bce": bce.item()}


def check_resumed_settings(meta: dict, settings: dict, run_dir: Path | None) -> None:
    """Refuse to resume a checkpoint trained with other settings (its data stream would not continue)."""
    for key, value in (meta.get("settings") or {}).items():
        if settings.get(key) != value:
            raise ValueError(f"{run_dir}: {key} is {settings.get(key)} now but {value} in the checkpoint of "
                             f"step {meta.get('step')}: set it back to resume, or train into a new folder")
