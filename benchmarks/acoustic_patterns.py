"""The acoustic stage's codebook patterns side by side (issue #25): each trained through `tok acoustic
train` for the same step budget, model size and codec, then scored on held-out utterances.

Corpus: flite voice slt reading template sentences (benchmarks/fidelity.py), MFCC k-means units (`tok
train-kmeans -m mfcc`) and a small EnCodec at 75 Hz whose RVQ codebooks are drawn from its own latents of
the corpus (random weights otherwise: no pretrained codec can be downloaded here), both written by `tok
encode`. Scores on the held-out sentences, each generated greedily from its units with its first second
as the voice prompt:
- code accuracy: generated codes equal to the utterance's own codes after the prompt (level 1, all levels);
- latent error: the codec latents the decoder would read (the sum of the codebook vectors, EnCodec's
  `quantizer.decode`) of the generated codes against those of the true codes, squared error relative to
  the true latents' energy, so that a pattern's errors are weighed by how far they move the decoder's
  input (a wrong first-level code moves it more than a wrong last-level one);
- steps per second of speech and × real time of generation at batch 1 and 16.

WER and speaker similarity of the decoded audio need a codec trained on speech: with this codec's random
weights the audio is not speech, so they are not reported (on a GPU machine with a real codec use
`tok eval generated` / `tok eval resynth`).

    python benchmarks/acoustic_patterns.py                                  # CPU budget
    python benchmarks/acoustic_patterns.py --steps 3000 --dim 256 --layers 6 --device cuda"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))
from fidelity import flite_corpus, sentences, tok  # noqa: E402
from report import hardware, write_section  # noqa: E402

PATTERNS = ("delay", "coarse_fine", "valle", "depth")


def small_codec(folder: Path, corpus: Path, n_q: int) -> str:
    """A small 24 kHz EnCodec at 75 Hz (hop 320, as the released model) with codebooks filled from its
    latents of the corpus' first sentences, saved with save_pretrained."""
    from conftest import fill_codebooks, speech_at
    from transformers import EncodecConfig, EncodecModel

    torch.manual_seed(0)
    cfg = EncodecConfig(sampling_rate=24000, num_filters=8, upsampling_ratios=[8, 5, 4, 2], codebook_size=256,
                        codebook_dim=32, hidden_size=32, num_lstm_layers=1,
                        target_bandwidths=[75 * 8 * n_q / 1000])  # n_q codebooks of 8 bits at 75 Hz
    model = EncodecModel(cfg).eval()
    fill_codebooks(model, "encodec", speech_at(corpus, 24000)[:8])
    model.save_pretrained(folder)
    return str(folder)


def prepare(work: Path, args, log: Path) -> tuple[Path, Path]:
    """(shards of the training sentences, shards of the held-out ones), both with units and codes."""
    texts = sentences(args.train + args.held_out, seed=0)
    train = flite_corpus(work / "train", texts[: args.train], "slt")
    held = flite_corpus(work / "held", texts[args.train:], "slt")
    codec = small_codec(work / "codec", train, args.n_q)
    tok("train-kmeans", train, "-m", "mfcc", "-k", args.k, "-o", work / "km", log=log)
    spec = f"encodec:{codec}:nq={args.n_q}"
    for name, manifest in (("shards", train), ("held_shards", held)):
        tok("encode", manifest, "-t", work / "km", "-t", spec, "-o", work / name, "--device", args.device,
            log=log)
    return work / "shards", work / "held_shards"


def train(work: Path, pattern: str, args, log: Path) -> tuple[Path, float]:
    """`tok acoustic train` of `pattern` (same budget for every pattern) → (final model dir, minutes)."""
    cfg = {"output": str(work / f"acoustic_{pattern}"), "shards": [str(work / "shards")], "codec": "encodec",
           "pattern": pattern, "n_coarse": 1,
           "model": {"dim": args.dim, "layers": args.layers, "heads": 4,
                     **({"depth_dim": args.dim // 2, "depth_layers": 2} if pattern == "depth" else {})},
           "train": {"batch_size": args.batch_size, "steps": args.steps, "lr": args.lr,
                     "warmup": args.steps // 20,
                     "crop_seconds": args.crop_seconds, "log_every": 50, "save_every": args.steps,
                     "precision": "bf16" if args.device == "cuda" else "fp32"}}
    path = work / f"acoustic_{pattern}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    t0 = time.perf_counter()
    tok("acoustic", "train", path, "--device", args.device, log=log)
    return work / f"acoustic_{pattern}" / "final", (time.perf_counter() - t0) / 60


def held_out(folder: Path) -> list[tuple[np.ndarray, np.ndarray]]:
    """(units, codes [n_q, T]) of every held-out utterance."""
    from speechtok.shards import read_shards

    return [(s["semantic"], s["encodec"]) for s in read_shards(folder)]


def score(model_dir: Path, items, args) -> dict:
    """Code accuracy and latent error of greedy generation with a 1 s voice prompt, and speed."""
    from speechtok.lm.acoustic import AcousticModel
    from speechtok.tokenizers.codec import Codec

    device = torch.device(args.device)
    model = AcousticModel.from_dir(model_dir, device)
    codec = Codec.from_card({**model.cfg.codec_card, "n_q": model.cfg.n_q}, device)
    P = int(round(model.cfg.codec_rate))  # one second of voice prompt
    level1, every, latent = [], [], []
    for units, codes in items:
        out = model.generate(units, codes.shape[1], prompt_codes=codes[:, :P], temperature=0)
        level1.append(np.mean(out[0, P:] == codes[0, P:]))
        every.append(np.mean(out[:, P:] == codes[:, P:]))
        with torch.no_grad():
            z, z_gen = (codec.model.quantizer.decode(torch.as_tensor(c[:, None, P:], device=device).long())
                        for c in (codes, out))
        latent.append(float((z_gen - z).pow(2).sum() / z.pow(2).sum()))
    speed = {}
    for batch in (1, 16):
        rows = (items * batch)[:batch]
        frames = [c.shape[1] for _, c in rows]
        model.generate_batch([u for u, _ in rows], frames, temperature=1.0, top_k=50,
                             seeds=list(range(batch)))
        t0 = time.perf_counter()
        model.generate_batch([u for u, _ in rows], frames, temperature=1.0, top_k=50,
                             seeds=list(range(batch)))
        if device.type == "cuda":
            torch.cuda.synchronize()
        speed[batch] = sum(frames) / model.cfg.codec_rate / (time.perf_counter() - t0)
    return {"params": sum(p.numel() for p in model.parameters()), "level1": float(np.mean(level1)),
            "all": float(np.mean(every)), "latent": float(np.mean(latent)),
            "rt1": speed[1], "rt16": speed[16]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--patterns", default=",".join(PATTERNS))
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--train", type=int, default=200, help="training sentences")
    ap.add_argument("--held-out", type=int, default=12)
    ap.add_argument("-k", type=int, default=100)
    ap.add_argument("--n-q", type=int, default=4)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--crop-seconds", type=float, default=2.0)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--work", default=None, help="keep the corpus, shards and models here")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    patterns = args.patterns.split(",")
    work = Path(args.work or tempfile.mkdtemp(prefix="patterns_"))
    work.mkdir(parents=True, exist_ok=True)
    log = work / "tok.log"
    t0 = time.perf_counter()
    if not (work / "held_shards" / "manifest.json").exists():
        prepare(work, args, log)
    items = held_out(work / "held_shards")
    rows = []
    for pattern in patterns:
        model_dir, minutes = train(work, pattern, args, log)
        rows.append((pattern, minutes, score(model_dir, items, args)))
        print(rows[-1], flush=True)
    table = "\n".join(f"| {p} | {r['params'] / 1e6:.2f} M | {m:.1f} | {r['level1']:.3f} | {r['all']:.3f} | "
                      f"{r['latent']:.3f} | "
                      f"{r['rt1']:.2f} | {r['rt16']:.2f} |" for p, m, r in rows)
    body = (f"## Acoustic codebook patterns side by side (issue #25), {args.device}\n\n"
            f"Hardware: {hardware(torch.device(args.device))}. `python benchmarks/acoustic_patterns.py "
            f"--patterns {args.patterns} --steps {args.steps}`: flite slt, {args.train} training and "
            f"{len(items)} held-out template sentences; MFCC k-means units (k={args.k}, 100 Hz) → a small "
            f"EnCodec at 75 Hz, {args.n_q} codebooks of 256 codes drawn from its latents of the corpus "
            f"(random weights otherwise). Every pattern: the same transformer (dim {args.dim}, "
            f"{args.layers} layers; depth adds its depth transformer half as wide, 2 layers; valle is an AR "
            f"and a NAR transformer of that size), {args.steps} steps of batch {args.batch_size} × "
            f"{args.crop_seconds} s crops, lr {args.lr}. "
            "Held-out scores: greedy generation from the utterance's units with its first second as voice "
            "prompt; code accuracy after the prompt (codebook 1; all codebooks); latent error: squared "
            "distance of the generated codes' codec latents (sum of codebook vectors) from the true codes', "
            "relative to the true latents' energy (0 = exact, 1 = as far as silence, 2 = unrelated codes); "
            "× real time of sampled generation (temperature 1, top-k 50, eager) at batch 1 and 16. WER and "
            "speaker similarity are not reported: this codec's audio is not speech (no pretrained codec "
            "offline).\n\n"
            "| pattern | parameters | training min | codebook-1 accuracy | all-codebook accuracy | "
            "latent error | ×RT batch 1 | ×RT batch 16 |\n|---|---|---|---|---|---|---|---|\n"
            f"{table}\n\nWall time {(time.perf_counter() - t0) / 60:.0f} min.\n")
    print(body)
    if not args.no_write:
        write_section(f"acoustic-patterns-{torch.device(args.device).type}", body)


if __name__ == "__main__":
    main()
