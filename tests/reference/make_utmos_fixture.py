"""Writes tests/fixtures/utmos_reference.npz: tarepan/SpeechMOS' own UTMOS22 strong model (the code behind
torch.hub `utmos22_strong`), its parameters set by `seeded_weights` (a rule tests/test_utmos.py imports, so
no checkpoint is needed), run on two fixed 16 kHz inputs (49 and 64 wav2vec 2.0 frames: odd and even, the
reference pads odd ones), and a 24 kHz input that the reference resamples itself (torchaudio); saved: the
inputs, the scores, the per-frame scores, the first and last 8 frames of the SSL features, and the state
dict's keys and shapes. Not run in CI; in a side environment with torch
and torchaudio, on a checkout of SpeechMOS outside this repository:

    git -C SPEECHMOS_GIT archive HEAD | tar -x -C /tmp/speechmos_ref
    /work/refenv/bin/python tests/reference/make_utmos_fixture.py /tmp/speechmos_ref COMMIT
"""

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import torch

OUT = Path(__file__).resolve().parents[1] / "fixtures" / "utmos_reference.npz"
LENGTHS = (16000, 20800)  # samples at 16 kHz → 49 and 64 frames


def seeded_weights(shapes: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    """Per key: N(0, 0.02²) from a generator seeded by the key's sha256; norm scales 1 + that."""
    out = {}
    for key in sorted(shapes):
        seed = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little") & (2 ** 63 - 1)
        x = torch.randn(shapes[key], generator=torch.Generator().manual_seed(seed)) * 0.02
        if key.endswith("norm.weight") or key == "wav2vec2.feature_extractor.conv_layers.0.2.weight":
            x += 1
        out[key] = x
    return out


def inputs() -> list[np.ndarray]:
    """A tremolo tone and a chirp, each with a little noise (seeded)."""
    rng = np.random.default_rng(0)
    t = [np.arange(n) / 16000 for n in LENGTHS]
    a = 0.3 * np.sin(2 * np.pi * 220 * t[0]) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t[0]))
    b = 0.4 * np.sin(2 * np.pi * (150 * t[1] + 400 * t[1] ** 2))
    return [(x + 0.05 * rng.standard_normal(len(x))).astype(np.float32) for x in (a, b)]


def main(speechmos_dir: str, commit: str) -> None:
    sys.path.insert(0, speechmos_dir)
    from speechmos.utmos22.strong.model import UTMOS22Strong

    torch.manual_seed(0)
    model = UTMOS22Strong()
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    model.load_state_dict(seeded_weights(shapes))
    model.eval()
    out: dict = {"keys": np.array(sorted(shapes)), "speechmos_commit": commit,
                 "shapes": json.dumps({k: shapes[k] for k in sorted(shapes)})}
    with torch.no_grad():
        for i, wav in enumerate(inputs()):
            x = torch.from_numpy(wav)[None]
            score = model(x, 16000)
            ssl = model.wav2vec2(x)  # forward's own steps, to keep the per-frame scores
            b, f, _ = ssl.shape
            cat = torch.cat([ssl, model.domain_emb.unsqueeze(1).expand(b, f, -1),
                             model.judge_emb.unsqueeze(1).expand(b, f, -1)], dim=2)
            frames = model.projection(model.blstm(cat)[0])[0, :, 0]
            assert torch.allclose(frames.mean() * 2 + 3, score[0], atol=1e-6)
            out.update({f"input_{i}": wav, f"score_{i}": score.numpy(), f"frame_scores_{i}": frames.numpy(),
                        f"ssl_head_{i}": ssl[0, :8].numpy(), f"ssl_tail_{i}": ssl[0, -8:].numpy()})
            print(f"input {i}: {len(wav)} samples, {f} frames, score {score.item():.6f}")
        t = np.arange(24000) / 24000  # 1 s at 24 kHz: a vowel-like pulse train through the model's resampler
        wav24 = (0.2 * np.sign(np.sin(2 * np.pi * 120 * t)) * np.exp(-((t % 0.25) - 0.12) ** 2 / 0.002)
                 + 0.03 * np.random.default_rng(1).standard_normal(len(t))).astype(np.float32)
        out.update(input_24k=wav24, score_24k=model(torch.from_numpy(wav24)[None], 24000).numpy())
        print(f"24 kHz input: score {out['score_24k'][0]:.6f}")
    np.savez_compressed(OUT, **out)
    print(f"wrote {OUT} ({OUT.stat().st_size / 1024:.0f} KB)")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "unknown")
