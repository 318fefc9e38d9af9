"""`tok eval`: the three evaluations end to end — read inputs, compute the metrics of `speechtok.eval`,
write `report.json` + `report.md` (+ PNGs) into an output folder. Bad inputs become one-line errors in the
report and the run goes on with the rest."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np

from speechtok.eval import report
from speechtok.eval.abx import abx_error, item_frames
from speechtok.eval.alignments import frame_labels, read_item_file, read_phone_alignments, triphone_items
from speechtok.eval.tokens import TokenStats, frames_of, phone_unit_metrics, streams_of
from speechtok.shards import ShardError, read_manifest, read_shards


def _item_utterances(items, ids: set[str]) -> list[str | None]:
    """The shard id each item's `file` names: the id itself, or the id whose last path component it is
    (ZeroSpeech items name bare files, folder ids keep their subfolders)."""
    by_name = {i.rsplit("/", 1)[-1]: i for i in ids}
    return [it.file if it.file in ids else by_name.get(it.file.rsplit("/", 1)[-1]) for it in items]


def evaluate_tokens(shards: str | Path, out: str | Path, alignments: str | Path | None = None,
                    item_file: str | Path | None = None, ignore_phones: frozenset[str] = frozenset(),
                    max_per_group: int = 5, verify: bool = True, bpe: str | Path | None = None) -> dict:
    """Bitrate and codebook usage of every stream of a shard folder; with phone alignments (JSONL) also
    PNMI / purities per codebook and triphone ABX; with a `.item` file, ABX on its items; with `bpe` (a
    `tok bpe train` folder), the sequence-length reduction and bitrate of its tokens on its stream."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _, manifest = read_manifest(shards)
    streams = streams_of(manifest)
    stats = {s.name: TokenStats(s) for s in streams}
    bpe_stats = _bpe_stats(bpe, manifest, shards) if bpe else None
    errors: list[str] = []
    phones, speakers = read_phone_alignments(alignments, errors) if alignments else ({}, {})
    items = read_item_file(item_file, errors) if item_file else triphone_items(phones, speakers)
    keep_codes = bool(items)
    names: dict[str, int] = {}
    # stream → q → (phone, code) counts
    joints = {s.name: defaultdict(lambda: defaultdict(int)) for s in streams}
    codes: dict[str, dict[str, np.ndarray]] = {s.name: {} for s in streams}
    aligned = 0
    try:
        for sample in read_shards(shards, verify=verify):
            uid = sample.get("id", sample["__key__"])
            for s in streams:
                if s.name not in sample:
                    errors.append(f"{shards}: sample {uid} has no '{s.name}' tokens")
                    continue
                c = frames_of(sample, s)
                stats[s.name].add(c, float(sample.get("duration", c.shape[1] / s.frame_rate)))
                if bpe_stats is not None and s.name == bpe_stats.bpe.stream:
                    bpe_stats.add(sample[s.name], float(sample.get("duration", c.shape[1] / s.frame_rate)))
                if keep_codes:
                    codes[s.name][uid] = c
                if uid in phones:
                    labels = frame_labels(phones[uid], c.shape[1], s.frame_rate, names)
                    ok = labels >= 0
                    if ignore_phones:
                        ok &= ~np.isin(labels, [names[p] for p in ignore_phones if p in names])
                    for q in range(s.n_q):
                        pairs, counts = np.unique(np.stack([labels[ok], c[q][ok]]), axis=1,
                                                  return_counts=True)
                        for (ph, code), n in zip(pairs.T, counts):
                            joints[s.name][q][(int(ph), int(code))] += int(n)
            aligned += uid in phones
    except ShardError as e:
        errors.append(str(e))  # what was read before the bad shard is still reported
    if phones and not aligned:
        errors.append(f"{alignments}: no utterance id matches the shards (first: {next(iter(phones))})")

    results: dict = {"shards": str(shards), "streams": {}, "errors": errors}
    sections = [f"Shards: `{shards}`\n"]
    phone_list = sorted(names, key=names.get)
    item_uids = _item_utterances(items, {u for c in codes.values() for u in c})
    for s in streams:
        r = stats[s.name].result()
        sec = [f"## {s.name} ({s.kind}, {s.n_q} × {s.vocab} codes at {s.frame_rate:g} Hz)\n",
               f"{r['seconds']:.1f} s, {r['frames']:,} frames.\n",
               report.table([r["bitrate"]], list(r["bitrate"]), 1),
               report.table([{"codebook": q, **c} for q, c in enumerate(r["codebooks"])],
                            ["codebook", "used", "usage", "entropy_bits", "normalized_entropy",
                             "perplexity"])]
        report.plot_usage(stats[s.name].counts, out / f"usage_{s.name}.png", f"{s.name}: code usage")
        sec.append(f"![code usage](usage_{s.name}.png)\n")
        if joints[s.name]:
            r["phones"] = []
            for q in range(s.n_q):
                joint = np.zeros((len(names), s.vocab), dtype=np.int64)
                for (ph, code), n in joints[s.name][q].items():
                    joint[ph, code] = n
                r["phones"].append({"codebook": q, **phone_unit_metrics(joint)})
                if q == 0:
                    report.plot_phone_unit(joint, phone_list, out / f"phone_unit_{s.name}.png",
                                           f"{s.name}: p(phone | unit)")
            sec += ["### Phones\n", report.table(r["phones"], ["codebook", "pnmi", "phone_purity",
                                                               "cluster_purity", "frames", "phones",
                                                               "units"]),
                    f"![p(phone | unit)](phone_unit_{s.name}.png)\n"]
        if items:
            item_codes = []
            for it, uid in zip(items, item_uids):
                c = codes[s.name].get(uid)
                f0, f1 = item_frames(it.onset, it.offset, s.frame_rate)
                item_codes.append(None if c is None or f1 <= f0 else c[:, f0: f1])
            r["abx"] = abx_error(items, item_codes, max_per_group=max_per_group)
            sec += ["### ABX (triphones, one-hot DTW)\n", report.table([r["abx"]], list(r["abx"]))]
        if bpe_stats is not None and s.name == bpe_stats.bpe.stream:
            r["bpe"] = bpe_stats.result()
            sec += [f"### Acoustic BPE (`{bpe}`)\n", report.table([r["bpe"]], list(r["bpe"]))]
        results["streams"][s.name] = r
        sections += sec
    if errors:
        sections.append("## Errors\n\n" + "".join(f"- {e}\n" for e in errors[:50]))
    report.write_report(out, "Token quality", results, sections)
    return results


def _bpe_stats(folder: str | Path, manifest: dict, shards: str | Path):
    """BPEStats for a `tok bpe train` folder; a ValueError naming its bpe.json when its stream is not in the
    shards or gives other codes than it was trained on."""
    from speechtok.tokenizers.unit_bpe import BPEStats, UnitBPE, stream_source
    from speechtok.unit_stream import manifest_dedup

    bpe = UnitBPE.load(folder)
    cards = manifest["tokenizers"]
    if bpe.stream not in cards:
        raise ValueError(f"{bpe.path}: trained on stream '{bpe.stream}', the shards have {', '.join(cards)}")
    bpe.check_source(stream_source(bpe.stream, cards[bpe.stream], manifest_dedup(manifest, bpe.stream)),
                     f"{shards}'s stream '{bpe.stream}'")
    return BPEStats(bpe)


def evaluate_resynth(ref_dir: str | Path, hyp_dir: str | Path, out: str | Path, plots: int = 3,
                     asr: str | None = None, transcripts: str | Path | None = None,
                     speaker: str | None = None, mos: bool = False, device: str = "cpu", batch_size: int = 8,
                     progress: bool = False, utmos: str | Path | None = None) -> dict:
    """Metrics of every hypothesis against the reference with the same id (relative path without extension),
    per file and averaged, plus spectrogram plots of the first `plots` pairs. Optional: `asr` (WER/CER vs
    `transcripts` and dWER vs the reference audio's transcript), `speaker` (embedding cosine), `mos` (DNSMOS),
    `utmos` (a local UTMOS22 strong checkpoint); `progress`: a bar on stderr."""
    from tqdm import tqdm

    from speechtok.audio import AudioError, read_audio, resample
    from speechtok.corpus import scan_folder
    from speechtok.eval.resynth import resynth_metrics

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    hyps = {u.id: u.path for u in scan_folder(hyp_dir)}
    errors, rows, sections = [], [], [f"Reference `{ref_dir}`, resynthesis `{hyp_dir}`.\n"]
    extras = _Evaluators(asr, transcripts, speaker, mos, device, batch_size, errors, utmos=utmos)
    refs = list(scan_folder(ref_dir))
    for u in tqdm(refs, unit="file", desc="resynth", disable=not progress, dynamic_ncols=True):
        if u.id not in hyps:
            errors.append(f"{u.path}: no resynthesis {u.id}.* in {hyp_dir}")
            continue
        try:
            ref, rsr = read_audio(u.path)
        except AudioError as e:
            errors.append(f"{u.path}: {e}")
            continue
        try:
            hyp, hsr = read_audio(hyps[u.id])
        except AudioError as e:
            errors.append(f"{hyps[u.id]}: {e}")
            continue
        try:
            rows.append({"id": u.id, **resynth_metrics(ref, rsr, hyp, hsr),
                         **extras.pair(u.id, ref, rsr, hyp, hsr, str(u.path), str(hyps[u.id]))})
        except Exception as e:
            errors.append(f"{hyps[u.id]}: metrics failed ({' '.join(str(e).split())[:160]})")
            continue
        if len(rows) <= plots:
            name = f"spectrogram_{len(rows):02d}.png"
            report.plot_spectrograms(ref, resample(hyp, hsr, rsr), rsr, out / name, u.id)
            sections.append(f"![{u.id}]({name})\n")
    extra = sorted(set(hyps) - {u.id for u in refs})
    errors += [f"{hyps[i]}: no reference {i}.* in {ref_dir}" for i in extra]
    metrics = ["si_sdr_db", "stoi", "pesq_wb", "mcd_db", "f0_rmse_hz", "f0_rmse_cents", "voicing_error",
               *extras.columns]
    models = extras.finish(rows)
    mean = _means(rows, metrics)
    # error rates: corpus-level, not file means
    for prefix, key in (("", "resynthesis_vs_text"), ("d", "dwer")):
        if key in models.get("asr", {}):
            mean.update({prefix + m: models["asr"][key][m] for m in ("wer", "cer")})
    results = {"reference": str(ref_dir), "hypothesis": str(hyp_dir), "files": len(rows), "mean": mean,
               **models, "per_file": rows, "errors": errors}
    sections = [sections[0], f"## Mean over {len(rows)} files\n", report.table([mean], metrics),
                *extras.sections(results), "## Per file\n",
                report.table(rows, ["id", *metrics, "length_difference_s"]), *sections[1:]]
    if errors:
        sections.append("## Errors\n\n" + "".join(f"- {e}\n" for e in errors[:50]))
    report.write_report(out, "Resynthesis quality", results, sections)
    return results


def _means(rows: list[dict], columns: list[str]) -> dict:
    """Per column, the mean over the rows that have a value (None when none has)."""
    return {c: (float(np.mean(v)) if (v := [r[c] for r in rows if r.get(c) is not None]) else None)
            for c in columns}


class _Evaluators:
    """The optional model-based metrics of a resynthesis run (ASR, speaker similarity, DNSMOS, UTMOS): loaded
    once, applied per pair; the transcriptions run batched at the end."""

    def __init__(self, asr, transcripts, speaker, mos, device, batch_size, errors: list[str],
                 texts: dict[str, str] | None = None, utmos: str | Path | None = None):
        from speechtok.eval.asr import load_asr, read_transcripts

        if transcripts and not asr:
            raise ValueError("reference transcripts need an ASR backend (--asr) to compare with")
        self.asr = load_asr(asr, device, batch_size) if asr else None
        self.texts = read_transcripts(transcripts, errors) if transcripts else (texts or {})
        self.transcripts, self.errors = transcripts, errors
        self.speaker, self.mos = None, None
        if speaker:
            from speechtok.eval.speaker import load_speaker_encoder

            self.speaker = load_speaker_encoder(speaker, device)
        if mos:
            from speechtok.eval.mos import DNSMOS

            self.mos = DNSMOS()
        self.utmos = None
        if utmos:
            from speechtok.eval.utmos import UTMOS

            self.utmos = UTMOS(utmos, device)
        self.audio: list[tuple] = []  # (id, ref, sr, hyp, sr) awaiting transcription
        self.reference: dict[tuple[str, str], object] = {}  # (id, what) → a reference score, computed once
        self.columns = ((["wer", "cer"] if self.texts else []) + (["dwer", "dcer"] if self.asr else [])
                        + (["speaker_similarity"] if self.speaker else [])
                        + (["dnsmos_sig", "dnsmos_bak", "dnsmos_ovrl", "ref_dnsmos_ovrl"] if self.mos else [])
                        + (["utmos", "ref_utmos"] if self.utmos else []))

    def pair(self, uid: str, ref, rsr, hyp, hsr, ref_name: str, hyp_name: str) -> dict:
        """The model metrics of one (reference, output) pair; the reference's are computed once per id (`tok
        eval codecs` pairs it with one output per row). Audio a model cannot read (a ValueError, e.g. shorter
        than UTMOS' 25 ms) is one error line naming `ref_name` or `hyp_name`; the other metrics stay."""
        from speechtok.eval.asr import transcript_of
        from speechtok.eval.speaker import cosine

        row: dict = {}
        if self.texts:
            row["text"] = transcript_of(uid, self.texts)
        if self.speaker:
            a = self._reference(uid, "speaker embedding", ref_name, lambda: self.speaker.embed(ref, rsr))
            b = self._try("speaker embedding", hyp_name, lambda: self.speaker.embed(hyp, hsr))
            if a is not None and b is not None:
                row["speaker_similarity"] = cosine(a, b)
        if self.mos:
            row.update(self._try("DNSMOS", hyp_name, lambda: self.mos.score(hyp, hsr)) or {})
            ovrl = self._reference(uid, "DNSMOS", ref_name, lambda: self.mos.score(ref, rsr)["dnsmos_ovrl"])
            row["ref_dnsmos_ovrl"] = ovrl
        if self.utmos:
            row.update(utmos=self._try("UTMOS", hyp_name, lambda: self.utmos.score(hyp, hsr)),
                       ref_utmos=self._reference(uid, "UTMOS", ref_name, lambda: self.utmos.score(ref, rsr)))
        if self.asr:
            self.audio.append((uid, ref, rsr, hyp, hsr))
        return row

    def _try(self, what: str, name: str, score):
        """score(), or None and one error line naming `name` when the model cannot read that audio."""
        try:
            return score()
        except ValueError as e:
            self.errors.append(f"{name}: {what}: {' '.join(str(e).split())[:200]}")
            return None

    def _reference(self, uid: str, what: str, name: str, score):
        """`_try(score)` for reference `uid`, once."""
        if (uid, what) not in self.reference:
            self.reference[uid, what] = self._try(what, name, score)
        return self.reference[uid, what]

    def finish(self, rows: list[dict]) -> dict:
        """Transcribe, score the rows in place, and return the report's model entries."""
        from speechtok.eval.asr import asr_info, error_rates
        from speechtok.eval.models import model_entry

        out: dict = {}
        if self.asr:
            new = {uid: (r, rsr) for uid, r, rsr, _, _ in self.audio if (uid, "ASR") not in self.reference}
            texts = self.asr.transcribe(list(new.values()))
            self.reference.update({(uid, "ASR"): t for uid, t in zip(new, texts)})
            ref_asr = [self.reference[uid, "ASR"] for uid, *_ in self.audio]
            hyp_asr = self.asr.transcribe([(h, hsr) for *_, h, hsr in self.audio])
            for row, ra, ha in zip(rows, ref_asr, hyp_asr):
                row.update(asr_reference=ra, asr_resynthesis=ha)
                d = error_rates([ra], [ha])
                row.update(dwer=d["wer"], dcer=d["cer"])
            out["asr"] = {**asr_info(self.asr), "dwer": error_rates(ref_asr, hyp_asr)}
            self.audio = []  # ready for the next set of pairs
        if self.texts:
            have = [r for r in rows if r.get("text") is not None]
            if rows and not have:
                self.errors.append(f"{self.transcripts}: no transcript matches a reference id "
                                   f"(first reference: {rows[0]['id']})")
            out["asr"]["transcripts_missing"] = len(rows) - len(have)
            out["asr"]["resynthesis_vs_text"] = error_rates([r["text"] for r in have],
                                                            [r["asr_resynthesis"] for r in have])
            out["asr"]["reference_vs_text"] = error_rates([r["text"] for r in have],
                                                          [r["asr_reference"] for r in have])
            for r in have:
                e = error_rates([r["text"]], [r["asr_resynthesis"]])
                r.update(wer=e["wer"], cer=e["cer"])
        if self.speaker:
            out["speaker"] = {**model_entry(self.speaker), "metric": "cosine similarity"}
        if self.mos:
            out["mos"] = model_entry(self.mos)
        if self.utmos:
            out["utmos"] = model_entry(self.utmos)
        return out

    def sections(self, results: dict) -> list[str]:
        """Markdown: which models produced the numbers, and the corpus-level error rates."""
        from speechtok.eval.models import model_note

        secs = []
        if "asr" in results:
            a = results["asr"]
            rates = [{"comparison": name, **{k: a[key].get(k) for k in ("wer", "cer", "pairs")}}
                     for name, key in (("resynthesis ASR vs text", "resynthesis_vs_text"),
                                       ("reference ASR vs text", "reference_vs_text"),
                                       ("resynthesis ASR vs reference ASR (dWER)", "dwer")) if key in a]
            secs += ["## Intelligibility (ASR)\n", model_note("ASR", a),
                     f"Text normalisation: {a['normalization']}. Error rates are corpus-level (errors summed "
                     f"over files / reference words or characters).\n",
                     report.table(rates, ["comparison", "wer", "cer", "pairs"])]
        secs += [model_note(title, results[key]) for key, title in (("speaker", "Speaker similarity"),
                                                                   ("mos", "DNSMOS"), ("utmos", "UTMOS"))
                 if key in results]
        return secs


def evaluate_lm(model_dir: str | Path, out: str | Path, shards: list[str] = (),
                formats: tuple[str, ...] = ("speech",),
                probes: list[str] = (), semantic_dir: str | None = None, normalize: bool = False,
                batch_size: int = 8, device: str = "cpu") -> dict:
    """Perplexity on held-out shards, minimal-pair probe accuracies, and the training curve when the model
    sits in (or is) a `tok lm train` run folder."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from speechtok.eval.lm import perplexity, read_probes, score_pairs
    from speechtok.lm.sequences import SequenceBuilder
    from speechtok.lm.vocab import SpeechVocab

    from speechtok.hub import check_model_ref

    out, model_dir = Path(out), Path(check_model_ref(model_dir))
    out.mkdir(parents=True, exist_ok=True)
    if model_dir.is_dir():
        from speechtok.checksums import verify_checksums

        verify_checksums(model_dir)  # written by `tok lm train`
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    vocab = SpeechVocab.load(model_dir)
    if probes and vocab.speech != "units":
        raise ValueError(f"{model_dir}: trained on {vocab.speech} tokens (data.speech), but the probes are "
                         "units or audio; give --shards for its perplexity")
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).to(device).eval()
    semantic = None
    if semantic_dir:
        from speechtok.tokenizers.semantic import SemanticTokenizer

        semantic = SemanticTokenizer.from_dir(semantic_dir, device=device)
        if semantic.k != vocab.k:
            raise ValueError(f"{semantic_dir}: {semantic.k} units, but {model_dir} was trained on {vocab.k}")
    errors: list[str] = []
    results: dict = {"model": str(model_dir), "perplexity": {}, "probes": {}, "errors": errors}
    sections = [f"Model `{model_dir}`.\n"]
    if shards:
        builder = SequenceBuilder(vocab, tokenizer)
        samples = []
        for src in shards:
            try:
                samples += list(read_shards(src))
            except ShardError as e:
                errors.append(str(e))
        results["perplexity"] = perplexity(model, builder, samples, tuple(formats), batch_size)
        rows = [{"format": f, "sequences": r["sequences"],
                 **{f"{k}_{m}": r[k][m] for k in ("all", "speech", "text")
                    for m in ("tokens", "perplexity")}}
                for f, r in results["perplexity"].items()]
        sections += [f"## Perplexity ({len(samples)} held-out utterances)\n",
                     report.table(rows, list(rows[0]) if rows else ["format"], 2)]
    for p in probes:
        pairs = read_probes(p, errors)
        r = score_pairs(model, tokenizer, vocab, pairs, semantic, normalize, batch_size, errors)
        results["probes"][str(p)] = r
        sections += [f"## Probes `{p}`\n",
                     f"Accuracy **{report.fmt(r['accuracy'])}** over {r['pairs']} pairs "
                     f"({r['ids']} ids; {'mean' if normalize else 'summed'} log-probability; chance 0.5).\n"]
        if r["groups"]:
            sections.append(report.table([{"group": g, "accuracy": a}
                                          for g, a in sorted(r["groups"].items())],
                                         ["group", "accuracy"]))
    for cand in (model_dir / "metrics.jsonl", model_dir.parent / "metrics.jsonl"):
        if cand.exists() and report.plot_curves(cand, out / "training.png", "training curve"):
            results["training_metrics"] = str(cand)
            sections += ["## Training\n", "![training curve](training.png)\n"]
            break
    if errors:
        sections.append("## Errors\n\n" + "".join(f"- {e}\n" for e in errors[:50]))
    report.write_report(out, "LM probes", results, sections)
    return results


def evaluate_generated(gen_dir: str | Path, out: str | Path, asr: str | None = None,
                       text_lm: str | None = None,
                       prompts: str | Path | None = None, speaker: str | None = None, n: int = 2,
                       device: str = "cpu", batch_size: int = 8, utmos: str | Path | None = None) -> dict:
    """Continuations in `gen_dir` (audio files and/or `<id>.npy` units, as `tok generate` writes them):
    duration statistics; per sequence auto-BLEU-n, distinct-n and unit entropy; with `asr`, the transcripts'
    auto-BLEU and (with `text_lm`) GenPPL; with `prompts` (same ids) and `speaker`, prompt→continuation
    speaker similarity; with `utmos` (a local UTMOS22 strong checkpoint), each continuation's MOS estimate."""
    import os

    from speechtok.audio import AudioError, read_audio
    from speechtok.corpus import scan_folder
    from speechtok.eval.generated import TextLM, auto_bleu, distinct, entropy_bits
    from speechtok.eval.models import model_entry, model_note

    out, gen_dir = Path(out), Path(gen_dir)
    out.mkdir(parents=True, exist_ok=True)
    errors: list[str] = []
    if text_lm and not asr:
        raise ValueError("GenPPL scores ASR transcripts: give --asr with --text-lm")
    audio = {u.id: u.path for u in scan_folder(gen_dir)}
    units = {(Path(d) / f).relative_to(gen_dir).with_suffix("").as_posix(): Path(d) / f
             for d, _, fs in os.walk(gen_dir) for f in fs if f.endswith(".npy")}
    prompt_audio = {u.id: u.path for u in scan_folder(prompts)} if prompts else {}
    asr_model = speaker_model = utmos_model = None
    if utmos:
        from speechtok.eval.utmos import UTMOS

        utmos_model = UTMOS(utmos, device)
    if asr:
        from speechtok.eval.asr import load_asr

        asr_model = load_asr(asr, device, batch_size)
    if speaker and prompts:
        from speechtok.eval.speaker import load_speaker_encoder, speaker_similarity

        speaker_model = load_speaker_encoder(speaker, device)
    rows, wavs = [], []
    for uid in sorted(set(audio) | set(units)):
        row: dict = {"id": uid}
        if uid in units:
            try:
                u = np.load(units[uid]).reshape(-1)
                row.update(units=len(u), unit_auto_bleu=auto_bleu(u.tolist(), n),
                           unit_distinct_1=distinct(u, 1), unit_distinct_n=distinct(u.tolist(), n),
                           unit_entropy_bits=entropy_bits(u.tolist()))
            except (OSError, ValueError) as e:
                errors.append(f"{units[uid]}: not a units array ({' '.join(str(e).split())[:120]})")
        if uid in audio:
            try:
                wav, sr = read_audio(audio[uid])
            except AudioError as e:
                errors.append(f"{audio[uid]}: {e}")
                rows.append(row)
                continue
            row["seconds"] = len(wav) / sr
            if utmos_model:
                try:
                    row["utmos"] = utmos_model.score(wav, sr)
                except ValueError as e:
                    errors.append(f"{audio[uid]}: UTMOS: {' '.join(str(e).split())[:200]}")
            if asr_model:
                wavs.append((row, wav, sr))
            if speaker_model:
                if uid in prompt_audio:
                    try:
                        p, psr = read_audio(prompt_audio[uid])
                        row["speaker_similarity"] = speaker_similarity(speaker_model, p, psr, wav, sr)
                    except AudioError as e:
                        errors.append(f"{prompt_audio[uid]}: {e}")
                    except ValueError as e:  # audio the encoder cannot embed (too short)
                        errors.append(f"{audio[uid]} (prompt {prompt_audio[uid]}): speaker embedding: "
                                      f"{' '.join(str(e).split())[:200]}")
                else:
                    errors.append(f"{audio[uid]}: no prompt {uid}.* in {prompts}")
        rows.append(row)
    results: dict = {"generated": str(gen_dir), "sequences": len(rows), "n": n}
    if asr_model:
        from speechtok.eval.asr import asr_info, normalize_text

        texts = asr_model.transcribe([(w, sr) for _, w, sr in wavs])
        for (row, _, _), text in zip(wavs, texts):
            words = normalize_text(text).split()
            row.update(transcript=text, words=len(words), word_auto_bleu=auto_bleu(words, n))
        results["asr"] = asr_info(asr_model)
        if text_lm:
            results["genppl"] = TextLM(text_lm, device, batch_size).perplexity([normalize_text(t)
                                                                                for t in texts])
    if speaker_model:
        results["speaker"] = {**model_entry(speaker_model), "metric": "cosine, prompt vs continuation"}
    if utmos_model:
        results["utmos"] = model_entry(utmos_model)
    columns = ["seconds", "units", "unit_auto_bleu", "unit_distinct_1", "unit_distinct_n",
               "unit_entropy_bits", "words", "word_auto_bleu", "speaker_similarity", "utmos"]
    columns = [c for c in columns if any(r.get(c) is not None for r in rows)]
    mean = _means(rows, columns)
    secs = [r["seconds"] for r in rows if "seconds" in r]
    results["duration"] = ({"total_s": float(np.sum(secs)), "mean_s": float(np.mean(secs)),
                            "std_s": float(np.std(secs)), "min_s": float(np.min(secs)),
                            "max_s": float(np.max(secs))}
                           if secs else None)
    results.update(mean=mean, per_file=rows, errors=errors)
    sections = [f"Continuations `{gen_dir}`: {len(rows)} sequences; n-gram order {n} "
                f"(auto-BLEU-{n}, distinct-{n}).\n",
                "## Mean\n", report.table([mean], columns)]
    if results["duration"]:
        sections += ["## Duration\n", report.table([results["duration"]], list(results["duration"]))]
    if "genppl" in results:
        g = results["genppl"]
        sections += [f"## GenPPL\n\n**{report.fmt(g['perplexity'], 2)}** over {g['tokens']} tokens of "
                     f"{g['texts']} transcripts.\n", model_note("Text LM", g)]
    sections += [model_note(title, results[key]) for key, title in
                 (("asr", "ASR"), ("speaker", "Speaker similarity"), ("utmos", "UTMOS")) if key in results]
    sections += ["## Per file\n",
                 report.table(rows, ["id", *columns, *(["transcript"] if asr_model else [])])]
    if errors:
        sections.append("## Errors\n\n" + "".join(f"- {e}\n" for e in errors[:50]))
    report.write_report(out, "Generated continuations", results, sections)
    return results


CODEC_PLOT_METRICS = [("pesq_wb", "PESQ (wide-band)"), ("stoi", "STOI"), ("mcd_db", "MCD (dB)"),
                      ("wer", "WER"), ("speaker_similarity", "speaker similarity"),
                      ("dnsmos_ovrl", "DNSMOS OVRL"), ("utmos", "UTMOS")]


def _codec_route(spec: str, device: str) -> tuple[dict, object]:
    """A codec spec → (its row's model fields, one timed round trip cut to the input's length)."""
    from speechtok.audio import resample
    from speechtok.eval.codecs import nominal_bps, round_trip
    from speechtok.tokenizers.codec import Codec
    from speechtok.tokenizers.spec import parse_codec_spec

    opts = parse_codec_spec(spec)
    codec = Codec(opts["kind"], opts["model"], n_q=opts.get("n_q"), bandwidth=opts.get("bandwidth"),
                  name=opts.get("name"), device=device)
    round_trip(codec, np.zeros(codec.hop * 8, dtype=np.float32))  # warm-up, kept out of the ×RT

    def trip(wav, sr):
        codes, hyp, te, td = round_trip(codec, resample(wav, sr, codec.sample_rate))
        return codes, hyp, codec.sample_rate, te, td

    return {"codec": codec.codec_kind, "model": codec.model_ref,
            "model_label": f"{codec.codec_kind}:{Path(codec.model_ref).name}",
            "weights_sha256": codec.card()["weights_sha256"], "n_q": codec.n_q,
            "codebook_size": codec.codebook_size, "frame_rate": codec.frame_rate,
            "sample_rate": codec.sample_rate, "bandwidth_kbps": codec.bandwidth,
            "nominal_bps": nominal_bps(codec.n_q, codec.codebook_size, codec.frame_rate)}, trip


def _vocoder_route(tokenizer: str | None, vocoder: str, device: str,
                   vocoder_precision: str = "fp32") -> tuple[dict, object]:
    """A tokenizer (or none) + vocoder, as `tok resynth -t TOKENIZER --vocoder VOCODER` runs them → (its
    row's model fields, one timed round trip giving what `tok resynth` writes)."""
    import torch

    from speechtok.eval.codecs import nominal_bps, timed_resynthesis, vocoder_sha256
    from speechtok.pipelines.resynth import Resynthesis
    from speechtok.unit_stream import tokenizer_sha256

    route = Resynthesis(tokenizer, vocoder, torch.device(device), vocoder_precision)
    timed_resynthesis(route, np.zeros(route.input_rate // 4, dtype=np.float32), route.input_rate)  # warm-up
    tok, voc = route.tok, route.voc
    kind = {"units": "semantic", "mel": "mel"}.get(route.kind, getattr(tok, "codec_kind", None))
    info: dict = {"codec": kind,
                  "model": tokenizer, "vocoder": vocoder, "vocoder_sha256": vocoder_sha256(vocoder),
                  "sample_rate": route.sample_rate, "vocoder_precision": vocoder_precision}
    label = f"{Path(vocoder).name}"
    if route.kind == "units":
        info.update(model_label=f"{Path(tokenizer).name}+{label}",
                    tokenizer_sha256=tokenizer_sha256(tok.card()), n_q=1, codebook_size=tok.k,
                    frame_rate=tok.frame_rate, nominal_bps=nominal_bps(1, tok.k, tok.frame_rate))
    elif route.kind == "codec+vocos":
        info.update(model=tok.model_ref, model_label=f"{tok.codec_kind}:{Path(tok.model_ref).name}+{label}",
                    weights_sha256=tok.card()["weights_sha256"], n_q=tok.n_q, codebook_size=tok.codebook_size,
                    frame_rate=tok.frame_rate, bandwidth_kbps=tok.bandwidth,
                    nominal_bps=nominal_bps(tok.n_q, tok.codebook_size, tok.frame_rate))
    else:  # continuous features: no bitrate
        info.update(model_label=f"mel:{label}", n_q=None, frame_rate=voc.sample_rate / voc.hop_length,
                    nominal_bps=None)

    def trip(wav, sr):
        codes, hyp, te, td = timed_resynthesis(route, wav, sr)
        return codes, hyp, route.sample_rate, te, td

    return info, trip


def evaluate_codecs(corpus: str | Path, specs: list[str], out: str | Path, asr: str | None = None,
                    transcripts: str | Path | None = None, speaker: str | None = None, mos: bool = False,
                    device: str = "cpu", batch_size: int = 8, utmos: str | Path | None = None,
                    vocoder_precision: str = "fp32") -> dict:
    """Round-trip every utterance of `corpus` (folder or JSONL manifest, held in memory) through each spec
    (`split_vocoder`: a codec, a tokenizer + vocoder, or a mel vocoder; `nq=1,2,4` sweeps expand to one row
    each): one row per spec with nominal and entropy bitrates (units: also deduplicated; mel: none), mean
    PESQ / STOI / MCD / SI-SDR, optional WER, speaker similarity, DNSMOS, UTMOS (`_Evaluators`; with `asr`
    and no `transcripts`, the corpus' own texts), encode/decode ×RT, and a bitrate-vs-quality plot."""
    import torch

    from speechtok.audio import AudioError, read_utterance
    from speechtok.corpus import load_corpus
    from speechtok.eval.codecs import CodeEntropy, expand_specs
    from speechtok.eval.resynth import resynth_metrics
    from speechtok.tokenizers.spec import split_vocoder

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    specs = expand_specs(specs)
    parsed = [split_vocoder(s) for s in specs]  # a malformed spec fails here, before any model loads
    corpus_errors: list = []
    utts = load_corpus(corpus, corpus_errors)
    errors = [f"{e.file}: {e.reason}" for e in corpus_errors]
    texts = {u.id: u.text for u in utts if u.text is not None} if asr and not transcripts else None
    extras = _Evaluators(asr, transcripts, speaker, mos, device, batch_size, errors, texts, utmos)
    audio = []
    for u in utts:
        try:
            audio.append((u, *read_utterance(u)))
        except AudioError as e:
            errors.append(f"{u.path}: {e}")
    metrics = ["pesq_wb", "stoi", "mcd_db", "si_sdr_db", *extras.columns]
    rows, per_file, models = [], {}, {}
    for spec, (tokenizer, vocoder) in zip(specs, parsed):
        try:
            info, trip = (_vocoder_route(tokenizer, vocoder, device, vocoder_precision) if vocoder
                          else _codec_route(tokenizer, device))
        except Exception as e:
            errors.append(f"{spec}: {' '.join(str(e).split())[:300]}")
            continue
        entropy = None if info["nominal_bps"] is None else CodeEntropy(
            info["n_q"], info["codebook_size"], info["frame_rate"], dedup=info["codec"] == "semantic")
        files, seconds, t_encode, t_decode = [], 0.0, 0.0, 0.0
        for u, wav, sr in audio:
            try:
                codes, hyp, hyp_sr, te, td = trip(wav, sr)
                files.append({"id": u.id, **resynth_metrics(wav, sr, hyp, hyp_sr),
                              **extras.pair(u.id, wav, sr, hyp, hyp_sr, str(u.path), f"{u.path}: {spec}")})
            except Exception as e:
                errors.append(f"{u.path}: {spec}: round trip failed ({' '.join(str(e).split())[:160]})")
                continue
            if entropy is not None:
                entropy.add(codes, len(wav) / sr)
            seconds, t_encode, t_decode = seconds + len(wav) / sr, t_encode + te, t_decode + td
        models = extras.finish(files)
        mean = _means(files, metrics)
        for prefix, key in (("", "resynthesis_vs_text"), ("d", "dwer")):  # corpus-level, as in resynth
            if key in models.get("asr", {}):
                mean.update({prefix + m: models["asr"][key][m] for m in ("wer", "cer")})
        rows.append({"spec": spec, **info, "files": len(files), "seconds": seconds,
                     **(entropy.result() if entropy is not None and files else {"entropy_bps": None}), **mean,
                     "encode_xrt": seconds / max(t_encode, 1e-9) if files else None,
                     "decode_xrt": seconds / max(t_decode, 1e-9) if files else None})
        per_file[spec] = files
        del trip
        if torch.device(device).type == "cuda":
            torch.cuda.empty_cache()
    dedup = ["dedup_entropy_bps"] if any("dedup_entropy_bps" in r for r in rows) else []
    columns = ["spec", "n_q", "nominal_bps", "entropy_bps", *dedup, *metrics, "encode_xrt", "decode_xrt",
               "files"]
    results = {"corpus": str(corpus), "utterances": len(audio), "device": str(device), "rows": rows, **models,
               "per_file": per_file, "errors": errors}
    total = sum(len(w) / sr for _, w, sr in audio)
    sections = [f"Corpus `{corpus}`: {len(audio)} utterances, {total:.1f} s, round-tripped one at a time on "
                f"{device}. Nominal bitrate = n_q × log2(codebook size) × frame rate; entropy bitrate = "
                "frame rate × Σ per-codebook unigram entropy of the codes"
                + ("; deduplicated (semantic units) = run-length-deduplicated units per second × their "
                   "unigram entropy, as `tok eval tokens` reports it" if dedup else "")
                + ". A mel vocoder has no bitrate (continuous features) and no point on the plot. Rows "
                "with a vocoder run as `tok resynth -t TOKENIZER --vocoder DIR` does. ×RT = audio seconds "
                "per second of encoding / decoding.\n",
                "## Codecs\n", report.table(rows, columns, 2)]
    if report.plot_bitrate_quality(rows, CODEC_PLOT_METRICS, out / "bitrate_quality.png",
                                   "bitrate vs quality"):
        sections.append("![bitrate vs quality](bitrate_quality.png)\n")
    sections += extras.sections(results)
    ids = [c for c in ("weights_sha256", "tokenizer_sha256", "vocoder", "vocoder_sha256", "vocoder_precision")
           if any(c in r for r in rows)]
    sections += ["## Models\n", report.table(rows, ["spec", "model", *ids, "sample_rate", "frame_rate",
                                                    "codebook_size", "bandwidth_kbps"])]
    if errors:
        sections.append("## Errors\n\n" + "".join(f"- {e}\n" for e in errors[:50]))
    report.write_report(out, "Codec round trips", results, sections)
    return results
