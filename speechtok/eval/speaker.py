"""Speaker similarity: cosine of speaker embeddings of two recordings, from the offline Resemblyzer GE2E
encoder (Wan et al. 2018; weights in its wheel) or a transformers x-vector checkpoint (WavLM-SV)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from speechtok.audio import resample
from speechtok.eval.models import files_sha256, hf_weights_sha256, need
from speechtok.eval.librosa_mel import melspectrogram


class ResemblyzerEncoder:
    """Resemblyzer's VoiceEncoder: 40-band mel, 3-layer LSTM, 256-d embedding averaged over 1.6 s
    partials, after its own volume normalisation and WebRTC-VAD silence trimming (16 kHz)."""

    backend = "resemblyzer"
    model = "resemblyzer GE2E pretrained.pt"

    def __init__(self, device: str = "cpu"):
        rz = need("resemblyzer", "eval-speaker")
        self._rz = rz
        self.encoder = rz.VoiceEncoder(device=device, verbose=False)
        self.model_sha256 = files_sha256([Path(rz.__file__).parent / "pretrained.pt"])

    def embed(self, wav: np.ndarray, sr: int) -> np.ndarray:
        """VoiceEncoder.embed_utterance after preprocess_wav, with the mel front end in numpy
        (librosa_mel)."""
        import torch

        audio = self._rz.audio
        x = resample(wav, sr, 16000).astype(np.float32)
        if not len(x):
            raise ValueError("no samples at 16 kHz: nothing for the speaker encoder to embed")
        louder = audio.normalize_volume(x, audio.audio_norm_target_dBFS, increase_only=True)
        trimmed = audio.trim_long_silences(louder)
        x = trimmed if len(trimmed) >= 1600 else x  # the VAD kept (almost) nothing: use the whole signal
        wav_slices, mel_slices = self.encoder.compute_partial_slices(len(x), 1.3, 0.75)
        x = np.pad(x, (0, max(0, wav_slices[-1].stop - len(x))))
        mel = melspectrogram(x, 16000, 400, 160, 40).T
        with torch.no_grad():
            mels = torch.from_numpy(np.stack([mel[s] for s in mel_slices])).to(self.encoder.device)
            e = self.encoder(mels).cpu().numpy().mean(0)
        return e / np.linalg.norm(e)


class TransformersSpeakerEncoder:
    """A transformers audio x-vector checkpoint (e.g. microsoft/wavlm-base-plus-sv), hub id or local dir."""

    backend = "transformers"

    def __init__(self, name_or_path: str, device: str = "cpu"):
        import torch
        from transformers import AutoFeatureExtractor, AutoModelForAudioXVector

        self.model = str(name_or_path)
        self.extractor = AutoFeatureExtractor.from_pretrained(name_or_path)
        self.net = AutoModelForAudioXVector.from_pretrained(name_or_path,
                                                            dtype=torch.float32).to(device).eval()
        self.device = device
        self.model_sha256 = hf_weights_sha256(name_or_path)
        self.min_samples = receptive_field(self.net.config)

    def embed(self, wav: np.ndarray, sr: int) -> np.ndarray:
        import torch

        rate = int(self.extractor.sampling_rate)
        x = resample(wav, sr, rate)
        if len(x) < self.min_samples:
            raise ValueError(f"{1000 * len(wav) / sr:.1f} ms of audio: shorter than the "
                             f"{1000 * self.min_samples / rate:.0f} ms the x-vector model embeds")
        inputs = self.extractor(x, sampling_rate=rate, return_tensors="pt")
        with torch.inference_mode():
            emb = self.net(**{k: v.to(self.device) for k, v in inputs.items()}).embeddings
        return emb[0].float().cpu().numpy()


def receptive_field(config) -> int:
    """The fewest samples a transformers x-vector model embeds: two outputs of its TDNN (dilated convs; its
    statistics pooling takes their std) over the frames of its strided feature-encoder convs."""
    frames = 2 + sum(d * (k - 1) for k, d in zip(config.tdnn_kernel, config.tdnn_dilation))
    samples = frames
    for kernel, stride in reversed(list(zip(config.conv_kernel, config.conv_stride))):
        samples = (samples - 1) * stride + kernel
    return samples


def load_speaker_encoder(spec: str, device: str = "cpu"):
    """'resemblyzer' (offline) or a transformers x-vector checkpoint (hub id or local dir)."""
    if spec == "resemblyzer":
        return ResemblyzerEncoder(device)
    return TransformersSpeakerEncoder(spec, device)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-12))


def speaker_similarity(encoder, ref: np.ndarray, ref_sr: int, hyp: np.ndarray, hyp_sr: int) -> float:
    """Cosine similarity of the two recordings' speaker embeddings (1: same voice as the encoder hears it)."""
    return cosine(encoder.embed(ref, ref_sr), encoder.embed(hyp, hyp_sr))
