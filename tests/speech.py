"""Synthetic speech for tests: sentences spoken word by word with espeak-ng (or flite), so that every
word's start and end in the concatenated audio are known exactly."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf

SENTENCES = [
    ("alice", "the quick brown fox jumps over the lazy dog"),
    ("alice", "speech tokens turn sound into words"),
    ("bob", "language models learn to speak from units"),
    ("bob", "a small corpus is enough for a test"),
    ("carol", "every word has a start and an end"),
    ("carol", "the cat sat on the mat today"),
    ("dave", "seven green apples fell from the tree"),
    ("dave", "we count one two three four five"),
]
TEXT_LINES = ["the dog ran over the hill", "units are small words of sound",
              "a model reads and writes speech",
              "seven apples on the tree", "we speak and it listens"] * 4  # text-only LM data
VOICES = {"alice": ("en-us", 150, 50), "bob": ("en-gb", 135, 35), "carol": ("en-us+f3", 165, 70),
          "dave": ("en-sc", 145, 45)}


def espeak_word(word: str, voice: tuple[str, int, int]) -> tuple[np.ndarray, int]:
    name, speed, pitch = voice
    with tempfile.NamedTemporaryFile(suffix=".wav") as f:
        subprocess.run(["espeak-ng", "-v", name, "-s", str(speed), "-p", str(pitch), "-w", f.name, word],
                       check=True, capture_output=True)
        wav, sr = sf.read(f.name, dtype="float32")
    return trim(wav), sr


def trim(wav: np.ndarray, threshold: float = 1e-3) -> np.ndarray:
    loud = np.flatnonzero(np.abs(wav) > threshold)
    return wav[loud[0]: loud[-1] + 1] if len(loud) else wav


def synthesize_sentence(text: str, voice: tuple[str, int, int],
                        gap: float = 0.06) -> tuple[np.ndarray, int, list]:
    """Concatenate word recordings with `gap` seconds of silence; returns audio, rate, word timings."""
    parts, words, t = [], [], gap
    sr = None
    for word in text.split():
        wav, sr = espeak_word(word, voice)
        silence = np.zeros(int(gap * sr), dtype=np.float32)
        if not parts:
            parts.append(silence)
        start = t
        parts += [wav, silence]
        t += (len(wav) + len(silence)) / sr
        words.append({"word": word, "start": round(start, 6), "end": round(start + len(wav) / sr, 6)})
    return np.concatenate(parts), sr, words


def build_corpus(root: Path) -> Path:
    """Write the sentences under root/audio/<speaker>/ and a manifest root/corpus.jsonl; returns it. Where
    espeak-ng is missing (the GPU device image), a copy of $SPEECHTOK_TEST_SPEECH, made here beforehand by
    `python tests/speech.py DIR`, stands in."""
    prebuilt = os.environ.get("SPEECHTOK_TEST_SPEECH")
    if prebuilt and not shutil.which("espeak-ng"):
        shutil.copytree(prebuilt, root, dirs_exist_ok=True)
        return root / "corpus.jsonl"
    assert shutil.which("espeak-ng"), "espeak-ng is needed (scripts/setup.sh installs it)"
    lines = []
    for i, (speaker, text) in enumerate(SENTENCES):
        wav, sr, words = synthesize_sentence(text, VOICES[speaker])
        path = root / "audio" / speaker / f"{speaker}_{i:02d}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, wav, sr)
        lines.append({"id": f"{speaker}_{i:02d}", "path": str(path.relative_to(root)), "text": text,
                      "words": words, "speaker": speaker})
    manifest = root / "corpus.jsonl"
    manifest.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return manifest


# Minimal triphone contrasts (k_t, b_t, s_t with different vowels), each said twice by every voice, for ABX.
PHONE_SENTENCES = ["the cat and the cut and the kit", "a bat and a bit and a but",
                   "sit on the set and sat on it",
                   "the kit and the bat sat on the cut", "a bit of a cat sat on a set",
                   "but the cut and the bit sit"]
FLITE_VOICES = ("awb", "rms", "slt")  # 16 kHz voices whose segment times match their audio


def flite_sentence(text: str, voice: str, path: Path) -> list[dict]:
    """Speak `text` into `path` with flite; returns its phones with start/end seconds (flite's own
    segment end times, so the alignment is exact)."""
    out = subprocess.run(["flite", "-voice", voice, "-psdur", "-t", text, "-o", str(path)],
                         check=True, capture_output=True, text=True).stdout
    phones, start = [], 0.0
    for seg in out.split():
        name, end = seg.rsplit(":", 1)
        phones.append({"phone": name, "start": round(start, 4), "end": float(end)})
        start = float(end)
    return phones


def build_phone_corpus(root: Path) -> Path:
    """PHONE_SENTENCES by every flite voice under root/audio/<voice>/, and root/corpus.jsonl with text,
    speaker and phone alignments; returns the manifest."""
    assert shutil.which("flite"), "flite is needed (scripts/setup.sh installs it)"
    lines = []
    for voice in FLITE_VOICES:
        for i, text in enumerate(PHONE_SENTENCES):
            path = root / "audio" / voice / f"{voice}_{i:02d}.wav"
            path.parent.mkdir(parents=True, exist_ok=True)
            phones = flite_sentence(text, voice, path)
            lines.append({"id": f"{voice}_{i:02d}", "path": str(path.relative_to(root)), "text": text,
                          "speaker": voice, "phones": phones})
    manifest = root / "corpus.jsonl"
    manifest.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return manifest


def linked_workdir(source: Path, root: Path) -> Path:
    """`root` with `shards`, `km` and `codec` linked from `source`, for a test module to write its runs
    beside."""
    for name in ("shards", "km", "codec"):
        (root / name).symlink_to(source / name)
    return root


if __name__ == "__main__":  # the corpus for machines without espeak-ng: python tests/speech.py DIR
    import sys

    print(build_corpus(Path(sys.argv[1])))
