"""`tok decode`: codec tokens in shards → wav files, using the codec recorded in the manifest. Shards are
untrusted input: file names come from sanitized keys and every path written must stay inside the output
folder."""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

import soundfile as sf
import torch

from speechtok.shards import manifest_shards, read_manifest, read_shards
from speechtok.tokenizers.card import check_weights
from speechtok.tokenizers.codec import Codec


def safe_file_name(key: str, taken: set[str], suffix: str = ".wav") -> str:
    """A file name made from a sample key: letters, digits, '_' and '-' only (anything else becomes '_'),
    at most 200 characters, never hidden or empty, and not one already `taken` (then '-2', '-3', ...)."""
    base = re.sub(r"[^\w\-]", "_", key)[:200].lstrip("-") or "_"
    name, n = base + suffix, 1
    while name in taken:
        n += 1
        name = f"{base}-{n}{suffix}"
    taken.add(name)
    return name


def inside(folder: Path, name: str) -> Path:
    """`folder / name`, refusing any path that would resolve outside `folder`."""
    path = (folder / name).resolve()
    if path.parent != folder.resolve():
        raise ValueError(f"{name!r}: output path would leave {folder}; refusing to write it")
    return path


def pick_codec(manifest: dict, name: str | None) -> tuple[str, dict]:
    codecs = {k: v for k, v in manifest["tokenizers"].items() if v.get("type") == "codec"}
    if not codecs:
        raise ValueError("these shards hold no codec tokens (encode with -t encodec:..., dac:... or "
                         "mimi:...)")
    if name is None:
        if len(codecs) > 1:
            raise ValueError(f"several codecs in these shards ({', '.join(codecs)}): choose one with --codec")
        name = next(iter(codecs))
    if name not in codecs:
        raise ValueError(f"no codec named {name!r} in these shards ({', '.join(codecs)})")
    return name, codecs[name]


def decode_shards(shards: str | Path, out_dir: str | Path, codec_name: str | None = None,
                  device: torch.device = torch.device("cpu"), batch_size: int = 16, verify: bool = True,
                  allow_model_mismatch: bool = False, progress: bool = False) -> tuple[int, float]:
    """Decode every sample's codes to `out_dir/KEY.wav` (KEY sanitized); returns (utterances, seconds of
    audio). With `verify`, every shard is checked against the manifest first; `progress`: a bar on stderr."""
    from tqdm import tqdm

    _, manifest = read_manifest(shards)
    name, card = pick_codec(manifest, codec_name)
    manifest_shards(shards, verify)
    codec = Codec.from_card(card, device=device)
    if not check_weights(card.get("weights_sha256"), codec.card().get("weights_sha256"), card["model"],
                         f"{shards}: codec {name}", allow_model_mismatch):
        warnings.warn(f"codec {name}: weights differ from the manifest's (--allow-model-mismatch)")
    if codec.n_q != card["n_q"]:
        raise ValueError(f"codec {name}: model gives {codec.n_q} codebooks, the shards hold {card['n_q']}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    count, seconds, pending, taken = 0, 0.0, [], set()
    total = sum(s.get("num_utterances", 0) for s in manifest["shards"]) or None
    bar = tqdm(total=total, unit="utt", desc="decode", disable=not progress, dynamic_ncols=True)

    def flush():
        nonlocal count, seconds
        frames = torch.tensor([s[name].shape[-1] for s in pending])
        codes = torch.zeros(len(pending), codec.n_q, int(frames.max()), dtype=torch.long)
        for i, s in enumerate(pending):
            codes[i, :, : frames[i]] = torch.from_numpy(s[name].astype("int64"))
        wav, samples = codec.decode(codes, frames)
        for i, s in enumerate(pending):
            path = inside(out_dir, safe_file_name(str(s["__key__"]), taken))
            part = path.with_name(path.name + ".part")  # a stop or a full disk never leaves half a wav
            try:
                sf.write(part, wav[i, : int(samples[i])].cpu().numpy(), codec.sample_rate, format="WAV")
                os.replace(part, path)
            except BaseException:
                part.unlink(missing_ok=True)
                raise
            seconds += int(samples[i]) / codec.sample_rate
        count += len(pending)
        bar.update(len(pending))
        pending.clear()

    for sample in read_shards(shards, verify=False):  # verified above, once
        if name not in sample:
            raise ValueError(f"{shards}: sample {sample['__key__']!r} has no {name} tokens")
        pending.append(sample)
        if len(pending) >= batch_size:
            flush()
    if pending:
        flush()
    bar.close()
    return count, seconds
