"""Two-stage generation: codebook patterns, stage 1 (LM → units), stage 2 (units → codec tokens), and
`tok generate` end to end, with tiny models overfitted on the synthetic corpus."""

import json

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml
from click.testing import CliRunner

from speechtok import read_shards
from speechtok.cli.main import cli
from speechtok.lm.acoustic import AcousticConfig, AcousticModel, from_steps, layout, acoustic_model, to_steps
from speechtok.lm.generate import SamplingOptions, generate_units, speech_prompt
from speechtok.lm.vocab import SpeechVocab
from speechtok.tokenizers.semantic import run_length
from speechtok.unit_stream import check_unit_streams, unit_stream

from overfit import reproduction
from speech import linked_workdir


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


@pytest.mark.parametrize("pattern", ["delay", "coarse_fine", "valle"])
def test_patterns_round_trip(pattern):
    cfg = AcousticConfig(k=4, n_q=3, codebook_size=5, pattern=pattern, n_coarse=1, dim=8, layers=1, heads=2)
    codes = np.random.default_rng(0).integers(0, 5, (3, 7))
    steps = to_steps(cfg, codes)
    np.testing.assert_array_equal(from_steps(cfg, steps, 7), codes)
    qs, ts = layout(cfg, 7)
    if pattern == "delay":
        assert steps.shape == (7 + 2, 3)
        assert steps[0, 1] == cfg.empty and steps[1, 1] == codes[1, 0] and steps[8, 2] == codes[2, 6]
    elif pattern == "coarse_fine":
        assert steps.shape == (21, 1)
        assert list(qs[:7, 0]) == [0] * 7 and list(ts[:7, 0]) == list(range(7))  # coarse codebook first
        assert steps[7, 0] == 5 + codes[1, 0]  # then the fine ones, offset per codebook
    else:  # valle: a step per frame holding its codebooks (the AR reads column 0, the NAR passes all)
        np.testing.assert_array_equal(steps, [[codes[q, t] for q in range(3)] for t in range(7)])
        assert (qs == [[0, 1, 2]] * 7).all() and (ts == [[t] * 3 for t in range(7)]).all()


def test_acoustic_model_cache_matches_full_forward():
    """Greedy decoding with the KV cache picks the argmax of the full causal forward at every step."""
    torch.manual_seed(0)
    cfg = AcousticConfig(k=6, n_q=2, codebook_size=8, dim=32, layers=2, heads=4, max_len=128)
    m = AcousticModel(cfg).eval()
    units = np.array([1, 2, 3, 3, 4])
    codes = m.generate(units, 10, temperature=0)
    steps = torch.as_tensor(to_steps(cfg, codes))
    with torch.no_grad():
        x = torch.cat([m.sem_emb(torch.as_tensor(units)), m.sep[None],
                       m.embed_steps(steps[:-1][None])[0]])[None]
        h = m._run(x, torch.arange(x.shape[1]), None)[0, len(units):]
        for s, head in enumerate(m.heads):
            logits = head(h)[:, : cfg.codebook_size]
            ok = steps[:, s] != cfg.empty
            assert torch.equal(logits.argmax(-1)[ok], steps[ok, s])


def test_sampling_draws_each_row_from_its_own_top_k_and_top_p():
    """The core samples every (row, stream) of a step at once: each row from its own top-k / top-p set, in
    proportion to its softmax (checked against the exact probabilities); each of 4000 draws has its own seed
    (the noise is a function of seed, step, stream and token)."""
    from speechtok.lm.decoding import Sampler, sample

    logits = torch.tensor([[0.0, 3.0, 2.0, -1.0, 2.5], [4.0, 0.0, 0.0, 3.0, 1.0], [0.0, 0.0, 5.0, 0.0, 4.0]])
    allowed = torch.ones(3, 1, 5, dtype=torch.bool)
    seeds = torch.tensor([0, 1, 2])

    def draws(sampler):  # 4000 rows of each, each with its own seed
        many = logits.repeat(4000, 1)[:, None]
        out = sample(many, allowed.repeat(4000, 1, 1), sampler, torch.arange(len(many)), torch.tensor(0))
        return out.view(4000, 3).numpy()

    def kept(row, sampler):  # the set the sampler keeps, by its definition, from the exact softmax
        p = torch.softmax(row, -1)
        order = torch.argsort(row, descending=True).tolist()
        if sampler.top_k:
            return order[: sampler.top_k]
        if sampler.top_p:
            mass = np.cumsum(p[order].numpy())
            return order[: int(np.searchsorted(mass, sampler.top_p)) + 1]
        return order

    for sampler in (Sampler(1.0, top_k=2), Sampler(1.0, top_p=0.5), Sampler(1.0, top_p=0.9), Sampler(1.0)):
        d = draws(sampler)
        for r in range(3):
            keep = kept(logits[r], sampler)
            assert set(np.unique(d[:, r])) == set(keep), (sampler, r, np.unique(d[:, r]), keep)
            p = torch.softmax(logits[r, keep], -1).numpy()
            freq = np.array([(d[:, r] == k).mean() for k in keep])
            np.testing.assert_allclose(freq, p, atol=0.03, err_msg=str((sampler, r)))
    greedy = sample(logits[:, None], allowed, Sampler(0.0), seeds, torch.tensor(0))[:, 0]
    assert torch.equal(greedy, logits.argmax(-1))
    no_first = allowed.clone()
    no_first[0, 0, 1] = False  # a masked token is never drawn
    assert 1 not in {int(sample(logits[:, None], no_first, Sampler(5.0), seeds, torch.tensor(t))[0, 0])
                     for t in range(200)}


@pytest.mark.parametrize("pattern", ["delay", "coarse_fine", "valle"])
def test_acoustic_batch_equals_alone(pattern):
    torch.manual_seed(0)
    cfg = AcousticConfig(k=6, n_q=3, codebook_size=8, pattern=pattern, n_coarse=1, dim=32, layers=2, heads=4,
                         max_len=256)
    m = acoustic_model(cfg).eval()
    rng = np.random.default_rng(0)
    units = [rng.integers(0, 6, n) for n in (5, 12, 1)]
    frames = [9, 4, 7]
    prompts = [None, rng.integers(0, 8, (3, 2)), None]
    together = m.generate_batch(units, frames, prompts, temperature=0)
    for u, n, p, t in zip(units, frames, prompts, together):
        assert t.shape == (3, n)
        np.testing.assert_array_equal(m.generate(u, n, p, temperature=0), t)
    np.testing.assert_array_equal(together[1][:, :2], prompts[1])


@pytest.fixture(scope="module")
def corpus_shards(units_and_codec_shards, tmp_path_factory):
    return linked_workdir(units_and_codec_shards, tmp_path_factory.mktemp("gen"))


@pytest.fixture(scope="module")
def random_code_shards(corpus_shards):
    """The corpus's first two utterances cut to 0.8 s (80 unit frames, 60 codec frames) with random codes
    (16 values) in place of the tiny EnCodec's, which gives one code everywhere: shards that a model can
    only reproduce from a voice prompt if it memorised them."""
    from speechtok.shards import (ShardWriter, decode_sample, iter_tar, manifest_shards, npy_bytes,
                                  write_manifest)

    rng, out = np.random.default_rng(0), corpus_shards / "random_shards"
    writer = ShardWriter(out)
    for key, files in list(iter_tar(manifest_shards(corpus_shards / "shards")[0]))[:2]:
        writer.write(key, {**files, "semantic.npy": npy_bytes(decode_sample(key, files)["semantic"][:80]),
                           "encodec.npy": npy_bytes(rng.integers(0, 16, (2, 60)).astype(np.uint8))})
    shards = [{"name": r["name"], "num_utterances": r["num_samples"], "bytes": r["bytes"],
               "sha256": r["sha256"]} for r in writer.close()]
    manifest = json.loads((corpus_shards / "shards" / "manifest.json").read_text())  # card paths: ../codec
    write_manifest(out, {**manifest, "num_utterances": 2, "frames": {"semantic": 160, "encodec": 120},
                         "shards": shards})
    return out


@pytest.fixture(scope="module", params=["delay", "coarse_fine"])
def trained_acoustic(random_code_shards, request):
    """A frame-level acoustic model of each pattern overfitted by `tok acoustic train` on the two random-code
    utterances (each crop a whole utterance)."""
    root = random_code_shards.parent
    cfg = {"output": f"acoustic_{request.param}", "shards": [str(random_code_shards)], "codec": "encodec",
           "pattern": request.param, "n_coarse": 1,
           "model": {"dim": 64, "layers": 2, "heads": 4, "max_len": 2048},
           "train": {"batch_size": 2, "steps": 80, "lr": 3e-3, "warmup": 10, "crop_seconds": 0.8,
                     "shuffle_buffer": 1, "log_every": 20, "save_every": 1000, "precision": "fp32"}}
    path = root / f"acoustic_{request.param}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    r = run("acoustic", "train", path)
    assert r.exit_code == 0, r.output
    return root / f"acoustic_{request.param}" / "final"


def test_lm_continues_a_training_utterance_from_its_prompt(trained_lm, corpus_shards):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(trained_lm).eval()
    tok, vocab = AutoTokenizer.from_pretrained(trained_lm), SpeechVocab.load(trained_lm)
    # trained deduped
    units = [run_length(s["semantic"])[0] for s in list(read_shards(corpus_shards / "shards"))[:4]]
    prompts = [speech_prompt(tok, vocab, units=u[:20]) for u in units]
    outs = generate_units(model, tok, vocab, prompts, SamplingOptions(max_new_tokens=30, temperature=0))
    agree = np.mean([np.mean(o[:30] == u[20:50]) for o, u in zip(outs, units)])
    assert agree > 0.8, agree
    assert all(vocab.is_semantic(vocab.units_to_ids(o)).all() for o in outs)


def test_sampling_is_seeded_and_batched(trained_lm, corpus_shards):
    """On an untrained LM (near-uniform over units), a seed fixes the sample and another seed changes it;
    a batch of prompts of different lengths gives each prompt what it gives alone (greedy)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = trained_lm.parent.parent / "lm_base"  # the extended, untrained model
    model = AutoModelForCausalLM.from_pretrained(base).eval()
    tok, vocab = AutoTokenizer.from_pretrained(base), SpeechVocab.load(base)
    p = [speech_prompt(tok, vocab, units=np.array([1, 2, 3]))]
    draw = [generate_units(model, tok, vocab, p, SamplingOptions(max_new_tokens=20, temperature=1.0,
                                                                 seed=s))[0]
            for s in (7, 7, 8)]
    np.testing.assert_array_equal(draw[0], draw[1])
    assert not np.array_equal(draw[0], draw[2])

    model = AutoModelForCausalLM.from_pretrained(trained_lm).eval()
    tok, vocab = AutoTokenizer.from_pretrained(trained_lm), SpeechVocab.load(trained_lm)
    prompts = [speech_prompt(tok, vocab, units=np.array(u))
               for u in ([8, 1, 5, 3], [6, 11, 8, 1, 5, 3, 4, 0, 4], [])]
    greedy = SamplingOptions(max_new_tokens=15, temperature=0)
    together = generate_units(model, tok, vocab, prompts, greedy)
    for p, t in zip(prompts, together):
        np.testing.assert_array_equal(generate_units(model, tok, vocab, [p], greedy)[0], t)


def test_acoustic_stage_reproduces_training_codes_from_a_voice_prompt(trained_acoustic, random_code_shards):
    """Random codes (chance: 1/16 a code): the model `tok acoustic train` overfitted on two utterances
    reproduces ≥ 80% of each codebook after a 20-frame voice prompt, greedy (measured: 45–76% after 10–20
    steps, ≥ 92% after 40, 100% after 80); the same model untrained is at chance."""
    samples = list(read_shards(random_code_shards))
    assert all(len(np.unique(s["encodec"][q])) >= 12 for s in samples for q in range(2))  # diverse codes
    torch.manual_seed(0)
    untrained = acoustic_model(AcousticConfig.from_dir(trained_acoustic))
    assert reproduction(untrained, samples, prompt=20).max() < 0.3
    reproduced = reproduction(AcousticModel.from_dir(trained_acoustic), samples, prompt=20)
    assert (reproduced >= 0.8).all(), reproduced


@pytest.fixture(scope="module")
def dedup_acoustic(corpus_shards):
    """An acoustic model on deduplicated units, trained a few steps: its length rule is under test, not its
    quality."""
    cfg = {"output": "acoustic_dedup", "shards": ["shards"], "codec": "encodec", "dedup": True,
           "model": {"dim": 32, "layers": 1, "heads": 2, "max_len": 2048},
           "train": {"batch_size": 4, "steps": 3, "lr": 3e-3, "warmup": 1, "crop_seconds": 1.0,
                     "log_every": 1, "save_every": 1000, "precision": "fp32"}}
    (corpus_shards / "acoustic_dedup.yaml").write_text(yaml.safe_dump(cfg))
    r = run("acoustic", "train", corpus_shards / "acoustic_dedup.yaml")
    assert r.exit_code == 0, r.output
    return corpus_shards / "acoustic_dedup" / "final"


def _card(root) -> dict:
    return json.loads((root / "km" / "tokenizer.json").read_text())


def test_unit_stream_records_and_the_chaining_rule(trained_lm, corpus_shards):
    card = _card(corpus_shards)
    frames, runs = unit_stream(card, dedup=False), unit_stream(card, dedup=True)
    assert frames == {**runs, "dedup": False} and frames["k"] == 12 and frames["frame_rate"] == 100.0
    assert SpeechVocab.load(trained_lm).unit_stream() == runs  # the LM trained on deduplicated units
    assert unit_stream({**card, "dedup": True, "kmeans": {"seconds": 9}}, False) == frames  # run-time notes
    check_unit_streams(frames, "A", frames, "B")
    check_unit_streams(frames, "A", runs, "B")  # a dedup stage run-length encodes frame-level units itself
    check_unit_streams(frames, "A", {**frames, "tokenizer_sha256": None}, "B")  # tokenizer unknown: the rest
    with pytest.raises(ValueError, match=r"^A makes deduplicated units \(dedup: true\), but B was trained on "
                                         r"frame-level units \(dedup: false\)"):
        check_unit_streams(runs, "A", frames, "B")
    other = unit_stream({**card, "centroids": {**card["centroids"], "sha256": "0" * 64}}, False)
    with pytest.raises(ValueError, match=rf"A makes units of another tokenizer \(k=12, 100 Hz, sha256 "
                                         rf"{frames['tokenizer_sha256'][:12]}\.\.\.\) than B was trained on "
                                         rf"\(k=12, 100 Hz, sha256 {other['tokenizer_sha256'][:12]}\.\.\.\)"):
        check_unit_streams(frames, "A", other, "B")
    with pytest.raises(ValueError, match="A makes units of k=12, but B was trained on k=13"):
        check_unit_streams(frames, "A", {**frames, "tokenizer_sha256": None, "k": 13}, "B")
    with pytest.raises(ValueError, match="A makes 100 Hz units, but B was trained on 50 Hz units"):
        check_unit_streams(frames, "A", {**frames, "tokenizer_sha256": None, "frame_rate": 50.0}, "B")


def test_generate_refuses_a_dedup_lm_into_a_frame_level_acoustic_model(trained_lm, trained_acoustic,
                                                                       tmp_path):
    r = CliRunner().invoke(cli, ["generate", "--lm", str(trained_lm), "--acoustic", str(trained_acoustic),
                                 "--prompt-text", "the cat", "--max-units", 5, "-o", str(tmp_path / "x.wav")])
    assert r.exit_code != 0 and not (tmp_path / "x.wav").exists()
    assert len(r.output.strip().splitlines()) == 1, r.output
    assert f"{trained_lm} makes deduplicated units (dedup: true), but {trained_acoustic} was trained on " \
           "frame-level units (dedup: false)" in " ".join(r.output.split())


def test_generated_duration_matches_the_units_without_dedup(trained_acoustic, corpus_shards):
    """Frame-level units: one unit lasts one 100 Hz frame, so the audio lasts as long as the utterance."""
    from speechtok.pipelines.generate import Generated, synthesize

    card = _card(corpus_shards)
    assert AcousticConfig.from_dir(trained_acoustic).unit_stream == unit_stream(card, dedup=False)
    for s in list(read_shards(corpus_shards / "shards"))[:3]:
        gen = Generated(units=s["semantic"], stream=unit_stream(card, dedup=False), source="frames")
        gen = synthesize(gen, trained_acoustic, None, None, SamplingOptions(temperature=0),
                         torch.device("cpu"))
        seconds = len(gen.wav) / gen.sample_rate
        assert seconds == pytest.approx(len(s["semantic"]) / 100, rel=0.01)
        assert seconds == pytest.approx(s["duration"], rel=0.05)


def test_generated_duration_matches_the_units_with_dedup(dedup_acoustic, corpus_shards):
    """Deduplicated units have no duration model behind them: each lasts the mean run length of the acoustic
    model's training data (measured here independently), which matches the corpus's length within 5%."""
    from speechtok.pipelines.generate import Generated, synthesize

    card, greedy, cpu = _card(corpus_shards), SamplingOptions(temperature=0), torch.device("cpu")
    cfg = AcousticConfig.from_dir(dedup_acoustic)
    samples = list(read_shards(corpus_shards / "shards"))
    runs = [run_length(s["semantic"])[0] for s in samples]
    per_unit = sum(s["encodec"].shape[1] for s in samples) / sum(map(len, runs))
    assert cfg.unit_stream == unit_stream(card, dedup=True)
    assert cfg.frames_per_unit == pytest.approx(per_unit) and per_unit > 3  # per unit, not per frame (0.75)
    seconds = 0.0
    for u in runs:
        gen = synthesize(Generated(units=u, stream=unit_stream(card, dedup=True), source="lm"),
                         dedup_acoustic, None, None, greedy, cpu)
        assert gen.codes.shape == (2, round(len(u) * per_unit)) and len(gen.wav) == gen.codes.shape[1] * 320
        seconds += len(gen.wav) / gen.sample_rate
    assert seconds == pytest.approx(sum(s["duration"] for s in samples), rel=0.05)
    # frame-level units into the dedup model: deduplicated for it, their own length kept
    s = samples[0]
    gen = synthesize(Generated(units=s["semantic"], stream=unit_stream(card, dedup=False), source="frames"),
                     dedup_acoustic, None, None, greedy, cpu)
    assert len(gen.wav) / gen.sample_rate == pytest.approx(s["duration"], rel=0.05)


def test_generate_chain_writes_audio_deterministically(trained_lm, dedup_acoustic, corpus_shards, tmp_path):
    trained_acoustic = dedup_acoustic  # the LM makes deduplicated units
    root = corpus_shards
    sample = next(read_shards(root / "shards"))
    voice = _audio_of(sample["id"], root)
    wav, sr = sf.read(voice)
    prompt = str(tmp_path / "prompt.wav")  # the first half: the LM memorised that the whole one ends there
    sf.write(prompt, wav[: len(wav) // 2], sr)
    outs = []
    for name, seed in (("a", 1), ("b", 1)):
        r = run("generate", "--lm", trained_lm, "--acoustic", trained_acoustic, "--tokenizer", root / "km",
                "--prompt-audio", prompt, "--voice", voice, "--max-units", 30, "--temperature", 1.0, "--seed",
                seed, "-o", tmp_path / f"{name}.wav")
        assert r.exit_code == 0, r.output
        wav, sr = sf.read(tmp_path / f"{name}.wav")
        outs.append(wav)
    acoustic = AcousticModel.from_dir(trained_acoustic).cfg
    assert sr == 24000
    n_units = int(r.stdout.split()[0])  # progress lines go to stderr
    assert len(outs[1]) == acoustic.codec_frames(n_units, deduplicated=True) * 320
    assert len(outs[1]) == max(1, round(n_units * acoustic.frames_per_unit)) * 320
    np.testing.assert_array_equal(outs[0], outs[1])

    r = run("generate", "--lm", trained_lm, "--prompt-text", "the cat", "--units-only", "--max-units", 20,
            "--temperature", 0, "-o", tmp_path / "u.npy")
    assert r.exit_code == 0, r.output
    units = np.load(tmp_path / "u.npy")
    assert 0 < len(units) <= 20 and units.max() < 12
    r = CliRunner().invoke(cli, ["generate", "--lm", str(trained_lm), "--prompt-audio", prompt, "-o",
                                 str(tmp_path / "x.wav"), "--units-only"])
    assert r.exit_code != 0 and "--tokenizer" in r.output
    assert not list(tmp_path.glob("*x.wav*"))  # a refused command leaves no file, not even its lock


def test_generate_streams_the_same_audio_with_progress(trained_lm, dedup_acoustic, tmp_path):
    """`--stream` writes the waveform chunk by chunk as the acoustic stage completes frames: the file equals
    the one-shot run's (same seed) within one 16-bit step per sample (the streamed decode is within 1e-5
    of the one-shot's, test_decoding), and the time to first audio is reported; progress goes to stderr."""
    args = ["generate", "--lm", trained_lm, "--acoustic", dedup_acoustic, "--prompt-text", "the cat",
            "--max-units", 40, "--temperature", 1.0, "--seed", 3]
    whole = run(*args, "-o", tmp_path / "whole.wav")
    streamed = run(*args, "--stream", "-o", tmp_path / "streamed.wav")
    assert whole.exit_code == 0 and streamed.exit_code == 0, streamed.output
    a, sr = sf.read(tmp_path / "whole.wav")
    b, sr_b = sf.read(tmp_path / "streamed.wav")
    assert sr == sr_b and len(a) == len(b) > 64 * 320  # more than one chunk of 64 frames
    assert np.abs(a - b).max() <= 1 / 32768 + 1e-9
    assert "time to first audio" in streamed.stdout and "LM: step" in streamed.stderr
    assert "acoustic: step" in streamed.stderr and "x real time" in streamed.stderr
    quiet = run(*args, "-q", "-o", tmp_path / "quiet.wav")
    assert quiet.stderr == "" and len(quiet.stdout.strip().splitlines()) == 1


def _audio_of(sample_id: str, root) -> str:
    manifest = json.loads((root / "shards" / "manifest.json").read_text())
    corpus = manifest["corpus"]
    for line in open(corpus):
        row = json.loads(line)
        if row["id"] == sample_id:
            from pathlib import Path

            return str(Path(corpus).parent / row["path"])
    raise KeyError(sample_id)


@pytest.mark.parametrize("pattern", ["delay", "valle"])  # valle: its NAR draws stages and prompts too
def test_acoustic_training_resumes_the_same_curve(corpus_shards, tmp_path, pattern):
    def config(name):
        cfg = {"output": str(tmp_path / name), "shards": [str(corpus_shards / "shards")], "codec": "encodec",
               "pattern": pattern,
               "model": {"dim": 32, "layers": 1, "heads": 2},
               "train": {"batch_size": 4, "steps": 6, "lr": 3e-3, "warmup": 2, "crop_seconds": 1.0,
                         "log_every": 1, "save_every": 3, "precision": "fp32", "shuffle_buffer": 4}}
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(cfg))
        return tmp_path / f"{name}.yaml"

    def curve(name):
        return [x["loss"]
                for x in map(json.loads, (tmp_path / name / "metrics.jsonl").read_text().splitlines())]

    assert run("acoustic", "train", config("ref")).exit_code == 0
    assert run("acoustic", "train", config("cut"), "--stop-after", 4).exit_code == 0
    assert run("acoustic", "train", config("cut")).exit_code == 0
    assert len(curve("ref")) == 6 and curve("cut") == curve("ref")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_compiled_static_cache_generation_matches_eager_on_gpu(trained_lm):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(trained_lm).cuda().eval()
    tok, vocab = AutoTokenizer.from_pretrained(trained_lm), SpeechVocab.load(trained_lm)
    prompts = [speech_prompt(tok, vocab, units=np.array([8, 1, 5, 3]))]
    eager = generate_units(model, tok, vocab, prompts, SamplingOptions(max_new_tokens=20, temperature=0))
    compiled = generate_units(model, tok, vocab, prompts, SamplingOptions(max_new_tokens=20, temperature=0,
                                                                          compile=True))
    np.testing.assert_array_equal(eager[0], compiled[0])


def _unit_vocoder(path, dedup: bool, stream: dict | None = None):
    from speechtok.vocoders.hifigan import UnitHiFiGAN, UnitHiFiGANConfig

    torch.manual_seed(0)
    voc = UnitHiFiGAN(UnitHiFiGANConfig(k=12, sample_rate=16000, frame_rate=100.0, embed_dim=16, dedup=dedup,
                                        upsample_rates=[5, 4, 4, 2], upsample_kernel_sizes=[10, 8, 8, 4],
                                        upsample_initial_channel=16, resblock_kernel_sizes=[3],
                                        resblock_dilation_sizes=[[1]], unit_stream=stream or {}))
    voc.save(path)
    return voc


def test_generate_units_through_a_unit_vocoder(trained_lm, corpus_shards, tmp_path):
    """The dedup LM's units need a vocoder trained on deduplicated units (its duration predictor gives their
    lengths); a frame-level one is refused before the LM runs."""
    _unit_vocoder(tmp_path / "frames", dedup=False)
    r = CliRunner().invoke(cli, ["generate", "--lm", str(trained_lm), "--prompt-text", "the cat", "--vocoder",
                                 str(tmp_path / "frames"), "-o", str(tmp_path / "f.wav")])
    assert r.exit_code != 0 and "dedup: false" in r.output and str(tmp_path / "frames") in r.output
    # as resynth says it
    assert r.exit_code == 2 and r.stderr.splitlines()[-1].startswith("error: "), r.stderr
    assert "Traceback" not in r.output and "Error:" not in r.output

    voc = _unit_vocoder(tmp_path / "voc", dedup=True, stream=unit_stream(_card(corpus_shards), dedup=True))
    r = run("generate", "--lm", trained_lm, "--prompt-text", "the cat", "--vocoder", tmp_path / "voc",
            "--max-units", 20, "--temperature", 0, "-o", tmp_path / "v.wav")
    assert r.exit_code == 0, r.output
    r2 = run("generate", "--lm", trained_lm, "--prompt-text", "the cat", "--units-only", "--max-units", 20,
             "--temperature", 0, "-o", tmp_path / "v.npy")
    assert r2.exit_code == 0, r2.output
    units = torch.as_tensor(run_length(np.load(tmp_path / "v.npy"))[0])[None]
    with torch.no_grad():
        frames = voc.eval().expand(units).shape[1]
    wav, sr = sf.read(tmp_path / "v.wav")
    assert (sr == 16000 and len(wav) == frames * 160 and frames > units.shape[1]
            and "unit HiFi-GAN" in r.output)


def test_resynth_refuses_a_vocoder_of_another_tokenizer(corpus_shards, tmp_path):
    card = _card(corpus_shards)
    other = unit_stream({**card, "centroids": {**card["centroids"], "sha256": "0" * 64}}, dedup=False)
    _unit_vocoder(tmp_path / "voc", dedup=False, stream=other)
    sample = next(read_shards(corpus_shards / "shards"))
    r = CliRunner().invoke(cli, ["resynth", _audio_of(sample["id"], corpus_shards), "-t",
                                 str(corpus_shards / "km"),
                                 "--vocoder", str(tmp_path / "voc"), "-o", str(tmp_path / "r.wav")])
    assert r.exit_code == 2 and not (tmp_path / "r.wav").exists()
    assert f"error: {corpus_shards / 'km'} makes units of another tokenizer (k=12, " in r.stderr
    assert (f"than {tmp_path / 'voc'} was trained on (k=12" in r.output
            and other["tokenizer_sha256"][:12] in r.output)
    _unit_vocoder(tmp_path / "same", dedup=False, stream=unit_stream(card, dedup=False))
    r = run("resynth", _audio_of(sample["id"], corpus_shards), "-t", corpus_shards / "km", "--vocoder",
            tmp_path / "same", "-o", tmp_path / "r.wav")
    assert r.exit_code == 0, r.output


@pytest.mark.parametrize("args, why", [
    (["--acoustic", "A", "--speaker", "bob"], "--speaker is for the vocoder stage"),
    (["--acoustic", "A", "--pitch-tokenizer", "P"], "--pitch-tokenizer is for the vocoder stage"),
    (["--vocoder", "V", "--voice", "W"], "--voice is for the acoustic stage"),
    (["--acoustic", "A", "--vocoder", "V"], "--acoustic is not used with --vocoder"),
    (["--units-only", "--vocoder", "V"], "--vocoder is not used with --units-only"),
    (["--acoustic", "A", "--voice-seconds", "2"], "--voice-seconds is how much of --voice"),
    (["--acoustic", "A", "--say", "  "], "--say: no words to say")])
def test_generate_refuses_options_it_would_ignore(tmp_path, args, why):
    """An option of a stage that does not run (--speaker without --vocoder, --voice with it, ...) or an
    empty --say (which leaves a text stream free: random words in OUTPUT.text.json) was silently accepted;
    now one usage line, exit 2, before anything is loaded."""
    for name in "AVPW":
        (tmp_path / name).mkdir()
    args = [str(tmp_path / a) if a in "AVPW" else a for a in args]
    r = CliRunner().invoke(cli, ["generate", "--lm", str(tmp_path), *args, "-o", str(tmp_path / "o.wav")])
    assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1 and why in r.output, r.output
    assert not (tmp_path / "o.wav").exists()


def test_generate_and_resynth_write_their_output_whole_and_where_named(base_llm, units_and_codec_shards,
                                                                       tmp_path, monkeypatch):
    """--units-only -o u.bin writes u.bin (np.save(path) wrote u.bin.npy while naming u.bin); a wav cut
    short by a signal mid-write (SystemExit from the handler) leaves no file (it was left half-written
    under its final name while the message said 'not written')."""
    from pathlib import Path

    import soundfile

    root = units_and_codec_shards
    r = run("lm", "extend-vocab", base_llm, "-m", root / "shards", "-o", tmp_path / "lm")
    assert r.exit_code == 0, r.output
    r = run("generate", "--lm", tmp_path / "lm", "--units-only", "--max-units", 5, "-o", tmp_path / "u.bin")
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("u.")) == ["u.bin"]
    assert 0 < len(np.load(tmp_path / "u.bin")) <= 5

    def torn_write(path, data, rate, *args, **kwargs):
        with open(path, "wb") as f:
            f.write(b"RIFF\0\0")
        raise SystemExit(130)  # what the SIGINT handler raises, mid-write

    monkeypatch.setattr(soundfile, "write", torn_write)
    corpus = json.loads((root / "shards" / "manifest.json").read_text())["corpus"]
    wav = Path(corpus).parent / json.loads(Path(corpus).read_text().splitlines()[0])["path"]
    codec = f"encodec:{root / 'codec'}:nq=2"
    r = CliRunner().invoke(cli, ["resynth", str(wav), "-t", codec, "-o", str(tmp_path / "r.wav")])
    assert r.exit_code == 130
    assert not [p.name for p in tmp_path.iterdir() if "r.wav" in p.name], list(tmp_path.iterdir())


def test_generate_refuses_unreadable_prompt_audio_before_the_lm(base_llm, units_and_codec_shards, tmp_path):
    """A --voice or --prompt-audio that is not audio, empty or NaN was an AudioError traceback after the LM
    stage: one line naming the file, exit 2. A text-stream model run without --say warns of nothing."""
    root = units_and_codec_shards
    r = run("lm", "extend-vocab", base_llm, "-m", root / "shards", "-o", tmp_path / "lm")
    assert r.exit_code == 0, r.output
    cfg = {"output": str(tmp_path / "ac"), "shards": [str(root / "shards")], "codec": "encodec",
           "pattern": "depth", "text_stream": True,
           "model": {"dim": 32, "layers": 1, "heads": 2,
                     "depth_dim": 16, "depth_layers": 1, "depth_heads": 2},
           "train": {"steps": 1, "batch_size": 2, "crop_seconds": 1.0, "precision": "fp32"}}
    (tmp_path / "ac.yaml").write_text(yaml.safe_dump(cfg))
    r = run("acoustic", "train", tmp_path / "ac.yaml")
    assert r.exit_code == 0, r.output
    (tmp_path / "text.wav").write_text("not audio")
    sf.write(tmp_path / "empty.wav", np.zeros(0, np.float32), 16000)
    nan = np.full(1600, np.nan, np.float32)
    sf.write(tmp_path / "nan.wav", nan, 16000, subtype="FLOAT")
    common = ["generate", "--lm", tmp_path / "lm", "--acoustic", tmp_path / "ac" / "final", "--tokenizer",
              root / "km", "--max-units", 4, "-o", tmp_path / "o.wav"]
    for option, name, why in (("--voice", "text.wav", "cannot decode audio"),
                              ("--voice", "empty.wav", "no samples"), ("--prompt-audio", "nan.wav", "NaN")):
        r = CliRunner().invoke(cli, [str(a) for a in common + [option, tmp_path / name]])
        assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1, r.output
        assert r.output.startswith(f"error: {tmp_path / name}: ") and why in r.output, r.output
    r = run(*common, "--prompt-text", "the cat", "-q")
    assert r.exit_code == 0 and "warning" not in r.output, r.output
