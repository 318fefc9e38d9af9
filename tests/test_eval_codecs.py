"""`tok eval codecs`: one row per codec spec (nq sweeps expanded), nominal bitrate by its formula, entropy
bitrate recomputed from the codes, resynthesis metrics present, and a bad spec reported without stopping."""

import json
import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from speechtok.audio import load_utterance, read_audio
from speechtok.cli.main import cli
from speechtok.corpus import load_corpus
from speechtok.eval.codecs import expand_specs
from speechtok.eval.resynth import resynth_metrics
from speechtok.tokenizers.codec import Codec


def test_expand_specs_sweeps_nq_only():
    assert expand_specs(["encodec:m:nq=1,2,4", "dac:a/b:nq=2:name=x", "mimi:m:nq=1, 3:name=y"]) == [
        "encodec:m:nq=1", "encodec:m:nq=2", "encodec:m:nq=4", "dac:a/b:nq=2:name=x", "mimi:m:nq=1:name=y",
        "mimi:m:nq=3:name=y"]


@pytest.fixture
def two_utterances(speech_corpus, tmp_path):
    """A manifest of the first two synthetic sentences (absolute paths)."""
    lines = []
    for line in speech_corpus.read_text().splitlines()[:2]:
        row = json.loads(line)
        row["path"] = str(speech_corpus.parent / row["path"])
        lines.append(json.dumps(row))
    path = tmp_path / "two.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_eval_codecs_table(diverse_codec, two_utterances, tmp_path):
    enc = diverse_codec("encodec")  # 24 kHz, hop 64 → 375 Hz, 1024 codes (10 bits), nq 1 or 2
    bad = f"encodec:{tmp_path / 'no_such_model'}:nq=2"
    out = tmp_path / "rep"
    args = ["eval", "codecs", str(two_utterances), "-t", f"encodec:{enc}:nq=1,2", "-t", bad, "-o", str(out)]
    r = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert r.exit_code == 1, r.output
    errors = [x for x in r.output.splitlines() if x.startswith("error:")]
    assert len(errors) == 1 and bad in errors[0], r.output
    rep = json.loads((out / "report.json").read_text())
    rows = {x["spec"]: x for x in rep["rows"]}
    assert list(rows) == [f"encodec:{enc}:nq=1", f"encodec:{enc}:nq=2"]
    one, two = rows[f"encodec:{enc}:nq=1"], rows[f"encodec:{enc}:nq=2"]
    assert one["nominal_bps"] == 1 * math.log2(1024) * 24000 / 64 == 3750.0
    assert two["nominal_bps"] == 7500.0 and two["nominal_bps"] > one["nominal_bps"]
    for row in (one, two):
        assert row["files"] == 2 and row["n_q"] == len(row["entropy_bits"])
        for m in ("pesq_wb", "stoi", "mcd_db", "encode_xrt", "decode_xrt"):
            assert row[m] is not None and np.isfinite(row[m]), (row["spec"], m)
        assert 0 < row["entropy_bps"] <= row["nominal_bps"]

    # entropy bitrate: frame rate × Σ per-codebook unigram entropy, recomputed here from the codes
    codec = Codec("encodec", enc, n_q=2)
    codes = []
    utts = load_corpus(two_utterances)
    for u in utts:
        wav = torch.from_numpy(load_utterance(u, codec.sample_rate))[None]
        c, n = codec.encode(wav, torch.tensor([wav.shape[1]]))
        codes.append(c[0, :, : int(n[0])].numpy())
        if u is utts[0]:  # the row scores this round trip, cut to the input's length, against the original
            hyp = codec.decode(c, n)[0][0, : wav.shape[1]].numpy()
            ref, sr = read_audio(u.path)
            expected = resynth_metrics(ref, sr, hyp, codec.sample_rate)
    got = rep["per_file"][f"encodec:{enc}:nq=2"][0]
    assert got["id"] == utts[0].id and got["length_difference_s"] == pytest.approx(0, abs=1 / sr)
    assert {m: got[m] for m in ("pesq_wb", "stoi", "mcd_db")} == pytest.approx(
        {m: expected[m] for m in ("pesq_wb", "stoi", "mcd_db")}, rel=1e-6)
    codes = np.concatenate(codes, 1)
    assert len(np.unique(codes[0])) >= 8  # a test of the entropy, not of a constant code
    shares = [np.unique(q, return_counts=True)[1] / codes.shape[1] for q in codes]
    bits = [-(p * np.log2(p)).sum() for p in shares]
    assert two["entropy_bps"] == pytest.approx(375.0 * sum(bits), rel=1e-9)
    assert one["entropy_bps"] == pytest.approx(375.0 * bits[0], rel=1e-9)

    md = (out / "report.md").read_text()
    assert f"encodec:{enc}:nq=2" in md and bad in md and "bitrate_quality.png" in md
    assert (out / "bitrate_quality.png").stat().st_size > 0


class DropFirstWord:
    """An ASR stand-in: reference audio (not at the codec's rate) 'recognised' as its manifest text, each
    round trip (at 24 kHz) as that text without its first word."""

    backend, model, model_sha256 = "given", "lookup", "0" * 64

    def __init__(self, by_seconds: dict[float, str]):
        self.by_seconds = by_seconds

    def transcribe(self, wavs):
        texts = [self.by_seconds[round(len(w) / sr, 2)] for w, sr in wavs]
        return [t.split(" ", 1)[1] if sr == 24000 else t for t, (_, sr) in zip(texts, wavs)]


def test_eval_codecs_wer_from_the_manifest_text(diverse_codec, two_utterances, tmp_path, monkeypatch):
    """--asr without --transcripts scores against the manifest's text: one deleted word of 9 → WER 1/9 and
    dWER 1/9 in every row of a sweep (each row's own pairs, not the previous row's too)."""
    import speechtok.eval.asr as asr_mod
    from speechtok.pipelines.evaluate import evaluate_codecs

    one = tmp_path / "one.jsonl"
    one.write_text(two_utterances.read_text().splitlines()[0] + "\n")
    (u,) = load_corpus(one)
    wav, sr = read_audio(u.path)
    assert sr != 24000 and len(u.text.split()) == 9
    stand_in = DropFirstWord({round(len(wav) / sr, 2): u.text})
    monkeypatch.setattr(asr_mod, "load_asr", lambda spec, device, batch_size: stand_in)
    r = evaluate_codecs(one, [f"encodec:{diverse_codec('encodec')}:nq=1,2"], tmp_path / "out", asr="given")
    assert r["errors"] == [] and len(r["rows"]) == 2
    for row in r["rows"]:
        assert row["wer"] == pytest.approx(1 / 9) and row["dwer"] == pytest.approx(1 / 9)
    assert r["asr"]["dwer"]["pairs"] == 1 and r["asr"]["reference_vs_text"]["wer"] == 0
