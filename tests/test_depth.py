"""The depth pattern (Moshi's RQ-Transformer, lm/acoustic_depth.py): layout with the acoustic delay, the
text stream's placement and its constraint at generation, a tiny model that overfits and continues a
voice prompt, batched == alone, the compiled frame step (no graph break, recompile or host sync), and
`tok acoustic train` + `tok generate` end to end with and without the text stream."""

import json
from dataclasses import replace as dataclasses_replace
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner

from speechtok.cli.main import cli
from speechtok.lm.acoustic import AcousticConfig, acoustic_model, from_steps, to_steps
from speechtok.lm.acoustic_depth import place_words, text_frames, text_tokens, text_words, with_text
from speechtok.lm.acoustic_train import pair
from speechtok.lm.decoding import Sampler

from overfit import overfit, random_utterances, reproduction
from speech import linked_workdir
from test_decoding import HostSync, compiled_equals_eager

E = 8  # EMPTY of a codebook of 8
PAD, EPAD, TEXT_EMPTY = 256, 257, 258


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One intra-op thread: these models are tiny, and on a busy 2-core machine two OpenMP threads make a
    LayerNorm of 3 rows take ~15 ms instead of 0.05 (measured), which the depth steps do many times."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def tiny(text_stream: bool = True, delay: int = 2, **kw) -> AcousticConfig:
    return AcousticConfig(k=6, n_q=3, codebook_size=8, pattern="depth", acoustic_delay=delay, dim=32,
                          layers=1, heads=4, max_len=256, depth_dim=16, depth_layers=1, depth_heads=2,
                          text_stream=text_stream, text_vocab=text_tokens("bytes").vocab * text_stream, **kw)


def test_depth_layout_with_acoustic_delay_against_a_hand_built_grid():
    """Codebook 0 of frame t at step t, codebooks 1 and 2 at step t + delay; the text stream first, with
    codebook 0's timing; EMPTY in the corners."""
    codes = np.array([[10, 11, 12, 13], [20, 21, 22, 23], [30, 31, 32, 33]]) % 8  # distinct per codebook
    a, b, c = codes
    want = np.array([[a[0], E, E], [a[1], E, E], [a[2], b[0], c[0]], [a[3], b[1], c[1]], [E, b[2], c[2]],
                     [E, b[3], c[3]]])
    cfg = tiny(delay=2)
    steps = to_steps(cfg, codes)
    np.testing.assert_array_equal(steps, want)
    text = np.array([104, 105, PAD, PAD])
    full = with_text(cfg, steps, text)
    np.testing.assert_array_equal(full[:, 0], [104, 105, PAD, PAD, TEXT_EMPTY, TEXT_EMPTY])
    np.testing.assert_array_equal(full[:, 1:], want)
    np.testing.assert_array_equal(from_steps(cfg, full, 4), codes)
    np.testing.assert_array_equal(to_steps(tiny(delay=0), codes), codes.T)  # no delay: one frame per step
    assert cfg.n_steps(4) == 6 and tiny(delay=0).n_steps(4) == 4


def test_text_stream_placement_token_by_token():
    """Hand-built word timings at 10 Hz: "ab" from frame 0 (no EPAD before the first frame), " c" at 5
    (PAD, PAD, then EPAD in the padding frame before it), " defg" at 7, right after " c" (no padding, no
    EPAD), " hi" due at 9 but overrun by " defg" (frames 7–11): shifted to 12, and cut at T = 14."""
    cfg = tiny(codec_rate=10.0)
    words = [{"word": "ab", "start": 0.0}, {"word": "c", "start": 0.5}, {"word": "defg", "start": 0.7},
             {"word": "hi", "start": 0.9}]
    sp = ord(" ")
    want = [ord("a"), ord("b"), PAD, PAD, EPAD, sp, ord("c"), sp, ord("d"), ord("e"), ord("f"), ord("g"), sp,
            ord("h")]
    got = text_frames(cfg, words, 14)
    assert got.tolist() == want
    assert place_words([[1, 2]], [3], 6, PAD, EPAD).tolist() == [PAD, PAD, EPAD, 1, 2, PAD]
    assert text_frames(cfg, None, 3).tolist() == [TEXT_EMPTY] * 3  # no words: not scored
    assert text_words(cfg, got) == [{"word": "ab", "start": 0.0, "end": 0.2},
                                    {"word": "c", "start": 0.5, "end": 0.7},
                                    {"word": "defg", "start": 0.7, "end": 1.2},
                                    {"word": "h", "start": 1.2, "end": 1.4}]


def check_follows(stream: np.ndarray, text: str) -> None:
    """`stream` spells `text`'s bytes in order between PAD/EPAD, a word's bytes in consecutive frames, EPAD
    only right before a word's first byte, PAD after the text."""
    data = text.encode()
    starts = {0} | {i for i, b in enumerate(data) if b == ord(" ")}
    pos = 0
    for f, tok in enumerate(stream.tolist()):
        if tok == EPAD:
            assert pos in starts and stream[f + 1] == data[pos], (f, stream)
        elif tok == PAD:
            assert pos in starts or pos == len(data), (f, stream)
        else:
            assert pos < len(data) and tok == data[pos], (f, stream)
            pos += 1
    assert pos == len(data), stream


def test_text_prompt_holds_the_text_stream_to_the_words():
    """A random model sampled hot: every row's text stream (after its voice prompt) spells its text in
    order, EPAD and PAD only where a word may start."""
    torch.manual_seed(0)
    model = acoustic_model(tiny()).eval()
    rng = np.random.default_rng(0)
    texts = ["hi there you", "a bc", None]
    prompts = [None, rng.integers(0, 8, (3, 4)), None]
    units = [rng.integers(0, 6, 5)] * 3
    decoder = model.decoder(units, [60, 50, 40], prompts, Sampler(2.0), [1, 2, 3], texts)
    with torch.no_grad():
        out = decoder.run().numpy()
    check_follows(out[0, :60, 0], texts[0])
    check_follows(out[1, 4:50, 0], texts[1])
    assert (out[1, 50:, 0] == TEXT_EMPTY).all() and (out[2, :40, 0] < PAD).any()  # no text: drawn freely
    unconstrained = model.decoder([rng.integers(0, 6, 5)], [60], None, Sampler(2.0), [1]).run().numpy()
    assert (unconstrained[0, :, 0] < PAD).sum() > 20  # the constraint is what holds it


@pytest.mark.parametrize("text_stream", [False, True])
def test_depth_batch_equals_alone(text_stream):
    """Rows of different lengths, voice prompts and texts in one batch, sampled with their seeds: each
    row draws what it draws alone."""
    torch.manual_seed(0)
    model = acoustic_model(tiny(text_stream)).eval()
    rng = np.random.default_rng(1)
    units = [rng.integers(0, 6, n) for n in (3, 9, 6)]
    frames, prompts, seeds = [12, 5, 9], [None, rng.integers(0, 8, (3, 2)), None], [1, 2, 3]
    texts = ["ab cd", None, "x"] if text_stream else None

    def steps(rows):
        with torch.no_grad():
            pick = lambda xs: xs and [xs[i] for i in rows]  # noqa: E731
            return model.decoder(pick(units), pick(frames), pick(prompts), Sampler(1.0, top_k=5), pick(seeds),
                                 pick(texts)).run().numpy()

    together = steps([0, 1, 2])
    for i in range(3):
        N = frames[i] + 2
        np.testing.assert_array_equal(steps([i])[0, :N], together[i, :N])
    codes = model.generate_batch(units, frames, prompts, temperature=0)
    np.testing.assert_array_equal(codes[1][:, :2], prompts[1])


def test_depth_cache_matches_full_forward():
    """Greedy generation picks, at every stream of every step, the argmax of the training forward's
    logits over the generated sequence (temporal: full causal pass; depth: all positions at once)."""
    torch.manual_seed(0)
    model = acoustic_model(tiny()).eval()
    units = np.array([1, 2, 3, 3, 4])
    with torch.no_grad():
        steps = model.decoder([units], [10], None, Sampler(0.0), [0]).run()[0, :12]
        x = torch.cat([model.sem_emb(torch.as_tensor(units)), model.sep[None],
                       model.embed_steps(steps[:-1][None])[0]])
        h = model._run(x[None], torch.arange(x.shape[0]))[0, len(units):]
        for s, logits in enumerate(model.depth_logits(h, steps)):
            ok = steps[:, s] != (TEXT_EMPTY if s == 0 else E)
            assert torch.equal(logits.argmax(-1)[ok], steps[ok, s]), s


def depth_decoder(model, sampler, longest: int = 12, steps: int = 100):
    rng = np.random.default_rng(0)
    units = [rng.integers(0, 6, n) for n in (5, longest)]
    return model.decoder(units, [steps - 4, 40], [rng.integers(0, 8, (3, 4)), None], sampler, [3, 4],
                         ["hello there", None])


def test_depth_step_compiles_whole_and_never_syncs(monkeypatch):
    """The frame step (temporal step + depth transformer over text and 3 codebooks, text constraint
    included) compiles to one graph with no break and no recompile for other lengths, equals eager
    (sampled); 100 eager steps run with every tensor → host conversion raising."""
    torch.manual_seed(0)
    model = acoustic_model(tiny()).eval()
    sampler = Sampler(1.0, top_k=4, top_p=0.95)
    compiled_equals_eager(lambda: depth_decoder(model, sampler), lambda: depth_decoder(model, sampler, 9, 93),
                          monkeypatch)
    decoder = depth_decoder(model, sampler)

    def refuse(*args, **kwargs):
        raise HostSync("host synchronisation inside the decoding loop")

    for name in ("item", "cpu", "tolist", "numpy", "__bool__", "__int__", "__float__", "__index__"):
        monkeypatch.setattr(torch.Tensor, name, refuse)
    with torch.no_grad():
        for _ in range(decoder.steps):
            decoder.step()
    monkeypatch.undo()


@pytest.fixture(scope="module")
def corpus_shards(units_and_codec_shards, tmp_path_factory):
    return linked_workdir(units_and_codec_shards, tmp_path_factory.mktemp("depth"))


def train(root, name: str, steps: int, **extra):
    cfg = {"output": name, "shards": ["shards"], "codec": "encodec", "pattern": "depth",
           "model": {"dim": 64, "layers": 2, "heads": 4, "depth_dim": 32, "depth_layers": 1,
                     "depth_heads": 2},
           "train": {"batch_size": 8, "steps": steps, "lr": 3e-3, "warmup": 10, "crop_seconds": 5.0,
                     "log_every": 50, "save_every": 1000, "precision": "fp32"}, **extra}
    (root / f"{name}.yaml").write_text(yaml.safe_dump(cfg))
    r = run("acoustic", "train", root / f"{name}.yaml")
    assert r.exit_code == 0, r.output
    return root / name / "final"


def test_depth_model_reproduces_training_codes_from_a_voice_prompt():
    """Random codes (chance: 1/16 a code) and word timings: a tiny depth model with a text stream trained on
    two utterances as `tok acoustic train` feeds it (`pair`) reproduces ≥ 80% of each codebook after a
    20-frame voice prompt, greedy (measured: 69% after 60 steps, 100% after 100, so 120); untrained, it is at
    chance."""
    torch.manual_seed(0)
    cfg = AcousticConfig(k=12, n_q=3, codebook_size=16, pattern="depth", acoustic_delay=1, dim=64, layers=2,
                         heads=4, depth_dim=32, depth_layers=1, depth_heads=2, text_stream=True, max_len=256,
                         text_vocab=text_tokens("bytes").vocab, semantic_rate=75.0, codec_rate=75.0)
    model, samples = acoustic_model(cfg), random_utterances(cfg, n=2, frames=60)
    for s, words in zip(samples, (["the", "cat", "sat"], ["a", "dog", "ran"])):
        s["words"] = [{"word": w, "start": 0.25 * i, "end": 0.25 * i + 0.2} for i, w in enumerate(words)]
    text = pair(samples[0], cfg, 60, None)[1][:, 0]  # the text stream as training reads it
    assert bytes(t for t in text if t < 256) == b"the cat sat"
    assert reproduction(model, samples, prompt=20).max() < 0.3
    overfit(model, samples, steps=120)
    reproduced = reproduction(model, samples, prompt=20)
    assert (reproduced >= 0.8).all(), reproduced


def _generate_args(trained_lm, acoustic, tmp_path, name):
    return ["generate", "--lm", trained_lm, "--acoustic", acoustic, "--prompt-text", "the cat",
            "--max-units", 20, "--temperature", 1.0, "--seed", 2, "-q", "-o", tmp_path / f"{name}.wav"]


@pytest.mark.parametrize("text_stream", [False, True])
def test_tok_generate_with_a_depth_model(trained_lm, corpus_shards, tmp_path, text_stream):
    """`tok acoustic train` (pattern depth, deduplicated units for the dedup LM) then `tok generate`:
    a wav; with the text stream and `--say`, OUTPUT.text.json with the said words and their times."""
    import soundfile as sf

    name = f"depth_dedup_{int(text_stream)}"
    acoustic = train(corpus_shards, name, 3, dedup=True, text_stream=text_stream)
    args = _generate_args(trained_lm, acoustic, tmp_path, name)
    r = run(*args, *(["--say", "the dog ran"] if text_stream else []))
    assert r.exit_code == 0, r.output
    wav, sr = sf.read(tmp_path / f"{name}.wav")
    assert sr == 24000 and len(wav) > 0
    words = tmp_path / f"{name}.text.json"
    if not text_stream:
        assert not words.exists()
        r = CliRunner().invoke(cli, [str(a) for a in args] + ["--say", "hi"])
        assert r.exit_code == 2 and "text_stream: true" in r.output, r.output
        r = run(*args[:-1], tmp_path / "streamed.wav", "--stream")  # chunks of frames as they complete
        assert r.exit_code == 0, r.output
        streamed, _ = sf.read(tmp_path / "streamed.wav")
        assert len(streamed) == len(wav) and np.abs(streamed - wav).max() <= 1 / 32768 + 1e-9
        return
    said = json.loads(words.read_text())["words"]
    frames = len(wav) / 320
    assert said and "the dog ran".startswith(" ".join(w["word"] for w in said))
    assert all(0 <= w["start"] < w["end"] <= frames / 75 + 1e-9 for w in said)
    long = "the dog ran " * 40  # more words than 20 units' audio holds: said in part, and told so
    r = CliRunner().invoke(cli, [str(a) for a in args] + ["--say", long])
    assert r.exit_code == 0, r.output
    said = json.loads(words.read_text())["words"]
    assert f"warning: --say: {len(said)} of its 120 words fit in" in r.output, r.output


def test_depth_training_resumes_the_same_curve(corpus_shards, tmp_path):
    """Stopped after 4 of 6 steps and rerun, a depth run with a text stream logs the same losses as one
    run straight through (checkpoint, data position and crops restored)."""
    def config(name):
        cfg = {"output": str(tmp_path / name), "shards": [str(corpus_shards / "shards")], "codec": "encodec",
               "pattern": "depth", "text_stream": True, "acoustic_delay": 2,
               "model": {"dim": 32, "layers": 1, "heads": 2, "depth_dim": 16, "depth_layers": 1,
                         "depth_heads": 2},
               "train": {"batch_size": 4, "steps": 6, "lr": 3e-3, "warmup": 2, "crop_seconds": 1.0,
                         "log_every": 1, "save_every": 3, "precision": "fp32", "shuffle_buffer": 4}}
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(cfg))
        return tmp_path / f"{name}.yaml"

    def curve(name):
        lines = (tmp_path / name / "metrics.jsonl").read_text().splitlines()
        return [json.loads(x)["loss"] for x in lines]

    assert run("acoustic", "train", config("ref")).exit_code == 0
    assert run("acoustic", "train", config("cut"), "--stop-after", 4).exit_code == 0
    assert run("acoustic", "train", config("cut")).exit_code == 0
    assert len(curve("ref")) == 6 and curve("cut") == curve("ref")
    saved = json.loads((tmp_path / "ref" / "final" / "acoustic.json").read_text())
    assert saved["pattern"] == "depth" and saved["acoustic_delay"] == 2 and saved["text_vocab"] == 258


def test_depth_config_mistakes_are_one_line_errors(corpus_shards, tmp_path):
    cfg = {"output": str(tmp_path / "x"), "shards": [str(corpus_shards / "shards")], "codec": "encodec",
           "text_stream": True}
    (tmp_path / "x.yaml").write_text(yaml.safe_dump(cfg))
    r = CliRunner().invoke(cli, ["acoustic", "train", str(tmp_path / "x.yaml")])
    assert r.exit_code == 2 and "text_stream: needs pattern: depth" in r.output, r.output
    (tmp_path / "x.yaml").write_text(yaml.safe_dump({**cfg, "pattern": "depth", "codebook_weights": [1.0]}))
    r = CliRunner().invoke(cli, ["acoustic", "train", str(tmp_path / "x.yaml")])
    assert r.exit_code == 2 and "codebook_weights: one per codebook (2), not 1" in r.output, r.output
    assert "Traceback" not in r.output


def test_depth_positions_match_the_model():
    """`acoustic_positions` (what `tok generate` checks a voice prompt against) is what the model uses."""
    from speechtok.pipelines.generate import acoustic_positions

    cfg = dataclasses_replace(tiny(), max_len=40)
    model = acoustic_model(cfg).eval()
    units = np.arange(5) % 6
    frames = next(t for t in range(1, 40) if acoustic_positions(cfg, 5, t + 1) > cfg.max_len)
    assert model.generate(units, frames, temperature=0).shape == (3, frames)
    with pytest.raises(ValueError, match="exceeds max_len"):
        model.generate(units, frames + 1, temperature=0)


def test_text_stream_with_a_hugging_face_tokenizer(base_llm):
    """A byte-level BPE tokenizer's ids in the stream (each word's ids as in the running text), the words
    read back from them, and a text prompt spelled out in order by a random model sampled hot."""
    tt = text_tokens(str(base_llm))
    cfg = dataclasses_replace(tiny(), codec_rate=10.0, text_tokenizer=str(base_llm), text_vocab=tt.vocab)
    ids = tt.word_ids(["the", "dog"])
    assert tt.decode(ids[0] + ids[1]) == "the dog" and tt.pad == tt.n == len(tt.tok)
    got = text_frames(cfg, [{"word": "the", "start": 0.0}, {"word": "dog", "start": 0.6}], 10)
    k = len(ids[0])
    want = ids[0] + [tt.pad] * (5 - k) + [tt.epad] + ids[1] + [tt.pad] * (4 - len(ids[1]))
    assert got.tolist() == want
    assert [w["word"] for w in text_words(cfg, got)] == ["the", "dog"]
    torch.manual_seed(0)
    model = acoustic_model(cfg).eval()
    with torch.no_grad():
        out = model.decoder([np.array([1, 2])], [40], None, Sampler(2.0), [5], ["the dog ran"]).run().numpy()
    spoken = [t for t in out[0, :40, 0].tolist() if t < tt.n]
    assert spoken == [t for w in tt.word_ids(["the", "dog", "ran"]) for t in w]
    assert [w["word"] for w in text_words(cfg, out[0, :40, 0])] == ["the", "dog", "ran"]


@pytest.mark.parametrize("extra, why", [
    ({"codec": "semantic"}, "'semantic' is a semantic stream, not a codec's (codec streams: ['encodec'])"),
    ({"model": {"dim": 30, "heads": 4}}, "model.dim: 30 is not a multiple of model.heads (4)"),
    ({"model": {"dim": 32, "heads": 2, "depth_dim": 7, "depth_heads": 2}},
     "model.depth_dim: 7 is not a multiple of model.depth_heads (2)"),
    ({"model": {"dim": 0}}, "model.dim: must be a whole number of at least 1, not 0"),
    ({"model": {"depth_layers": 0}}, "model.depth_layers: must be a whole number of at least 1, not 0"),
    ({"text_stream": True, "text_tokenizer": "km"}, "text_tokenizer: 'km' is not a Hugging Face tokenizer"),
    ({"text_stream": True, "text_tokenizer": "/no/such/tokenizer"}, "is not a Hugging Face tokenizer"),
    ({"n_q": 0}, "n_q: at least 1 codebook"),  # was taken for all the shards' codebooks
    ({"codebook_weights": [0, 0]}, "codebook_weights: all 0 ([0.0, 0.0]) train nothing")])  # was loss 0
def test_acoustic_model_and_stream_mistakes_are_one_line(corpus_shards, tmp_path, extra, why):
    """Mistakes found only when the model is built (a codec that is a semantic stream, widths not a
    multiple of their heads, a size 0, a text tokenizer that is not one) were KeyError / reshape
    tracebacks, a config error of exit 3 naming no key, or a width-0 model trained at a constant loss."""
    cfg = {"output": str(tmp_path / "x"), "shards": [str(corpus_shards / "shards")], "codec": "encodec",
           "pattern": "depth", "train": {"steps": 1, "batch_size": 2, "precision": "fp32"}}
    cfg.update({k: v if k != "text_tokenizer" or v.startswith("/") else str(corpus_shards / v)
                for k, v in extra.items()})
    why = why.replace("'km'", repr(str(corpus_shards / "km")))
    (tmp_path / "x.yaml").write_text(yaml.safe_dump(cfg))
    r = CliRunner().invoke(cli, ["acoustic", "train", str(tmp_path / "x.yaml")])
    assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1, r.output
    assert r.output.startswith(f"error: {tmp_path / 'x.yaml'}: ") and why in r.output, r.output
    assert not (tmp_path / "x").exists()


def test_text_stream_without_word_timings_is_refused(corpus_shards, tmp_path):
    """Shards whose corpus has no word timings gave a text stream of EMPTY only, trained in silence (and a
    `--say` model that never learnt text): one line naming the key, exit 2, no run folder."""
    corpus = json.loads((corpus_shards / "shards" / "manifest.json").read_text())["corpus"]
    rows = [json.loads(line) for line in Path(corpus).read_text().splitlines()[:2]]
    rows = [{**{k: v for k, v in r.items() if k != "words"}, "path": str(Path(corpus).parent / r["path"])}
            for r in rows]
    (tmp_path / "c.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    r = run("encode", tmp_path / "c.jsonl", "-t", corpus_shards / "km", "-t",
            f"encodec:{corpus_shards / 'codec'}:nq=2", "-o", tmp_path / "shards", "-q")
    assert r.exit_code == 0, r.output
    cfg = {"output": str(tmp_path / "x"), "shards": [str(tmp_path / "shards")], "codec": "encodec",
           "pattern": "depth", "text_stream": True, "train": {"steps": 1, "batch_size": 2}}
    (tmp_path / "x.yaml").write_text(yaml.safe_dump(cfg))
    r = CliRunner().invoke(cli, ["acoustic", "train", str(tmp_path / "x.yaml")])
    assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1, r.output
    assert "text_stream: no utterance of the shards has word timings" in r.output, r.output
    assert not (tmp_path / "x").exists()
