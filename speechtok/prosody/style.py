"""Style tokens (Spirit-LM Expressive's, at 1 per second): the frames of an encoder — any transformers audio
model by hub id or folder and layer, or the weight-free log-mel / MFCC features — pooled over each segment
(mean and standard deviation of its frames), then the nearest of k k-means centroids. Segment j covers
[j·s, (j+1)·s) seconds; a last, shorter segment gets a token of its own from the frames it has."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from speechtok.hub import resolve_card
from speechtok.prosody.base import FrameTokenizer
from speechtok.shards import sha256_of
from speechtok.tokenizers.card import seal_card
from speechtok.tokenizers.features import FeatureExtractor, build_features, parse_model_spec
from speechtok.tokenizers.kmeans import assign, train_kmeans
from speechtok.tokenizers.semantic import save_centroid_tokenizer

CENTROIDS_FILE = "style_centroids.npy"


def pool_segments(feats: np.ndarray, frame_rate: float, num_segments: int, seconds: float) -> np.ndarray:
    """[F, dim] frames → [num_segments, 2·dim]: mean and std of the frames whose start lies in each segment
    (a segment without frames repeats the previous one's pooling)."""
    out = np.zeros((num_segments, 2 * feats.shape[1]), dtype=np.float32)
    segment_of = np.floor(np.arange(len(feats)) / frame_rate / seconds).astype(np.int64)
    for j in range(num_segments):
        frames = feats[segment_of == j]
        if len(frames):
            out[j] = np.concatenate([frames.mean(0), frames.std(0)])
        elif j:
            out[j] = out[j - 1]
    return out


class StyleTokenizer(FrameTokenizer):
    """One style token per segment of `seconds`: pooled encoder frames → nearest centroid."""

    kind = "style"
    name = "style"

    def __init__(self, features: FeatureExtractor, centroids: np.ndarray, seconds: float = 1.0,
                 meta: dict | None = None):
        if centroids.shape[1] != 2 * features.dim:
            raise ValueError(f"style centroids of shape {centroids.shape} do not fit {features.dim}-dim "
                             "features")
        self.features, self.seconds = features, float(seconds)
        self.centroids = np.ascontiguousarray(centroids, dtype=np.float32)
        self.meta = dict(meta or {})
        self.sample_rate, self.codebook_size = features.sample_rate, len(centroids)
        self.segment = int(round(self.seconds * self.sample_rate))

    @property
    def device(self) -> torch.device:
        tensors = iter([*self.features.buffers(), *self.features.parameters(), torch.zeros(0)])
        return next(tensors).device

    @property
    def frame_rate(self) -> float:
        return 1.0 / self.seconds

    def num_frames(self, num_samples) -> torch.Tensor:
        n = torch.as_tensor(num_samples)
        whole = torch.div(n + self.segment - 1, self.segment, rounding_mode="floor")
        return torch.where(self.features.num_frames(n) > 0, whole, torch.zeros_like(whole))

    @torch.inference_mode()
    def pooled(self, wav: torch.Tensor, lengths: torch.Tensor) -> list[np.ndarray]:
        """Per row, [segments, 2·dim] pooled features."""
        feats, n = self.features(wav, lengths)
        feats = feats.float().cpu().numpy()
        rate = self.features.frame_rate
        return [pool_segments(feats[i, : int(n[i])], rate, int(self.num_frames(int(length))), self.seconds)
                for i, length in enumerate(lengths.tolist())]

    def encode_batch(self, wav: torch.Tensor, lengths: torch.Tensor) -> list[np.ndarray]:
        c = torch.from_numpy(self.centroids)
        return [assign(torch.from_numpy(p), c)[0].numpy() if len(p) else np.zeros(0, dtype=np.int64)
                for p in self.pooled(wav, lengths)]

    def card(self) -> dict:
        return seal_card({"type": "style", "features": self.features.card(), "seconds": self.seconds,
                          "codebook_size": self.codebook_size, "sample_rate": self.sample_rate,
                          "frame_rate": self.frame_rate,
                          "centroids": {"file": CENTROIDS_FILE, "sha256": self.meta.get("centroids_sha256")},
                          **{k: v for k, v in self.meta.items() if k != "centroids_sha256"}})

    def save(self, directory: str | Path) -> Path:
        return save_centroid_tokenizer(self, directory, CENTROIDS_FILE)

    @classmethod
    def from_dir(cls, directory: str | Path, card: dict, device: str | torch.device = "cpu",
                 precision: str = "fp32") -> "StyleTokenizer":
        path = Path(directory, card["centroids"]["file"])
        if not path.is_file() or sha256_of(path) != card["centroids"]["sha256"]:
            raise ValueError(f"{path}: missing or does not match the checksum in tokenizer.json")
        card = resolve_card(card, directory)
        features = build_features(card["features"], device=device, precision=precision)
        known = ("type", "features", "seconds", "codebook_size", "sample_rate", "frame_rate", "centroids",
                 "card_sha256")
        meta = {k: v for k, v in card.items() if k not in known}
        meta["centroids_sha256"] = card["centroids"]["sha256"]
        return cls(features, np.load(path, allow_pickle=False), card["seconds"], meta)


def train_style(corpus: str | Path, out: str | Path, model: str = "logmel", layer: int | None = None,
                k: int = 100, segment_seconds: float = 1.0, seed: int = 0,
                device: str = "cpu", errors: list | None = None) -> StyleTokenizer:
    """k-means over the pooled segments of every utterance of `corpus`; the tokenizer saved in `out`. Bad
    manifest lines and unreadable audio are skipped and appended to `errors` (corpus.CorpusError)."""
    from speechtok.audio import AudioError, load_utterance
    from speechtok.corpus import CorpusError, load_corpus, printable

    errors = [] if errors is None else errors
    features = build_features(parse_model_spec(model, layer), device=device)
    probe = StyleTokenizer(features, np.zeros((1, 2 * features.dim), dtype=np.float32), segment_seconds)
    pooled = []
    for utt in load_corpus(corpus, errors):
        try:
            wav = torch.from_numpy(load_utterance(utt, features.sample_rate))
        except AudioError as e:  # the style clusters do without it; the command reports it (exit 1)
            errors.append(CorpusError(file=utt.path, id=printable(utt.id), reason=str(e)))
            continue
        pooled += probe.pooled(wav[None], torch.tensor([len(wav)]))
    x = np.concatenate(pooled) if pooled else np.zeros((0, 2 * features.dim), dtype=np.float32)
    if len(x) < k:
        raise ValueError(f"{corpus}: {len(x)} segments of {segment_seconds:g} s cannot make {k} style tokens")
    result = train_kmeans(x, k, seed=seed, backend="torch", device=device)
    tok = StyleTokenizer(features, result.centroids, segment_seconds,
                         {"trained_on": {"segments": len(x), "inertia": result.inertia, "seed": seed}})
    tok.save(out)
    return tok
