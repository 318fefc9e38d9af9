"""Codec throughput: × real time of encode and decode, batched against one utterance at a time, same run;
and the cost of exactness: batched encode without the per-row padding (`Codec._alone`, what makes each row's
codes equal its codes alone), same batches.

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
    wav = 0.1 * torch.randn(num_utts, n, generator=g)
    lengths = torch.full((num_utts,), n)
    codec.encode(wav[:2], lengths[:2])  # warm-up

    def encode_batched():
        return [codec.encode(wav[i:i + batch_size], lengths[i:i + batch_size])
                for i in range(0, num_utts, batch_size)]

    enc_b = timed(encode_batched, device) / num_utts
    enc_1 = timed(lambda: [codec.encode(wav[i:i + 1], lengths[i:i + 1]) for i in range(num_single)],
                  device) / num_single
    codes, frames = codec.encode(wav[:batch_size], lengths[:batch_size])
    codec.decode(codes[:2], frames[:2])  # warm-up
    reps = max(1, num_utts // batch_size)
    dec_b = timed(lambda: [codec.decode(codes, frames) for _ in range(reps)], device) / (reps * len(codes))
    m = min(len(codes), num_single)
    dec_1 = timed(lambda: [codec.decode(codes[i:i + 1], frames[i:i + 1]) for i in range(m)], device) / m
    return {"kind": codec.codec_kind, "n_q": codec.n_q, "sample_rate": codec.sample_rate,
            "precision": codec.precision, "encode_single_xrt": seconds / enc_1,
            "encode_batched_xrt": seconds / enc_b, "decode_single_xrt": seconds / dec_1,
            "decode_batched_xrt": seconds / dec_b}


def format_codecs(rows: list[dict], device: torch.device, num_utts: int, seconds: float,
                  batch_size: int) -> str:
    table = "\n".join(
        f"| {r['kind']} | {r['n_q']} | {r['sample_rate']} | {r['encode_single_xrt']:,.0f} | "
        f"{r['encode_batched_xrt']:,.0f} ({r['encode_batched_xrt'] / r['encode_single_xrt']:.1f}×) | "
        f"{r['decode_single_xrt']:,.0f} | {r['decode_batched_xrt']:,.0f} "
        f"({r['decode_batched_xrt'] / r['decode_single_xrt']:.1f}×) |" for r in rows)
    precision = ", ".join(sorted({r["precision"] for r in rows}))
    return (f"## Codecs (issue #3)\n\nHardware: {hardware(device)}. {num_utts} utterances × {seconds:g} s, "
            f"{precision}, batch {batch_size}; published architectures, random weights.\n\n"
            f"| codec | n_q | rate | encode ×RT, one at a time | encode ×RT, batched | decode ×RT, one at a time | decode ×RT, batched |\n"
            f"|---|---|---|---|---|---|---|\n{table}\n")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--kinds", default="encodec,dac,mimi")
    ap.add_argument("--num-utts", type=int, default=256)
    ap.add_argument("--seconds", type=float, default=10.0, help="length of each utterance")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--nq", type=int, default=8)
    ap.add_argument("--no-write", action="store_true")
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
            del codec
    body = format_codecs(rows, device, args.num_utts, args.seconds, args.batch_size)
    if args.note:
        body += f"\n{args.note}\n"
    print(body)
    if not args.no_write:
        write_section(f"codec-{device.type}", body)


if __name__ == "__main__":
    main()
