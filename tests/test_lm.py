"""Token LMs: vocabulary extension, sequence builders, the streaming dataset, and `tok lm train` on a tiny
Llama-style model over shards of synthetic speech."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner

from speechtok import read_shards
from speechtok.cli.main import cli
from speechtok.lm.data import DataConfig, PackedTokens, token_loader
from speechtok.lm.sequences import SequenceBuilder
from speechtok.lm.vocab import SPEECH, TEXT, SpeechVocab, extend_vocab
from speechtok.tokenizers.semantic import run_length

from speech import TEXT_LINES

K = 12


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def shards(speech_corpus, tmp_path_factory):
    """MFCC units (k=12, 100 Hz) of the synthetic corpus, with text and word timings, 2 shards."""
    root = tmp_path_factory.mktemp("lmshards")
    assert run("train-kmeans", speech_corpus, "-m", "mfcc", "-k", K, "-o", root / "km", "-q").exit_code == 0
    r = run("encode", speech_corpus, "-t", root / "km", "-o", root / "shards", "-q", "--shard-max-count", 4)
    assert r.exit_code == 0, r.output
    return root / "shards"


@pytest.fixture(scope="module")
def speech_lm(base_llm, shards, tmp_path_factory):
    out = tmp_path_factory.mktemp("lm") / "extended"
    r = run("lm", "extend-vocab", base_llm, "-m", shards / "manifest.json", "-o", out)
    assert r.exit_code == 0, r.output
    return out


def test_extend_vocab_adds_exact_unit_ids(base_llm, speech_lm):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = AutoModelForCausalLM.from_pretrained(base_llm)
    model = AutoModelForCausalLM.from_pretrained(speech_lm)
    tok = AutoTokenizer.from_pretrained(speech_lm)
    vocab = SpeechVocab.load(speech_lm)
    old = base.config.vocab_size
    assert vocab.k == K and vocab.semantic_first_id == old + 2 and len(tok) == old + 2 + K
    assert tok.convert_tokens_to_ids([TEXT, SPEECH]) == [vocab.text_id, vocab.speech_id]
    units = np.array([3, 11, 0, 0, 7])
    ids = tok("".join(f"<s_{u}>" for u in units), add_special_tokens=False)["input_ids"]
    assert ids == vocab.units_to_ids(units).tolist()
    np.testing.assert_array_equal(vocab.ids_to_units(ids), units)
    with pytest.raises(ValueError):
        vocab.units_to_ids(np.array([K]))
    emb, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    assert emb.shape[0] % 64 == 0 and emb.shape[0] >= len(tok) and head.shape == emb.shape
    old_emb = base.get_input_embeddings().weight
    torch.testing.assert_close(emb[:old], old_emb)  # existing rows untouched
    new = emb[old: len(tok)]
    assert (new.std(0) > 0).all()  # drawn, not copied or zero
    assert (new.mean(0) - old_emb.mean(0)).abs().max() < 4 * old_emb.std(0).max()
    # text still tokenizes as before
    base_tok = AutoTokenizer.from_pretrained(base_llm)
    assert tok("the quick brown fox")["input_ids"] == base_tok("the quick brown fox")["input_ids"]


def test_extend_vocab_with_codec_tokens_and_from_scratch(base_llm, shards):
    from speechtok.lm.vocab import load_base
    from speechtok.shards import read_manifest

    _, manifest = read_manifest(shards)
    manifest["tokenizers"]["encodec"] = {"type": "codec", "n_q": 8, "codebook_size": 16, "frame_rate": 75.0}
    model, tok = load_base(str(base_llm), from_scratch=True)
    vocab = extend_vocab(model, tok, manifest, codec="encodec", n_q=3)
    assert vocab.n_q == 3 and vocab.codec_first_id == vocab.semantic_first_id + K
    codes = np.array([[0, 15, 4], [1, 2, 3], [15, 0, 9]])
    ids = vocab.codes_to_ids(codes)
    assert tok.convert_ids_to_tokens(ids[1].tolist()) == ["<c1_1>", "<c1_2>", "<c1_3>"]
    np.testing.assert_array_equal(vocab.ids_to_codes(ids), codes)
    assert len(tok) == vocab.codec_first_id + 3 * 16
    with pytest.raises(ValueError, match="has 8 codebooks"):
        extend_vocab(*load_base(str(base_llm), from_scratch=True), manifest, codec="encodec", n_q=9)


def parse(ids: list[int], vocab: SpeechVocab, bos: int, eos: int) -> list[tuple[str, list[int]]]:
    """A sequence → [(modality, token ids)], checking BOS / EOS."""
    assert ids[0] == bos and ids[-1] == eos
    out = []
    for t in ids[1:-1]:
        if t in (vocab.text_id, vocab.speech_id):
            out.append(("text" if t == vocab.text_id else "speech", []))
        else:
            out[-1][1].append(t)
    return out


@pytest.mark.parametrize("dedup", [False, True])
def test_interleaved_sequences_follow_the_word_timings(speech_lm, shards, dedup):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(speech_lm)
    vocab = SpeechVocab.load(speech_lm)
    builder = SequenceBuilder(vocab, tok, dedup=dedup, span_words=(1, 3))
    checked = 0
    for sample in read_shards(shards):
        words, units = sample["words"], sample["semantic"]
        for seed in range(5):
            parts = parse(builder.interleaved(sample, np.random.default_rng(seed))[0], vocab, tok.bos_token_id,
                          tok.eos_token_id)
            assert all(a[0] != b[0] for a, b in zip(parts, parts[1:]))  # modalities alternate
            w, covered = 0, []
            for modality, ids in parts:
                if modality == "text":
                    text = tok.decode(ids).strip().split()
                    assert text == [x["word"] for x in words[w: w + len(text)]]
                    w += len(text)
                else:
                    # the span runs from its first word's start to the next span's first word's start
                    n = next(n for n in range(1, len(words) - w + 1) if _speech_matches(ids, units, words, w, n, vocab, dedup))
                    covered.append((w, n))
                    w += n
            assert w == len(words)
            checked += 1
    assert checked == 40


def _speech_matches(ids, units, words, w, n, vocab, dedup) -> bool:
    f0 = 0 if w == 0 else round(words[w]["start"] * 100)
    f1 = len(units) if w + n == len(words) else round(words[w + n]["start"] * 100)
    expected = units[f0:f1]
    if dedup:
        expected = run_length(expected)[0]
    return vocab.units_to_ids(expected).tolist() == ids


def test_formats_and_mix(speech_lm, shards):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(speech_lm)
    vocab = SpeechVocab.load(speech_lm)
    b = SequenceBuilder(vocab, tok)
    sample = next(read_shards(shards))
    units = vocab.units_to_ids(sample["semantic"]).tolist()
    text = tok(sample["text"], add_special_tokens=False)["input_ids"]
    bos, eos = tok.bos_token_id, tok.eos_token_id
    assert b.speech(sample) == [bos, vocab.speech_id, *units, eos]
    assert b.asr(sample) == [bos, vocab.speech_id, *units, vocab.text_id, *text, eos]
    assert b.tts(sample) == [bos, vocab.text_id, *text, vocab.speech_id, *units, eos]
    no_words = {k: v for k, v in sample.items() if k not in ("words", "text")}
    assert b.build("interleaved", no_words, np.random.default_rng(0)) == b.speech(sample)
    with pytest.raises(ValueError, match="unknown formats"):
        DataConfig(mix={"speech": 1, "podcast": 1})


def test_stream_packs_splits_and_resumes(speech_lm, shards, tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(speech_lm)
    vocab = SpeechVocab.load(speech_lm)
    (tmp_path / "t.txt").write_text("\n".join(TEXT_LINES))
    cfg = DataConfig(shards=[str(shards)], text=[str(tmp_path / "t.txt")], seq_len=32, shuffle_buffer=4,
                     mix={"speech": 1, "text": 1, "interleaved": 2, "asr": 1, "tts": 1})
    b = SequenceBuilder(vocab, tok)

    def blocks(rank=0, world=1, skip=0, n=12):
        ds = PackedTokens(cfg, b, cfg.shards, rank, world, seed=3, batch_size=2, skip_batches=skip)
        return [x for _, x in zip(range(n), ds)]

    full = blocks()
    assert all(x.shape == (32,) for x in full)
    flat = torch.cat(full).tolist()
    assert vocab.text_id in flat and vocab.speech_id in flat and tok.eos_token_id in flat
    np.testing.assert_array_equal(torch.stack(blocks(skip=2, n=8)), torch.stack(full[4:]))  # resume = same stream

    def batches(skip, n, workers=2):  # loader workers split the data and each skips its own batches
        ds = PackedTokens(cfg, b, cfg.shards, seed=3, batch_size=2, skip_batches=skip)
        return [x for _, x in zip(range(n), token_loader(ds, workers))]

    with_workers = batches(0, 7)
    np.testing.assert_array_equal(torch.stack(batches(3, 4)), torch.stack(with_workers[3:]))
    assert not torch.equal(with_workers[0], with_workers[1])
    # two ranks read disjoint samples: every shard sample id goes to exactly one rank
    seen = []
    for rank in (0, 1):
        ds = PackedTokens(DataConfig(shards=[str(shards)], seq_len=32), b, [str(shards)], rank, 2, epochs=1)
        seen.append({s["id"] for s in _samples_of(ds, rank, 2)})
    assert not (seen[0] & seen[1]) and len(seen[0] | seen[1]) == 8


def _samples_of(ds, part, parts):
    from speechtok.lm.data import _samples

    return list(_samples(ds.paths, part, parts))


def write_config(path: Path, model: Path, shards: Path, out: Path, **train) -> Path:
    (path.parent / "text.txt").write_text("\n".join(TEXT_LINES))
    cfg = {"model": str(model), "output": str(out),
           "data": {"shards": [str(shards)], "text": ["text.txt"], "eval_shards": [str(shards)], "seq_len": 64,
                    "shuffle_buffer": 4, "mix": {"speech": 1, "text": 1, "interleaved": 2, "asr": 1, "tts": 1},
                    "num_workers": 0},
           "train": {"batch_size": 4, "steps": 40, "lr": 3e-3, "warmup": 5, "log_every": 1, "eval_every": 20,
                     "eval_batches": 2, "save_every": 1000, "precision": "fp32", **train}}
    path.write_text(yaml.safe_dump(cfg))
    return path


def losses(out: Path) -> dict[int, float]:
    return {x["step"]: x["loss"] for x in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in x}


def test_train_loss_falls_and_final_model_loads(speech_lm, shards, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg = write_config(tmp_path / "c.yaml", speech_lm, shards, tmp_path / "run")
    r = run("lm", "train", cfg)
    assert r.exit_code == 0, r.output
    curve = losses(tmp_path / "run")
    assert len(curve) == 40
    first, last = np.mean([curve[s] for s in (1, 2, 3)]), np.mean([curve[s] for s in (38, 39, 40)])
    assert last < 0.7 * first, (first, last)
    evals = [x["eval_loss"] for x in map(json.loads, (tmp_path / "run" / "metrics.jsonl").read_text().splitlines())
             if "eval_loss" in x]
    assert len(evals) == 2 and evals[1] < evals[0]
    assert list((tmp_path / "run" / "tensorboard").glob("events.*"))
    final = tmp_path / "run" / "final"
    model = AutoModelForCausalLM.from_pretrained(final)
    tok = AutoTokenizer.from_pretrained(final)
    vocab = SpeechVocab.load(final)
    prompt = torch.tensor([[tok.bos_token_id, vocab.speech_id]])
    out = model.generate(prompt, max_new_tokens=10, do_sample=False)
    assert out.shape == (1, 12)


def test_resume_continues_the_same_loss_curve(speech_lm, shards, tmp_path):
    ref = tmp_path / "ref"
    run("lm", "train", write_config(tmp_path / "a.yaml", speech_lm, shards, ref, steps=12, save_every=4))
    cut = tmp_path / "cut"
    cfg = write_config(tmp_path / "b.yaml", speech_lm, shards, cut, steps=12, save_every=4)
    assert run("lm", "train", cfg, "--stop-after", 6).exit_code == 0  # a time-limited job: checkpoint at 6
    assert sorted(p.name for p in (cut / "checkpoints").glob("step_*")) == ["step_0000004", "step_0000006"]
    assert run("lm", "train", cfg).exit_code == 0
    assert losses(cut) == losses(ref)

    killed = tmp_path / "killed"  # killed after step 6 but before any checkpoint past 4: replays 5 and 6
    cfg = write_config(tmp_path / "c.yaml", speech_lm, shards, killed, steps=12, save_every=4)
    run("lm", "train", cfg, "--stop-after", 6)
    shutil.rmtree(killed / "checkpoints" / "step_0000006")
    (killed / "checkpoints" / "latest").write_text("step_0000004")
    assert run("lm", "train", cfg).exit_code == 0
    assert losses(killed) == losses(ref)
    from transformers import AutoModelForCausalLM

    a, b = AutoModelForCausalLM.from_pretrained(ref / "final"), AutoModelForCausalLM.from_pretrained(killed / "final")
    for (n, p), q in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0, msg=n)


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_two_process_gloo_training(speech_lm, shards, tmp_path, parallel):
    cfg = write_config(tmp_path / "c.yaml", speech_lm, shards, tmp_path / "run", steps=6, save_every=3,
                       batch_size=2, parallel=parallel)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           str(29700 + os.getpid() % 200 + (parallel == "fsdp")), "-m", "speechtok.cli.main", "lm", "train", str(cfg)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[:3000] + "\n...\n" + r.stderr[-1500:]
    curve = losses(tmp_path / "run")
    assert sorted(curve) == list(range(1, 7)) and all(np.isfinite(list(curve.values())))
    assert (tmp_path / "run" / "checkpoints" / "step_0000006" / "rng_rank1.pt").exists()
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "final")
    assert model.get_input_embeddings().weight.shape[0] % 64 == 0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_bf16_compiled_training_on_gpu(speech_lm, shards, tmp_path):
    cfg = write_config(tmp_path / "c.yaml", speech_lm, shards, tmp_path / "run", steps=30, precision="bf16",
                       compile=True)
    assert run("lm", "train", cfg).exit_code == 0
    curve = losses(tmp_path / "run")
    assert np.mean([curve[s] for s in (28, 29, 30)]) < 0.8 * np.mean([curve[s] for s in (1, 2, 3)])


def test_extend_vocab_is_reproducible(base_llm, shards):
    from speechtok.lm.vocab import load_base
    from speechtok.shards import read_manifest

    _, manifest = read_manifest(shards)
    rows = []
    for _ in range(2):
        torch.randn(7)  # whatever the global RNG did before
        model, tok = load_base(str(base_llm))
        extend_vocab(model, tok, manifest)
        rows.append(model.get_input_embeddings().weight.detach().clone())
    torch.testing.assert_close(rows[0], rows[1], rtol=0, atol=0)


def test_extend_vocab_ids_are_contiguous_and_unchanged(base_llm):
    """Regression for the one-call (linear) extension: the ids the old per-token path gave, recorded on
    main 7f3b5fa, for 12 units and 2 x 16 codec tokens on the tiny BPE base; every token is one id."""
    from speechtok.lm.vocab import codec_token, load_base, semantic_token

    manifest = {"tokenizers": {"semantic": {"type": "semantic", "k": 12, "frame_rate": 100.0},
                               "encodec": {"type": "codec", "n_q": 2, "codebook_size": 16, "frame_rate": 75.0}},
                "dedup": True}
    model, tok = load_base(str(base_llm))
    old = len(tok)
    vocab = extend_vocab(model, tok, manifest, codec="encodec")
    assert (old, vocab.text_id, vocab.speech_id, vocab.semantic_first_id, vocab.codec_first_id, len(tok)) == \
        (400, 400, 401, 402, 414, 446)
    tokens = [semantic_token(i) for i in range(12)] + [codec_token(q, i) for q in range(2) for i in range(16)]
    assert tok.convert_tokens_to_ids(tokens) == list(range(vocab.semantic_first_id, vocab.semantic_first_id + 44))
    assert tok("".join(tokens), add_special_tokens=False)["input_ids"] == tok.convert_tokens_to_ids(tokens)
    with pytest.raises(ValueError, match="already has"):
        extend_vocab(model, tok, manifest)


@pytest.fixture(scope="module")
def sentencepiece_tokenizers(tmp_path_factory):
    """A tiny SentencePiece BPE model trained like Llama-2's (dummy prefix, extra whitespace kept, byte
    fallback) on the test sentences, wrapped two ways: transformers' LlamaTokenizer read from
    `tokenizer.model`, and the Llama-2 hub `tokenizer.json` layout (Prepend + Replace normalizer) as a
    LlamaTokenizerFast. Returns {name: tokenizer} and the SentencePiece processor."""
    import io

    import sentencepiece as spm
    from tokenizers import Tokenizer, decoders, models, normalizers
    from transformers import LlamaTokenizer, LlamaTokenizerFast
    from transformers.convert_slow_tokenizer import SentencePieceExtractor

    from speech import SENTENCES

    root = tmp_path_factory.mktemp("spm")
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter([s for _, s in SENTENCES] + TEXT_LINES), model_writer=model,
                                   vocab_size=400, model_type="bpe", byte_fallback=True, add_dummy_prefix=True,
                                   remove_extra_whitespaces=False, normalization_rule_name="identity",
                                   unk_id=0, bos_id=1, eos_id=2, pad_id=-1, minloglevel=2)
    (root / "tokenizer.model").write_bytes(model.getvalue())
    (root / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "LlamaTokenizer"}))
    sp = spm.SentencePieceProcessor(model_file=str(root / "tokenizer.model"))
    bpe = SentencePieceExtractor(str(root / "tokenizer.model")).extract(None)
    tk = Tokenizer(models.BPE(bpe["vocab"], bpe["merges"], unk_token="<unk>", fuse_unk=True, byte_fallback=True))
    tk.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tk.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                    decoders.Strip(" ", 1, 0)])
    return {"llama": LlamaTokenizer.from_pretrained(root),
            "llama2-json": LlamaTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>",
                                              unk_token="<unk>")}, sp


@pytest.mark.parametrize("kind", ["llama", "llama2-json", "gpt2-bpe"])
def test_text_spans_tokenize_as_in_running_text(kind, sentencepiece_tokenizers, base_llm, shards):
    """Interleaved text spans hold exactly the tokens their words have in running text. References: for
    SentencePiece, the sentencepiece library encoding each word (a word start: its dummy prefix); for
    byte-level BPE, each word tokenized with the space before it (none for the first)."""
    from transformers import AutoTokenizer

    tokenizers, sp = sentencepiece_tokenizers
    if kind == "gpt2-bpe":
        tok = AutoTokenizer.from_pretrained(base_llm)

        def reference(words):
            return [tok(w if i == 0 else " " + w, add_special_tokens=False)["input_ids"] for i, w in enumerate(words)]
        normal = lambda text: tok(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    else:
        tok = tokenizers[kind]
        reference = lambda words: [sp.encode(w) for w in words]  # noqa: E731
        normal = sp.encode
    V = len(tok)
    vocab = SpeechVocab(semantic_stream="semantic", k=K, semantic_first_id=V + 2, text_id=V, speech_id=V + 1)
    builder = SequenceBuilder(vocab, tok, span_words=(1, 3))
    later_spans = old_way_differs = 0
    for sample in read_shards(shards):
        words = [w["word"] for w in sample["words"]]
        ref = reference(words)
        assert sum(ref, []) == normal(" ".join(words))  # the per-word reference is the running text's tokens
        assert tok(" ".join(words), add_special_tokens=False)["input_ids"] == normal(" ".join(words))
        for seed in range(4):
            ids, spans = builder.interleaved(sample, np.random.default_rng(seed))
            expected = [tok.bos_token_id]
            for s in spans:
                if s.modality == "text":
                    expected += [V] + sum(ref[s.first: s.last], [])
                    if s.first > 0:
                        later_spans += 1
                        old = tok(" " + " ".join(words[s.first: s.last]), add_special_tokens=False)["input_ids"]
                        old_way_differs += old != sum(ref[s.first: s.last], [])
                else:
                    expected += [V + 1] + vocab.units_to_ids(sample["semantic"][s.f0: s.f1]).tolist()
            assert ids == expected + [tok.eos_token_id]
    assert later_spans >= 20
    if kind == "llama2-json":  # the bug: a stray "▁" before every later span's first word
        assert old_way_differs == later_spans and sp.piece_to_id("▁") in old
    if kind == "gpt2-bpe":
        assert old_way_differs == 0  # the old way was right for byte-level BPE
