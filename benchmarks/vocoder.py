"""Vocoder synthesis speed: Vocos (mel, 24 kHz, published size) against a HiFi-GAN V1 generator (unit
HiFi-GAN, same upsampling stack) in × real time, at batch 1 and batch N × 1 s (the Vocos paper's setting is
batch 16 × 1 s), random weights.

    python benchmarks/vocoder.py --device cuda --batch 16
    python benchmarks/vocoder.py --device cpu --batch 16 --repeats 3"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from report import hardware, write_section  # noqa: E402

from speechtok.vocoders.hifigan import UnitHiFiGAN, UnitHiFiGANConfig  # noqa: E402
from speechtok.vocoders.vocos import Vocos  # noqa: E402

VOCOS_MEL_24K = {
    "feature_extractor": {"class_path": "vocos.feature_extractors.MelSpectrogramFeatures",
                          "init_args": {"sample_rate": 24000, "n_fft": 1024, "hop_length": 256, "n_mels": 100}},
    "backbone": {"class_path": "vocos.models.VocosBackbone",
                 "init_args": {"input_channels": 100, "dim": 512, "intermediate_dim": 1536, "num_layers": 8}},
    "head": {"class_path": "vocos.heads.ISTFTHead", "init_args": {"dim": 512, "n_fft": 1024, "hop_length": 256,
                                                                  "padding": "center"}}}


def timed(fn, repeats: int, device: torch.device) -> float:
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / repeats


def build_vocoders(device: torch.device, hifigan_channels: int = 512) -> tuple[Vocos, UnitHiFiGAN]:
    """Vocos (mel, 24 kHz, published size) and a HiFi-GAN V1 generator at 24 kHz / 256 hop from 500 units
    (the paper's baseline generator, unit-conditioned), random weights."""
    torch.manual_seed(0)
    vocos = Vocos(VOCOS_MEL_24K).to(device).eval()
    hifigan = UnitHiFiGAN(UnitHiFiGANConfig(k=500, sample_rate=24000, frame_rate=24000 / 256,
                                            upsample_rates=[8, 8, 2, 2], upsample_kernel_sizes=[16, 16, 4, 4],
                                            upsample_initial_channel=hifigan_channels)).to(device).eval()
    return vocos, hifigan


def measure_vocoders(vocos: Vocos, hifigan: UnitHiFiGAN, batches: tuple[int, ...], repeats: int,
                     seconds: float = 1.0) -> list[tuple[int, float, float]]:
    """(batch, Vocos ×RT, HiFi-GAN ×RT) for items of `seconds` each."""
    device = next(vocos.parameters()).device
    rows = []
    for batch in batches:
        frames = int(seconds * 24000) // 256 + 1
        mel = torch.randn(batch, 100, frames, device=device)
        units = torch.randint(0, 500, (batch, frames), device=device)
        with torch.inference_mode():
            t_vocos = timed(lambda: vocos.decode(mel), repeats, device)
            t_hifi = timed(lambda: hifigan(units), repeats, device)
        audio = batch * (frames - 1) * 256 / 24000
        rows.append((batch, audio / t_vocos, audio / t_hifi))
    return rows


def format_vocoders(rows: list[tuple[int, float, float]], device: torch.device, seconds: float = 1.0) -> str:
    lines = [f"## Vocoders (issue #7), {device.type}", "",
             f"Hardware: {hardware(device)}. 24 kHz, {seconds:g} s per item, fp32, random weights; Vocos mel (published "
             "size: 8 ConvNeXt layers, dim 512, ISTFT 1024/256) against a HiFi-GAN V1 generator "
             "(upsampling 8·8·2·2, 512 channels) fed 500 units.", "",
             "| batch | Vocos × real time | HiFi-GAN × real time | Vocos / HiFi-GAN |", "|---|---|---|---|"]
    lines += [f"| {b} | {v:,.0f} | {h:,.0f} | {v / h:.1f}× |" for b, v, h in rows]
    lines += ["", "The Vocos paper: 6,697× vs 496× on an A100 (13.5×), 170× vs 5.8× on a server CPU (29×), batch 16 × 1 s."]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    device = torch.device(args.device)
    vocos, hifigan = build_vocoders(device)
    body = format_vocoders(measure_vocoders(vocos, hifigan, (1, args.batch), args.repeats), device)
    print(body)
    if not args.no_write:
        write_section(f"vocoder-{device.type}", body)


if __name__ == "__main__":
    main()
