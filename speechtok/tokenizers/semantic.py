"""`SemanticTokenizer`: frame features → nearest k-means centroid, saved as a self-describing directory
(`tokenizer.json` + `centroids.npy`)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import torch

from speechtok.hub import portable_card, resolve_card
from speechtok.shards import sha256_of
from speechtok.tokenizers.card import CARD_CHECKSUM, check_card, check_weights, seal_card
from speechtok.tokenizers.features import FeatureExtractor, build_features, determinism_key
from speechtok.tokenizers.kmeans import assign
from speechtok.tokenizers.spec import CARD_FILE

CENTROIDS_FILE = "centroids.npy"
FORMAT_VERSION = 1


def run_length(units: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Collapse repeated units: (units, how many frames each lasted)."""
    if len(units) == 0:
        return units, np.zeros(0, dtype=np.int64)
    starts = np.concatenate([[True], units[1:] != units[:-1]])
    idx = np.flatnonzero(starts)
    return units[idx], np.diff(np.append(idx, len(units)))


def read_checked_card(card_path: Path) -> tuple[dict, Path]:
    """(card, centroids path) of a tokenizer directory, refusing an edited card or changed centroids."""
    if not card_path.exists():
        raise FileNotFoundError(f"{card_path.parent}: not a tokenizer directory (no {CARD_FILE})")
    try:
        card = json.loads(card_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{card_path}: not valid JSON ({e})") from None
    if not isinstance(card, dict) or card.get("type") != "semantic":
        raise ValueError(f"{card_path}: type is {card.get('type') if isinstance(card, dict) else None!r}, "
                         "not 'semantic'")
    check_card(card, str(card_path))
    cpath = card_path.parent / card["centroids"]["file"]
    expected = card["centroids"].get("sha256")
    if not expected:
        raise ValueError(f"{card_path}: records no sha256 for {cpath.name}; the centroids cannot be trusted")
    if not cpath.is_file() or sha256_of(cpath) != expected:
        raise ValueError(f"{cpath}: checksum does not match {CARD_FILE}; the file was changed or corrupted")
    return card, cpath


class SemanticTokenizer:
    """Discrete units from a feature extractor and k-means centroids."""

    kind = "semantic"
    name = "semantic"  # the shard field it writes

    def __init__(self, features: FeatureExtractor, centroids: np.ndarray, dedup: bool = False,
                 meta: dict | None = None, chunk_seconds: float = 60.0, context_seconds: float = 5.0,
                 batch_invariant: bool = False):
        if centroids.ndim != 2 or centroids.shape[1] != features.dim:
            raise ValueError(f"centroids of shape {centroids.shape} do not fit {features.dim}-dim features")
        self.features = features
        self.centroids = np.ascontiguousarray(centroids, dtype=np.float32)
        self.dedup = dedup
        self.meta = dict(meta or {})
        self._c = torch.from_numpy(self.centroids).to(self.device)
        self._c_sqnorm = (self._c * self._c).sum(1)
        self.hop = round(self.sample_rate / self.frame_rate)
        self.chunk_samples = int(chunk_seconds * self.sample_rate) // self.hop * self.hop
        self.context_samples = int(context_seconds * self.sample_rate) // self.hop * self.hop
        # every utterance computed alone: units independent of batching
        self.batch_invariant = batch_invariant

    @property
    def device(self) -> torch.device:
        return next(iter(self.features.buffers()), next(iter(self.features.parameters()),
                                                        torch.zeros(0))).device

    @property
    def sample_rate(self) -> int:
        return self.features.sample_rate

    @property
    def frame_rate(self) -> float:
        return self.features.frame_rate

    @property
    def k(self) -> int:
        return self.centroids.shape[0]

    def num_frames(self, num_samples: torch.Tensor) -> torch.Tensor:
        return self.features.num_frames(num_samples)

    def card(self) -> dict:
        """What `from_dir` needs, with checksums of the centroids, the model weights and the card itself."""
        return seal_card({
            "type": "semantic",
            "format_version": FORMAT_VERSION,
            "features": self.features.card(),
            "k": self.k,
            "dim": int(self.centroids.shape[1]),
            "sample_rate": self.sample_rate,
            "frame_rate": self.frame_rate,
            "dedup": self.dedup,
            "centroids": {"file": CENTROIDS_FILE, "sha256": self.meta.get("centroids_sha256")},
            **{k: v for k, v in self.meta.items() if k not in ("centroids_sha256",)},
        })

    def save(self, directory: str | Path) -> Path:
        """Write `tokenizer.json` and `centroids.npy` into `directory`."""
        return save_centroid_tokenizer(self, directory)

    @classmethod
    def from_dir(cls, directory: str | Path, device: str | torch.device = "cpu", precision: str = "fp32",
                 allow_model_mismatch: bool = False) -> "SemanticTokenizer":
        """Load a tokenizer directory: the card's own checksum, the centroids' and the model weights'
        must match (`allow_model_mismatch`: use other weights on purpose, with a warning)."""
        directory = Path(directory)
        card_path = directory / CARD_FILE
        card, cpath = read_checked_card(card_path)
        card = resolve_card(card, directory)  # a local model path is stored relative to the card
        centroids = np.load(cpath, allow_pickle=False)
        try:
            features = build_features(card["features"], device=device, precision=precision)
        except ValueError as e:
            raise ValueError(f"{card_path}: {e}") from None
        if not check_weights(card["features"].get("weights_sha256"), features.card().get("weights_sha256"),
                             card["features"].get("model", "?"), str(card_path), allow_model_mismatch):
            warnings.warn(f"{card_path}: model weights differ from the card's (--allow-model-mismatch)")
        expected = card["centroids"]["sha256"]
        meta = {k: v for k, v in card.items()
                if k not in ("type", "format_version", "features", "k", "dim", "sample_rate", "frame_rate",
                             "dedup", "centroids", CARD_CHECKSUM)}
        meta["centroids_sha256"] = expected
        return cls(features, centroids, dedup=bool(card.get("dedup", False)), meta=meta)

    @torch.inference_mode()
    def encode_batch(self, wav: torch.Tensor, lengths: torch.Tensor) -> list[np.ndarray]:
        """Padded waveforms [B, T] at `sample_rate` and their lengths → one int64 unit array per
        utterance (frame-level; see `run_length` for dedup). A single input longer than a chunk is
        encoded by `encode_long`."""
        units, n = self.tokens(wav, lengths)
        units = units.cpu().numpy()
        return [units[i, :f] for i, f in enumerate(n.tolist())]

    @torch.inference_mode()
    def tokens(self, wav: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Units [B, F] on the model's device and frame counts [B] where `lengths` are: with `lengths`
        on the host, the work is queued on the device without waiting for it (no host sync)."""
        if len(lengths) == 1 and int(lengths[0]) > self.chunk_samples + 2 * self.context_samples:
            units = torch.from_numpy(self.encode_long(wav[0, : int(lengths[0])]))
            return units[None], self.num_frames(lengths)
        if self.batch_invariant and len(lengths) > 1:  # each row alone: its units whatever the batch
            rows = [self.tokens(wav[i: i + 1, : int(n)], lengths[i: i + 1])[0][0]
                    for i, n in enumerate(lengths)]
            return torch.nn.utils.rnn.pad_sequence(rows, batch_first=True), self.num_frames(lengths)
        return self._labels(wav, lengths), self.num_frames(lengths)

    def determinism_key(self) -> dict:
        """What, besides the weights and the audio, decides the units bit for bit (see `Codec`'s)."""
        return determinism_key(self.device, getattr(self.features, "precision", "fp32"), self.batch_invariant)

    def encode_long(self, wav: torch.Tensor) -> np.ndarray:
        """Units of one long waveform in bounded memory: chunks of `chunk_samples`, each computed with
        `context_samples` of audio on both sides whose frames are dropped. Exact for spectral features;
        for self-supervised models, whose attention spans the whole input, frames see only the chunk and
        its context (the tests measure the agreement)."""
        total = int(self.num_frames(len(wav)))
        out = np.zeros(total, dtype=np.int64)
        for start in range(0, len(wav), self.chunk_samples):
            a = max(0, start - self.context_samples)
            b = min(len(wav), start + self.chunk_samples + self.context_samples)
            units = self._units(wav[None, a:b], torch.tensor([b - a]))[0]
            first, g0 = (start - a) // self.hop, start // self.hop
            count = min(self.chunk_samples // self.hop, total - g0)
            out[g0: g0 + count] = units[first: first + count]
        return out

    def _labels(self, wav: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Nearest-centroid units [B, F] of a batch that is not cut into chunks, left on the device."""
        feats, _ = self.features(wav, lengths)
        b, f, d = feats.shape
        return assign(feats.reshape(b * f, d), self._c, c_sqnorm=self._c_sqnorm)[0].view(b, f)

    def _units(self, wav: torch.Tensor, lengths: torch.Tensor) -> list[np.ndarray]:
        labels = self._labels(wav, lengths).cpu().numpy()
        return [labels[i, :n] for i, n in enumerate(self.num_frames(lengths.cpu()).tolist())]

    def encode(self, audio: np.ndarray | torch.Tensor | str, sample_rate: int | None = None) -> np.ndarray:
        """Units of one waveform (mono; resampled when `sample_rate` differs) or audio file."""
        from speechtok.audio import read_audio, resample

        if isinstance(audio, (str, Path)):
            audio, sample_rate = read_audio(str(audio))
        wav = np.asarray(audio, dtype=np.float32)
        if wav.ndim > 1:
            wav = wav.mean(axis=0)
        if sample_rate is not None:
            wav = resample(wav, sample_rate, self.sample_rate)
        units = self.encode_batch(torch.from_numpy(wav)[None], torch.tensor([len(wav)]))[0]
        return run_length(units)[0] if self.dedup else units


def save_centroid_tokenizer(tok, directory: str | Path, centroids_file: str = CENTROIDS_FILE) -> Path:
    """`centroids.npy` (its sha256 into `tok.meta`), then the card `tok.card()` as `tokenizer.json`, a local
    model path written relative to the folder: the layout of every tokenizer that assigns to centroids."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    np.save(directory / centroids_file, tok.centroids, allow_pickle=False)
    tok.meta["centroids_sha256"] = sha256_of(directory / centroids_file)
    card = portable_card(tok.card(), directory)
    (directory / CARD_FILE).write_text(json.dumps(card, indent=2) + "\n")
    return directory
