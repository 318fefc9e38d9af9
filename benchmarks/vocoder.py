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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    vocos = Vocos(VOCOS_MEL_24K).to(device).eval()
    # HiFi-GAN V1 at 24 kHz / 256 hop from 100 Hz units: the paper's baseline generator, unit-conditioned
    hifigan = UnitHiFiGAN(UnitHiFiGANConfig(k=500, sample_rate=24000, frame_rate=24000 / 256,
                                            upsample_rates=[8, 8, 2, 2], upsample_kernel_sizes=[16, 16, 4, 4])).to(device).eval()
    rows = []
    for batch in (1, args.batch):
        frames = 24000 // 256 + 1
        mel = torch.randn(batch, 100, frames, device=device)
        units = torch.randint(0, 500, (batch, frames), device=device)
        with torch.inference_mode():
            t_vocos = timed(lambda: vocos.decode(mel), args.repeats, device)
            t_hifi = timed(lambda: hifigan(units), args.repeats, device)
        seconds = batch * (frames - 1) * 256 / 24000
        rows.append((batch, seconds / t_vocos, seconds / t_hifi))
    lines = [f"## Vocoders (issue #7), {device.type}", "",
             f"Hardware: {hardware(device)}. 24 kHz, 1 s per item, fp32, random weights; Vocos mel (published "
             "size: 8 ConvNeXt layers, dim 512, ISTFT 1024/256) against a HiFi-GAN V1 generator "
             "(upsampling 8·8·2·2, 512 channels) fed 500 units.", "",
             "| batch | Vocos × real time | HiFi-GAN × real time | Vocos / HiFi-GAN |", "|---|---|---|---|"]
    lines += [f"| {b} | {v:,.0f} | {h:,.0f} | {v / h:.1f}× |" for b, v, h in rows]
    lines += ["", "The Vocos paper: 6,697× vs 496× on an A100 (13.5×), 170× vs 5.8× on a server CPU (29×), batch 16 × 1 s."]
    body = "\n".join(lines)
    print(body)
    if not args.no_write:
        write_section(f"vocoder-{device.type}", body)


if __name__ == "__main__":
    main()
