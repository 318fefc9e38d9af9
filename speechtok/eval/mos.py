"""Naturalness estimate: DNSMOS P.835 (Reddy et al. 2022; SIG / BAK / OVRL) and its P.808 MOS, from the
ONNX models that the `speechmos` wheel ships, run with onnxruntime on 16 kHz audio."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from speechtok.audio import resample
from speechtok.eval.models import files_sha256, need
from speechtok.eval.librosa_mel import melspectrogram, power_to_db


class DNSMOS:
    """Non-intrusive: each signal is scored alone (9.01 s windows, hop 1 s; shorter clips are repeated)."""

    backend = "dnsmos"
    model = "DNSMOS P.835 sig_bak_ovr.onnx + P.808 model_v8.onnx (speechmos)"
    sample_rate = 16000

    def __init__(self):
        need("onnxruntime", "eval-mos")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dnsmos = need("speechmos.dnsmos", "eval-mos")
        models = Path(dnsmos.__file__).parent / "dnsmos_models"
        primary, p808 = models / "sig_bak_ovr.onnx", models / "model_v8.onnx"
        self.scorer = dnsmos.DNSMOS(str(primary), str(p808))
        self.scorer.audio_melspec = _p808_melspec  # librosa's, in numpy (no numba warm-up)
        self.model_sha256 = files_sha256([primary, p808])

    def score(self, wav: np.ndarray, sr: int) -> dict:
        """SIG / BAK / OVRL / P.808 of one signal; a ValueError for an empty one (speechmos would repeat it
        towards 9 s forever)."""
        x = np.clip(resample(wav, sr, self.sample_rate), -1, 1).astype(np.float32)
        if not len(x):
            raise ValueError("no samples at 16 kHz: nothing for DNSMOS to score")
        r = self.scorer(x, self.sample_rate, False)
        return {"dnsmos_sig": float(r["sig_mos"]), "dnsmos_bak": float(r["bak_mos"]),
                "dnsmos_ovrl": float(r["ovrl_mos"]), "dnsmos_p808": float(r["p808_mos"])}


def _p808_melspec(audio: np.ndarray, n_mels: int = 120, frame_size: int = 320, hop_length: int = 160,
                  sr: int = 16000, to_db: bool = True) -> np.ndarray:
    """speechmos' DNSMOS.audio_melspec (the P.808 model's input) without librosa."""
    mel = melspectrogram(audio, sr, frame_size + 1, hop_length, n_mels)
    return ((power_to_db(mel) + 40) / 40 if to_db else mel).T
