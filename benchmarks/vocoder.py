"""Vocoder synthesis speed: Vocos (mel, 24 kHz, published size) against a HiFi-GAN V1 generator (unit
HiFi-GAN, same upsampling stack) in × real time, at batch 1 and batch N × 1 s (the Vocos paper's setting is
batch 16 × 1 s), random weights. Then each vocoder precision (fp32, tf32 on CUDA, bf16) at batch N: ×RT and
the waveform's relative RMS difference from fp32; and N uneven utterances (0.5–1.5 s) synthesized one at a
time against one padded batch (`Vocos.decode_batch`, each row as alone).

    python benchmarks/vocoder.py --device cuda --batch 16
    python benchmarks/vocoder.py --device cpu --batch 16 --repeats 3"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from report import hardware, write_section  # noqa: E402

from speechtok.vocoders.hifigan import UnitHiFiGAN, UnitHiFiGANConfig  # noqa: E402
from speechtok.vocoders.precision import vocoder_precision  # noqa: E402
from speechtok.vocoders.vocos import Vocos  # noqa: E402

VOCOS_MEL_24K = {
    "feature_extractor": {"class_path": "vocos.feature_extractors.MelSpectrogramFeatures",
                          "init_args": {"sample_rate": 24000, "n_fft": 1024, "hop_length": 256,
                                        "n_mels": 100}},
    "backbone": {"class_path": "vocos.models.VocosBackbone",
                 "init_args": {"input_channels": 100, "dim": 512, "intermediate_dim": 1536, "num_layers": 8}},
    "head": {"class_path": "vocos.heads.ISTFTHead", "init_args": {"dim": 512, "n_fft": 1024,
                                                                  "hop_length": 256, "padding": "center"}}}


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


def relative_rms(x: torch.Tensor, reference: torch.Tensor) -> float:
    """RMS of the difference over the reference's RMS."""
    return float((x.float() - reference).square().mean().sqrt() / reference.square().mean().sqrt())


def measure_precisions(vocos: Vocos, hifigan: UnitHiFiGAN, batch: int, repeats: int,
                       seconds: float = 1.0) -> list[tuple[str, float, float, float, float]]:
    """(precision, Vocos ×RT, its waveform's relative RMS difference from fp32, the same two for HiFi-GAN)."""
    device = next(vocos.parameters()).device
    frames = int(seconds * 24000) // 256 + 1
    torch.manual_seed(1)
    mel = torch.randn(batch, 100, frames, device=device)
    units = torch.randint(0, 500, (batch, frames), device=device)
    audio = batch * (frames - 1) * 256 / 24000
    rows, reference = [], None
    for precision in ("fp32", "tf32", "bf16") if device.type == "cuda" else ("fp32", "bf16"):
        with torch.inference_mode(), vocoder_precision(precision, device):
            t_vocos = timed(lambda: vocos.decode(mel), repeats, device)
            t_hifi = timed(lambda: hifigan(units), repeats, device)
            out = vocos.decode(mel).float(), hifigan(units).float()
        reference = reference or out
        rows.append((precision, audio / t_vocos, relative_rms(out[0], reference[0]), audio / t_hifi,
                     relative_rms(out[1], reference[1])))
    return rows


def measure_uneven(vocos: Vocos, batch: int, repeats: int) -> tuple[float, float, float]:
    """`batch` utterances of 0.5–1.5 s (fp32): (×RT one at a time, ×RT in one padded batch, the batch's
    largest difference from each row alone relative to that row's peak)."""
    device = next(vocos.parameters()).device
    torch.manual_seed(2)
    lengths = torch.linspace(0.5, 1.5, batch).mul(24000 / 256).long().tolist()
    mels = [torch.randn(100, n, device=device) for n in lengths]
    audio = sum(n - 1 for n in lengths) * 256 / 24000
    with torch.inference_mode():
        t_alone = timed(lambda: [vocos.decode(m[None]) for m in mels], repeats, device)
        t_batch = timed(lambda: vocos.decode_batch(mels), repeats, device)
        alone = [vocos.decode(m[None])[0] for m in mels]
        rows = vocos.decode_batch(mels)
        worst = max(float((r - a).abs().max() / a.abs().max()) for r, a in zip(rows, alone))
    return audio / t_alone, audio / t_batch, worst


def xrt(v: float) -> str:
    return f"{v:,.0f}" if v >= 100 else f"{v:.1f}"


def format_precisions(rows: list[tuple[str, float, float, float, float]], uneven: tuple[float, float, float],
                      batch: int, seconds: float = 1.0) -> str:
    lines = ["", f"Precision (`--vocoder-precision`), batch {batch} × {seconds:g} s; difference = RMS of the "
             "waveform difference from fp32 over the fp32 waveform's RMS (bf16 keeps 8 significant bits: "
             "2^-8 = 0.39%).", "",
             "| precision | Vocos × real time | Vocos difference | HiFi-GAN × real time "
             "| HiFi-GAN difference |", "|---|---|---|---|---|"]
    lines += [f"| {p} | {xrt(v)} | {dv:.2%} | {xrt(h)} | {dh:.2%} |" for p, v, dv, h, dh in rows]
    alone, batched, worst = uneven
    lines += ["", f"{batch} uneven utterances (0.5–1.5 s), fp32: one at a time {xrt(alone)}× real time, "
              f"one padded batch (each row as alone, largest difference {worst:.1e} of the row's peak) "
              f"{xrt(batched)}× ({batched / alone:.1f}×)."]
    return "\n".join(lines)


def format_vocoders(rows: list[tuple[int, float, float]], device: torch.device, seconds: float = 1.0) -> str:
    lines = [f"## Vocoders (issue #7), {device.type}", "",
             f"Hardware: {hardware(device)}. 24 kHz, {seconds:g} s per item, fp32, random weights; Vocos mel "
             f"(published size: 8 ConvNeXt layers, dim 512, ISTFT 1024/256) against a HiFi-GAN V1 generator "
             "(upsampling 8·8·2·2, 512 channels) fed 500 units.", "",
             "| batch | Vocos × real time | HiFi-GAN × real time | Vocos / HiFi-GAN |", "|---|---|---|---|"]
    lines += [f"| {b} | {v:,.0f} | {h:,.0f} | {v / h:.1f}× |" for b, v, h in rows]
    lines += ["", "The Vocos paper: 6,697× vs 496× on an A100 (13.5×), 170× vs 5.8× on a server CPU (29×), "
                  "batch 16 × 1 s."]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    device = torch.device(args.device)
    load = os.getloadavg()[0]  # a shared machine: other jobs' load scales every figure, not the ratios
    vocos, hifigan = build_vocoders(device)
    body = format_vocoders(measure_vocoders(vocos, hifigan, (1, args.batch), args.repeats), device)
    body += "\n" + format_precisions(measure_precisions(vocos, hifigan, args.batch, args.repeats),
                                     measure_uneven(vocos, args.batch, args.repeats), args.batch)
    body += (f"\n\nLoad average {load:.1f} → {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores during the "
             f"run (ratios within one table are what compare).")
    print(body)
    if not args.no_write:
        write_section(f"vocoder-{device.type}", body)


if __name__ == "__main__":
    main()
