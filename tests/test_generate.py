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
from speechtok.lm.acoustic import AcousticConfig, AcousticModel, from_steps, layout, to_steps
from speechtok.lm.generate import SamplingOptions, generate_units, speech_prompt
from speechtok.lm.vocab import SpeechVocab
from speechtok.tokenizers.semantic import run_length

from speech import linked_workdir


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


@pytest.mark.parametrize("pattern", ["delay", "coarse_fine"])
def test_patterns_round_trip(pattern):
    cfg = AcousticConfig(k=4, n_q=3, codebook_size=5, pattern=pattern, n_coarse=1, dim=8, layers=1, heads=2)
    codes = np.random.default_rng(0).integers(0, 5, (3, 7))
    steps = to_steps(cfg, codes)
    np.testing.assert_array_equal(from_steps(cfg, steps, 7), codes)
    qs, ts = layout(cfg, 7)
    if pattern == "delay":
        assert steps.shape == (7 + 2, 3)
        assert steps[0, 1] == cfg.empty and steps[1, 1] == codes[1, 0] and steps[8, 2] == codes[2, 6]
    else:
        assert steps.shape == (21, 1)
        assert list(qs[:7, 0]) == [0] * 7 and list(ts[:7, 0]) == list(range(7))  # coarse codebook first
        assert steps[7, 0] == 5 + codes[1, 0]  # then the fine ones, offset per codebook


def test_acoustic_model_cache_matches_full_forward():
    """Greedy decoding with the KV cache picks the argmax of the full causal forward at every step."""
    torch.manual_seed(0)
    cfg = AcousticConfig(k=6, n_q=2, codebook_size=8, dim=32, layers=2, heads=4, max_len=128)
    m = AcousticModel(cfg).eval()
    units = np.array([1, 2, 3, 3, 4])
    codes = m.generate(units, 10, temperature=0)
    steps = torch.as_tensor(to_steps(cfg, codes))
    with torch.no_grad():
        x = torch.cat([m.sem_emb(torch.as_tensor(units)), m.sep[None], m.embed_steps(steps[:-1][None])[0]])[None]
        h = m._run(x, torch.arange(x.shape[1]), None)[0, len(units):]
        for s, head in enumerate(m.heads):
            logits = head(h)[:, : cfg.codebook_size]
            ok = steps[:, s] != cfg.empty
            assert torch.equal(logits.argmax(-1)[ok], steps[ok, s])


@pytest.mark.parametrize("pattern", ["delay", "coarse_fine"])
def test_acoustic_batch_equals_alone(pattern):
    torch.manual_seed(0)
    cfg = AcousticConfig(k=6, n_q=3, codebook_size=8, pattern=pattern, n_coarse=1, dim=32, layers=2, heads=4, max_len=256)
    m = AcousticModel(cfg).eval()
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


@pytest.fixture(scope="module", params=["delay", "coarse_fine"])
def trained_acoustic(corpus_shards, request):
    root = corpus_shards
    cfg = {"output": f"acoustic_{request.param}", "shards": ["shards"], "codec": "encodec", "pattern": request.param,
           "n_coarse": 1, "model": {"dim": 64, "layers": 2, "heads": 4},
           "train": {"batch_size": 8, "steps": 100, "lr": 3e-3, "warmup": 10, "crop_seconds": 5.0, "log_every": 50,
                     "save_every": 1000, "precision": "fp32"}}
    path = root / f"acoustic_{request.param}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    r = run("acoustic", "train", path)
    assert r.exit_code == 0, r.output
    return root / f"acoustic_{request.param}" / "final"


def test_lm_continues_a_training_utterance_from_its_prompt(trained_lm, corpus_shards):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(trained_lm).eval()
    tok, vocab = AutoTokenizer.from_pretrained(trained_lm), SpeechVocab.load(trained_lm)
    units = [run_length(s["semantic"])[0] for s in list(read_shards(corpus_shards / "shards"))[:4]]  # trained deduped
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
    draw = [generate_units(model, tok, vocab, p, SamplingOptions(max_new_tokens=20, temperature=1.0, seed=s))[0]
            for s in (7, 7, 8)]
    np.testing.assert_array_equal(draw[0], draw[1])
    assert not np.array_equal(draw[0], draw[2])

    model = AutoModelForCausalLM.from_pretrained(trained_lm).eval()
    tok, vocab = AutoTokenizer.from_pretrained(trained_lm), SpeechVocab.load(trained_lm)
    prompts = [speech_prompt(tok, vocab, units=np.array(u)) for u in ([8, 1, 5, 3], [6, 11, 8, 1, 5, 3, 4, 0, 4], [])]
    greedy = SamplingOptions(max_new_tokens=15, temperature=0)
    together = generate_units(model, tok, vocab, prompts, greedy)
    for p, t in zip(prompts, together):
        np.testing.assert_array_equal(generate_units(model, tok, vocab, [p], greedy)[0], t)


def test_acoustic_stage_reproduces_training_codes_from_a_voice_prompt(trained_acoustic, corpus_shards):
    model = AcousticModel.from_dir(trained_acoustic)
    agree = []
    for s in list(read_shards(corpus_shards / "shards"))[:3]:
        codes, units = s["encodec"].astype(np.int64), s["semantic"]
        P = 30
        out = model.generate(units, codes.shape[1], prompt_codes=codes[:, :P], temperature=0)
        np.testing.assert_array_equal(out[:, :P], codes[:, :P])  # the voice prompt is kept
        agree.append(np.mean(out[:, P:] == codes[:, P:]))
    assert np.mean(agree) > 0.8, agree


def test_generate_chain_writes_audio_deterministically(trained_lm, trained_acoustic, corpus_shards, tmp_path):
    root = corpus_shards
    sample = next(read_shards(root / "shards"))
    voice = _audio_of(sample["id"], root)
    wav, sr = sf.read(voice)
    prompt = str(tmp_path / "prompt.wav")  # the first half: the LM memorised that the whole one ends there
    sf.write(prompt, wav[: len(wav) // 2], sr)
    outs = []
    for name, seed in (("a", 1), ("b", 1)):
        r = run("generate", "--lm", trained_lm, "--acoustic", trained_acoustic, "--tokenizer", root / "km",
                "--prompt-audio", prompt, "--voice", voice, "--max-units", 30, "--temperature", 1.0, "--seed", seed,
                "-o", tmp_path / f"{name}.wav")
        assert r.exit_code == 0, r.output
        wav, sr = sf.read(tmp_path / f"{name}.wav")
        outs.append(wav)
    acoustic = AcousticModel.from_dir(trained_acoustic).cfg
    assert sr == 24000
    n_units = int(r.output.split()[0])
    assert len(outs[1]) == max(1, round(n_units * acoustic.frames_per_unit)) * 320
    np.testing.assert_array_equal(outs[0], outs[1])

    r = run("generate", "--lm", trained_lm, "--prompt-text", "the cat", "--units-only", "--max-units", 20,
            "--temperature", 0, "-o", tmp_path / "u.npy")
    assert r.exit_code == 0, r.output
    units = np.load(tmp_path / "u.npy")
    assert 0 < len(units) <= 20 and units.max() < 12
    r = CliRunner().invoke(cli, ["generate", "--lm", str(trained_lm), "--prompt-audio", prompt, "-o", "x.wav",
                                 "--units-only"])
    assert r.exit_code != 0 and "--tokenizer" in r.output


def _audio_of(sample_id: str, root) -> str:
    manifest = json.loads((root / "shards" / "manifest.json").read_text())
    corpus = manifest["corpus"]
    for line in open(corpus):
        row = json.loads(line)
        if row["id"] == sample_id:
            from pathlib import Path

            return str(Path(corpus).parent / row["path"])
    raise KeyError(sample_id)


def test_acoustic_training_resumes_the_same_curve(corpus_shards, tmp_path):
    def config(name):
        cfg = {"output": str(tmp_path / name), "shards": [str(corpus_shards / "shards")], "codec": "encodec",
               "model": {"dim": 32, "layers": 1, "heads": 2},
               "train": {"batch_size": 4, "steps": 6, "lr": 3e-3, "warmup": 2, "crop_seconds": 1.0, "log_every": 1,
                         "save_every": 3, "precision": "fp32", "shuffle_buffer": 4}}
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(cfg))
        return tmp_path / f"{name}.yaml"

    def curve(name):
        return [x["loss"] for x in map(json.loads, (tmp_path / name / "metrics.jsonl").read_text().splitlines())]

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
    compiled = generate_units(model, tok, vocab, prompts, SamplingOptions(max_new_tokens=20, temperature=0, compile=True))
    np.testing.assert_array_equal(eager[0], compiled[0])


def test_generate_units_through_a_unit_vocoder(trained_lm, tmp_path):
    from speechtok.vocoders.hifigan import UnitHiFiGAN, UnitHiFiGANConfig

    torch.manual_seed(0)
    UnitHiFiGAN(UnitHiFiGANConfig(k=12, sample_rate=16000, frame_rate=100.0, embed_dim=16, upsample_rates=[5, 4, 4, 2],
                                  upsample_kernel_sizes=[10, 8, 8, 4], upsample_initial_channel=16,
                                  resblock_kernel_sizes=[3], resblock_dilation_sizes=[[1]])).save(tmp_path / "voc")
    r = run("generate", "--lm", trained_lm, "--prompt-text", "the cat", "--vocoder", tmp_path / "voc",
            "--max-units", 20, "--temperature", 0, "-o", tmp_path / "v.wav")
    assert r.exit_code == 0, r.output
    wav, sr = sf.read(tmp_path / "v.wav")
    assert sr == 16000 and len(wav) == int(r.output.split()[0]) * 160 and "unit HiFi-GAN" in r.output
