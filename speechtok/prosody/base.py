"""What `tok encode` asks of a tokenizer besides its card and rates, for the prosody tokenizers (F0, pitch,
style), which compute on the host, row by row: one int64 array per utterance (`encode_batch`), or the
same as a zero-padded tensor with frame counts (`encode`, the codec-style call); no precision choice, no
chunking of long inputs."""

from __future__ import annotations

import numpy as np
import torch


class FrameTokenizer:
    """Base of the prosody tokenizers: subclasses give `encode_batch`, `num_frames`, `card` and rates."""

    dedup = False
    precision = "fp32"
    chunk_samples = 0
    context_samples = 0

    def encode_batch(self, wav: torch.Tensor, lengths: torch.Tensor) -> list[np.ndarray]:
        raise NotImplementedError

    uses_speakers = False  # True: `encode_batch` needs each row's speaker label (`speakers=`)

    def encode(self, wav: torch.Tensor, lengths: torch.Tensor,
               speakers: list[str | None] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(tokens [B, F] int64, zero past each row's frames; frame counts [B])."""
        rows = (self.encode_batch(wav, lengths, speakers) if self.uses_speakers
                else self.encode_batch(wav, lengths))
        counts = torch.tensor([len(r) for r in rows], dtype=torch.long)
        out = torch.zeros(len(rows), int(counts.max()) if len(rows) else 0, dtype=torch.long)
        for i, r in enumerate(rows):
            out[i, : len(r)] = torch.from_numpy(np.asarray(r, dtype=np.int64))
        return out, counts
