"""Intelligibility: transcribe audio with an ASR backend (offline PocketSphinx, or any transformers
Whisper / CTC checkpoint) and score word / character error rates with jiwer on normalised text."""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

import numpy as np

from speechtok.audio import resample
from speechtok.eval.models import files_sha256, hf_weights_sha256, model_entry, need

NORMALIZATION = ("lowercase; punctuation removed (apostrophes kept inside words); whitespace collapsed")


def normalize_text(text: str) -> str:
    """The normalisation applied to references and hypotheses before WER/CER (NORMALIZATION)."""
    text = re.sub(r"[^\w\s']|_", " ", text.lower())
    text = re.sub(r"(?<!\w)'|'(?!\w)", " ", text)
    return " ".join(text.split())


def error_rates(refs: list[str], hyps: list[str]) -> dict:
    """Corpus WER and CER (errors summed over pairs / reference words or characters) on normalised text;
    pairs with an empty normalised reference are left out and counted."""
    jiwer = need("jiwer", "eval-asr")
    pairs = [(r, h) for r, h in ((normalize_text(r), normalize_text(h)) for r, h in zip(refs, hyps)) if r]
    out = {"pairs": len(pairs), "empty_references": len(refs) - len(pairs), "wer": None, "cer": None}
    if not pairs:
        return out
    r, h = [p[0] for p in pairs], [p[1] for p in pairs]
    w = jiwer.process_words(r, h)
    out.update(wer=float(w.wer), cer=float(jiwer.cer(r, h)), words=sum(len(x.split()) for x in r),
               substitutions=w.substitutions, deletions=w.deletions, insertions=w.insertions)
    return out


class PocketSphinxASR:
    """CMU PocketSphinx 5 with the US-English acoustic model, dictionary and 3-gram LM of its wheel;
    whole utterances at 16 kHz."""

    backend = "pocketsphinx"
    sample_rate = 16000

    def __init__(self):
        ps = need("pocketsphinx", "eval-asr")
        self.decoder = ps.Decoder(samprate=self.sample_rate, loglevel="FATAL")
        cfg = self.decoder.config
        hmm = Path(cfg["hmm"])
        self.model = "pocketsphinx en-us"
        self.model_sha256 = _ps_sha256(str(hmm), cfg["lm"], cfg["dict"])

    def transcribe(self, wavs: list[tuple[np.ndarray, int]]) -> list[str]:
        out = []
        for wav, sr in wavs:
            x = np.clip(resample(wav, sr, self.sample_rate), -1, 1)
            self.decoder.start_utt()
            self.decoder.process_raw((x * 32767).astype(np.int16).tobytes(), full_utt=True)
            self.decoder.end_utt()
            hyp = self.decoder.hyp()
            out.append(hyp.hypstr if hyp is not None else "")
        return out


@lru_cache(maxsize=4)
def _ps_sha256(hmm: str, lm: str, dic: str) -> str:
    return files_sha256(sorted(p for p in Path(hmm).iterdir() if p.is_file()) + [lm, dic])


class TransformersASR:
    """Any transformers ASR checkpoint (hub id or local dir): sequence-to-sequence (Whisper) through
    generate, CTC (wav2vec2, HuBERT) through greedy argmax decoding; batched."""

    backend = "transformers"

    def __init__(self, name_or_path: str, device: str = "cpu", batch_size: int = 8):
        import torch
        from transformers import AutoConfig, AutoModelForCTC, AutoModelForSpeechSeq2Seq, AutoProcessor

        self.model = str(name_or_path)
        self.processor = AutoProcessor.from_pretrained(name_or_path)
        self.seq2seq = bool(getattr(AutoConfig.from_pretrained(name_or_path), "is_encoder_decoder", False))
        cls = AutoModelForSpeechSeq2Seq if self.seq2seq else AutoModelForCTC
        self.net = cls.from_pretrained(name_or_path, dtype=torch.float32).to(device).eval()
        self.device, self.batch_size = device, batch_size
        self.sample_rate = int(self.processor.feature_extractor.sampling_rate)
        self.model_sha256 = hf_weights_sha256(name_or_path)

    def transcribe(self, wavs: list[tuple[np.ndarray, int]]) -> list[str]:
        import torch

        out = []
        for i in range(0, len(wavs), self.batch_size):
            batch = [resample(w, sr, self.sample_rate) for w, sr in wavs[i: i + self.batch_size]]
            inputs = self.processor(batch, sampling_rate=self.sample_rate, return_tensors="pt", padding=True,
                                    **({"return_attention_mask": True} if not self.seq2seq else {}))
            inputs = {k: v.to(self.device) for k, v in inputs.items()}
            with torch.inference_mode():
                if self.seq2seq:
                    ids = list(self.net.generate(**inputs))
                else:  # each item's own frames only: padded frames would add characters
                    argmax = self.net(**inputs).logits.argmax(-1)
                    mask = inputs.get("attention_mask")
                    frames = (self.net._get_feat_extract_output_lengths(mask.sum(-1)) if mask is not None
                              else [argmax.shape[1]] * len(batch))
                    ids = [a[: int(n)] for a, n in zip(argmax, frames)]
            out += [self.processor.decode(x, skip_special_tokens=self.seq2seq).strip() for x in ids]
        return out


def load_asr(spec: str, device: str = "cpu", batch_size: int = 8):
    """'pocketsphinx' (offline English) or a transformers ASR checkpoint (hub id or local dir)."""
    if spec == "pocketsphinx":
        return PocketSphinxASR()
    return TransformersASR(spec, device, batch_size)


def asr_info(asr) -> dict:
    """What a report needs to say which recogniser produced its numbers."""
    return {**model_entry(asr), "normalization": NORMALIZATION}


def read_transcripts(path: str | Path, errors: list[str]) -> dict[str, str]:
    """Reference transcripts from a JSONL file (a corpus manifest or {id|path, text} lines), keyed by id,
    by path without extension and by file stem, so that the ids of a scanned folder find them."""
    from speechtok.corpus import jsonl_objects

    out: dict[str, str] = {}
    for where, row in jsonl_objects(path, errors):
        text = row.get("text")
        keys = [str(row[k]) for k in ("id",) if row.get(k) is not None]
        if row.get("path") is not None:
            p = Path(str(row["path"]))
            keys += [p.with_suffix("").as_posix(), p.stem]
        if not isinstance(text, str) or not keys:
            errors.append(f"{where}: needs 'text' (a string) and 'id' or 'path'")
            continue
        for k in keys:
            out.setdefault(k, text)
    return out


def transcript_of(uid: str, transcripts: dict[str, str]) -> str | None:
    """The transcript of a folder id (relative path without extension): by id, else by its file stem."""
    return transcripts.get(uid, transcripts.get(uid.rsplit("/", 1)[-1]))
