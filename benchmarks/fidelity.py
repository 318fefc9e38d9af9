"""Fidelity benchmark (issue #19), two parts in one BENCHMARKS.md section:

- evaluators: do the offline evaluators separate clean from degraded speech? PocketSphinx WER (against the
  text the voices read), Resemblyzer speaker similarity to the clean clip and DNSMOS OVRL on flite speech,
  clean and after three degradations: telephone band (8 kHz and back), white noise at 10 dB and 0 dB SNR.
- vocoders: the project's own vocoders trained through the CLI a user runs — a mel Vocos and a unit HiFi-GAN
  on MFCC k-means units (`tok train-kmeans`, `tok encode`, `tok vocoder train`) on a single flite voice (slt)
  for a fixed step budget — then the held-out sentences resynthesized with each (`resynthesize`, as
  `tok resynth` does) and scored by `evaluate_resynth` (WER/CER, similarity, DNSMOS, MCD, STOI, PESQ) next
  to the ground truth's and another voice reading the same text.

    python benchmarks/fidelity.py                          # both parts, CPU (short budget, small models)
    python benchmarks/fidelity.py --part vocoders --device cuda   # published sizes, 20k steps"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

sys.path.insert(0, str(Path(__file__).parent))
from report import BENCHMARKS_MD, hardware, write_section  # noqa: E402

from speechtok.audio import resample  # noqa: E402
from speechtok.eval.asr import error_rates, load_asr  # noqa: E402
from speechtok.eval.mos import DNSMOS  # noqa: E402
from speechtok.eval.speaker import load_speaker_encoder, speaker_similarity  # noqa: E402

SENTENCES = ["the quick brown fox jumps over the lazy dog", "speech tokens turn sound into words",
             "seven green apples fell from the tree", "every word has a start and an end",
             "language models learn to speak from units", "the cat sat on the mat today"]
VOICES = ("slt", "awb", "rms")


def noisy(wav: np.ndarray, snr_db: float, rng: np.random.Generator) -> np.ndarray:
    noise = rng.standard_normal(len(wav)).astype(np.float32)
    return wav + noise * np.sqrt((wav ** 2).mean() / (noise ** 2).mean() / 10 ** (snr_db / 10))


EVALUATORS_HEADING = "## Offline evaluators on clean and degraded speech"
VOCODERS_HEADING = "## Vocoders trained on one synthetic voice"
WORDS = {"adj": "red green blue black white small big old new good bad long short".split(),
         "noun": ("cat dog fox bird fish tree house car road hill river sun moon man woman child friend "
                  "stone book door window table chair apple").split(),
         "verb": "sees finds takes gives makes likes wants opens closes buys sells".split(),
         "prep": "with over under near from into on in by".split(), "det": ["the", "a"]}
TEMPLATES = ("det adj noun verb det noun", "det noun verb det adj noun prep det noun",
             "det adj noun prep det noun verb det adj noun", "det noun verb det noun")


def sentences(n: int, seed: int = 0) -> list[str]:
    """`n` distinct simple sentences ("the red fox sees a dog near the tree") from TEMPLATES and WORDS,
    deterministic for a seed."""
    rng, out = np.random.default_rng(seed), {}
    while len(out) < n:
        template = TEMPLATES[int(rng.integers(len(TEMPLATES)))]
        out.setdefault(" ".join(rng.choice(WORDS[slot]) for slot in template.split()), None)
    return list(out)


def evaluators_part(args) -> str:
    rng = np.random.default_rng(0)
    clips, texts = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for voice in VOICES:
            for i, text in enumerate(SENTENCES[: args.sentences]):
                path = Path(tmp) / f"{voice}_{i}.wav"
                subprocess.run(["flite", "-voice", voice, "-t", text, "-o", str(path)], check=True)
                wav, sr = sf.read(path, dtype="float32")
                clips.append(resample(wav, sr, 16000))
                texts.append(text)
    conditions = {"clean": lambda w: w,
                  "telephone band (8 kHz)": lambda w: resample(resample(w, 16000, 8000), 8000, 16000),
                  "white noise, 10 dB SNR": lambda w: noisy(w, 10, rng),
                  "white noise, 0 dB SNR": lambda w: noisy(w, 0, rng)}
    asr, enc, mos = load_asr("pocketsphinx"), load_speaker_encoder("resemblyzer"), DNSMOS()
    rows = []
    t0 = time.perf_counter()
    for name, degrade in conditions.items():
        wavs = [np.clip(degrade(w), -1, 1).astype(np.float32) for w in clips]
        hyps = asr.transcribe([(w, 16000) for w in wavs])
        e = error_rates(texts, hyps)
        sim = np.mean([speaker_similarity(enc, c, 16000, w, 16000) for c, w in zip(clips, wavs)])
        ovrl = np.mean([mos.score(w, 16000)["dnsmos_ovrl"] for w in wavs])
        rows.append(f"| {name} | {e['wer']:.3f} | {e['cer']:.3f} | {sim:.3f} | {ovrl:.2f} |")
        print(rows[-1], flush=True)
    return "\n".join([
        f"{EVALUATORS_HEADING} (issue #19), cpu\n",
        f"{hardware(torch.device('cpu'))}. {len(clips)} flite utterances ({len(VOICES)} voices x "
        f"{args.sentences} sentences, 16 kHz); `python benchmarks/fidelity.py --part evaluators`. WER/CER: "
        "PocketSphinx 5 en-us against the text the voices read (corpus-level, normalised: lowercase, no "
        "punctuation). Similarity: Resemblyzer cosine to the clean clip. DNSMOS: P.835 OVRL (speechmos "
        "ONNX). "
        f"{time.perf_counter() - t0:.0f} s for all conditions (wall time, machine shared with other "
        "jobs).\n",
        "| condition | WER | CER | speaker similarity | DNSMOS OVRL |", "|---|---|---|---|---|", *rows, ""])


def flite_corpus(folder: Path, texts: list[str], voice: str) -> Path:
    """`folder/*.wav` spoken by a flite voice and `folder.jsonl` (id, path, text, speaker) beside it."""
    shutil.rmtree(folder, ignore_errors=True)  # no files left from a run with other sentence counts
    folder.mkdir(parents=True)
    lines = []
    for i, text in enumerate(texts):
        path = folder / f"utt_{i:04d}.wav"  # the same id for the same text in every folder
        subprocess.run(["flite", "-voice", voice, "-t", text, "-o", str(path)], check=True)
        lines.append(json.dumps({"id": path.stem, "path": f"{folder.name}/{path.name}", "text": text,
                                 "speaker": voice}))
    manifest = folder.parent / f"{folder.name}.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


def tok(*args, log: Path) -> str:
    """Run the `tok` CLI (this checkout's) as a user would; its output goes to `log`; returns stdout."""
    cmd = [sys.executable, "-m", "speechtok.cli.main", *map(str, args)]
    print("$ tok " + " ".join(map(str, args)), flush=True)
    r = subprocess.run(cmd, capture_output=True, text=True)
    with open(log, "a") as f:
        f.write(f"$ tok {' '.join(map(str, args))}\n{r.stdout}{r.stderr}\n")
    if r.returncode != 0:
        raise SystemExit(f"tok {args[0]} failed ({r.returncode}); see {log}:\n{r.stderr[-2000:]}")
    return r.stdout


def vocoder_configs(gpu: bool) -> dict[str, dict]:
    """Per vocoder, the `tok vocoder train` config keys beyond the paths: the papers' sizes on GPU; on CPU
    small models (and narrow discriminators) so that a few hundred steps fit in minutes."""
    common = {"log_every": 25, "save_every": 2000, "sample_every": 5000, "segment_seconds": 1.0}
    if gpu:
        return {"vocos": {**common, "kind": "vocos", "sample_rate": 16000, "batch_size": 16},
                "unit-hifigan": {**common, "kind": "unit-hifigan", "batch_size": 16}}
    small = {**common, "batch_size": 4, "segment_seconds": 0.5, "disc_channels": 4, "lr": 5e-4}
    return {"vocos": {**small, "kind": "vocos", "sample_rate": 16000,
                      "model": {"dim": 128, "intermediate_dim": 384, "num_layers": 4}},
            "unit-hifigan": {**small, "kind": "unit-hifigan",
                             "model": {"upsample_initial_channel": 64, "resblock_kernel_sizes": [3, 7],
                                       "resblock_dilation_sizes": [[1, 3], [1, 3]]}}}


def train_vocoders(work: Path, args, steps: int, adv_start: int) -> tuple[Path, dict, float]:
    """flite corpus → `tok train-kmeans` → `tok encode` → `tok vocoder train` for each vocoder; returns the
    tokenizer dir, per vocoder {step, losses, seconds}, and the seconds before training."""
    import yaml

    from speechtok.vocoders.train import load_vocoder

    texts = sentences(args.train_sentences + args.heldout, seed=0)
    t0, log = time.perf_counter(), work / "tok.log"
    corpus = flite_corpus(work / "train", texts[: args.train_sentences], "slt")
    flite_corpus(work / "heldout", texts[args.train_sentences:], "slt")
    flite_corpus(work / "other_voice", texts[args.train_sentences:], "awb")  # same text, another speaker
    km, shards = work / f"km_mfcc_{args.k}", work / "shards"
    for old in (km, shards, work / "vocos", work / "unit-hifigan"):  # a rerun starts afresh
        shutil.rmtree(old, ignore_errors=True)
    tok("train-kmeans", corpus, "-m", "mfcc", "-k", args.k, "-o", km, "--device", "cpu", "-q", log=log)
    tok("encode", corpus, "-t", km, "-o", shards, "--device", "cpu", "-q", log=log)
    prep, trained = time.perf_counter() - t0, {}
    for name, extra in vocoder_configs(torch.device(args.device).type == "cuda").items():
        cfg = {**extra, "shards": str(shards), "output": str(work / name), "steps": steps,
               "adv_start": adv_start}
        (work / f"{name}.yaml").write_text(yaml.safe_dump(cfg))
        t = time.perf_counter()
        out = tok("vocoder", "train", "--config", work / f"{name}.yaml", "--device", args.device, log=log)
        trained[name] = {**json.loads(out.strip().splitlines()[-1]), "seconds": time.perf_counter() - t,
                         "params": sum(p.numel() for p in load_vocoder(work / name / "final").parameters())}
        print(name, trained[name], flush=True)
    return km, trained, prep


def resynthesize_folder(src: Path, dst: Path, tokenizer: Path | None, vocoder_dir: Path, device: str) -> None:
    """Every wav of `src` through the vocoder (as `tok resynth` does) into `dst` under the same name."""
    from speechtok.audio import read_audio
    from speechtok.pipelines.resynth import resynthesize

    dst.mkdir(parents=True, exist_ok=True)
    for path in sorted(src.glob("*.wav")):
        wav, sr = read_audio(str(path))
        y, ysr, _ = resynthesize(wav, sr, str(tokenizer) if tokenizer else None, str(vocoder_dir),
                                 torch.device(device))
        sf.write(dst / path.name, y, ysr)


def cell(x: float | None, fmt: str = ".3f") -> str:
    return "—" if x is None else format(x, fmt)


def vocoders_part(args, work: Path) -> str:
    from speechtok.pipelines.evaluate import evaluate_resynth

    gpu = torch.device(args.device).type == "cuda"
    steps = args.steps or (20000 if gpu else 3000)
    # on CPU a discriminator step costs several mel-only steps: they join for the last 200 steps only
    adv_start = args.adv_start if args.adv_start is not None else (0 if gpu else max(0, steps - 200))
    work = work.resolve()  # the YAML configs name absolute paths (relative ones: from the YAML's folder)
    work.mkdir(parents=True, exist_ok=True)
    km, trained, prep = train_vocoders(work, args, steps, adv_start)
    systems = {"vocos": ("mel Vocos", None), "unit-hifigan": (f"unit HiFi-GAN (MFCC k={args.k})", km)}
    for name, (_, tokenizer) in systems.items():
        resynthesize_folder(work / "heldout", work / f"resynth_{name}", tokenizer, work / name / "final",
                            args.device)
    t_eval, reports = time.perf_counter(), {}
    hyp_dirs = {"other voice (flite awb), same text": work / "other_voice",
                **{label: work / f"resynth_{name}" for name, (label, _) in systems.items()}}
    for label, hyp_dir in hyp_dirs.items():
        reports[label] = evaluate_resynth(work / "heldout", hyp_dir, work / "eval" / hyp_dir.name, plots=2,
                                          asr="pocketsphinx", transcripts=work / "heldout.jsonl",
                                          speaker="resemblyzer", mos=True, device="cpu")
        print(label, {k: v for k, v in reports[label]["mean"].items() if v is not None}, flush=True)
    eval_seconds = time.perf_counter() - t_eval
    first = next(iter(reports.values()))
    gt = first["asr"]["reference_vs_text"]
    rows = [f"| ground truth (flite slt) | {gt['wer']:.3f} | {gt['cer']:.3f} | — | "
            f"{first['mean']['ref_dnsmos_ovrl']:.2f} | — | — | — |"]
    for label, r in reports.items():
        m = r["mean"]
        rows.append(f"| {label} | {cell(m['wer'])} | {cell(m['cer'])} | {cell(m['speaker_similarity'])} | "
                    f"{cell(m['dnsmos_ovrl'], '.2f')} | {cell(m['mcd_db'], '.2f')} | {cell(m['stoi'])} | "
                    f"{cell(m['pesq_wb'], '.2f')} |")
    train_rows = [f"| {systems[n][0]} | {r['params'] / 1e6:.2f} M | {r['step']} | {r['seconds'] / 60:.1f} "
                  f"| {r['mel_loss']:.3f} | {r['g_loss']:.2f} | {r['d_loss']:.2f} |"
                  for n, r in trained.items()]
    sizes = ("the papers' sizes (Vocos dim 512 x 8 layers; HiFi-GAN V1, 512 channels; discriminators at "
             "full width), batch 16 x 1 s" if gpu else
             "small models for a CPU budget (Vocos dim 128 x 4 layers; HiFi-GAN 64 initial channels, "
             "resblocks 3/7 with dilations 1,3; discriminators at 1/8 width, `disc_channels` 4), "
             "batch 4 x 0.5 s, lr 5e-4")
    cmd = " ".join(["python benchmarks/fidelity.py --part vocoders", *([f"--device {args.device}"] * gpu),
                    *([f"--steps {args.steps}"] * bool(args.steps)),
                    *([f"--adv-start {args.adv_start}"] * (args.adv_start is not None))])
    train_minutes = sum(sf.info(p).duration for p in (work / "train").glob("*.wav")) / 60
    device = torch.device(args.device)
    return "\n".join([
        f"{VOCODERS_HEADING} (issue #19), {device.type}\n",
        f"{hardware(device)}; `{cmd}`. Corpus: flite voice slt, {args.train_sentences} distinct sentences of "
        f"4-10 words from {len(TEMPLATES)} templates over a {sum(map(len, WORDS.values()))}-word "
        f"vocabulary (seed 0, {train_minutes:.1f} min of 16 kHz audio); {args.heldout} held-out sentences "
        f"not in training. Through the CLI: `tok train-kmeans -m mfcc -k {args.k}`, `tok encode`, then "
        "`tok vocoder train` for a mel Vocos (16 kHz, n_fft 1024, hop 256, 100 mels) and a unit HiFi-GAN "
        f"on the MFCC units (100 Hz, upsampling 5·4·4·2), {steps} steps each with {sizes}; adversarial "
        f"losses from step {adv_start} (mel loss only before). The held-out sentences are resynthesized as "
        "`tok resynth` does and scored with `evaluate_resynth` (`tok eval resynth`): WER/CER PocketSphinx 5 "
        "en-us against the known text (corpus-level, normalised), speaker similarity Resemblyzer cosine to "
        "the ground-truth clip, DNSMOS P.835 OVRL, MCD (dB, DTW-aligned), STOI, wide-band PESQ; means over "
        "the held-out files. The other-voice row (flite awb reading the same sentences) is the similarity "
        "of a different speaker; PocketSphinx's error on the ground truth itself bounds what the WER column "
        "can show.\n",
        "| system | WER | CER | speaker similarity | DNSMOS OVRL | MCD dB | STOI | PESQ |",
        "|---|---|---|---|---|---|---|---|", *rows, "",
        "| vocoder | generator parameters | steps | training min | final mel loss (L1 log-mel) | final "
        "generator loss | final discriminator loss |", "|---|---|---|---|---|---|---|", *train_rows, "",
        f"Wall time: corpus synthesis, k-means and encoding {prep / 60:.1f} min, training as above, scoring "
        f"{eval_seconds / 60:.1f} min (machine shared with other jobs). "
        + ("These CPU budgets give badly undertrained vocoders: the numbers prove the train → resynthesize "
           "→ score path and are a baseline to beat, not the vocoders' quality (`--device cuda` trains the "
           "papers' sizes for 20k steps)." if not gpu else
           "20k steps is far below the papers' training (millions of steps): a baseline, not the vocoders' "
           "ceiling."),
        ""])


def current_parts() -> dict[str, str]:
    """The parts (by heading) of the 'fidelity' section in BENCHMARKS.md, so that one part can rerun alone."""
    text = BENCHMARKS_MD.read_text() if BENCHMARKS_MD.exists() else ""
    m = re.search(r"<!-- fidelity -->\n(.*?)\n\n_run [^\n]*_\n<!-- /fidelity -->", text, re.S)
    parts = {}
    for chunk in re.split(r"(?m)^(?=## )", m.group(1) if m else ""):
        for heading in (EVALUATORS_HEADING, VOCODERS_HEADING):
            if chunk.startswith(heading):  # without the old placeholder sentence for the vocoder part
                chunk = re.sub(r"(?m)^The vocoder part of the fidelity benchmark.*$", "", chunk)
                parts[heading] = chunk.rstrip() + "\n"
    return parts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=["evaluators", "vocoders", "all"], default="all")
    ap.add_argument("--sentences", type=int, default=4, help="evaluators: sentences per voice")
    ap.add_argument("--device", default="cpu", help="vocoders: training and resynthesis device")
    ap.add_argument("--steps", type=int, default=None,
                    help="vocoders: steps each (default 3000 on CPU, 20000 on GPU)")
    ap.add_argument("--adv-start", type=int, default=None,
                    help="vocoders: first adversarial step (default: the last 200 steps on CPU, 0 on GPU)")
    ap.add_argument("--train-sentences", type=int, default=300)
    ap.add_argument("--heldout", type=int, default=12)
    ap.add_argument("-k", type=int, default=100, help="vocoders: MFCC k-means units")
    ap.add_argument("--workdir", default=None,
                    help="vocoders: keep corpus, runs and reports here (default: a temp dir)")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    parts = current_parts()
    if args.part in ("evaluators", "all"):
        parts[EVALUATORS_HEADING] = evaluators_part(args)
    if args.part in ("vocoders", "all"):
        with tempfile.TemporaryDirectory(prefix="fidelity_") as tmp:
            parts[VOCODERS_HEADING] = vocoders_part(args, Path(args.workdir or tmp))
    body = "\n".join(parts.get(h, f"{h}: not run yet.\n") for h in (EVALUATORS_HEADING, VOCODERS_HEADING))
    print(body)
    if not args.no_write:
        write_section("fidelity", body)


if __name__ == "__main__":
    main()
