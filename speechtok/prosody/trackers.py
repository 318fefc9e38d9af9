"""F0 trackers behind one call: YAAPT (amfm-decompy, the tracker of speech-resynthesis and pGSLM, with their
settings), WORLD (pyworld Harvest) and PESTO (pesto-pitch, a small network whose weights ship in its wheel,
batched). Each gives F0 in Hz and a voiced flag on one grid: frame k centred on sample k·hop, hop = 5 ms at
16 kHz (pGSLM's and speech-resynthesis' F0 frame space); `to_frame_rate` averages it onto a token rate."""

from __future__ import annotations

import importlib.util
import sys
import types
import warnings

import numpy as np
import torch

from speechtok.tokenizers.spec import F0_TRACKERS as TRACKERS

SAMPLE_RATE = 16000
HOP = 80  # samples: 5 ms at 16 kHz
FMIN, FMAX = 60.0, 400.0  # YAAPT's defaults, used by every tracker so that they answer the same question
PESTO_MODEL = "mir-1k_g7"
PESTO_VOICED = 0.5  # PESTO's confidence above which a frame is voiced


def num_track_frames(num_samples: int) -> int:
    """Frames on the tracker grid for `num_samples` samples (frame k centred on sample k·HOP)."""
    return num_samples // HOP + 1


def fit(f0: np.ndarray, n: int) -> np.ndarray:
    """`f0` cut or zero-extended (unvoiced) to `n` frames."""
    out = np.zeros(n, dtype=np.float64)
    out[: min(n, len(f0))] = f0[:n]
    return out


def yaapt(wav: np.ndarray, fmin: float = FMIN, fmax: float = FMAX) -> np.ndarray:
    """F0 (Hz, 0 where unvoiced) by YAAPT as fairseq's pGSLM `get_f0` calls it: peak-normalised to 0.95,
    padded by half a 20 ms frame on both sides, 5 ms frame space, nccf_thresh1 0.25, TDA frame 25 ms."""
    import amfm_decompy.basic_tools as basic
    import amfm_decompy.pYAAPT as pYAAPT

    peak = float(np.abs(wav).max()) if len(wav) else 0.0
    if peak == 0.0:
        return np.zeros(num_track_frames(len(wav)))
    x = np.pad(wav.astype(np.float64) / peak * 0.95, (2 * HOP, 2 * HOP))
    with warnings.catch_warnings(), np.errstate(all="ignore"):  # YAAPT divides 0/0 on silent frames
        warnings.simplefilter("ignore", RuntimeWarning)
        pitch = pYAAPT.yaapt(basic.SignalObj(x, SAMPLE_RATE), frame_length=20.0, frame_space=5.0,
                             nccf_thresh1=0.25, tda_frame_length=25.0, f0_min=fmin, f0_max=fmax)
    return fit(np.asarray(pitch.samp_values, dtype=np.float64), num_track_frames(len(wav)))


def world(wav: np.ndarray, fmin: float = FMIN, fmax: float = FMAX) -> np.ndarray:
    """F0 (Hz, 0 where unvoiced) by WORLD's Harvest, 5 ms frame period (its faster DIO voices low-level
    noise)."""
    with warnings.catch_warnings():  # pyworld imports the deprecated pkg_resources
        warnings.simplefilter("ignore", UserWarning)
        import pyworld

    x = np.ascontiguousarray(wav, dtype=np.float64)
    period = 1000.0 * HOP / SAMPLE_RATE
    f0, _ = pyworld.harvest(x, SAMPLE_RATE, f0_floor=fmin, f0_ceil=fmax, frame_period=period)
    return fit(f0, num_track_frames(len(wav)))


def _import_pesto_loader():
    """pesto's `load_model`. Its package `__init__` imports torchaudio only to read audio files, and a
    torchaudio built for another torch fails to load; the loader itself needs only torch, so where that import
    fails the package is registered bare and the loader imported from it."""
    try:
        from pesto.loader import load_model
    except (ImportError, OSError):
        spec = importlib.util.find_spec("pesto")
        if spec is None:
            raise ImportError("the 'pesto' tracker needs pesto-pitch: pip install --no-deps "
                              "pesto-pitch") from None
        for name in [m for m in sys.modules if m == "pesto" or m.startswith("pesto.")]:
            del sys.modules[name]
        package = types.ModuleType("pesto")
        package.__path__ = list(spec.submodule_search_locations)
        sys.modules["pesto"] = package
        from pesto.loader import load_model
    return load_model


class Pesto:
    """PESTO on padded batches: F0 per frame of each row, voiced where its confidence passes PESTO_VOICED."""

    def __init__(self, device: str | torch.device = "cpu"):
        load_model = _import_pesto_loader()
        self.model = load_model(PESTO_MODEL, step_size=1000.0 * HOP / SAMPLE_RATE,
                                sampling_rate=SAMPLE_RATE).to(device).eval()

    @torch.inference_mode()
    def __call__(self, wav: torch.Tensor, lengths: torch.Tensor, fmin: float = FMIN,
                 fmax: float = FMAX) -> list[np.ndarray]:
        device = next(self.model.parameters()).device
        f0, confidence, _, _ = self.model(wav.to(device).float(), sr=SAMPLE_RATE, convert_to_freq=True,
                                          return_activations=True)
        f0, confidence = f0.double().cpu().numpy(), confidence.double().cpu().numpy()
        out = []
        for i, n in enumerate(lengths.tolist()):
            row = np.where((confidence[i] >= PESTO_VOICED) & (f0[i] >= fmin) & (f0[i] <= fmax), f0[i], 0.0)
            out.append(fit(row, num_track_frames(int(n))))
        return out


def to_frame_rate(f0: np.ndarray, num_samples: int, hop: int) -> np.ndarray:
    """Tracker-grid F0 → one value per token frame of `hop` samples (frame j covers samples
    [j·hop, (j+1)·hop), num_samples // hop frames): the mean of the voiced tracker frames centred in it,
    0 (unvoiced) unless at least half of them are voiced."""
    if hop % HOP:
        raise ValueError(f"a token hop of {hop} samples is not a multiple of the trackers' {HOP}")
    n, r = num_samples // hop, hop // HOP
    grid = fit(f0, n * r).reshape(n, r)
    voiced = grid > 0
    count = voiced.sum(1)
    mean = np.where(count > 0, grid.sum(1) / np.maximum(count, 1), 0.0)
    return np.where(2 * count >= r, mean, 0.0)


class Tracker:
    """One of TRACKERS with its F0 range: padded batches [B, T] at 16 kHz → tracker-grid F0 per row."""

    def __init__(self, name: str, fmin: float = FMIN, fmax: float = FMAX, device: str | torch.device = "cpu"):
        if name not in TRACKERS:
            raise ValueError(f"unknown F0 tracker {name!r} (one of {', '.join(TRACKERS)})")
        if not 0 < fmin < fmax:
            raise ValueError(f"F0 range {fmin}..{fmax} Hz is empty")
        self.name, self.fmin, self.fmax = name, float(fmin), float(fmax)
        self.device = torch.device(device)
        self._pesto = Pesto(self.device) if name == "pesto" else None

    def card(self) -> dict:
        return {"tracker": self.name, "fmin": self.fmin, "fmax": self.fmax, "hop": HOP}

    def __call__(self, wav: torch.Tensor, lengths: torch.Tensor) -> list[np.ndarray]:
        if self._pesto is not None:
            return self._pesto(wav, lengths, self.fmin, self.fmax)
        one = yaapt if self.name == "yaapt" else world
        rows = wav.detach().cpu().double().numpy()
        return [one(rows[i, : int(n)], self.fmin, self.fmax) for i, n in enumerate(lengths.tolist())]
