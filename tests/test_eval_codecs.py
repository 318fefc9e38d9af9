"""`tok eval codecs`: one row per codec spec (nq sweeps expanded), nominal bitrate by its formula, entropy
bitrate recomputed from the codes, resynthesis metrics present, and a bad spec reported without stopping."""

import json
import math
from pathlib import Path

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


class CountingModels:
    """Stand-ins for UTMOS, DNSMOS, the speaker encoder and ASR that log what they score: (model, 'ref' or
    'hyp' by the rate — round trips are at the codec's 24 kHz —, number of samples)."""

    backend, model, model_sha256 = "stand-in", "counting", "0" * 64

    def __init__(self, *args):
        pass

    calls: list = []

    def log(self, what, wav, sr):
        CountingModels.calls.append((what, "hyp" if sr == 24000 else "ref", len(wav)))

    def score(self, wav, sr):  # UTMOS: a float; DNSMOS: a dict
        self.log(type(self).__name__, wav, sr)
        return len(wav) / sr if type(self).__name__ == "UTMOS" else {
            k: len(wav) / sr for k in ("dnsmos_sig", "dnsmos_bak", "dnsmos_ovrl", "dnsmos_p808")}

    def embed(self, wav, sr):
        self.log("speaker", wav, sr)
        return np.array([1.0, len(wav) / sr])

    def transcribe(self, wavs):
        for w, sr in wavs:
            self.log("asr", w, sr)
        return ["a b" for _ in wavs]


def test_eval_codecs_scores_each_reference_once(diverse_codec, two_utterances, tmp_path, monkeypatch):
    """Two rows (an nq sweep) × two utterances: each model scores every round trip, and each reference once
    (its UTMOS, DNSMOS, speaker embedding and ASR transcript never change between rows)."""
    import speechtok.eval.asr as asr_mod
    import speechtok.eval.mos as mos_mod
    import speechtok.eval.speaker as speaker_mod
    import speechtok.eval.utmos as utmos_mod
    from speechtok.pipelines.evaluate import evaluate_codecs

    monkeypatch.setattr(utmos_mod, "UTMOS", type("UTMOS", (CountingModels,), {}))
    monkeypatch.setattr(mos_mod, "DNSMOS", type("DNSMOS", (CountingModels,), {}))
    monkeypatch.setattr(speaker_mod, "load_speaker_encoder", lambda spec, device: CountingModels())
    monkeypatch.setattr(asr_mod, "load_asr", lambda spec, device, batch_size: CountingModels())
    monkeypatch.setattr(CountingModels, "calls", [])
    r = evaluate_codecs(two_utterances, [f"encodec:{diverse_codec('encodec')}:nq=1,2"], tmp_path / "out",
                        asr="x", speaker="x", mos=True, utmos="x")
    assert r["errors"] == [] and len(r["rows"]) == 2 and all(row["files"] == 2 for row in r["rows"])
    audio = [read_audio(u.path) for u in load_corpus(two_utterances)]
    refs = [len(wav) for wav, _ in audio]
    assert len(set(refs)) == 2 and all(sr != 24000 for _, sr in audio)
    for what in ("UTMOS", "DNSMOS", "speaker", "asr"):
        calls = [c for c in CountingModels.calls if c[0] == what]
        assert sorted(n for _, side, n in calls if side == "ref") == sorted(refs), what  # once per reference
        assert len([c for c in calls if c[1] == "hyp"]) == 2 * 2, what  # every round trip of every row
    one, two = (r["per_file"][row["spec"]] for row in r["rows"])
    for a, b, (wav, sr) in zip(one, two, audio):
        assert a["ref_utmos"] == b["ref_utmos"] == pytest.approx(len(wav) / sr)
        assert a["ref_dnsmos_ovrl"] == b["ref_dnsmos_ovrl"] and a["dwer"] == b["dwer"] == 0


def test_unit_bitrates_of_a_hand_made_stream():
    """k = 4 units at 50 Hz, [0 0 0 1 1 2 3 3] in 0.16 s: nominal 2 bits × 50 Hz; entropy 50 Hz × H(3/8, 2/8,
    1/8, 2/8); deduplicated [0 1 2 3]: 4 tokens of 2 bits in 0.16 s = 50 bps."""
    from speechtok.eval.codecs import CodeEntropy, nominal_bps

    e = CodeEntropy(1, 4, 50.0, dedup=True)
    e.add(np.array([[0, 0, 0, 1, 1, 2, 3, 3]]), 0.16)
    r = e.result()
    assert nominal_bps(1, 4, 50.0) == 100.0
    h = -(3 / 8 * math.log2(3 / 8) + 2 * (2 / 8) * math.log2(2 / 8) + 1 / 8 * math.log2(1 / 8))
    assert r["entropy_bps"] == pytest.approx(50 * h) and r["entropy_bits"] == [pytest.approx(h)]
    assert r["dedup_tokens_per_second"] == pytest.approx(25.0)
    assert r["dedup_entropy_bps"] == pytest.approx(50.0)
    assert "dedup_entropy_bps" not in CodeEntropy(1, 4, 50.0).result()  # codec codes: no deduplicated rate


def tiny_vocos(features: dict, padding: str) -> "Vocos":  # noqa: F821
    """A random-init Vocos (hop 64) of the given feature extractor, in the released config layout."""
    from speechtok.vocoders.vocos import Vocos

    return Vocos({"feature_extractor": features,
                  "backbone": {"class_path": "vocos.models.VocosBackbone",
                               "init_args": {"input_channels": 16, "dim": 32, "intermediate_dim": 64,
                                             "num_layers": 1}},
                  "head": {"class_path": "vocos.heads.ISTFTHead",
                           "init_args": {"dim": 32, "n_fft": 256, "hop_length": 64, "padding": padding}}})


@pytest.fixture(scope="module")
def vocoder_specs(diverse_codec, tmp_path_factory):
    """Random-init vocoders saved in their own layouts (no training): an MFCC tokenizer (k = 20, 100 Hz) +
    a unit HiFi-GAN recording its units, a 16 kHz mel Vocos, and a Vocos reading the tiny EnCodec's 2
    codebooks."""
    from speechtok.unit_stream import unit_stream
    from speechtok.vocoders.hifigan import UnitHiFiGAN, UnitHiFiGANConfig

    root = tmp_path_factory.mktemp("eval_vocoders")
    np.save(root / "c.npy", np.random.default_rng(0).normal(size=(20, 39)).astype(np.float32))
    r = CliRunner().invoke(cli, ["import-kmeans", str(root / "c.npy"), "-m", "mfcc", "-o", str(root / "km")])
    assert r.exit_code == 0, r.output
    card = json.loads((root / "km" / "tokenizer.json").read_text())
    torch.manual_seed(0)
    UnitHiFiGAN(UnitHiFiGANConfig(k=20, frame_rate=100.0, embed_dim=16, upsample_initial_channel=16,
                                  upsample_rates=[5, 4, 4, 2], upsample_kernel_sizes=[11, 8, 8, 4],
                                  resblock_kernel_sizes=[3], resblock_dilation_sizes=[[1, 3]],
                                  unit_stream=unit_stream(card, dedup=False))).save(root / "hifigan")
    mel = {"class_path": "vocos.feature_extractors.MelSpectrogramFeatures",
           "init_args": {"sample_rate": 16000, "n_fft": 256, "hop_length": 64, "n_mels": 16,
                         "padding": "center"}}
    tiny_vocos(mel, "center").save_pretrained(root / "vocos_mel")
    codes = {"class_path": "vocos.feature_extractors.EncodecFeatures",
             "init_args": {"codebook_size": 1024, "n_q": 2, "dim": 16, "sample_rate": 24000}}
    tiny_vocos(codes, "same").save_pretrained(root / "vocos_codec")
    enc = diverse_codec("encodec")
    return {"units": (str(root / "km"), str(root / "hifigan")), "mel": (None, str(root / "vocos_mel")),
            "codec": (f"encodec:{enc}:nq=2", str(root / "vocos_codec"))}


class SecondsMOS:
    """A UTMOS stand-in: each signal's 'MOS' is its duration."""

    backend, model, model_sha256 = "utmos22_strong", "stand-in", "0" * 64

    def __init__(self, path, device):
        pass

    def score(self, wav, sr):
        return len(wav) / sr


def test_eval_codecs_rows_through_vocoders_are_tok_resynth(vocoder_specs, two_utterances, tmp_path,
                                                           monkeypatch):
    """A tokenizer + vocoder row scores exactly the audio `tok resynth` (`resynthesize`) makes of each file;
    unit rows carry log2(k) × frame rate, the unit entropy rate and the deduplicated one of the units the
    tokenizer gives; a mel Vocos row has no bitrate and stays off the plot; --utmos scores each round trip."""
    import speechtok.eval.resynth as resynth_mod
    import speechtok.eval.utmos as utmos_mod
    from speechtok.eval.tokens import Stream, TokenStats
    from speechtok.pipelines.evaluate import evaluate_codecs
    from speechtok.pipelines.resynth import resynthesize
    from speechtok.tokenizers.load import load_tokenizer

    scored = []
    metrics = resynth_mod.resynth_metrics
    monkeypatch.setattr(resynth_mod, "resynth_metrics", lambda ref, rsr, hyp, hsr:
                        scored.append((hyp.copy(), hsr)) or metrics(ref, rsr, hyp, hsr))
    monkeypatch.setattr(utmos_mod, "UTMOS", SecondsMOS)
    one = tmp_path / "one.jsonl"
    one.write_text(two_utterances.read_text().splitlines()[0] + "\n")
    specs = [":".join(filter(None, [tok, f"vocoder={voc}"])) for tok, voc in vocoder_specs.values()]
    r = evaluate_codecs(one, specs, tmp_path / "rep", utmos="ckpt.pt")
    assert r["errors"] == [] and [x["spec"] for x in r["rows"]] == specs
    assert r["utmos"]["backend"] == "utmos22_strong"
    utts = load_corpus(one)
    assert len(scored) == len(specs) * len(utts)
    for (name, (tok, voc)), row in zip(vocoder_specs.items(), r["rows"]):
        for u, (hyp, hsr) in zip(utts, scored[: len(utts)]):
            wav, sr = read_audio(u.path)
            want, want_sr, _ = resynthesize(wav, sr, tok, voc, torch.device("cpu"))
            assert hsr == want_sr and hyp.shape == want.shape, name
            assert np.abs(hyp - want).max() <= 1e-6 and np.std(want) > 0, name
        assert row["utmos"] == pytest.approx(np.mean([len(h) / sr for h, sr in scored[: len(utts)]]))
        scored = scored[len(utts):]
        assert row["files"] == 1 and row["vocoder"] == voc and len(row["vocoder_sha256"]) == 64
        for m in ("pesq_wb", "stoi", "mcd_db", "encode_xrt", "decode_xrt"):
            assert row[m] is not None and np.isfinite(row[m]), (name, m)
    units, mel, codec = r["rows"]
    assert mel["nominal_bps"] is None and mel["entropy_bps"] is None and mel["codec"] == "mel"
    assert codec["nominal_bps"] == 7500.0 and 0 < codec["entropy_bps"] <= 7500.0
    assert codec["sample_rate"] == 24000

    km = load_tokenizer(vocoder_specs["units"][0])
    assert units["nominal_bps"] == pytest.approx(math.log2(20) * 100) and units["n_q"] == 1
    stats, frames = TokenStats(Stream("u", "semantic", 20, 1, 100.0)), []
    for u in utts:
        wav, sr = read_audio(u.path)
        frames.append(km.encode(wav, sr))
        stats.add(frames[-1][None], len(wav) / sr)
    frames = np.concatenate(frames)
    assert len(np.unique(frames)) >= 8 and (np.diff(frames) == 0).any()  # entropy and dedup both matter here
    p = np.bincount(frames) / len(frames)
    assert units["entropy_bps"] == pytest.approx(100 * -(p[p > 0] * np.log2(p[p > 0])).sum(), rel=1e-9)
    want = stats.result()["bitrate"]["dedup_entropy_bps"]
    assert units["dedup_entropy_bps"] == pytest.approx(want, rel=1e-9) and want < units["entropy_bps"]

    md = (tmp_path / "rep" / "report.md").read_text()
    assert "dedup_entropy_bps" in md and vocoder_specs["mel"][1] in md and "bitrate_quality.png" in md
    from speechtok.eval.report import plot_bitrate_quality

    assert not plot_bitrate_quality([mel], [("pesq_wb", "PESQ")], tmp_path / "p.png", "mel alone")


def test_a_dedup_tokenizer_gives_a_frame_level_vocoder_frame_level_units(vocoder_specs, two_utterances,
                                                                         tmp_path):
    """A `dedup: true` tokenizer (import-kmeans --dedup, same centroids) + a frame-level unit HiFi-GAN, in
    `tok eval codecs` and `tok resynth`: the audio keeps the input's length and the row's bitrates are the
    plain tokenizer's (deduplicated rate reported apart, as before), not those of deduplicated units."""
    import soundfile as sf

    from speechtok.pipelines.evaluate import evaluate_codecs

    km, voc = vocoder_specs["units"]
    dd = tmp_path / "km_dedup"
    r = CliRunner().invoke(cli, ["import-kmeans", str(Path(km).parent / "c.npy"), "-m", "mfcc", "--dedup",
                                 "-o", str(dd)])
    assert r.exit_code == 0, r.output
    assert json.loads((dd / "tokenizer.json").read_text())["dedup"] is True
    one = tmp_path / "one.jsonl"
    one.write_text(two_utterances.read_text().splitlines()[0] + "\n")
    specs = [f"{km}:vocoder={voc}", f"{dd}:vocoder={voc}"]
    rep = evaluate_codecs(one, specs, tmp_path / "rep")
    assert rep["errors"] == [] and len(rep["rows"]) == 2
    plain, dedup = rep["rows"]
    assert plain["dedup_entropy_bps"] < plain["entropy_bps"]  # deduplication changes the rates here
    for key in ("nominal_bps", "entropy_bps", "dedup_tokens_per_second", "dedup_entropy_bps", "pesq_wb"):
        assert dedup[key] == pytest.approx(plain[key], rel=1e-9), key
    (a,), (b,) = rep["per_file"][specs[0]], rep["per_file"][specs[1]]
    assert abs(a["length_difference_s"]) <= 0.03  # ≤ 3 frames at 100 Hz (old: 1.4 s short)
    assert b["length_difference_s"] == a["length_difference_s"]

    audio = load_corpus(one)[0].path
    r = CliRunner().invoke(cli, ["resynth", str(audio), "-t", str(dd), "--vocoder", voc, "-o",
                                 str(tmp_path / "dd.wav")])
    assert r.exit_code == 0, r.output
    wav, sr = read_audio(audio)
    out, out_sr = sf.read(tmp_path / "dd.wav")
    assert abs(len(out) / out_sr - len(wav) / sr) <= 0.03, r.output


def test_split_vocoder_takes_the_rest_of_the_spec(tmp_path):
    """`vocoder=` is last and takes the rest, ':' included (a run folder named by a time); a tokenizer or
    codec option after it is refused rather than read as part of a path."""
    from speechtok.tokenizers.spec import split_vocoder

    voc = "/runs/2026-01-01T10:00/final"
    assert split_vocoder(f"encodec:facebook/encodec_24khz:nq=2:vocoder={voc}") == (
        "encodec:facebook/encodec_24khz:nq=2", voc)
    assert split_vocoder(f"vocoder={voc}") == (None, voc)
    km = tmp_path / "km:a"
    km.mkdir()
    (km / "tokenizer.json").write_text("{}")
    assert split_vocoder(f"{km}:vocoder={voc}") == (str(km), voc)
    assert split_vocoder("dac:/m/dac:16k:nq=4") == ("dac:/m/dac:16k:nq=4", None)
    for bad in (f"encodec:m:vocoder={voc}:nq=2", f"vocoder={voc}:vocoder=x", f"{km}:vocoder="):
        with pytest.raises(ValueError, match="give one vocoder=DIR, last"):
            split_vocoder(bad)


def test_eval_codecs_refuses_a_malformed_spec_before_loading(two_utterances, tmp_path, monkeypatch):
    """Semantic units without a vocoder, an empty vocoder=, or an unknown tokenizer: one line, exit 2, no
    model loaded."""
    import speechtok.pipelines.evaluate as evaluate_mod

    monkeypatch.setattr(evaluate_mod, "evaluate_codecs",
                        lambda *a, **k: pytest.fail("went on to load models"))
    km = tmp_path / "km"
    km.mkdir()
    (km / "tokenizer.json").write_text("{}")
    for spec, says in ((str(km), "need a unit vocoder"), (f"{km}:vocoder=", "give one vocoder=DIR"),
                       (f"{tmp_path}/nothing:vocoder=v", "neither a tokenizer directory")):
        args = ["eval", "codecs", str(two_utterances), "-t", spec, "-o", str(tmp_path / "o")]
        r = CliRunner().invoke(cli, args)
        assert r.exit_code == 2 and says in r.output and spec.split(":")[0] in r.output, r.output
        assert len(r.output.strip().splitlines()) == 1
