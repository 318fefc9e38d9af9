"""`tok eval tokens|resynth|codecs|generated|lm`: token quality, resynthesis quality, codec tables, generated
continuations and LM probes, as report.json + report.md (+ PNG plots) in an output folder."""

from __future__ import annotations

import sys

import click

from speechtok.cli.common import (corpus_options, device_option, device_or_fail, fail, fail_with, lock_output,
                                  output_option, report_errors, vocoder_device_or_fail,
                                  vocoder_precision_option)
from speechtok.eval.report import fmt

REPORT_FOLDER = "Folder for report.json, report.md and the plots."


# --utmos of every eval command that scores audio (resynth, codecs, generated)
utmos_option = click.option("--utmos", type=click.Path(exists=True, dir_okay=False),
                            help="UTMOS22 strong MOS estimate from a local checkpoint (SpeechMOS' "
                                 "utmos22_strong_step7459_v1.pt).")


def _finish(results: dict, out: str, summary: list[str]) -> None:
    """Print the summary and the errors (one line each), then exit 1 when there were errors, like encode."""
    for line in summary:
        click.echo(line)
    report_errors(results.get("errors", []), f"{out}/report.json")
    click.echo(f"report: {out}/report.md")
    sys.exit(1 if results.get("errors") else 0)


@click.group("eval")
def eval_group() -> None:
    """Evaluate tokens, resynthesis and token LMs."""
    from speechtok.stopping import exit_on_signals

    click.get_current_context().with_resource(exit_on_signals("no report was written; rerun the command"))


@eval_group.command("tokens")
@click.argument("shards", type=click.Path(exists=True))
@click.option("--alignments", type=click.Path(exists=True, dir_okay=False),
              help="JSONL with per-utterance 'phones': [{phone, start, end}] → PNMI, purities, triphone ABX.")
@click.option("--items", "item_file", type=click.Path(exists=True, dir_okay=False),
              help="ZeroSpeech/Libri-light .item file for ABX (instead of triphones from --alignments).")
@click.option("--ignore-phones", default="",
              help="Comma-separated phones left out of PNMI/purity (e.g. pau,sil).")
@click.option("--max-per-group", type=click.IntRange(min=1), default=5, show_default=True,
              help="ABX: items per (context, phone, speaker), to bound the number of triples.")
@output_option("DIR", REPORT_FOLDER)
@click.option("--no-verify", is_flag=True, help="Skip the shards' sha256 check.")
@click.option("--bpe", type=click.Path(exists=True, file_okay=False), default=None,
              help="A `tok bpe train` folder: sequence-length reduction and bitrate of its tokens.")
def tokens_cmd(shards, alignments, item_file, ignore_phones, max_per_group, output, no_verify, bpe):
    """Bitrate, codebook usage/entropy, PNMI, purities and ABX of the token streams in SHARDS. Runs no
    model (numpy on the CPU), so it takes no --device."""
    from speechtok.pipelines.evaluate import evaluate_tokens
    from speechtok.shards import ShardError

    lock_output(output, "tok eval tokens", folder=True)
    try:
        r = evaluate_tokens(shards, output, alignments, item_file,
                            frozenset(p for p in ignore_phones.split(",") if p), max_per_group, not no_verify,
                            bpe)
    except (ShardError, OSError, ValueError) as e:
        fail_with(e)
    lines = []
    for name, s in r["streams"].items():
        b = s["bitrate"]
        lines.append(f"{name}: {fmt(b['nominal_bps'], 0)} bps nominal, {fmt(b['entropy_bps'], 0)} bps "
                     f"entropy, {fmt(b['dedup_entropy_bps'], 0)} bps deduplicated; usage "
                     + ", ".join(f"{c['usage']:.0%}" for c in s["codebooks"]))
        if "bpe" in s:
            lines.append(f"  BPE ({s['bpe']['vocab_size']} tokens): {s['bpe']['length_reduction']:.2f}x "
                         f"shorter, {fmt(s['bpe']['nominal_bps'], 0)} bps nominal, "
                         f"{fmt(s['bpe']['entropy_bps'], 0)} bps entropy")
        if "phones" in s:
            p = s["phones"][0]
            lines.append(f"  PNMI {fmt(p['pnmi'])}, phone purity {fmt(p['phone_purity'])}, "
                         f"cluster purity {fmt(p['cluster_purity'])}")
        if "abx" in s:
            a = s["abx"]
            lines.append(f"  ABX within {fmt(a['within_speaker_error'])}, across "
                         f"{fmt(a['across_speaker_error'])} ({a['items']} items)")
    _finish(r, output, lines)


@eval_group.command("resynth")
@click.argument("ref_dir", type=click.Path(exists=True, file_okay=False))
@click.argument("hyp_dir", type=click.Path(exists=True, file_okay=False))
@output_option("DIR", REPORT_FOLDER)
@click.option("--plots", type=click.IntRange(min=0), default=3, show_default=True,
              help="Spectrogram plots of the first N pairs.")
@click.option("--asr", help="ASR for WER/CER/dWER: 'pocketsphinx' (offline English) or a transformers "
                            "checkpoint (Whisper, wav2vec2-CTC; hub id or local dir).")
@click.option("--transcripts", type=click.Path(exists=True, dir_okay=False),
              help="Reference text: JSONL with 'text' and 'id' or 'path' (a corpus manifest works).")
@click.option("--speaker",
              help="Speaker similarity: 'resemblyzer' (offline) or a transformers x-vector checkpoint.")
@click.option("--mos", is_flag=True, help="DNSMOS SIG/BAK/OVRL (offline ONNX models of speechmos).")
@utmos_option
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True,
              help="ASR batch size (transformers).")
@device_option
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def resynth_cmd(ref_dir, hyp_dir, output, plots, asr, transcripts, speaker, mos, utmos, batch_size, device,
                quiet):
    """MCD, STOI, PESQ, SI-SDR, F0 RMSE and voicing error of HYP_DIR's files against REF_DIR's (same
    relative names, any audio extension); optionally WER/dWER, speaker similarity, DNSMOS and UTMOS."""
    from speechtok.pipelines.evaluate import evaluate_resynth

    lock_output(output, "tok eval resynth", folder=True)
    try:
        r = evaluate_resynth(ref_dir, hyp_dir, output, plots, asr, transcripts, speaker, mos,
                             str(device_or_fail(device)), batch_size, progress=not quiet, utmos=utmos)
    except (ImportError, ValueError, OSError) as e:
        fail_with(e)
    m = r["mean"]
    lines = [f"{r['files']} files: MCD {fmt(m['mcd_db'], 2)} dB, STOI {fmt(m['stoi'])}, "
             f"PESQ {fmt(m['pesq_wb'], 2)}, SI-SDR {fmt(m['si_sdr_db'], 1)} dB, "
             f"F0 RMSE {fmt(m['f0_rmse_hz'], 1)} Hz, voicing error {fmt(m['voicing_error'])}"]
    if "asr" in r:
        a = r["asr"]
        text = a.get("resynthesis_vs_text", {})
        lines.append(f"ASR ({a['backend']}): WER {fmt(text.get('wer'))} (reference audio "
                     f"{fmt(a.get('reference_vs_text', {}).get('wer'))}), dWER {fmt(a['dwer']['wer'])}")
    if "speaker" in r:
        lines.append(f"speaker similarity ({r['speaker']['backend']}): {fmt(m['speaker_similarity'])}")
    if "mos" in r:
        lines.append(f"DNSMOS OVRL {fmt(m['dnsmos_ovrl'], 2)} (reference {fmt(m['ref_dnsmos_ovrl'], 2)}), "
                     f"SIG {fmt(m['dnsmos_sig'], 2)}, BAK {fmt(m['dnsmos_bak'], 2)}")
    if "utmos" in r:
        lines.append(f"UTMOS {fmt(m['utmos'], 2)} (reference {fmt(m['ref_utmos'], 2)})")
    _finish(r, output, lines)


@eval_group.command("codecs")
@click.argument("corpus", type=click.Path(exists=True))
@click.option("-t", "--tokenizer", "specs", multiple=True,
              help="A codec KIND:MODEL[:nq=N][:bandwidth=KBPS] as for `tok encode -t` (nq=1,2,4 sweeps, one "
                   "row each); SPEC:vocoder=DIR for what `tok resynth -t SPEC --vocoder DIR` does (a "
                   "semantic tokenizer directory + unit HiFi-GAN, a codec + codec-token Vocos); vocoder=DIR "
                   "for a mel Vocos alone; vocoder= comes last and takes the rest of the spec, ':' included. "
                   "Repeatable; at least one.")
@click.option("--codec", "codec_alias", multiple=True, hidden=True, help="The old name of --tokenizer.")
@output_option("DIR", REPORT_FOLDER)
@click.option("--asr", help="ASR for WER/dWER: 'pocketsphinx' or a transformers checkpoint (reference text: "
                            "--transcripts, else the corpus manifest's 'text').")
@click.option("--transcripts", type=click.Path(exists=True, dir_okay=False),
              help="Reference text: JSONL with 'text' and 'id' or 'path'.")
@click.option("--speaker", help="Speaker similarity: 'resemblyzer' or a transformers x-vector checkpoint.")
@click.option("--mos", is_flag=True, help="DNSMOS SIG/BAK/OVRL of the round trips.")
@utmos_option
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True,
              help="ASR batch size (transformers).")
@device_option
@vocoder_precision_option
@corpus_options()
def codecs_cmd(corpus, specs, codec_alias, output, asr, transcripts, speaker, mos, utmos, batch_size, device,
               vocoder_precision):
    """Round-trip CORPUS (folder or JSONL manifest) through each codec or tokenizer + vocoder: one table of
    nominal and entropy bitrate, PESQ, STOI, MCD (optionally WER, speaker similarity, DNSMOS, UTMOS) and
    encode/decode ×RT, plus a bitrate-vs-quality plot."""
    from speechtok.eval.codecs import expand_specs
    from speechtok.tokenizers.spec import split_vocoder

    specs = specs + codec_alias
    if not specs:
        raise click.UsageError("give -t/--tokenizer SPEC (one or more codecs or tokenizer + vocoder)")
    try:  # before torch is imported: a typo costs a fraction of a second, not the model loads
        for spec in expand_specs(list(specs)):
            split_vocoder(spec)
    except ValueError as e:
        fail(str(e))
    from speechtok.pipelines.evaluate import evaluate_codecs

    dev = vocoder_device_or_fail(device, vocoder_precision)
    lock_output(output, "tok eval codecs", folder=True)
    try:
        r = evaluate_codecs(corpus, list(specs), output, asr, transcripts, speaker, mos,
                            str(dev), batch_size, utmos=utmos, vocoder_precision=vocoder_precision)
    except (ImportError, ValueError, OSError) as e:
        fail_with(e)
    kbps = lambda v: fmt(v and v / 1000, 2)  # noqa: E731
    lines = [f"{x['spec']}: {kbps(x['nominal_bps'])} kbps nominal, {kbps(x['entropy_bps'])} kbps entropy"
             + (f", {kbps(x['dedup_entropy_bps'])} kbps deduplicated" if "dedup_entropy_bps" in x else "")
             + f"; PESQ {fmt(x['pesq_wb'], 2)}, STOI {fmt(x['stoi'])}, MCD {fmt(x['mcd_db'], 2)} dB"
             + (f", WER {fmt(x.get('wer'))}" if "wer" in x else "")
             + (f", speaker {fmt(x.get('speaker_similarity'))}" if "speaker_similarity" in x else "")
             + (f", DNSMOS {fmt(x.get('dnsmos_ovrl'), 2)}" if "dnsmos_ovrl" in x else "")
             + (f", UTMOS {fmt(x.get('utmos'), 2)}" if "utmos" in x else "")
             + f"; ×RT encode {fmt(x['encode_xrt'], 1)}, decode {fmt(x['decode_xrt'], 1)}" for x in r["rows"]]
    _finish(r, output, lines)


@eval_group.command("generated")
@click.argument("gen_dir", type=click.Path(exists=True, file_okay=False))
@output_option("DIR", REPORT_FOLDER)
@click.option("--asr", help="ASR for transcripts: 'pocketsphinx' or a transformers checkpoint.")
@click.option("--text-lm", help="Causal text LM (hub id or local dir) for GenPPL of the transcripts.")
@click.option("--prompts", type=click.Path(exists=True, file_okay=False),
              help="Voice prompts with the continuations' ids, for prompt-vs-continuation speaker "
                   "similarity.")
@click.option("--speaker", default="resemblyzer", show_default=True,
              help="Speaker encoder for --prompts: 'resemblyzer' or a transformers x-vector checkpoint.")
@click.option("-n", "--ngram", type=click.IntRange(min=1), default=2, show_default=True,
              help="n of auto-BLEU-n and distinct-n.")
@utmos_option
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True)
@device_option
def generated_cmd(gen_dir, output, asr, text_lm, prompts, speaker, ngram, utmos, batch_size, device):
    """Auto-BLEU, unit diversity, durations, GenPPL, speaker similarity and UTMOS of the continuations in
    GEN_DIR (audio files and/or <id>.npy units)."""
    from speechtok.pipelines.evaluate import evaluate_generated

    lock_output(output, "tok eval generated", folder=True)
    try:
        r = evaluate_generated(gen_dir, output, asr, text_lm, prompts, speaker, ngram,
                               str(device_or_fail(device)), batch_size, utmos=utmos)
    except (ImportError, ValueError, OSError) as e:
        fail_with(e)
    m = r["mean"]
    lines = [f"{r['sequences']} sequences: " + ", ".join(f"{k} {fmt(v)}" for k, v in m.items())]
    if "genppl" in r:
        lines.append(f"GenPPL {fmt(r['genppl']['perplexity'], 2)} ({r['genppl']['model']})")
    _finish(r, output, lines)


@eval_group.command("lm")
@click.argument("model", type=click.Path(exists=True, file_okay=False))
@click.option("--shards", multiple=True, type=click.Path(exists=True),
              help="Held-out shards for perplexity (repeatable).")
@click.option("--format", "formats", multiple=True, default=("speech",), show_default=True,
              type=click.Choice(["speech", "text", "interleaved", "asr", "tts"]),
              help="Sequence formats (repeatable).")
@click.option("--probes", multiple=True, type=click.Path(exists=True),
              help="Minimal pairs: JSONL ({id, real, fake, group}) or a ZeroSpeech folder with gold.csv "
                   "(repeatable).")
@click.option("-t", "--tokenizer", "semantic_dir", type=click.Path(exists=True, file_okay=False),
              help="Semantic tokenizer the LM was trained on (for audio probes).")
@click.option("--normalize", is_flag=True, help="Score items by mean instead of summed log-probability.")
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True)
@device_option
@output_option("DIR", REPORT_FOLDER)
def lm_cmd(model, shards, formats, probes, semantic_dir, normalize, batch_size, device, output):
    """Perplexity on held-out shards and minimal-pair (sWUGGY / sBLIMP / StoryCloze) accuracy of MODEL."""
    if not shards and not probes:
        fail("give --shards and/or --probes")
    from speechtok.pipelines.evaluate import evaluate_lm

    lock_output(output, "tok eval lm", folder=True)
    device = str(device_or_fail(device))
    try:
        r = evaluate_lm(model, output, list(shards), tuple(formats), list(probes), semantic_dir, normalize,
                        batch_size, device)
    except (ValueError, OSError) as e:
        fail_with(e)
    lines = [f"{name}: perplexity {fmt(p['all']['perplexity'], 2)} (speech "
             f"{fmt(p['speech']['perplexity'], 2)}, text {fmt(p['text']['perplexity'], 2)})"
             for name, p in r["perplexity"].items()]
    lines += [f"{name}: accuracy {fmt(p['accuracy'])} over {p['pairs']} pairs"
              for name, p in r["probes"].items()]
    _finish(r, output, lines)
