"""The `valle` acoustic pattern (lm/acoustic_valle.py): codebook 1 drawn by an AR stage on the decoding
core, then one NAR pass per other codebook; trained with `tok acoustic train`, used by `tok generate`.
(Layout round trip and batched == alone: test_generate's pattern-parametrised tests.)"""

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml
from click.testing import CliRunner

from speechtok.checksums import write_checksums
from speechtok.cli.main import cli
from speechtok.lm.acoustic import AcousticConfig, AcousticModel, acoustic_model
from speechtok.lm.acoustic_valle import ValleModel, prompt_or_below

from overfit import overfit, random_utterances, reproduction
from speech import linked_workdir


def tiny(n_q: int = 3, dim: int = 32, layers: int = 1) -> ValleModel:
    torch.manual_seed(0)
    cfg = AcousticConfig(k=12, n_q=n_q, codebook_size=16, pattern="valle", dim=dim, layers=layers, heads=4,
                         max_len=256, semantic_rate=75.0, codec_rate=75.0)
    return acoustic_model(cfg)


def test_valle_overfits_and_reproduces_every_codebook_from_a_voice_prompt():
    """Random codes (chance: 1/16 a code): a tiny valle model trained on two utterances as `tok acoustic
    train` feeds it (`pair`), AR and NAR together, reproduces ≥ 80% of each codebook after a 20-frame voice
    prompt, greedy (measured: 100% after 80 steps); untrained, it is at chance."""
    model = tiny(dim=64, layers=2)
    samples = random_utterances(model.cfg, n=2, frames=60)
    assert reproduction(model, samples, prompt=20).max() < 0.3
    overfit(model, samples, steps=80)
    reproduced = reproduction(model, samples, prompt=20)
    assert (reproduced >= 0.8).all(), reproduced


def test_valle_draws_codebook_1_in_T_steps_then_one_pass_per_other_codebook():
    """Forward calls counted: the AR stage runs its prefill and one step per frame, the NAR n_q − 1 passes,
    whatever the number of frames."""
    model = tiny(n_q=4).eval()
    calls = {"ar": 0, "nar": 0}
    model.ar.blocks[0].register_forward_hook(lambda *_: calls.__setitem__("ar", calls["ar"] + 1))
    model.nar.blocks[0].register_forward_hook(lambda *_: calls.__setitem__("nar", calls["nar"] + 1))
    for T in (10, 37):
        calls.update(ar=0, nar=0)
        codes = model.generate(np.arange(8) % 12, T, temperature=1.0, seed=T)
        assert codes.shape == (4, T) and calls == {"ar": 1 + T, "nar": 3}


def test_valle_rows_sample_alone_what_they_sample_in_a_batch():
    """Sampled (top-k), each row with its seed: the AR steps and the NAR passes draw a row's noise from
    (its seed, step or pass, stream or frame), so a row gives the same codes alone; another seed, others."""
    model = tiny(n_q=4).eval()
    rng = np.random.default_rng(1)
    units = [rng.integers(0, 12, n) for n in (3, 9, 6)]
    frames, prompts, seeds = [12, 5, 9], [None, rng.integers(0, 16, (4, 2)), None], [1, 2, 3]
    both = model.generate_batch(units, frames, prompts, temperature=1.0, top_k=5, seeds=seeds)
    for u, n, p, s, t in zip(units, frames, prompts, seeds, both):
        np.testing.assert_array_equal(model.generate_batch([u], [n], [p], 1.0, 5, seeds=[s])[0], t)
    np.testing.assert_array_equal(both[1][:, :2], prompts[1])
    other = model.generate_batch(units[:1], frames[:1], None, 1.0, 5, seeds=[7])[0]
    assert (other[1:] != both[0][1:]).mean() > 0.5  # the NAR codebooks too


def test_a_nar_pass_reads_the_codebooks_below_it_and_the_whole_prompt():
    """Pass j's logits change with any codebook below j of any frame (bidirectional: also later frames) and
    with every codebook of a prompt frame, and not with codebooks ≥ j of the other frames."""
    model = tiny(n_q=4).eval()
    T, P, j = 12, 3, 2
    codes = torch.randint(0, 16, (1, T, 4), generator=torch.Generator().manual_seed(0))
    units, stage, prompt = [torch.arange(6)], torch.tensor([j]), torch.tensor([P])

    def logits(c):
        h = model.nar.frames(*model.nar.prefixes(units), c, prompt_or_below(stage, prompt, T, 4), stage,
                             torch.tensor([T]))
        return model.nar.logits(h, stage)

    def changed(t, q):
        c = codes.clone()
        c[0, t, q] = (c[0, t, q] + 1) % 16
        return not torch.equal(logits(c), logits(codes))

    with torch.no_grad():
        assert changed(T - 1, 0) and changed(T - 1, 1)  # below j, the last frame: seen by every frame
        assert changed(0, 3) and changed(P - 1, 2)  # a prompt frame: all its codebooks
        assert not changed(P, 2) and not changed(T - 1, 3)  # codebooks ≥ j after the prompt: not read


def test_valle_saves_and_loads_as_an_acoustic_model(tmp_path):
    model = tiny().eval()
    model.save(tmp_path)
    write_checksums(tmp_path)
    loaded = AcousticModel.from_dir(tmp_path)
    assert isinstance(loaded, ValleModel) and loaded.cfg == model.cfg
    assert json.loads((tmp_path / "acoustic.json").read_text())["pattern"] == "valle"
    ours, theirs = model.state_dict(), loaded.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert {k.split(".")[0] for k in ours} == {"ar", "nar"}
    units, prompt = np.arange(10) % 12, np.arange(15).reshape(3, 5) % 16
    np.testing.assert_array_equal(loaded.generate(units, 20, prompt, temperature=1.0, seed=4),
                                  model.generate(units, 20, prompt, temperature=1.0, seed=4))


@pytest.fixture(scope="module")
def valle_acoustic(units_and_codec_shards, tmp_path_factory):
    """`tok acoustic train` with pattern valle on deduplicated units (as the test LM makes), a few steps:
    the path end to end is under test here, not the quality."""
    root = linked_workdir(units_and_codec_shards, tmp_path_factory.mktemp("valle"))
    cfg = {"output": str(root / "acoustic_valle"), "shards": [str(root / "shards")], "codec": "encodec",
           "pattern": "valle", "dedup": True, "model": {"dim": 32, "layers": 1, "heads": 2, "max_len": 2048},
           "train": {"batch_size": 4, "steps": 3, "lr": 3e-3, "warmup": 1, "crop_seconds": 1.0,
                     "log_every": 1, "save_every": 1000, "precision": "fp32"}}
    (root / "valle.yaml").write_text(yaml.safe_dump(cfg))
    r = CliRunner().invoke(cli, ["acoustic", "train", str(root / "valle.yaml")], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return root


def test_tok_generate_with_a_valle_acoustic_model(trained_lm, valle_acoustic, tmp_path):
    """LM → units → valle (voice prompt) → codec: a wav of exactly frames × hop samples, the same for the
    same seed; `--stream` is refused in one line before anything runs (the NAR passes see all frames)."""
    root, final = valle_acoustic, valle_acoustic / "acoustic_valle" / "final"
    corpus = json.loads((root / "shards" / "manifest.json").read_text())["corpus"]
    row = json.loads(open(corpus).readline())
    voice = str(Path(corpus).parent / row["path"])
    args = ["generate", "--lm", str(trained_lm), "--acoustic", str(final), "--tokenizer", str(root / "km"),
            "--voice", voice, "--prompt-text", "the cat", "--max-units", "20", "--temperature", "1.0",
            "--seed", "1", "-q"]
    wavs = []
    for name in ("a", "b"):
        r = CliRunner().invoke(cli, [*args, "-o", str(tmp_path / f"{name}.wav")], catch_exceptions=False)
        assert r.exit_code == 0, r.output
        wav, sr = sf.read(tmp_path / f"{name}.wav")
        wavs.append(wav)
    cfg = AcousticModel.from_dir(final).cfg
    n_units = int(r.stdout.split()[0])
    assert cfg.pattern == "valle" and sr == 24000
    assert len(wavs[0]) == cfg.codec_frames(n_units, deduplicated=True) * 320
    np.testing.assert_array_equal(wavs[0], wavs[1])

    r = CliRunner().invoke(cli, [*args, "--stream", "-o", str(tmp_path / "s.wav")])
    assert r.exit_code == 2 and not (tmp_path / "s.wav").exists()
    assert r.stderr.strip().splitlines() == [f"error: {final}: pattern valle cannot stream (its NAR passes "
                                             "draw codebooks 2.. of all frames at once); drop --stream"]
