"""Streaming decode of a causal codec (EnCodec, Mimi): codes arrive a chunk of frames at a time and each
chunk's waveform is written as soon as it is decoded.

A causal decoder's first F × hop samples depend on the first F frames only (causal convolutions, transposed
convolutions trimmed on the right, a unidirectional LSTM, causal attention), so the waveform of a chunk is
the tail of decoding the frames up to its end. The decoder's state is carried as `context_frames` of
codes before the chunk, decoded again with it: exact for the convolutions once the context covers their
receptive field (and for Mimi's attention within its window); EnCodec's LSTM state is rebuilt from the
context alone, so far-back influence fades instead of being carried (tests measure the difference from
the one-shot decode). Everything before the context is never decoded again: the cost per chunk is bounded."""

from __future__ import annotations

import numpy as np
import torch


class CodecStream:
    """Feed codes [n_q, F] chunk by chunk (`push`), get each chunk's samples [F × hop] back."""

    def __init__(self, codec, context_frames: int = 150, skip_frames: int = 0):
        if not codec.causal:
            raise ValueError(f"{codec.name}: streaming needs a causal codec (EnCodec or Mimi), not "
                             f"{codec.codec_kind}")
        self.codec, self.context = codec, context_frames
        self.codes = np.zeros((codec.n_q, 0), dtype=np.int64)
        self.sent = skip_frames  # frames done: returned, or context only (a voice prompt's, say)

    def push(self, codes: np.ndarray) -> np.ndarray:
        """Samples of the frames that `codes` [n_q, F] adds (none of the first `skip_frames` frames)."""
        self.codes = np.concatenate([self.codes, codes], 1)
        new_from = self.sent
        self.sent = max(self.sent, self.codes.shape[1])
        if new_from >= self.sent:
            return np.zeros(0, dtype=np.float32)
        start = max(0, new_from - self.context)
        wav, n = self.codec.decode(torch.from_numpy(self.codes[None, :, start:]))
        return wav[0, (new_from - start) * self.codec.hop: int(n[0])].float().cpu().numpy()
