"""Codec throughput: × real time of encode and decode, batched against one utterance at a time, same run,
on utterances of uneven lengths (uniform in [0.4, 1] × --seconds, as a length bucket holds), so the exact
per-row padding runs; its cost: the same batches encoded without it (`Codec._alone` off: plain padding,
not exact); pinned input on CUDA; `--bf16`: the bf16 path's speed and its codes' agreement with fp32.

    python benchmarks/codec.py --device cuda --num-utts 256 --batch-size 64      # GPU machine
    python benchmarks/codec.py --device cpu --num-utts 8 --batch-size 8          # CPU run

Models are the published architectures (transformers' default configs: EnCodec 24 kHz, DAC, Mimi) with
random weights — speed does not depend on the weights and nothing is downloaded."""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from report import hardware, write_section  # noqa: E402

from speechtok.tokenizers.codec import Codec  # noqa: E402
from speechtok.tokenizers.features import length_mask  # noqa: E402


def timed(fn, device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def build_codec(kind: str, config, path: Path, nq: int, device: torch.device,
                precision: str = "fp32") -> Codec:
    """A random-init codec of `config`'s architecture, saved to `path` and loaded as `tok` loads one."""
    from transformers import AutoModel

    torch.manual_seed(0)
    AutoModel.from_config(config).save_pretrained(path)
    return Codec(kind, str(path), n_q=nq, device=device, precision=precision)


def measure_codec(codec: Codec, num_utts: int, seconds: float, batch_size: int,
                  num_single: int | None = None) -> dict:
    """× real time of encode and decode, batched (`batch_size`) against one utterance at a time (over the
    first `num_single` utterances; all by default), on random `seconds`-long utterances."""
    device = codec.device
    num_single = min(num_utts, num_single or num_utts)
    n = int(seconds * codec.sample_rate)
    g = torch.Generator().manual_seed(0)
    lengths = (n * (0.4 + 0.6 * torch.rand(num_utts, generator=g))).long()
    wav = 0.1 * torch.randn(num_utts, n, generator=g) * length_mask(lengths, n)
    if device.type == "cuda":
        wav = wav.pin_memory()
    seconds = float(lengths.float().mean()) / codec.sample_rate  # mean audio per utterance
    codec.encode(wav[:2], lengths[:2])  # warm-up

    def encode_batched():
        return [codec.encode(wav[i:i + batch_size], lengths[i:i + batch_size])
                for i in range(0, num_utts, batch_size)]

    enc_b = timed(encode_batched, device) / num_utts
    alone, codec._alone = codec._alone, None  # plain padding: the cost of exactness, same batches
    enc_plain = timed(encode_batched, device) / num_utts
    codec._alone = alone
    enc_1 = timed(lambda: [codec.encode(wav[i:i + 1, : int(lengths[i])], lengths[i:i + 1])
                           for i in range(num_single)], device) / num_single
    codes, frames = codec.encode(wav[:batch_size], lengths[:batch_size])
    codec.decode(codes[:2], frames[:2])  # warm-up
    reps = max(1, num_utts // batch_size)
    dec_seconds = float(frames.float().mean()) / codec.frame_rate
    dec_b = timed(lambda: [codec.decode(codes, frames) for _ in range(reps)], device) / (reps * len(codes))
    m = min(len(codes), num_single)
    dec_1 = timed(lambda: [codec.decode(codes[i:i + 1, :, : int(frames[i])], frames[i:i + 1])
                           for i in range(m)],
                  device) / m
    return {"kind": codec.codec_kind, "n_q": codec.n_q, "sample_rate": codec.sample_rate,
            "precision": codec.precision, "encode_single_xrt": seconds / enc_1,
            "encode_batched_xrt": seconds / enc_b, "encode_plain_xrt": seconds / enc_plain,
            "decode_single_xrt": dec_seconds / dec_1,
            "decode_batched_xrt": dec_seconds / dec_b}


def code_agreement(fp32: Codec, other: Codec, batch_size: int, seconds: float = 3.0) -> float:
    """Share of codes (all codebooks) that `other` gives equal to `fp32`'s, on one batch of noisy tones."""
    g = torch.Generator().manual_seed(1)
    n = int(seconds * fp32.sample_rate)
    t = torch.arange(n) / fp32.sample_rate
    f0 = 100 + 200 * torch.rand(batch_size, 1, generator=g)
    wav = 0.3 * torch.sin(2 * torch.pi * f0 * t) + 0.02 * torch.randn(batch_size, n, generator=g)
    lengths = (n * (0.4 + 0.6 * torch.rand(batch_size, generator=g))).long()
    a, frames = fp32.encode(wav, lengths)
    b, _ = other.encode(wav, lengths)
    valid = length_mask(frames.to(a.device), a.shape[-1])[:, None, :].expand_as(a)
    return float((a == b)[valid].float().mean())


def format_codecs(rows: list[dict], device: torch.device, num_utts: int, seconds: float,
                  batch_size: int) -> str:
    table = "\n".join(
        f"| {r['kind']} | {r['n_q']} | {r['sample_rate']} | {r['precision']} | {r['encode_single_xrt']:,.1f} "
        f"| {r['encode_batched_xrt']:,.1f} ({r['encode_batched_xrt'] / r['encode_single_xrt']:.1f}×) | "
        f"{r['encode_plain_xrt']:,.1f} ({r['encode_batched_xrt'] / r['encode_plain_xrt']:.2f}×) | "
        f"{r['decode_single_xrt']:,.1f} | {r['decode_batched_xrt']:,.1f} "
        f"({r['decode_batched_xrt'] / r['decode_single_xrt']:.1f}×) | {r.get('agreement', '')} |"
        for r in rows)
    precision = ", ".join(sorted({r["precision"] for r in rows}))
    return (f"## Codecs (issues #3, #28)\n\nHardware: {hardware(device)}. {num_utts} utterances of "
            f"0.4-1 × {seconds:g} s (uneven: the exact per-row padding runs), {precision}, batch "
            f"{batch_size}; "
            f"published architectures, random weights. 'plain padding': the same batches without the "
            f"per-row padding (not exact), ratio = exact / plain speed. 'codes = fp32': share of codes equal "
            f"to the fp32 path's.\n\n"
            f"| codec | n_q | rate | precision | encode ×RT, one at a time | encode ×RT, batched, exact | "
            f"encode ×RT, plain padding (exact/plain) | decode ×RT, one at a time | decode ×RT, batched | "
            f"codes = fp32 |\n"
            f"|---|---|---|---|---|---|---|---|---|---|\n{table}\n")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--kinds", default="encodec,dac,mimi")
    ap.add_argument("--num-utts", type=int, default=256)
    ap.add_argument("--seconds", type=float, default=10.0, help="length of each utterance")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--nq", type=int, default=8)
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--bf16", action="store_true", help="also the bf16 path, with its codes' agreement")
    ap.add_argument("--section", default=None, help="BENCHMARKS.md section (default codec-DEVICE)")
    ap.add_argument("--note", default="", help="a sentence added to the section (e.g. shared machine)")
    args = ap.parse_args()
    device = torch.device(args.device)
    from transformers import DacConfig, EncodecConfig, MimiConfig

    configs = {"encodec": EncodecConfig(), "dac": DacConfig(), "mimi": MimiConfig()}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for kind in args.kinds.split(","):
            codec = build_codec(kind, configs[kind], Path(tmp) / kind, args.nq, device)
            rows.append(measure_codec(codec, args.num_utts, args.seconds, args.batch_size))
            if args.bf16:
                half = Codec(kind, str(Path(tmp) / kind), n_q=args.nq, device=device, precision="bf16")
                rows.append({**measure_codec(half, args.num_utts, args.seconds, args.batch_size),
                             "agreement": f"{code_agreement(codec, half, args.batch_size):.2%}"})
            del codec
    body = format_codecs(rows, device, args.num_utts, args.seconds, args.batch_size)
    if args.note:
        body += f"\n{args.note}\n"
    print(body)
    if not args.no_write:
        write_section(args.section or f"codec-{device.type}", body)


if __name__ == "__main__":
    main()
