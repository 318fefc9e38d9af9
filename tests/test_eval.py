"""`tok eval`: every metric against cases with known answers (identical signals, a pure delay, a known SNR,
a known pitch shift, perfect and random labellings, constant tokens), then the three commands end to end on
synthetic speech (flite phone alignments for PNMI/ABX, an overfitted tiny LM for the probes)."""

import csv
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

from speechtok import read_shards
from speechtok.cli.main import cli
from speechtok.eval.abx import abx_error, item_frames
from speechtok.eval.alignments import AbxItem, Phone, frame_labels, triphone_items
from speechtok.eval.dtw import dtw, dtw_batch
from speechtok.eval.resynth import mcep_alpha, resynth_metrics, si_sdr
from speechtok.eval.tokens import Stream, TokenStats, phone_unit_metrics
from speech import build_phone_corpus


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


# ---- token metrics ----------------------------------------------------------------------------------------

def test_phone_unit_metrics_known_answers():
    perfect = np.diag([30, 10, 40, 20])[:, [2, 0, 3, 1]]  # a bijection phone ↔ unit, in any order
    m = phone_unit_metrics(perfect)
    assert (m["pnmi"] == pytest.approx(1.0) and m["phone_purity"] == pytest.approx(1)
            and m["cluster_purity"] == pytest.approx(1))
    # 4 equiprobable phones in 2 units: I = 1 bit, H = 2 bits
    merged = np.array([[25, 0], [25, 0], [0, 25], [0, 25]])
    m = phone_unit_metrics(merged)
    assert (m["pnmi"] == pytest.approx(0.5) and m["phone_purity"] == pytest.approx(0.5)
            and m["cluster_purity"] == pytest.approx(1))
    rng = np.random.default_rng(0)
    phones, units = rng.choice(5, 200_000, p=[0.4, 0.3, 0.1, 0.1, 0.1]), rng.integers(0, 50, 200_000)
    joint = np.zeros((5, 50))
    np.add.at(joint, (phones, units), 1)
    m = phone_unit_metrics(joint)  # a labelling independent of the phones carries no information
    assert m["pnmi"] < 0.002 and m["phone_purity"] == pytest.approx(0.4, abs=0.01)


def test_bitrate_and_usage_known_answers():
    s = TokenStats(Stream("semantic", "semantic", vocab=8, n_q=1, frame_rate=50.0))
    codes = np.repeat(np.tile(np.arange(4), 125), 2)[None]  # 20 s at 50 Hz, each code held for 2 frames
    s.add(codes, 20.0)
    r = s.result()
    b, c = r["bitrate"], r["codebooks"][0]
    assert b["nominal_bps"] == pytest.approx(50 * 3)  # 50 tokens/s × log2(8)
    assert b["entropy_bps"] == pytest.approx(50 * 2)  # 4 codes used evenly: 2 bits each
    assert b["dedup_tokens_per_second"] == pytest.approx(25) and b["dedup_entropy_bps"] == pytest.approx(50)
    assert (c["usage"] == 0.5 and c["perplexity"] == pytest.approx(4)
            and c["normalized_entropy"] == pytest.approx(2 / 3))
    codec = TokenStats(Stream("encodec", "codec", vocab=4, n_q=2, frame_rate=75.0))
    codec.add(np.stack([np.zeros(148, int), np.arange(148) % 4]), 148 / 75)
    r = codec.result()
    assert [x["entropy_bits"] for x in r["codebooks"]] == pytest.approx([0, 2])
    assert (r["bitrate"]["nominal_bps"] == pytest.approx(75 * 2 * 2)
            and r["bitrate"]["entropy_bps"] == pytest.approx(150))


def test_frame_labels_follow_frame_centres():
    names = {}
    phones = [Phone("a", 0.0, 0.1), Phone("b", 0.1, 0.25), Phone("a", 0.3, 0.32)]
    labels = frame_labels(phones, 40, 100.0, names)
    assert names == {"a": 0, "b": 1}
    assert list(labels[:10]) == [0] * 10 and list(labels[10:25]) == [1] * 15
    assert list(labels[25:30]) == [-1] * 5 and list(labels[30:32]) == [0, 0] and (labels[32:] == -1).all()


def test_dtw_known_answers():
    x = np.array([0.0, 1, 2, 3])
    y = np.repeat(x, 2)  # the same sequence, each frame twice: a pure time stretch
    total, path = dtw(np.abs(x[:, None] - y[None]), return_path=True)
    assert total == 0 and path[0] == (0, 0) and path[-1] == (3, 7) and len(path) == 8
    total, _ = dtw(np.array([[1.0, 5], [5, 3]]))  # diagonal (1 + 3) beats both detours, over 2 steps
    assert total == pytest.approx(2.0)
    rng = np.random.default_rng(0)  # the batched version gives each pair what it gives alone
    n, m = rng.integers(1, 12, 50), rng.integers(1, 12, 50)
    cost = rng.random((50, 11, 11))
    np.testing.assert_allclose(dtw_batch(cost, n, m), [dtw(c[:a, :b])[0] for c, a, b in zip(cost, n, m)])


def _abx_design(codes_of, speakers=("s1", "s2"), reps=3):
    """Items for every (context, phone, speaker) with `reps` tokens; codes_of(item, r) gives their codes."""
    items, codes = [], []
    for ctx in (("k", "t"), ("b", "t"), ("s", "n")):
        for phone in ("ae", "ih", "ah"):
            for spk in speakers:
                for r in range(reps):
                    it = AbxItem(f"{spk}_{r}", 0, 0.3, phone, *ctx, spk)
                    items.append(it)
                    codes.append(codes_of(it, r))
    return items, codes


def test_abx_known_answers():
    ids = {p: i for i, p in enumerate(["k", "t", "b", "s", "n", "ae", "ih", "ah"])}

    def perfect(it, r):  # one token per phone, each phone held for a random-ish duration
        return np.concatenate([np.full(3 + (r + k) % 3, ids[p])
                               for k, p in enumerate((it.prev, it.phone, it.next))])[None]

    items, codes = _abx_design(perfect)
    r = abx_error(items, codes)
    assert r["within_speaker_error"] == 0 and r["across_speaker_error"] == 0
    assert r["within_speaker_pairs"] == 6 and r["items"] == len(items)
    items, codes = _abx_design(lambda it, r: np.zeros((1, 9), int))  # constant tokens: every comparison ties
    r = abx_error(items, codes)
    assert r["within_speaker_error"] == 0.5 and r["across_speaker_error"] == 0.5
    rng = np.random.default_rng(0)
    items, codes = _abx_design(lambda it, r: rng.integers(0, 20, (2, 9)), speakers=("a", "b", "c"), reps=5)
    r = abx_error(items, codes)
    assert 0.35 < r["within_speaker_error"] < 0.65 and 0.35 < r["across_speaker_error"] < 0.65


def test_abx_equals_libri_light_reference():
    """The ZeroSpeech 2021 / Libri-light ABX (zerospeech-libriabx2, one-hot codes, cosine) on the same
    items and codes (tests/reference/make_abx_fixture.py): item frames, DTW ties and orientation, and the
    averaging order (across: (context, X speaker) cells pooled per A speaker) all have to match."""
    ref = np.load(Path(__file__).parent / "fixtures" / "abx_reference.npz")
    ends = np.cumsum(ref["lengths"])
    codes = {n: ref["codes"][e - k: e][None] for n, e, k in zip(ref["file_names"], ends, ref["lengths"])}
    items = [AbxItem(str(f), float(t[0]), float(t[1]), *map(str, lab))
             for f, t, lab in zip(ref["item_file"], ref["item_times"], ref["item_labels"])]
    spans = [item_frames(it.onset, it.offset, float(ref["frame_rate"])) for it in items]
    item_codes = [codes[it.file][:, a:b] if b > a else None for it, (a, b) in zip(items, spans)]
    assert len(items) == 102 and len({it.speaker for it in items}) == 3 and len(np.unique(ref["codes"])) == 12
    r = abx_error(items, item_codes, max_per_group=10)  # the reference's cap; no group reaches it
    assert 0.1 < ref["within_error"] < ref["across_error"] < 0.4  # informative, not all-ties
    # float32 sums there
    assert r["within_speaker_error"] == pytest.approx(float(ref["within_error"]), abs=1e-6)
    assert r["across_speaker_error"] == pytest.approx(float(ref["across_error"]), abs=1e-6)
    assert r["items"] == sum(s is not None for s in item_codes)


# ---- resynthesis metrics ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def phone_corpus(tmp_path_factory):
    """18 flite utterances (3 voices × 6 sentences of minimal triphone contrasts) with phone alignments,
    MFCC k-means units (k=50, 100 Hz) and their shards."""
    root = tmp_path_factory.mktemp("phones")
    manifest = build_phone_corpus(root)
    assert run("train-kmeans", manifest, "-m", "mfcc", "-k", 50, "-o", root / "km", "-q").exit_code == 0
    assert run("encode", manifest, "-t", root / "km", "-o", root / "shards", "-q").exit_code == 0
    return root


def test_mcep_alpha_matches_sptk():
    assert [mcep_alpha(sr) for sr in (8000, 16000, 22050, 24000, 48000)] == [0.312, 0.41, 0.455, 0.466, 0.554]


def test_resynth_metrics_known_answers(phone_corpus):
    x, sr = sf.read(phone_corpus / "audio" / "awb" / "awb_00.wav", dtype="float32")
    same = resynth_metrics(x, sr, x.copy(), sr)
    assert same["si_sdr_db"] == 100 and same["stoi"] == pytest.approx(1, abs=1e-6) and same["pesq_wb"] > 4.6
    assert same["mcd_db"] == 0 and same["f0_rmse_hz"] == 0 and same["voicing_error"] == 0
    delayed = np.concatenate([np.zeros(int(0.05 * sr), np.float32), x])[: len(x)]  # 50 ms later
    d = resynth_metrics(x, sr, delayed, sr)
    assert d["si_sdr_db"] < 0 and d["stoi"] < 0.5  # sample-aligned metrics see the delay ...
    # ... aligned ones do not
    assert d["pesq_wb"] > 4.0 and d["mcd_db"] < 1.0 and d["f0_rmse_hz"] < 1 and d["voicing_error"] < 0.02
    rng = np.random.default_rng(0)
    xc = x - x.mean()
    noise = rng.standard_normal(len(x))
    noise -= noise.mean()
    noise -= (noise @ xc) / (xc @ xc) * xc
    noise *= math.sqrt((xc @ xc) / (noise @ noise) / 10)  # orthogonal to the speech, 10 dB below it
    assert si_sdr(x, x + noise) == pytest.approx(10, abs=1e-3)
    assert si_sdr(x, 0.5 * x) == 100  # scale invariant


def test_f0_rmse_of_a_known_pitch_shift():
    sr = 16000
    t = np.arange(2 * sr) / sr

    def tone(f0):  # a harmonic tone, 7 partials
        return (0.3 * sum(np.sin(2 * np.pi * f0 * h * t) / h for h in range(1, 8))).astype(np.float32)

    r = resynth_metrics(tone(150), sr, tone(165), sr)
    assert r["f0_rmse_hz"] == pytest.approx(15, abs=0.5)
    assert r["f0_rmse_cents"] == pytest.approx(1200 * math.log2(1.1), abs=3) and r["voicing_error"] == 0


# ---- tok eval tokens / resynth ----------------------------------------------------------------------------

def test_eval_tokens_end_to_end(phone_corpus, tmp_path):
    root = phone_corpus
    r = run("eval", "tokens", root / "shards", "--alignments", root / "corpus.jsonl", "-o", tmp_path / "rep")
    assert r.exit_code == 0, r.output
    rep = json.loads((tmp_path / "rep" / "report.json").read_text())["streams"]["semantic"]
    samples = list(read_shards(root / "shards"))
    frames, seconds = sum(len(s["semantic"]) for s in samples), sum(s["duration"] for s in samples)
    assert (rep["frames"] == frames
            and rep["bitrate"]["nominal_bps"] == pytest.approx(frames * math.log2(50) / seconds))
    assert rep["bitrate"]["dedup_tokens_per_second"] < frames / seconds
    p = rep["phones"][0]
    assert 0.3 < p["pnmi"] < 1 and p["phones"] == 15  # MFCC units carry phone information, imperfectly
    abx = rep["abx"]
    assert (abx["within_speaker_error"] < 0.3
            and abx["within_speaker_error"] < abx["across_speaker_error"] < 0.5)
    for png in ("usage_semantic.png", "phone_unit_semantic.png"):
        assert (tmp_path / "rep" / png).stat().st_size > 1000
    assert "PNMI" in r.output and "| pnmi |" in (tmp_path / "rep" / "report.md").read_text()

    # the same triphones as a ZeroSpeech .item file give the same ABX
    rows = [json.loads(x) for x in (root / "corpus.jsonl").read_text().splitlines()]
    items = triphone_items({x["id"]: [Phone(**p) for p in x["phones"]] for x in rows},
                           {x["id"]: x["speaker"] for x in rows})
    item_file = tmp_path / "triphones.item"
    item_file.write_text("#file onset offset #phone prev-phone next-phone speaker\n" + "".join(
        f"{i.file} {i.onset} {i.offset} {i.phone} {i.prev} {i.next} {i.speaker}\n" for i in items))
    r = run("eval", "tokens", root / "shards", "--items", item_file, "-o", tmp_path / "rep2")
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "rep2" / "report.json").read_text())["streams"]["semantic"]["abx"] == abx

    # a bad alignment line is reported by file and line; the rest is evaluated
    lines = (root / "corpus.jsonl").read_text().splitlines()
    bad = json.loads(lines[3])
    bad["phones"][2]["end"] = "soon"
    lines[3] = json.dumps(bad)
    (tmp_path / "bad.jsonl").write_text("\n".join(lines + ["{not json"]) + "\n")
    r = run("eval", "tokens", root / "shards", "--alignments", tmp_path / "bad.jsonl", "-o",
            tmp_path / "rep3")
    assert r.exit_code == 1
    assert "bad.jsonl:4: bad phone entry" in r.output and "bad.jsonl:19: bad JSON" in r.output
    assert (json.loads((tmp_path / "rep3" / "report.json").read_text())["streams"]["semantic"]["phones"][0]
            ["frames"] < frames)


def test_eval_tokens_codec_and_deduplicated_shards(phone_corpus, units_and_codec_shards, tmp_path):
    """Codec streams are reported per codebook; run-length shards give the same numbers as frame shards."""
    r = run("eval", "tokens", units_and_codec_shards / "shards", "-o", tmp_path / "codec")
    assert r.exit_code == 0, r.output
    streams = json.loads((tmp_path / "codec" / "report.json").read_text())["streams"]
    enc = streams["encodec"]
    assert enc["n_q"] == 2 and len(enc["codebooks"]) == 2 and "abx" not in enc and "phones" not in enc
    assert enc["bitrate"]["nominal_bps"] == pytest.approx(enc["frames"] * 2 * math.log2(16) / enc["seconds"])
    assert (tmp_path / "codec" / "usage_encodec.png").exists()

    root = phone_corpus
    assert run("encode", root / "corpus.jsonl", "-t", root / "km", "--dedup", "-o", tmp_path / "dedup",
               "-q").exit_code == 0
    reps = []
    for name, shards in (("frames", root / "shards"), ("runs", tmp_path / "dedup")):
        assert run("eval", "tokens", shards, "--alignments", root / "corpus.jsonl", "-o",
                   tmp_path / name).exit_code == 0
        rep = json.loads((tmp_path / name / "report.json").read_text())
        reps.append(rep["streams"]["semantic"])
    assert reps[0] == reps[1]


def test_eval_resynth_end_to_end(phone_corpus, tmp_path):
    ref, hyp = tmp_path / "ref", tmp_path / "hyp"
    for d in (ref, hyp):
        d.mkdir()
    wavs = sorted((phone_corpus / "audio" / "slt").glob("*.wav"))[:4]
    for w in wavs:
        shutil.copy(w, ref / w.name)
    x, sr = sf.read(wavs[0], dtype="float32")
    sf.write(hyp / (wavs[0].stem + ".flac"), x, sr)  # identical, another container
    y, _ = sf.read(wavs[1], dtype="float32")
    import soxr

    sf.write(hyp / wavs[1].name, soxr.resample(y, sr, 24000), 24000)  # another sample rate
    (hyp / wavs[2].name).write_bytes(b"RIFF....not audio")  # corrupt; wavs[3] has no hypothesis
    r = run("eval", "resynth", ref, hyp, "-o", tmp_path / "rep", "--plots", 2)
    assert r.exit_code == 1
    assert (f"{hyp / wavs[2].name}: cannot decode audio" in r.output
            and f"{ref / wavs[3].name}: no resynthesis" in r.output)
    rep = json.loads((tmp_path / "rep" / "report.json").read_text())
    rows = {x["id"]: x for x in rep["per_file"]}
    assert set(rows) == {wavs[0].stem, wavs[1].stem}
    assert rows[wavs[0].stem]["mcd_db"] == 0 and rows[wavs[0].stem]["si_sdr_db"] == 100
    resampled = rows[wavs[1].stem]  # 16 → 24 → 16 kHz: only the band edge near 8 kHz is lost
    assert resampled["pesq_wb"] > 4.5 and resampled["stoi"] > 0.99 and resampled["si_sdr_db"] > 20
    assert rep["mean"]["stoi"] == pytest.approx(np.mean([x["stoi"] for x in rows.values()]))
    assert ((tmp_path / "rep" / "spectrogram_02.png").exists()
            and not (tmp_path / "rep" / "spectrogram_03.png").exists())


# ---- tok eval lm ------------------------------------------------------------------------------------------

def test_perplexity_of_a_uniform_model_is_the_vocabulary_size(trained_lm, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(trained_lm)
    with torch.no_grad():
        model.get_output_embeddings().weight.zero_()  # every logit 0: p = 1 / V for every token
    model.save_pretrained(tmp_path / "uniform")
    for f in trained_lm.iterdir():  # not sha256.json: the edited weights are not the ones it records
        if not (tmp_path / "uniform" / f.name).exists() and f.name != "sha256.json":
            shutil.copy(f, tmp_path / "uniform" / f.name)
    shards = trained_lm.parent.parent / "shards"
    r = run("eval", "lm", tmp_path / "uniform", "--shards", shards, "-o", tmp_path / "u")
    assert r.exit_code == 0, r.output
    ppl = json.loads((tmp_path / "u" / "report.json").read_text())["perplexity"]["speech"]
    v = model.get_output_embeddings().weight.shape[0]
    assert (ppl["all"]["perplexity"] == pytest.approx(v, rel=1e-4)
            and ppl["speech"]["perplexity"] == pytest.approx(v, rel=1e-4))
    r = run("eval", "lm", trained_lm, "--shards", shards, "-o", tmp_path / "t")
    trained = (json.loads((tmp_path / "t" / "report.json").read_text())
               ["perplexity"]["speech"]["speech"]["perplexity"])
    assert trained < 3  # overfitted on these very utterances (12 units: chance would be 12)
    assert (tmp_path / "t" / "training.png").exists()


def test_perplexity_windows_stride_and_score_each_target_once():
    from speechtok.eval.lm import windows

    for length, max_len, stride in [(50, 16, 4), (50, 16, 8), (50, 16, 15), (16, 16, 5), (17, 16, 1),
                                    (2, 4, 3)]:
        plan = windows(length, max_len, stride)
        scored = [t for _, first, end in plan for t in range(first, end)]
        assert scored == list(range(1, length))  # every target exactly once, in order
        for k, (begin, first, end) in enumerate(plan):
            assert begin == k * stride and end - begin <= max_len
            assert first - begin >= (1 if k == 0 else max_len - stride)  # the least context a target gets
    # stride = the whole context (max_len - 1 new targets per window): the old consecutive windows that
    # overlap by one token, starting at 0, 15, 30
    assert windows(40, 16, 15) == [(0, 1, 16), (15, 16, 31), (30, 31, 40)]
    with pytest.raises(ValueError, match="stride must be in 1..15"):
        windows(40, 16, 16)


def test_strided_log_probs_match_direct_computation():
    """Against the model's own forward passes: one full-context pass where the context allows it, and for
    a shorter context each target's log-probability given exactly the tokens its window reads."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from speechtok.eval.lm import token_logprobs, windows

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=40, hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                         max_position_embeddings=64)).eval()
    seqs = [torch.randint(0, 40, (n,)).tolist() for n in (50, 33, 7)]

    def direct(ids: list[int]) -> np.ndarray:
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids])).logits[0].float()
        return torch.log_softmax(logits[:-1], -1).gather(-1, torch.tensor(ids[1:])[:, None])[:, 0].numpy()

    full = token_logprobs(model, seqs, batch_size=2)  # context 64 > every sequence: one window each
    for seq, lp in zip(seqs, full):
        np.testing.assert_allclose(lp, direct(seq), atol=2e-5)
    strided = token_logprobs(model, seqs, batch_size=2, max_len=16, stride=4)
    old = token_logprobs(model, seqs, batch_size=2, max_len=16, stride=15)
    for seq, lp, lp_old in zip(seqs, strided, old):
        assert lp.shape == (len(seq) - 1,)
        for begin, first, end in windows(len(seq), 16, 4):
            for t in range(first, end):
                assert lp[t - 1] == pytest.approx(direct(seq[begin: t + 1])[-1], abs=2e-5)
    assert not np.allclose(strided[0], old[0], atol=1e-3)  # more context changes the long sequence's scores
    np.testing.assert_allclose(strided[2], old[2], atol=2e-5)  # a sequence inside one window: no change


def test_eval_lm_text_format_scores_the_transcripts(trained_lm, tmp_path):
    """`--format text` scores the held-out samples' transcripts, not their units; without transcripts it is
    an error naming the format."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from speechtok.eval.lm import perplexity
    from speechtok.lm.sequences import SequenceBuilder
    from speechtok.lm.vocab import SpeechVocab

    shards = trained_lm.parent.parent / "shards"
    samples = list(read_shards(shards))
    tok = AutoTokenizer.from_pretrained(trained_lm)
    r = run("eval", "lm", trained_lm, "--shards", shards, "--format", "text", "--format", "speech", "-o",
            tmp_path / "r")
    assert r.exit_code == 0, r.output
    ppl = json.loads((tmp_path / "r" / "report.json").read_text())["perplexity"]
    text_tokens = sum(len(tok(s["text"], add_special_tokens=False)["input_ids"]) for s in samples)
    assert ppl["text"]["sequences"] == len(samples) == 8 and ppl["text"]["speech"]["tokens"] == 0
    assert ppl["text"]["text"]["tokens"] == text_tokens + 8 > 8  # every transcript token and its EOS
    assert ppl["speech"]["text"]["tokens"] == 8 and ppl["speech"]["speech"]["tokens"] > 0  # EOS only
    model = AutoModelForCausalLM.from_pretrained(trained_lm)
    builder = SequenceBuilder(SpeechVocab.load(trained_lm), tok)
    untranscribed = [{k: v for k, v in s.items() if k != "text"} for s in samples]
    with pytest.raises(ValueError, match="--format text needs 'text'.*none of the 8"):
        perplexity(model, builder, untranscribed, ("text",))
    mixed = perplexity(model, builder, untranscribed[:3] + samples[3:], ("text",))["text"]
    assert mixed["sequences"] == 5 and mixed["skipped"] == 3 and mixed["speech"]["tokens"] == 0


def _reversed_wav(src: Path, dst: Path) -> Path:
    x, sr = sf.read(src, dtype="float32")
    sf.write(dst, x[::-1].copy(), sr)
    return dst


def test_minimal_pair_probes(trained_lm, tmp_path):
    root = trained_lm.parent.parent
    samples = list(read_shards(root / "shards"))
    units = [np.repeat(s["semantic"], s["semantic_durations"]) if "semantic_durations" in s else s["semantic"]
             for s in samples]
    pairs = [{"id": s["id"], "real": {"units": u.tolist()}, "fake": {"units": u[::-1].tolist()},
              "group": s["speaker"]}
             for s, u in zip(samples, units)]
    (tmp_path / "units.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))
    (tmp_path / "swapped.jsonl").write_text("".join(json.dumps({**p, "real": p["fake"], "fake": p["real"]})
                                                    + "\n" for p in pairs))
    (tmp_path / "ties.jsonl").write_text("".join(json.dumps({"id": i, "real": {"text": "the cat"},
                                                             "fake": {"text": "the cat"}}) + "\n"
                                                 for i in range(3)))
    r = run("eval", "lm", trained_lm, "--probes", tmp_path / "units.jsonl", "--probes",
            tmp_path / "swapped.jsonl", "--probes", tmp_path / "ties.jsonl", "-o", tmp_path / "rep")
    assert r.exit_code == 0, r.output
    probes = json.loads((tmp_path / "rep" / "report.json").read_text())["probes"]
    acc = probes[str(tmp_path / "units.jsonl")]
    assert acc["accuracy"] >= 0.875 and set(acc["groups"]) == {"alice", "bob", "carol", "dave"}
    assert probes[str(tmp_path / "swapped.jsonl")]["accuracy"] == pytest.approx(1 - acc["accuracy"])
    assert probes[str(tmp_path / "ties.jsonl")]["accuracy"] == 0.5

    # audio probes: a training utterance against itself played backwards, as JSONL and as a ZeroSpeech folder
    from speechtok.corpus import load_corpus
    from speechtok.shards import read_manifest

    audio = {u.id: u.path for u in load_corpus(read_manifest(root / "shards")[1]["corpus"])}
    zr = tmp_path / "zr"
    zr.mkdir()
    lines, gold = [], [["filename", "type", "subtype", "id", "voice", "correct"]]
    for s in samples[:4]:
        real = zr / f"{s['id']}_r.wav"
        shutil.copy(audio[s["id"]], real)
        _reversed_wav(real, zr / f"{s['id']}_f.wav")
        lines.append({"id": s["id"], "real": str(real), "fake": f"zr/{s['id']}_f.wav"})
        gold += [[f"{s['id']}_r", "reverse", "audio", s["id"], s["speaker"], 1],
                 [f"{s['id']}_f", "reverse", "audio", s["id"], s["speaker"], 0]]
    lines.append({"id": "missing", "real": "zr/nope.wav", "fake": f"zr/{samples[0]['id']}_f.wav"})
    (tmp_path / "audio.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    with open(zr / "gold.csv", "w", newline="") as f:
        csv.writer(f).writerows(gold)
    r = run("eval", "lm", trained_lm, "-t", root / "km", "--probes", tmp_path / "audio.jsonl", "--probes", zr,
            "-o", tmp_path / "rep2")
    assert r.exit_code == 1 and "probe missing:" in r.output and "nope.wav" in r.output
    probes = json.loads((tmp_path / "rep2" / "report.json").read_text())["probes"]
    a, z = probes[str(tmp_path / "audio.jsonl")], probes[str(zr)]
    assert a["pairs"] == 4 and a["accuracy"] >= 0.75
    assert z["accuracy"] == a["accuracy"] and z["groups"] == {"audio": a["accuracy"]}
    r = run("eval", "lm", trained_lm, "--probes", tmp_path / "audio.jsonl", "-o", tmp_path / "rep3")
    assert r.exit_code == 1 and "audio probes need the semantic tokenizer" in r.output


def test_identical_probe_items_tie_whatever_their_batch_rows():
    """A batch's float rounding depends on its rows (it differed per CPU kernel: the ties probe scored 1/3
    instead of 0.5 with ATEN_CPU_CAPABILITY=default). Stand-in LM whose logits scale by 1 + 1e-6 per batch
    row: identical items still tie, and swapping real and fake gives exactly 1 − each pair's score."""
    from types import SimpleNamespace

    import torch

    from speechtok.eval.lm import ProbeItem, ProbePair, score_pairs

    class RowDependentLM(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(16, 16)
            self.config = SimpleNamespace(max_position_embeddings=64)

        def forward(self, input_ids, attention_mask):
            rows = torch.arange(len(input_ids), dtype=torch.float32)[:, None, None]
            return SimpleNamespace(logits=self.emb(input_ids) * (1 + 1e-6 * rows))

    tokenizer = SimpleNamespace(bos_token_id=None)
    vocab = SimpleNamespace(text_id=0, speech_id=1, dedup=False, units_to_ids=lambda u: np.asarray(u) + 2)
    torch.manual_seed(0)
    model = RowDependentLM()
    same = [ProbePair(str(i), ProbeItem(units=[3, 1, 4, 1, 5]), ProbeItem(units=[3, 1, 4, 1, 5]))
            for i in range(3)]
    assert score_pairs(model, tokenizer, vocab, same, batch_size=8)["accuracy"] == 0.5
    pairs = [ProbePair(str(i), ProbeItem(units=[i, 2, 3]), ProbeItem(units=[3, 2, i])) for i in range(6)]
    swapped = [ProbePair(p.id, p.fake, p.real) for p in pairs]
    a = score_pairs(model, tokenizer, vocab, pairs, batch_size=3)["per_pair"]
    b = score_pairs(model, tokenizer, vocab, swapped, batch_size=3)["per_pair"]
    assert [x["score"] for x in b] == [1 - x["score"] for x in a] and a[3]["score"] == 0.5
