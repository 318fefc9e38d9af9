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
    from transformers import AutoModel, DacConfig, EncodecConfig, MimiConfig

    configs = {"encodec": EncodecConfig(), "dac": DacConfig(), "mimi": MimiConfig()}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for kind in args.kinds.split(","):
            torch.manual_seed(0)
            path = Path(tmp) / kind
            AutoModel.from_config(configs[kind]).save_pretrained(path)
            codec = Codec(kind, str(path), n_q=args.nq, device=device)
            n = int(args.seconds * codec.sample_rate)
            g = torch.Generator().manual_seed(0)
            wav = 0.1 * torch.randn(args.num_utts, n, generator=g)
            lengths = (n * (0.5 + 0.5 * torch.rand(args.num_utts, generator=g))).long()  # mixed lengths
            lengths[0] = n
            audio_s = lengths.sum().item() / codec.sample_rate
            codec.encode(wav[:2], lengths[:2])  # warm-up

            def encode_batched():
                out = []
                for i in range(0, args.num_utts, args.batch_size):
                    out.append(codec.encode(wav[i:i + args.batch_size], lengths[i:i + args.batch_size]))
                return out

            enc_b = timed(encode_batched, device)
            exact, codec._alone = codec._alone, None  # plain transformers padding: rows see the batch's
            enc_plain = timed(encode_batched, device)
            codec._alone = exact
            enc_1 = timed(lambda: [codec.encode(wav[i:i + 1], lengths[i:i + 1]) for i in range(args.num_utts)], device)
            codes, frames = codec.encode(wav[: args.batch_size], lengths[: args.batch_size])
            reps = max(1, args.num_utts // args.batch_size)
            decoded_s = frames.sum().item() * codec.hop / codec.sample_rate
            dec_b = timed(lambda: [codec.decode(codes, frames) for _ in range(reps)], device) / reps
            dec_1 = timed(lambda: [codec.decode(codes[i:i + 1, :, :f], frames[i:i + 1])
                                   for i, f in enumerate(frames.tolist())], device)
            rows.append((kind, codec.n_q, codec.sample_rate, audio_s / enc_1, audio_s / enc_b,
                         audio_s / enc_plain, decoded_s / dec_1, decoded_s / dec_b))
            del codec
    table = "\n".join(f"| {k} | {q} | {sr} | {e1:,.1f} | {eb:,.1f} ({eb / e1:.2f}×) | {ep:,.1f} "
                      f"({eb / ep:.2f}×) | {d1:,.1f} | {db:,.1f} ({db / d1:.2f}×) |"
                      for k, q, sr, e1, eb, ep, d1, db in rows)
    body = (f"## Codecs (issue #3)\n\nHardware: {hardware(device)}. {args.num_utts} utterances of "
            f"{args.seconds / 2:g}–{args.seconds:g} s, batches padded to the longest, "
            f"fp32, batch {args.batch_size}; published architectures, random weights. {args.note}\n\n"
            f"| codec | n_q | rate | encode ×RT, one at a time | encode ×RT, batched (/ one at a time) "
            f"| encode ×RT, batched without per-row padding, not exact (exact / this) "
            f"| decode ×RT, one at a time | decode ×RT, batched |\n"
            f"|---|---|---|---|---|---|---|---|\n{table}\n")
    print(body)
    if not args.no_write:
        write_section(f"codec-{device.type}", body)


if __name__ == "__main__":
    main()
