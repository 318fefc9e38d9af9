"""`tok decode`: codec tokens in shards → wav files, using the codec recorded in the manifest."""

from __future__ import annotations

from pathlib import Path

import soundfile as sf
import torch

from speechtok.shards import read_manifest, read_shards
from speechtok.tokenizers.codec import Codec


def pick_codec(manifest: dict, name: str | None) -> tuple[str, dict]:
    codecs = {k: v for k, v in manifest["tokenizers"].items() if v.get("type") == "codec"}
    if not codecs:
        raise ValueError("these shards hold no codec tokens (encode with -t encodec:..., dac:... or mimi:...)")
    if name is None:
        if len(codecs) > 1:
            raise ValueError(f"several codecs in these shards ({', '.join(codecs)}): choose one with --codec")
        name = next(iter(codecs))
    if name not in codecs:
        raise ValueError(f"no codec named {name!r} in these shards ({', '.join(codecs)})")
    return name, codecs[name]


def decode_shards(shards: str | Path, out_dir: str | Path, codec_name: str | None = None,
                  device: torch.device = torch.device("cpu"), batch_size: int = 16) -> tuple[int, float]:
    """Decode every sample's codes to `out_dir/KEY.wav`; returns (utterances, seconds of audio)."""
    _, manifest = read_manifest(shards)
    name, card = pick_codec(manifest, codec_name)
    codec = Codec.from_card(card, device=device)
    if codec.n_q != card["n_q"]:
        raise ValueError(f"codec {name}: model gives {codec.n_q} codebooks, the shards hold {card['n_q']}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    count, seconds, pending = 0, 0.0, []

    def flush():
        nonlocal count, seconds
        frames = torch.tensor([s[name].shape[-1] for s in pending])
        codes = torch.zeros(len(pending), codec.n_q, int(frames.max()), dtype=torch.long)
        for i, s in enumerate(pending):
            codes[i, :, : frames[i]] = torch.from_numpy(s[name].astype("int64"))
        wav, samples = codec.decode(codes, frames)
        for i, s in enumerate(pending):
            sf.write(out_dir / f"{s['__key__']}.wav", wav[i, : int(samples[i])].cpu().numpy(), codec.sample_rate)
            seconds += int(samples[i]) / codec.sample_rate
        count += len(pending)
        pending.clear()

    for sample in read_shards(shards):
        pending.append(sample)
        if len(pending) >= batch_size:
            flush()
    if pending:
        flush()
    return count, seconds
