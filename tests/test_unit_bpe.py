"""Acoustic BPE over units and codec frames: exact round trips, the same sequence-length reduction as
`codec-bpe` (the reference implementation) on the same codes, and `tok bpe train` on real shards."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from speechtok.cli.main import cli
from speechtok.tokenizers.unit_bpe import UnitBPE, train_bpe


def markov_streams(k: int, n: int, length: int, seed: int = 0, n_q: int = 1) -> list[np.ndarray]:
    """Streams with structure for BPE to find: each code depends on the previous one (sparse transitions)."""
    rng = np.random.default_rng(seed)
    trans = rng.dirichlet(np.full(k, 0.05), size=k)
    out = []
    for _ in range(n):
        rows = []
        for _ in range(n_q):
            s = [int(rng.integers(k))]
            for _ in range(length - 1):
                s.append(int(rng.choice(k, p=trans[s[-1]])))
            rows.append(s)
        out.append(np.array(rows[0] if n_q == 1 else rows))
    return out


def test_bpe_round_trips_units_and_codec_frames_exactly(tmp_path):
    units = markov_streams(50, 40, 200)
    bpe = train_bpe(units, 50, 300)
    for s in units + [np.array([7]), np.arange(50)]:
        ids = bpe.encode(s)
        assert np.array_equal(bpe.decode(ids), s) and ids.max() < bpe.vocab_size
    assert sum(len(bpe.encode(s)) for s in units) < 0.7 * sum(len(s) for s in units)
    codec = markov_streams(16, 20, 100, n_q=4)
    cbpe = train_bpe(codec, 16, 64 + 200, num_codebooks=4)
    cbpe.save(tmp_path / "bpe")
    back = UnitBPE.load(tmp_path / "bpe")
    for s in codec:
        assert np.array_equal(back.decode(back.encode(s)), s)
    assert [back.tokenizer.id_to_token(i) for i in range(64)] == [back.to_chars(np.array([[c if q == j else 0]
                                                                                for j in range(4)]))[q]
                                                                 for q in range(4) for c in range(16)]
    with pytest.raises(ValueError, match="outside"):
        bpe.encode(np.array([50]))


def test_length_reduction_matches_codec_bpe(tmp_path):
    """Same codes, same number of merges: codec-bpe's Trainer (HF tokenizers too) reaches the same
    sequence-length reduction within 2% (merge ties may be broken differently)."""
    codec_bpe = pytest.importorskip("codec_bpe")
    from codec_bpe.core.trainer import Trainer

    streams = markov_streams(32, 30, 150, seed=1, n_q=2)
    for i, s in enumerate(streams):
        np.save(tmp_path / f"codes_{i:03d}.npy", s)
    merges = 300
    ours = train_bpe(streams, 32, 64 + merges, num_codebooks=2)
    ref = Trainer(num_codebooks=2, codebook_size=32, vocab_size=64 + 1 + merges, eos_token="</s>").train(
        str(tmp_path))
    codes = sum(s.size for s in streams)
    ours_tokens = sum(len(ours.encode(s)) for s in streams)
    ref_tokens = sum(len(ref.encode(codec_bpe.codes_to_chars(s, 32), add_special_tokens=False))
                     for s in streams)
    assert codes / ours_tokens > 1.3  # merges were learned
    assert abs(ours_tokens / ref_tokens - 1) < 0.02


def run(*args):
    r = CliRunner().invoke(cli, [str(a) for a in args])
    assert r.exit_code == 0, r.output
    return r.output


@pytest.fixture(scope="module")
def bpe_shards(tmp_path_factory):
    """MFCC units (k=16) of examples/audio in shards, and `tok bpe train` on them (its output)."""
    root = tmp_path_factory.mktemp("bpe")
    run("train-kmeans", "examples/audio", "--model", "mfcc", "-k", 16, "-o", root / "km", "-q")
    run("encode", "examples/audio", "-t", root / "km", "-o", root / "shards", "-q", "--num-workers", 0)
    return root, run("bpe", "train", root / "shards", "-o", root / "bpe", "--vocab-size", 40)


@pytest.fixture(scope="module")
def bpe_lm(base_llm, bpe_shards, tmp_path_factory):
    """(folder, output) of `tok lm extend-vocab --bpe` with the BPE of `bpe_shards`."""
    root, _ = bpe_shards
    lm = tmp_path_factory.mktemp("bpe_lm") / "lm"
    return lm, run("lm", "extend-vocab", base_llm, "-m", root / "shards", "-o", lm, "--bpe", root / "bpe")


def test_bpe_train_and_eval_tokens_cli(bpe_shards, tmp_path):
    from speechtok import read_shards

    root, out = bpe_shards
    meta = json.loads((root / "bpe" / "bpe.json").read_text())
    assert meta["vocab_size"] <= 40 and meta["trained_on"]["length_reduction"] > 1 and "shorter" in out
    bpe = UnitBPE.load(root / "bpe")
    for sample in read_shards(root / "shards"):
        units = sample["semantic"]
        assert np.array_equal(bpe.decode(bpe.encode(units)), units)
    report = CliRunner().invoke(cli, ["eval", "tokens", str(root / "shards"), "-o", str(tmp_path / "rep"),
                                      "--bpe", str(root / "bpe")])
    assert report.exit_code == 0, report.output
    got = json.loads((tmp_path / "rep" / "report.json").read_text())["streams"]["semantic"]["bpe"]
    assert got["length_reduction"] == pytest.approx(meta["trained_on"]["length_reduction"])
    assert (got["nominal_bps"] == pytest.approx(meta["trained_on"]["bitrate_tokens_bps"])
            and "shorter" in report.output)


def test_bpe_train_refuses_a_stream_of_other_values(bpe_shards, tmp_path):
    """An F0 / pitch / style stream is not BPE material: one error line, exit 2, nothing written."""
    import shutil

    root, _ = bpe_shards
    shutil.copytree(root / "shards", tmp_path / "shards")
    manifest = json.loads((tmp_path / "shards" / "manifest.json").read_text())
    manifest["tokenizers"]["f0"] = {"type": "f0", "rate": 200}
    (tmp_path / "shards" / "manifest.json").write_text(json.dumps(manifest))
    r = CliRunner().invoke(cli, ["bpe", "train", str(tmp_path / "shards"), "-o", str(tmp_path / "bpe"),
                                 "--vocab-size", "40", "--stream", "f0"])
    assert r.exit_code == 2 and "holds f0 values" in r.output and not (tmp_path / "bpe").exists()
    assert r.exception is None or isinstance(r.exception, SystemExit)


def test_extend_vocab_with_bpe_merges_round_trips_units(bpe_lm, bpe_shards):
    """`tok lm extend-vocab --bpe` adds the merged tokens after the k units; units → ids → units is exact,
    and the LM data stream reads the shorter sequence."""
    from transformers import AutoTokenizer

    from speechtok import read_shards
    from speechtok.lm.sequences import SequenceBuilder
    from speechtok.lm.vocab import SpeechVocab

    root, _ = bpe_shards
    lm, out = bpe_lm
    assert "BPE merges" in out
    vocab = SpeechVocab.load(lm)
    tok = AutoTokenizer.from_pretrained(lm)
    assert vocab.k == 16 and vocab.semantic_tokens == vocab.bpe_tokens <= 40
    assert tok.convert_ids_to_tokens([vocab.semantic_first_id + vocab.semantic_tokens - 1]) == [
        f"<s_{vocab.semantic_tokens - 1}>"]
    sample = next(iter(read_shards(root / "shards")))
    units = sample["semantic"]
    ids = vocab.units_to_ids(units)
    assert len(ids) < len(units) and vocab.is_semantic(ids).all()
    np.testing.assert_array_equal(vocab.ids_to_units(ids), units)
    seq = SequenceBuilder(vocab, tok).speech(sample)
    assert seq[-len(ids) - 1: -1] == ids.tolist()


@pytest.fixture(scope="module")
def other_units(bpe_shards):
    """Shards the BPE of `bpe_shards` was not trained on: its units deduplicated (`dedup/`), and the units of
    another k-means (seed 1, same k: `other/`)."""
    root, _ = bpe_shards
    run("encode", "examples/audio", "-t", root / "km", "-o", root / "dedup", "-q", "--num-workers", 0,
        "--dedup")
    run("train-kmeans", "examples/audio", "--model", "mfcc", "-k", 16, "--seed", 1, "-o", root / "km1", "-q")
    run("encode", "examples/audio", "-t", root / "km1", "-o", root / "other", "-q", "--num-workers", 0)
    return {"dedup": ("dedup=False", "dedup=True"), "other": ("tokenizer_sha256=", "tokenizer_sha256=")}


def refused(*args) -> str:
    """The one error line of a command that must exit 2 (no traceback)."""
    r = CliRunner().invoke(cli, [str(a) for a in args])
    assert r.exit_code == 2 and (r.exception is None or isinstance(r.exception, SystemExit)), r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.output
    return lines[0]


@pytest.mark.parametrize("shards", ["dedup", "other"])
def test_a_bpe_refuses_units_it_was_not_trained_on(bpe_shards, other_units, base_llm, tmp_path, shards):
    """A BPE trained on frame-level units of one k-means is refused, naming bpe.json and both values, by
    every command that would apply it to deduplicated units or another tokenizer's: `tok eval tokens`,
    `tok lm extend-vocab`, `tok encode --bpe`; nothing is written."""
    root, _ = bpe_shards
    want, got = other_units[shards]
    bpe_json = str(root / "bpe" / "bpe.json")
    km = root / ("km" if shards == "dedup" else "km1")
    dedup = ["--dedup"] if shards == "dedup" else []
    for args in (["eval", "tokens", root / shards, "-o", tmp_path / "rep", "--bpe", root / "bpe"],
                 ["lm", "extend-vocab", base_llm, "-m", root / shards, "-o", tmp_path / "lm",
                  "--bpe", root / "bpe"],
                 ["encode", "examples/audio", "-t", km, "-o", tmp_path / "enc", "-q", "--num-workers", 0,
                  "--bpe", root / "bpe", *dedup]):
        line = refused(*args)
        assert line.startswith(f"error: {bpe_json}: trained on {want}") and f"has {got}" in line, line
        assert line.count("tokenizer_sha256=") in (0, 2)
    assert not any((tmp_path / d).exists() and any((tmp_path / d).iterdir()) for d in ("rep", "lm", "enc"))


def test_lm_data_refuses_units_its_bpe_was_not_trained_on(bpe_shards, other_units, bpe_lm):
    """The LM's data stream applies the vocabulary's BPE to units: `data.dedup` other than the BPE's, or
    shards of another tokenizer, are refused naming the LM's speech_bpe/bpe.json."""
    from transformers import AutoTokenizer

    from speechtok.lm.config import DataConfig
    from speechtok.lm.data import PackedTokens
    from speechtok.lm.sequences import SequenceBuilder
    from speechtok.lm.vocab import SpeechVocab

    root, _ = bpe_shards
    lm, _ = bpe_lm
    vocab, tok = SpeechVocab.load(lm), AutoTokenizer.from_pretrained(lm)
    bpe_json = str(lm / "speech_bpe" / "bpe.json")
    with pytest.raises(ValueError, match=f"^{bpe_json}: trained on dedup=False .* dedup=True"):
        SequenceBuilder(vocab, tok, dedup=True)
    builder = SequenceBuilder(vocab, tok)
    cfg = DataConfig(shards=[str(root / "other")], mix={"speech": 1.0}, seq_len=64)
    with pytest.raises(ValueError, match=f"^{bpe_json}: trained on tokenizer_sha256="):
        PackedTokens(cfg, builder, cfg.shards)
    PackedTokens(cfg, builder, [str(root / "shards")])  # the shards it was trained on are accepted


def test_bad_bpe_folders_are_one_line_naming_the_file(bpe_shards, tmp_path):
    """A damaged bpe.json or a missing tokenizer.json: `error: FILE: REASON`, exit 2."""
    import shutil

    root, _ = bpe_shards
    shutil.copytree(root / "bpe", tmp_path / "bad")
    (tmp_path / "bad" / "bpe.json").write_text("{")
    line = refused("eval", "tokens", root / "shards", "-o", tmp_path / "rep", "--bpe", tmp_path / "bad")
    assert line.startswith(f"error: {tmp_path / 'bad' / 'bpe.json'}: not a `tok bpe train` bpe.json")
    shutil.copytree(root / "bpe", tmp_path / "half")
    (tmp_path / "half" / "tokenizer.json").unlink()
    line = refused("lm", "extend-vocab", "nowhere", "-m", root / "shards", "-o", tmp_path / "lm",
                   "--bpe", tmp_path / "half")
    assert str(tmp_path / "half" / "tokenizer.json") in line
    meta = json.loads((root / "bpe" / "bpe.json").read_text())
    shutil.copytree(root / "bpe", tmp_path / "old")
    (tmp_path / "old" / "bpe.json").write_text(json.dumps({k: v for k, v in meta.items() if k != "source"}))
    (tmp_path / "old" / "sha256.json").unlink()  # an older version's folder: no checksums either
    line = refused("encode", "examples/audio", "-t", root / "km", "-o", tmp_path / "enc",
                   "--bpe", tmp_path / "old")
    assert line.startswith(f"error: {tmp_path / 'old' / 'bpe.json'}: records no source stream")
    shutil.copytree(root / "bpe", tmp_path / "flipped")  # a merge edited (or a bit flipped) after training
    tokenizer = json.loads((tmp_path / "flipped" / "tokenizer.json").read_text())
    tokenizer["model"]["merges"] = tokenizer["model"]["merges"][::-1]
    (tmp_path / "flipped" / "tokenizer.json").write_text(json.dumps(tokenizer))
    line = refused("lm", "extend-vocab", "nowhere", "-m", root / "shards", "-o", tmp_path / "lm",
                   "--bpe", tmp_path / "flipped")
    assert line.startswith(f"error: {tmp_path / 'flipped' / 'tokenizer.json'}: checksum mismatch"), line


def test_encode_writes_bpe_tokens_as_a_resumable_stream(bpe_shards, tmp_path):
    """`tok encode --bpe` keeps the units and adds `semantic_bpe`: the ids Hugging Face tokenizers gives
    codec-bpe's characters of the units, a card naming the BPE; a deleted shard is written again byte for
    byte on a rerun, and a rerun with another BPE is refused."""
    import hashlib

    codec_bpe = pytest.importorskip("codec_bpe")
    from speechtok import read_shards

    root, _ = bpe_shards
    bpe = UnitBPE.load(root / "bpe")
    args = ["encode", "examples/audio", "-t", root / "km", "-o", tmp_path / "enc", "-q", "--num-workers", 0,
            "--shard-max-count", 1, "--bpe", root / "bpe"]
    run(*args)
    manifest = json.loads((tmp_path / "enc" / "manifest.json").read_text())
    assert manifest["tokenizers"]["semantic_bpe"] == {**manifest["tokenizers"]["semantic_bpe"], "type": "bpe",
                                                      "of": "semantic", "bpe_sha256": bpe.sha256(),
                                                      "vocab_size": bpe.vocab_size}
    plain = {s["id"]: s["semantic"] for s in read_shards(root / "shards")}
    tokens = 0
    for sample in read_shards(tmp_path / "enc"):
        units, ids = sample["semantic"], sample["semantic_bpe"]
        np.testing.assert_array_equal(units, plain[sample["id"]])
        ref = bpe.tokenizer.encode(codec_bpe.codes_to_chars(units[None].astype(np.int64), 16)).ids
        assert ids.tolist() == ref and len(ids) < len(units)
        back = codec_bpe.chars_to_codes("".join(bpe.tokenizer.id_to_token(int(i)) for i in ids), 1, 16)
        assert back == [units.tolist()]
        tokens += len(ids)
    assert manifest["frames"]["semantic_bpe"] == tokens
    digest = {s["name"]: s["sha256"] for s in manifest["shards"]}
    assert len(digest) == 3
    (tmp_path / "enc" / "shard-000001.tar").unlink()
    run(*args)
    assert {n: hashlib.sha256((tmp_path / "enc" / n).read_bytes()).hexdigest() for n in digest} == digest
    run("bpe", "train", root / "shards", "-o", tmp_path / "bpe30", "--vocab-size", 30)
    line = refused(*args[:-1], tmp_path / "bpe30")
    assert "another job" in line or "other inputs" in line


def reference_decode(bpe: UnitBPE, ids, n_q: int, size: int) -> np.ndarray:
    """codec-bpe's decoding of Hugging Face tokenizers' tokens: the codes a token sequence stands for."""
    from codec_bpe import chars_to_codes

    chars = "".join(bpe.tokenizer.id_to_token(int(i)) for i in ids)
    return np.array(chars_to_codes(chars, n_q, size, drop_inconsistent_codes=False, drop_hanging_codes=False))


def test_generated_bpe_tokens_decode_to_units_exactly(bpe_lm):
    """What `tok generate` does with an LM's output (`generate_units`: sampled ids → units) undoes the
    merges exactly: the units are codec-bpe's decoding of the sampled tokens."""
    pytest.importorskip("codec_bpe")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from speechtok.lm.generate import SamplingOptions, generate_units, speech_prompt
    from speechtok.lm.vocab import SpeechVocab

    lm, _ = bpe_lm
    vocab, tok = SpeechVocab.load(lm), AutoTokenizer.from_pretrained(lm)
    model = AutoModelForCausalLM.from_pretrained(lm, dtype=torch.float32)
    opts = SamplingOptions(max_new_tokens=8, min_new_tokens=8, temperature=1.0, seed=3)
    prompts = [speech_prompt(tok, vocab, units=np.array([1, 2, 3]))] * 2
    sampled, decode = [], vocab.ids_to_units
    vocab.ids_to_units = lambda row: decode(sampled.append(np.array(row)) or row)  # what generation decodes
    units = generate_units(model, tok, vocab, prompts, opts, seeds=[3, 4])
    merged = np.concatenate(sampled) >= vocab.k + vocab.semantic_first_id
    assert len(sampled) == 2 and merged.any()
    for row, got in zip(sampled, units):
        assert len(row) == 8
        ref = reference_decode(vocab.bpe, row - vocab.semantic_first_id, 1, 16)[0]
        np.testing.assert_array_equal(got, ref)


@pytest.fixture(scope="module")
def codec_bpe_lm(base_llm, units_and_codec_shards, tmp_path_factory):
    """(folder, output) of `tok lm extend-vocab --bpe` with a BPE (`cbpe/` beside it) of the EnCodec stream
    of `units_and_codec_shards` (2 codebooks of 16)."""
    root = tmp_path_factory.mktemp("codec_bpe_lm")
    shards = units_and_codec_shards / "shards"
    run("bpe", "train", shards, "--stream", "encodec", "-o", root / "cbpe", "--vocab-size", 32 + 40)
    out = run("lm", "extend-vocab", base_llm, "-m", shards, "-o", root / "lm", "--bpe", root / "cbpe")
    return root / "lm", out


def test_codec_bpe_inside_the_lm_round_trips_codes(base_llm, units_and_codec_shards, codec_bpe_lm, tmp_path):
    """A BPE of the codec stream (2 codebooks of 16, frames flattened as codec-bpe does) becomes the LM's
    codec tokens with `extend-vocab --bpe`: `<c{q}_{i}>` then the merges `<c_j>`; codes [n_q, T] → ids →
    codes is exact on every sample, the ids are Hugging Face tokenizers' on codec-bpe's characters, and a
    BPE of 2 codebooks is refused for `--n-q 1`."""
    codec_bpe = pytest.importorskip("codec_bpe")
    from transformers import AutoTokenizer

    from speechtok import read_shards
    from speechtok.lm.vocab import SpeechVocab

    shards = units_and_codec_shards / "shards"
    lm, out = codec_bpe_lm
    assert "encodec tokens" in out and "BPE merges" in out
    vocab, tok = SpeechVocab.load(lm), AutoTokenizer.from_pretrained(lm)
    bpe = vocab.codec_bpe
    assert (vocab.codec_stream, vocab.n_q, vocab.codebook_size, vocab.codec_bpe_tokens) == ("encodec", 2, 16,
                                                                                           bpe.vocab_size)
    first = vocab.codec_first_id
    names = tok.convert_ids_to_tokens(list(range(first, first + bpe.vocab_size)))
    assert names[:17] == [f"<c0_{i}>" for i in range(16)] + ["<c1_0>"] and names[32:] == [
        f"<c_{j}>" for j in range(32, bpe.vocab_size)] and bpe.vocab_size > 32
    codes_total = ids_total = 0
    for sample in read_shards(shards):
        codes = sample["encodec"].astype(np.int64)
        ids = vocab.codes_to_ids(codes)
        assert ids.ndim == 1 and ids.min() >= vocab.codec_first_id
        ref = bpe.tokenizer.encode(codec_bpe.codes_to_chars(codes, 16)).ids
        assert (ids - vocab.codec_first_id).tolist() == ref
        np.testing.assert_array_equal(vocab.ids_to_codes(ids), codes)
        np.testing.assert_array_equal(reference_decode(bpe, ids - vocab.codec_first_id, 2, 16), codes)
        codes_total, ids_total = codes_total + codes.size, ids_total + len(ids)
    assert ids_total < codes_total
    with pytest.raises(ValueError, match="codebook order"):  # a code of codebook 1 where codebook 0's belongs
        vocab.ids_to_codes(np.array([16, 0]) + vocab.codec_first_id)
    line = refused("lm", "extend-vocab", base_llm, "-m", shards, "-o", tmp_path / "lm1",
                   "--bpe", lm.parent / "cbpe", "--n-q", 1)
    assert line.startswith(f"error: {lm.parent / 'cbpe' / 'bpe.json'}: trained on n_q=2") and "n_q=1" in line


def test_codec_frames_flatten_frame_by_frame():
    """Without a BPE, the LM's codec sequence is each frame's codebooks in order (hand-built), and back."""
    from speechtok.lm.vocab import SpeechVocab

    v = SpeechVocab(semantic_stream="u", k=4, semantic_first_id=10, text_id=1, speech_id=2, codec_stream="c",
                    n_q=2, codebook_size=3, codec_first_id=20)
    codes = np.array([[0, 1, 2], [2, 0, 1]])
    assert v.codec_sequence(codes).tolist() == [20, 25, 21, 23, 22, 24]
    np.testing.assert_array_equal(v.sequence_codes(v.codec_sequence(codes)), codes)


def test_lm_data_with_codec_bpe_speech(codec_bpe_lm, units_and_codec_shards):
    """`data.speech: codec`: speech spans are the BPE-merged codec frames, each span merged on its own, so
    every span decodes exactly to its frames and the spans tile the utterance; the data stream reads it."""
    from transformers import AutoTokenizer

    from speechtok import read_shards
    from speechtok.lm.config import DataConfig
    from speechtok.lm.data import PackedTokens
    from speechtok.lm.sequences import SequenceBuilder
    from speechtok.lm.vocab import SpeechVocab

    lm, _ = codec_bpe_lm
    vocab, tok = SpeechVocab.load(lm), AutoTokenizer.from_pretrained(lm)
    builder = SequenceBuilder(vocab, tok, span_words=(1, 2), speech="codec")
    rng = np.random.default_rng(0)
    for sample in read_shards(units_and_codec_shards / "shards"):
        codes = sample["encodec"].astype(np.int64)
        seq = builder.speech(sample)
        np.testing.assert_array_equal(vocab.sequence_codes(seq[len(builder.bos) + 1: -1]), codes)
        spans = builder.spans(sample, rng)
        assert spans[0].f0 == 0 and spans[-1].f1 == codes.shape[1]
        assert all(a.f1 == b.f0 for a, b in zip(spans, spans[1:]))
        for s in spans:
            np.testing.assert_array_equal(vocab.sequence_codes(builder.speech_ids(sample, s.f0, s.f1)),
                                          codes[:, s.f0: s.f1])
    cfg = DataConfig(shards=[str(units_and_codec_shards / "shards")], mix={"speech": 0.5, "interleaved": 0.5},
                     seq_len=64, speech="codec", shuffle_buffer=1)
    block = next(iter(PackedTokens(cfg, builder, cfg.shards)))["ids"]
    assert vocab.codec_first_id <= int(block.max()) < vocab.codec_first_id + vocab.codec_bpe_tokens


def test_lm_trained_on_codec_bpe_tokens_records_it(codec_bpe_lm, units_and_codec_shards, tmp_path):
    """`tok lm train` with `data.speech: codec` trains on the merged codec tokens; the final model records
    it, so `tok generate` (which makes units) refuses it in one line naming the LM."""
    import yaml

    from speechtok.lm.sequences import SequenceBuilder
    from speechtok.lm.vocab import SpeechVocab

    lm, _ = codec_bpe_lm
    cfg = {"model": str(lm), "output": str(tmp_path / "run"),
           "data": {"shards": [str(units_and_codec_shards / "shards")], "seq_len": 64, "shuffle_buffer": 1,
                    "num_workers": 0, "speech": "codec"},
           "train": {"batch_size": 2, "steps": 2, "warmup": 1, "log_every": 1, "save_every": 100,
                     "precision": "fp32", "compile": False}}
    (tmp_path / "lm.yaml").write_text(yaml.safe_dump(cfg))
    run("lm", "train", tmp_path / "lm.yaml")
    final = SpeechVocab.load(tmp_path / "run" / "final")
    assert final.speech == "codec" and final.codec_bpe is not None
    from types import SimpleNamespace

    assert SequenceBuilder(final, SimpleNamespace(bos_token_id=None, eos_token_id=0)).speech_kind == "codec"
    report = run("eval", "lm", tmp_path / "run" / "final", "--shards", units_and_codec_shards / "shards",
                 "-o", tmp_path / "ev")
    speech = json.loads((tmp_path / "ev" / "report.json").read_text())["perplexity"]["speech"]["speech"]
    # codec targets
    assert speech["tokens"] > 0 and np.isfinite(speech["perplexity"]) and "speech –" not in report
    line = refused("generate", "--lm", tmp_path / "run" / "final", "--prompt-text", "the cat", "--units-only",
                   "-o", tmp_path / "x.npy")
    assert line.startswith(f"error: {tmp_path / 'run' / 'final'}: trained on codec tokens"), line


def test_codec_bpe_lm_data_refuses_shards_without_its_codec_stream(codec_bpe_lm, tmp_path):
    """Shards without the codec stream the LM's codec BPE reads were refused as 'has type=None'; the line
    now names the shards, the missing stream and the BPE."""
    from transformers import AutoTokenizer

    from speechtok.lm.sequences import SequenceBuilder
    from speechtok.lm.vocab import SpeechVocab

    lm, _ = codec_bpe_lm
    (tmp_path / "units").mkdir()
    cards = {"semantic": {"type": "semantic", "k": 12, "frame_rate": 100.0}}
    (tmp_path / "units" / "manifest.json").write_text(json.dumps({"tokenizers": cards, "shards": []}))
    builder = SequenceBuilder(SpeechVocab.load(lm), AutoTokenizer.from_pretrained(lm), speech="codec")
    bpe_json = lm / "speech_bpe_codec" / "bpe.json"
    with pytest.raises(ValueError, match=f"^{tmp_path / 'units'}: no stream 'encodec', which the LM's "
                                         rf"codec BPE \({bpe_json}\) reads"):
        builder.check_shards(str(tmp_path / "units"))
