"""Writes tests/fixtures/abx_reference.npz: a small triphone ABX task (item table + 50 Hz discrete codes of
each file) and the within- and across-speaker "within context" ABX errors that the reference
implementation gives on it: zerospeech-libriabx2 (the ZeroSpeech 2021 revision of Libri-light's
eval/eval_ABX.py, same iterators, DTW and averaging), fed the codes as one-hot features with its default
cosine distance (1/2 between different one-hot frames, 0 between equal ones: speechtok's one-hot frame
cost, halved, so every comparison and tie is the same).

The design has 3 speakers (≤ max_x_across = 5: no X sampling), at most 10 items per (context, phone,
speaker) group (= max_size_group: no item sampling), contexts that not every speaker has (so the across
averaging order matters), single-item groups, onsets/offsets off the frame grid, and codes with ties.

Run in a side environment with the reference (CI does not have it):
    /work/refenv/bin/pip install zerospeech-libriabx2==0.9.8
    /work/refenv/bin/python tests/reference/make_abx_fixture.py
"""

import tempfile
from pathlib import Path

import numpy as np
import torch
from zrc_abx2.ABX_src import abx_group_computation as abx_g
from zrc_abx2.ABX_src.models import Pooling
from zrc_abx2.eval_ABX import EvalABX

OUT = Path(__file__).parents[1] / "fixtures" / "abx_reference.npz"
FRAME_RATE = 50
K = 12  # codebook size


def design(seed: int = 0):
    """Files of codes [prev | phone | next] with random padding, and their items."""
    rng = np.random.default_rng(seed)
    phones = ["aa", "iy", "uw", "eh"]
    contexts = [("b", "t"), ("k", "n"), ("s", "d"), ("m", "l")]
    speakers = ["spk1", "spk2", "spk3"]
    proto = {p: i for i, p in enumerate(phones + ["b", "t", "k", "n", "s", "d", "m", "l"])}
    accent = {(s, p): int(rng.integers(K)) for s in speakers for p in proto}

    def segment(spk, phone):
        n = int(rng.integers(2, 7))
        pick = rng.random(n)
        return np.where(pick < 0.55, proto[phone] % K,
                        np.where(pick < 0.8, accent[(spk, phone)], rng.integers(0, K, n)))

    files, items = [], []
    for spk in speakers:
        for ctx in contexts:
            for phone in phones:
                if rng.random() < 0.3:
                    continue  # not every speaker has every triphone
                for _ in range(int(rng.integers(1, 5))):
                    pad0, pad1 = rng.integers(0, K, int(rng.integers(1, 4))), rng.integers(0, K, 2)
                    segs = [segment(spk, ctx[0]), segment(spk, phone), segment(spk, ctx[1])]
                    codes = np.concatenate([pad0, *segs, pad1]).astype(np.int64)
                    start, end = len(pad0), len(pad0) + sum(len(s) for s in segs)
                    onset = (start + rng.uniform(-0.45, 0.45)) / FRAME_RATE
                    offset = (end + rng.uniform(-0.45, 0.95)) / FRAME_RATE
                    name = f"f{len(files):03d}"
                    files.append((name, codes))
                    items.append((name, round(onset, 4), round(offset, 4), phone, ctx[0], ctx[1], spk))
    return files, items


def reference_scores(files, items) -> dict:
    eye = torch.eye(K)
    a = abx_g.get_cosine_distance_batch(torch.cat([eye[:2], torch.full((2, 1), 1e-12)], 1)[None],
                                        torch.cat([eye[:2], torch.full((2, 1), 1e-12)], 1)[None])
    assert a[0, 0, 0, 0] == 0 and a[0, 0, 0, 1] == 0.5  # one-hot cosine distance: [a != b] / 2
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        seq_list = []
        for name, codes in files:  # the feature manifest follows this order, as speechtok's item order
            np.save(tmp / f"{name}.npy", np.eye(K, dtype=np.float32)[codes])
            seq_list.append((name, str(tmp / f"{name}.npy")))
        item_file = tmp / "test.item"
        item_file.write_text("#file onset offset #phone prev-phone next-phone speaker\n"
                             + "".join(" ".join(map(str, it)) + "\n" for it in items))
        scores = EvalABX()._ABX(Pooling.NONE, 3459, lambda p: torch.tensor(np.load(p)), str(item_file),
                                seq_list, "cosine", FRAME_RATE, ["within", "across"], ["within"],
                                max_x_across=5, max_size_group=10)
    return {"within": scores["within-within"], "across": scores["across-within"]}


def main() -> None:
    files, items = design()
    scores = reference_scores(files, items)
    lengths = np.array([len(c) for _, c in files])
    OUT.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        OUT, file_names=np.array([n for n, _ in files]), codes=np.concatenate([c for _, c in files]),
        lengths=lengths, item_file=np.array([it[0] for it in items]),
        item_times=np.array([it[1:3] for it in items], dtype=np.float64),
        item_labels=np.array([it[3:] for it in items]), frame_rate=FRAME_RATE,
        within_error=scores["within"], across_error=scores["across"],
        reference=np.array("zerospeech-libriabx2 0.9.8, cosine on one-hot codes, max_size_group 10, "
                           "max_x_across 5, within context"))
    print(OUT, OUT.stat().st_size, "bytes;", len(files), "files,", len(items), "items;", scores)


if __name__ == "__main__":
    main()
