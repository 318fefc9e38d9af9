"""How often tokens change with the batch (CPU fp32): each utterance encoded in padded batches against the
same utterance alone, for EnCodec, DAC, Mimi and SSL k-means units, and with `batch_invariant=True`
(every utterance alone: 0 by construction, measured). Padding never reaches a row (tests/test_codec.py);
what differs is float rounding of batched kernels (~1e-7) flipping near-tie codes or centroids.

    python benchmarks/batch_invariance.py            # writes the "batch-invariance" section of BENCHMARKS.md

Models are the test suite's tiny random-init ones (no weights are downloaded): codecs with codebooks drawn
from their own latents of speech (tests/conftest.py::fill_codebooks, EnCodec's LSTM kept), a 4-layer HuBERT
with 100 centroids drawn from its layer-2 frames. A real EnCodec 24 kHz flipped 29 of 3,900 frames between
batched and alone (issue 23): trained codebooks have closer neighbours than these."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).parents[1]
sys.path[:0] = [str(Path(__file__).parent), str(ROOT / "tests")]
from report import hardware, write_section  # noqa: E402

from conftest import fill_codebooks, speech_at, tiny_codec_config, tiny_ssl_config  # noqa: E402
from speech import build_corpus  # noqa: E402
from speechtok.tokenizers.codec import Codec  # noqa: E402
from speechtok.tokenizers.semantic import SemanticTokenizer  # noqa: E402
from speechtok.tokenizers.ssl_features import SSLFeatures  # noqa: E402


def padded(wavs: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = torch.tensor([len(w) for w in wavs])
    batch = torch.zeros(len(wavs), int(lengths.max()))
    for i, w in enumerate(wavs):
        batch[i, : len(w)] = w
    return batch, lengths


def cuts(speech: list[torch.Tensor], sr: int) -> list[torch.Tensor]:
    """Every sentence, and its halves and thirds: 48 utterances of mixed lengths."""
    out = []
    for w in speech:
        for parts in (1, 2, 3):
            step = len(w) // parts
            out += [w[i * step: (i + 1) * step] for i in range(parts) if step > sr // 10]
    return out


def differing(tok, wavs: list[torch.Tensor], batch_size: int) -> tuple[int, int]:
    """(frames whose tokens differ from the utterance alone, frames) over batches of `batch_size`."""
    alone = [tok.encode_batch(w[None], torch.tensor([len(w)]))[0] for w in wavs]
    diff = total = 0
    for b in range(0, len(wavs), batch_size):
        rows = tok.encode_batch(*padded(wavs[b: b + batch_size]))
        for row, ref in zip(rows, alone[b: b + batch_size]):
            frames = row.reshape(-1, row.shape[-1])  # [n_q, F] or [1, F]
            diff += int((frames != ref.reshape(frames.shape)).any(0).sum())
            total += frames.shape[-1]
    return diff, total


def tokenizers(corpus: Path, tmp: Path, kinds: list[str]):
    from transformers import AutoModel

    for kind in [k for k in ("encodec", "dac", "mimi") if k in kinds]:
        torch.manual_seed(0)
        model = AutoModel.from_config(tiny_codec_config(kind)).eval()
        fill_codebooks(model, kind, speech_at(corpus, model.config.sampling_rate)[:2])
        model.save_pretrained(tmp / kind)
        yield kind, lambda inv, k=kind: Codec(k, str(tmp / k), batch_invariant=inv)
    if "hubert" not in kinds:
        return
    torch.manual_seed(0)
    AutoModel.from_config(tiny_ssl_config("hubert")).save_pretrained(tmp / "hubert")
    feats = SSLFeatures(str(tmp / "hubert"), layer=2)
    frames = torch.cat([feats(w[None], torch.tensor([len(w)]))[0][0] for w in speech_at(corpus, 16000)[:2]])
    pick = torch.randperm(len(frames), generator=torch.Generator().manual_seed(0))[:100]
    centroids = frames[pick].numpy()
    yield "hubert L2 k=100", lambda inv: SemanticTokenizer(feats, centroids, batch_invariant=inv)


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("--kinds", default="encodec,dac,mimi,hubert")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        corpus = build_corpus(tmp / "speech")
        for name, make in tokenizers(corpus, tmp, args.kinds.split(",")):
            tok = make(False)
            wavs = cuts(speech_at(corpus, tok.sample_rate), tok.sample_rate)
            cells = []
            for batch_size in (4, 16, 48):
                diff, total = differing(tok, wavs, batch_size)
                cells.append(f"{diff} / {total}")
            diff, total = differing(make(True), wavs, 48)
            rows.append(f"| {name} | " + " | ".join(cells) + f" | {diff} / {total} |")
            print(rows[-1], flush=True)
    body = "\n".join([
        "## Tokens batched vs alone (issue 23), cpu fp32",
        "",
        f"{hardware(torch.device('cpu'))}, {torch.get_num_threads()} threads; "
        f"`benchmarks/batch_invariance.py`."
        " Frames whose tokens (any codebook) differ from the utterance encoded alone, 48 utterances of the"
        " synthetic corpus (sentences, halves, thirds) in padded batches; tiny random-init models with"
        " diverse codebooks. A real EnCodec 24 kHz: 29 / 3,900 (issue 23).",
        "",
        "| tokenizer | batch 4 | batch 16 | batch 48 | `batch_invariant`, batch 48 |",
        "|---|---|---|---|---|",
        *rows])
    print(body)
    if not args.no_write:
        write_section("batch-invariance", body)


if __name__ == "__main__":
    main()
