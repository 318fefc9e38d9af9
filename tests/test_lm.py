"""Token LMs: vocabulary extension, sequence builders, the streaming dataset, and `tok lm train` on a tiny
Llama-style model over shards of synthetic speech."""

import itertools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from collections import Counter

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
from speechtok.training.stream import part_stream
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
            parts = parse(builder.interleaved(sample, np.random.default_rng(seed))[0], vocab,
                          tok.bos_token_id, tok.eos_token_id)
            assert all(a[0] != b[0] for a, b in zip(parts, parts[1:]))  # modalities alternate
            w, covered = 0, []
            for modality, ids in parts:
                if modality == "text":
                    text = tok.decode(ids).strip().split()
                    assert text == [x["word"] for x in words[w: w + len(text)]]
                    w += len(text)
                else:
                    # the span runs from its first word's start to the next span's first word's start
                    n = next(n for n in range(1, len(words) - w + 1)
                             if _speech_matches(ids, units, words, w, n, vocab, dedup))
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
        return [x["ids"] for _, x in zip(range(n), ds)]

    full = blocks()
    assert all(x.shape == (32,) for x in full)
    flat = torch.cat(full).tolist()
    assert vocab.text_id in flat and vocab.speech_id in flat and tok.eos_token_id in flat
    # resume = same stream
    np.testing.assert_array_equal(torch.stack(blocks(skip=2, n=8)), torch.stack(full[4:]))

    def batches(skip, n, workers=2):  # loader workers split the data and each skips its own batches
        ds = PackedTokens(cfg, b, cfg.shards, seed=3, batch_size=2, skip_batches=skip)
        return [x["ids"] for _, x in zip(range(n), token_loader(ds, workers))]

    with_workers = batches(0, 7)
    np.testing.assert_array_equal(torch.stack(batches(3, 4)), torch.stack(with_workers[3:]))
    assert not torch.equal(with_workers[0], with_workers[1])


def write_config(path: Path, model: Path, shards: Path, out: Path, **train) -> Path:
    (path.parent / "text.txt").write_text("\n".join(TEXT_LINES))
    cfg = {"model": str(model), "output": str(out),
           "data": {"shards": [str(shards)], "text": ["text.txt"], "eval_shards": [str(shards)],
                    "seq_len": 64, "shuffle_buffer": 4,
                    "mix": {"speech": 1, "text": 1, "interleaved": 2, "asr": 1, "tts": 1},
                    "num_workers": 0},
           "train": {"batch_size": 4, "steps": 40, "lr": 3e-3, "warmup": 5, "log_every": 1, "eval_every": 20,
                     "eval_batches": 2, "save_every": 1000, "precision": "fp32", **train}}
    path.write_text(yaml.safe_dump(cfg))
    return path


def losses(out: Path) -> dict[int, float]:
    return {x["step"]: x["loss"] for x in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
            if "loss" in x}


def test_train_loss_falls_and_final_model_loads(speech_lm, shards, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg = write_config(tmp_path / "c.yaml", speech_lm, shards, tmp_path / "run")
    r = run("lm", "train", cfg)
    assert r.exit_code == 0, r.output
    curve = losses(tmp_path / "run")
    assert len(curve) == 40
    from speechtok.lm.config import load_config
    from speechtok.training.loop import lr_at

    train_cfg = load_config(cfg).train
    records = [x for x in map(json.loads, (tmp_path / "run" / "metrics.jsonl").read_text().splitlines())
               if "lr" in x]
    assert records[0]["lr"] == pytest.approx(3e-3 / 5)  # step 1 ran at the first warmup rate
    for x in records:  # the rate the step ran with, not the next step's
        assert x["lr"] == pytest.approx(lr_at(x["step"] - 1, train_cfg), rel=1e-9)
    first, last = np.mean([curve[s] for s in (1, 2, 3)]), np.mean([curve[s] for s in (38, 39, 40)])
    assert last < 0.7 * first, (first, last)
    evals = [x["eval_loss"]
             for x in map(json.loads, (tmp_path / "run" / "metrics.jsonl").read_text().splitlines())
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

    a, b = (AutoModelForCausalLM.from_pretrained(ref / "final"),
            AutoModelForCausalLM.from_pretrained(killed / "final"))
    for (n, p), q in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0, msg=n)


def torchrun(cfg: Path, port: int, *args) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           str(port + os.getpid() % 200), "-m", "speechtok.cli.main", "lm", "train", str(cfg),
           *map(str, args)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[:3000] + "\n...\n" + r.stderr[-1500:]
    return r


def test_fsdp_checkpoint_resumes_on_another_world_size(speech_lm, shards, tmp_path):
    """2 gloo ranks under FSDP2 (sharded DCP checkpoint; one eval sample, so rank 1 has no eval batch),
    then the same run resumed on 1 process."""
    from transformers import AutoModelForCausalLM

    from speechtok.training.checkpoint import load_checkpoint

    one = reshard(shards, tmp_path / "one", per_shard=1, first=1)
    cfg = write_config(tmp_path / "c.yaml", speech_lm, shards, tmp_path / "run", steps=6, save_every=4,
                       batch_size=2, parallel="fsdp", eval_every=4)
    raw = yaml.safe_load(cfg.read_text())
    raw["data"]["eval_shards"] = [str(one)]
    cfg.write_text(yaml.safe_dump(raw))
    torchrun(cfg, 29500, "--stop-after", 4)
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in records if "eval_loss" in x] == [4]
    assert all(np.isfinite(x["eval_loss"]) for x in records if "eval_loss" in x)  # not NaN, no hang
    ckpt = tmp_path / "run" / "checkpoints" / "step_0000004"
    meta = json.loads((ckpt / "meta.json").read_text())
    assert meta["world_size"] == 2 and meta["position"]["consumed"]["speech"] > 0
    assert len(list((ckpt / "state").glob("*.distcp"))) == 2  # each rank wrote its own shards
    # the sharded checkpoint, loaded on one process and on two, holds the same model
    fresh = AutoModelForCausalLM.from_pretrained(speech_lm)
    opt = torch.optim.AdamW(fresh.parameters())
    assert load_checkpoint(tmp_path / "run", {"lm": (fresh, opt)}, 0)["step"] == 4
    assert not torch.equal(fresh.get_input_embeddings().weight,
                           AutoModelForCausalLM.from_pretrained(speech_lm).get_input_embeddings().weight)
    r = run("lm", "train", cfg)  # one process
    assert r.exit_code == 0, r.output
    assert "resuming from step 4" in r.output and "saved with 2 ranks" in r.output
    curve = losses(tmp_path / "run")
    assert sorted(curve) == list(range(1, 7)) and curve[6] < curve[1]
    position = (json.loads((tmp_path / "run" / "checkpoints" / "step_0000006" / "meta.json").read_text())
                ["position"])
    assert position["origin"] == meta["position"]["consumed"] and position["world_size"] == 1
    assert position["consumed"]["speech"] > position["origin"]["speech"]


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
                               "encodec": {"type": "codec", "n_q": 2, "codebook_size": 16,
                                           "frame_rate": 75.0}},
                "dedup": True}
    model, tok = load_base(str(base_llm))
    old = len(tok)
    vocab = extend_vocab(model, tok, manifest, codec="encodec")
    assert (old, vocab.text_id, vocab.speech_id, vocab.semantic_first_id, vocab.codec_first_id, len(tok)) == \
        (400, 400, 401, 402, 414, 446)
    tokens = [semantic_token(i) for i in range(12)] + [codec_token(q, i) for q in range(2) for i in range(16)]
    assert tok.convert_tokens_to_ids(tokens) == list(range(vocab.semantic_first_id,
                                                           vocab.semantic_first_id + 44))
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
    spm.SentencePieceTrainer.train(sentence_iterator=iter([s for _, s in SENTENCES] + TEXT_LINES),
                                   model_writer=model, vocab_size=400, model_type="bpe", byte_fallback=True,
                                   add_dummy_prefix=True,
                                   remove_extra_whitespaces=False, normalization_rule_name="identity",
                                   unk_id=0, bos_id=1, eos_id=2, pad_id=-1, minloglevel=2)
    (root / "tokenizer.model").write_bytes(model.getvalue())
    (root / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "LlamaTokenizer"}))
    sp = spm.SentencePieceProcessor(model_file=str(root / "tokenizer.model"))
    bpe = SentencePieceExtractor(str(root / "tokenizer.model")).extract(None)
    tk = Tokenizer(models.BPE(bpe["vocab"], bpe["merges"], unk_token="<unk>", fuse_unk=True,
                              byte_fallback=True))
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
            return [tok(w if i == 0 else " " + w, add_special_tokens=False)["input_ids"]
                    for i, w in enumerate(words)]
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
                        old = tok(" " + " ".join(words[s.first: s.last]),
                                  add_special_tokens=False)["input_ids"]
                        old_way_differs += old != sum(ref[s.first: s.last], [])
                else:
                    expected += [V + 1] + vocab.units_to_ids(sample["semantic"][s.f0: s.f1]).tolist()
            assert ids == expected + [tok.eos_token_id]
    assert later_spans >= 20
    if kind == "llama2-json":  # the bug: a stray "▁" before every later span's first word
        assert old_way_differs == later_spans and sp.piece_to_id("▁") in old
    if kind == "gpt2-bpe":
        assert old_way_differs == 0  # the old way was right for byte-level BPE


# --- The data stream: every item once per epoch, token shares, text read through (issue 14 items 1-2) ---

def reshard(src: Path, dst: Path, per_shard: int, copies: int = 1, first: int | None = None) -> Path:
    """The samples of `src` rewritten `per_shard` to a shard (`copies` times, ids suffixed), or only its
    `first` samples: shard layouts for the stream tests without encoding again."""
    from speechtok.shards import ShardWriter, iter_tar, read_manifest, write_manifest

    folder, manifest = read_manifest(src)
    raw = [kv for s in manifest["shards"] for kv in iter_tar(folder / s["name"])][:first]
    writer = ShardWriter(dst, max_count=per_shard)
    for c in range(copies):
        for key, files in raw:
            meta = json.loads(files["json"])
            meta["id"] = f"{meta['id']}~{c}"
            writer.write(f"{key}~{c}", {**files, "json": json.dumps(meta).encode()})
    write_manifest(dst, {**manifest, "shards": writer.close()})
    return dst


@pytest.fixture(scope="module")
def builder(speech_lm):
    from transformers import AutoTokenizer

    return SequenceBuilder(SpeechVocab.load(speech_lm), AutoTokenizer.from_pretrained(speech_lm))


@pytest.mark.parametrize("layout", ["16 shards, 2 ranks x 2 workers", "16 shards, 3 ranks x 2 workers",
                                    "2 shards, 2 ranks x 2 workers", "2 shards, 3 ranks x 1 worker"])
def test_every_sample_once_per_epoch_across_ranks_and_workers(shards, builder, tmp_path, layout):
    from speechtok.lm.inspect import epoch_ids

    n_shards, world, workers = int(layout.split()[0]), int(layout.split()[2]), int(layout.split()[5])
    src = reshard(shards, tmp_path / "s", per_shard=1, copies=2) if n_shards == 16 else shards
    cfg = DataConfig(shards=[str(src)], seq_len=32, shuffle_buffer=3)
    ds = PackedTokens(cfg, builder, cfg.shards, seed=5)
    assert len(ds.sources["speech"].units) == n_shards
    expected = 16 if n_shards == 16 else 8
    orders = []
    for epoch in (0, 1, 2):
        parts = epoch_ids(ds, world, workers, epoch)["speech"]
        assert len(parts) == world * workers
        counts = Counter(i for ids in parts.values() for i in ids)
        assert len(counts) == expected and set(counts.values()) == {1}, (epoch, counts)  # each exactly once
        assert sum(1 for ids in parts.values() if ids) >= min(world * workers, n_shards)
        orders.append(parts)
    assert orders[0] != orders[1] and orders[1] != orders[2]  # a new order each epoch
    if n_shards == 16:  # and a new assignment of shards to parts
        assert {k: set(v) for k, v in orders[0].items()} != {k: set(v) for k, v in orders[1].items()}


def test_mix_weights_are_token_shares_and_text_is_read_through(shards, builder, tmp_path):
    text = tmp_path / "big.txt"
    text.write_text("\n".join(f"{TEXT_LINES[i % len(TEXT_LINES)]} {i}" for i in range(3000)) + "\n")
    mix = {"speech": 1, "text": 1, "interleaved": 2, "asr": 1, "tts": 1}
    cfg = DataConfig(shards=[str(shards)], text=[str(text)], seq_len=64, shuffle_buffer=50, mix=mix,
                     text_block_bytes=4096)
    read = []

    class Recording:  # the builder, noting which text lines it is given
        def text(self, line):
            read.append(line)
            return builder.text(line)

        def build(self, *a):
            return builder.build(*a)

        def check_shards(self, src):
            builder.check_shards(src)

    ds = PackedTokens(cfg, Recording(), cfg.shards, seed=2)
    assert len(ds.sources["text"].units) > 8  # blocks: a shuffled global order of the text too
    tokens, consumed = Counter(), {}
    for fmt, seq in ds.sequences(0, 0, 1, consumed):
        tokens[fmt] += len(seq)
        if consumed["speech"] >= 8 * 12:  # 12 epochs of the 8 speech samples
            break
    total = sum(tokens.values())
    for fmt, w in mix.items():
        assert abs(tokens[fmt] / total - w / 6) < 0.02, (fmt, tokens[fmt] / total, w / 6)
    # distinct lines, not line 0 again
    assert len(read) == consumed["text"] > 300 and len(set(read)) == len(read)
    lines = list(itertools.islice(part_stream(ds.sources["text"], 2, 0, 1, buffer=50), 3000))
    # one text epoch: every line, shuffled
    assert len(set(lines)) == 3000 and lines[:50] != sorted(lines[:50])


def test_inspect_reports_sources_shares_and_epochs(speech_lm, shards, tmp_path):
    cfg = write_config(tmp_path / "c.yaml", speech_lm, shards, tmp_path / "run", steps=40)
    r = run("lm", "inspect", cfg, "--world-size", 2, "--workers", 2, "--ids", "--json")
    assert r.exit_code == 0, r.output
    report = json.loads(r.output)
    speech, text = report["sources"]["speech"], report["sources"]["text"]
    assert speech["items"] == 8 and text["items"] == len(TEXT_LINES)
    assert speech["share"] == pytest.approx(5 / 6) and text["share"] == pytest.approx(1 / 6)
    run_tokens = 40 * 4 * 64 * 2
    assert report["run_tokens"] == run_tokens
    assert speech["epochs_over_run"] == pytest.approx(
        sum(run_tokens * f["share"] / f["tokens_per_item"] for f in speech["formats"].values()) / 8)
    assert sorted(report["ids"]["speech"]) == ["0/0", "0/1", "1/0", "1/1"]
    assert sorted(i for ids in report["ids"]["speech"].values() for i in ids) == sorted(
        s["id"] for s in read_shards(shards))
    text_out = run("lm", "inspect", cfg).output
    assert "speech: 8 samples in 2 shards" in text_out and "epochs over the run" in text_out


# --- Untrusted checkpoints and config mistakes (issue 15 items 6 and 9) ---

class _Touch:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_checkpoint_with_a_malicious_pickle_is_refused(speech_lm, shards, tmp_path):
    import pickle

    marker = tmp_path / "pwned"
    out = tmp_path / "run"
    ckpt = out / "checkpoints" / "step_0000004"
    (ckpt / "state").mkdir(parents=True)
    evil = pickle.dumps(_Touch(marker))
    (ckpt / "state" / ".metadata").write_bytes(evil)  # where DCP keeps its (pickled) metadata
    (ckpt / "state.pt").write_bytes(evil)  # where checkpoints used to keep everything
    (ckpt / "rng_rank0.pt").write_bytes(evil)
    (ckpt / "meta.json").write_text(json.dumps({"step": 4, "world_size": 1}))
    (ckpt / "world_size").write_text("1")
    (out / "checkpoints" / "latest").write_text(ckpt.name)
    r = run("lm", "train", write_config(tmp_path / "c.yaml", speech_lm, shards, out, steps=6))
    assert not marker.exists()
    assert r.exit_code == 2 and "refused" in r.output and ".metadata" in r.output, r.output


@pytest.mark.parametrize("mistake, message", [
    ({"train": {"steps": "2"}}, "train.steps: expected an integer, not '2'"),
    ({"train": {"steps": -5}}, "train.steps: must be at least 1"),
    ({"train": {"save_every": 0}}, "train.save_every: must be at least 1"),
    ({"train": {"batch_size": 0}}, "train.batch_size: must be at least 1"),
    ({"data": {"seq_len": 0}}, "data.seq_len: must be at least 2"),
    ({"train": {"stpes": 10}}, "train.stpes: unknown key"),
    ({"data": {"text": ["missing.txt"]}}, "data.text: "),
    ({"model": "no_such_model"}, "model: "),
    ({"train": {"compile": "yes"}}, "compile: true, false, auto or model"),
])
def test_config_mistakes_are_one_line_naming_file_and_key(speech_lm, shards, tmp_path, mistake, message):
    cfg = write_config(tmp_path / "c.yaml", speech_lm, shards, tmp_path / "run")
    raw = yaml.safe_load(cfg.read_text())
    for k, v in mistake.items():
        raw[k] = {**raw[k], **v} if isinstance(v, dict) else v
    cfg.write_text(yaml.safe_dump(raw))
    r = run("lm", "train", cfg)
    assert r.exit_code == 2, r.output
    assert r.output.count("\n") == 1 and str(cfg) in r.output and message in r.output, r.output
    assert not (tmp_path / "run").exists()


def test_config_reading_accepts_what_users_mean(speech_lm, shards, tmp_path):
    from speechtok.lm.config import load_config

    cfg = write_config(tmp_path / "c.yaml", speech_lm, shards, tmp_path / "run")
    cfg.write_text(cfg.read_text().replace("lr: 0.003", "lr: 3e-3"))  # YAML 1.1 reads 3e-3 as a string
    assert yaml.safe_load(cfg.read_text())["train"]["lr"] == "3e-3"
    run_cfg = load_config(cfg)
    assert run_cfg.train.lr == 3e-3 and run_cfg.train.compile == "auto"
    assert run_cfg.data.text == [str(tmp_path / "text.txt")]  # relative to the config file
    (tmp_path / "broken.yaml").write_text("train:\n  steps: [1, 2\n")
    r = run("lm", "train", tmp_path / "broken.yaml")
    assert r.exit_code == 2 and "broken.yaml: line" in r.output and "not valid YAML" in r.output, r.output
    from speechtok.training.loop import compile_enabled

    assert (compile_enabled("auto", torch.device("cpu")) is False
            and compile_enabled("auto", torch.device("cuda")))


def test_torn_metrics_and_changed_model_size_on_resume(tmp_path, capsys):
    from speechtok.training.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
    from speechtok.training.loop import Metrics

    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.5}\n{"step": 3, '
                                            '"lo')
    Metrics(tmp_path, 0, resume_step=2)
    assert (tmp_path / "metrics.jsonl").read_text().splitlines() == ['{"step": 1, "loss": 2.0}',
                                                                     '{"step": 2, "loss": 1.5}']
    assert "metrics.jsonl: line 3" in capsys.readouterr().err
    small = torch.nn.Linear(4, 3)
    save_checkpoint(tmp_path, 2, {"generator": (small, torch.optim.AdamW(small.parameters()))}, {}, 0, 1, 2)
    big = torch.nn.Linear(4, 5)
    with pytest.raises(CheckpointError,
                       match=r"generator.model.weight is \(3, 4\) in the checkpoint but \(5, 4\)"):
        load_checkpoint(tmp_path, {"generator": (big, torch.optim.AdamW(big.parameters()))}, 0)


def test_an_output_that_is_a_file_exits_2_and_other_trainers_check_configs(speech_lm, shards, tmp_path):
    (tmp_path / "taken").write_text("a file where the run folder should go")  # README: a usage error, exit 2
    r = run("lm", "train", write_config(tmp_path / "c.yaml", speech_lm, shards, tmp_path / "taken"))
    assert r.exit_code == 2 and str(tmp_path / "taken") in r.output and r.output.count("\n") == 1, r.output
    voc = tmp_path / "voc.yaml"
    voc.write_text(yaml.safe_dump({"kind": "vocos", "shards": str(shards), "output": "out", "lr": "3e-4",
                                   "batch_size": 0}))
    r = run("vocoder", "train", "--config", voc)
    assert r.exit_code == 2 and f"{voc}: batch_size: must be at least 1" in r.output, r.output
    ac = tmp_path / "ac.yaml"
    ac.write_text(yaml.safe_dump({"output": "out", "shards": [str(shards)], "codec": "encodec",
                                  "train": {"steps": "2"}}))
    r = run("acoustic", "train", ac)
    assert r.exit_code == 2 and f"{ac}: train.steps: expected an integer" in r.output, r.output


@pytest.mark.parametrize("units", [30, 3])  # shard-level and sample-level splits
def test_a_global_position_resumes_near_the_same_items_on_another_layout(units):
    from speechtok.training.stream import Position, Source

    per_unit = 120 // units
    src = Source("speech", [list(range(u * per_unit, (u + 1) * per_unit)) for u in range(units)], iter,
                 unit_sizes=[per_unit] * units)
    old_parts = [part_stream(src, 7, r, 2, w, 2, buffer=1) for r in range(2) for w in range(2)]  # 4 parts
    read = [x for p in old_parts for x in itertools.islice(p, 25)]  # each part read 25 items of epoch 0
    origin = Position(4, 1, origin={"speech": len(read)})
    assert origin.start(src) == (0, 100)
    new_parts = [part_stream(src, 7, r, 3, 0, 1, buffer=1, start=origin.start(src), epochs=1)
                 for r in range(3)]
    rest = [x for p in new_parts for x in p]
    assert len(rest) == 20  # the rest of epoch 0: N - G items
    both = Counter(read + rest)
    missed, twice = 120 - len(both), sum(c > 1 for c in both.values())
    assert missed == twice <= 4 * per_unit // 2, (missed, twice)  # parts kept an even pace: small boundary
    assert missed == twice == 0 or units == 30


def test_extend_vocab_output_is_checksummed_and_verified(base_llm, units_and_codec_shards, tmp_path):
    """`tok lm extend-vocab` records sha256.json; a flipped bit in its weights is refused in one line by
    `tok lm train` (model: it) and `tok generate`, exit 2, instead of training or generating from it."""
    from click.testing import CliRunner

    from speechtok.cli.main import cli

    def tok(*args):
        return CliRunner().invoke(cli, [str(a) for a in args])

    r = tok("lm", "extend-vocab", base_llm, "-m", units_and_codec_shards / "shards", "-o", tmp_path / "lm")
    assert r.exit_code == 0 and (tmp_path / "lm" / "sha256.json").is_file(), r.output
    weights = tmp_path / "lm" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-10] ^= 1
    weights.write_bytes(bytes(data))
    cfg = {"model": str(tmp_path / "lm"), "output": str(tmp_path / "run"),
           "data": {"shards": [str(units_and_codec_shards / "shards")], "seq_len": 64, "num_workers": 0},
           "train": {"steps": 1, "batch_size": 1, "precision": "fp32"}}
    (tmp_path / "lm.yaml").write_text(yaml.safe_dump(cfg))
    for r in (tok("lm", "train", tmp_path / "lm.yaml"),
              tok("generate", "--lm", tmp_path / "lm", "--units-only", "-o", tmp_path / "u.npy")):
        assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1, r.output
        assert r.output.startswith(f"error: {weights}: checksum mismatch"), r.output
