"""End to end: `tok train-kmeans` on a tiny HuBERT, `tok encode` into shards, and what the shards hold."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from click.testing import CliRunner

from speechtok import SemanticTokenizer, read_shards
from speechtok.cli.main import cli
from speechtok.shards import ShardError, sha256_of
from speechtok.tokenizers.semantic import run_length

K = 20


def run(*args):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    return result


@pytest.fixture(scope="module")
def hubert_tok(tiny_ssl, speech_corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("km") / "hubert_l2_k20"
    r = run("train-kmeans", speech_corpus, "-m", tiny_ssl("hubert"), "-l", 2, "-k", K, "-o", out, "-q",
            "--max-frames", 5000, "--backend", "torch")
    assert r.exit_code == 0, r.output
    return out


@pytest.fixture(scope="module")
def encoded(hubert_tok, speech_corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("shards") / "run1"
    r = run("encode", speech_corpus, "-t", hubert_tok, "-o", out, "-q", "--batch-seconds", 12)
    assert r.exit_code == 0, r.output
    return out


def test_tokenizer_dir_is_self_describing(hubert_tok, tiny_ssl):
    card = json.loads((hubert_tok / "tokenizer.json").read_text())
    assert card["k"] == K and card["dim"] == 48 and card["sample_rate"] == 16000 and card["frame_rate"] == 50
    # the model relative to the card
    assert card["features"] == {**card["features"], "kind": "ssl", "layer": 2,
                                "model_path": str(Path(tiny_ssl("hubert")).resolve())}
    assert (hubert_tok / card["features"]["model"]).resolve() == Path(tiny_ssl("hubert")).resolve()
    assert card["centroids"]["sha256"] == sha256_of(hubert_tok / "centroids.npy")
    assert card["kmeans"]["frames"] <= 5000 and card["kmeans"]["inertia"] > 0
    assert np.load(hubert_tok / "centroids.npy").shape == (K, 48)


def test_tampered_centroids_are_refused(hubert_tok, tmp_path):
    copy = tmp_path / "tok"
    shutil.copytree(hubert_tok, copy)
    c = np.load(copy / "centroids.npy")
    np.save(copy / "centroids.npy", c + 1)
    with pytest.raises(ValueError, match="checksum does not match"):
        SemanticTokenizer.from_dir(copy)


def test_shards_hold_every_utterance_with_labels(encoded, speech_corpus, hubert_tok):
    manifest = json.loads((encoded / "manifest.json").read_text())
    lines = [json.loads(x) for x in speech_corpus.read_text().splitlines()]
    assert manifest["num_utterances"] == len(lines) and manifest["num_errors"] == 0
    assert manifest["tokenizers"]["semantic"] == json.loads((hubert_tok / "tokenizer.json").read_text())
    for shard in manifest["shards"]:
        assert sha256_of(encoded / shard["name"]) == shard["sha256"]
    samples = list(read_shards(encoded))
    assert [s["id"] for s in samples] == [x["id"] for x in lines]  # corpus order
    total_frames = 0
    for s, line in zip(samples, lines):
        info = sf.info(speech_corpus.parent / line["path"])
        assert s["semantic"].dtype == np.uint8 and s["semantic"].max() < K
        assert s["duration"] == pytest.approx(info.duration, abs=1e-3)
        assert s["num_frames"] == len(s["semantic"]) == (round(info.duration * 16000) - 400) // 320 + 1
        assert s["text"] == line["text"] and s["speaker"] == line["speaker"] and s["words"] == line["words"]
        assert s["sample_rate"] == 16000 and s["frame_rate"] == 50
        total_frames += len(s["semantic"])
    assert manifest["frames"]["semantic"] == total_frames


def test_batched_tokens_equal_tokens_alone(encoded, hubert_tok, speech_corpus):
    """Each utterance encoded alone gives the shard's tokens. Features agree to ~1e-6, so a token may
    differ only where two centroids are within 1e-3 (squared distance) of a tie."""
    tok = SemanticTokenizer.from_dir(hubert_tok)
    c = torch.from_numpy(tok.centroids)
    by_id = {s["id"]: s["semantic"] for s in read_shards(encoded)}
    for line in map(json.loads, speech_corpus.read_text().splitlines()):
        from speechtok.audio import load_utterance
        from speechtok.corpus import Utterance

        wav = torch.from_numpy(load_utterance(Utterance(line["id"], str(speech_corpus.parent / line["path"])),
                                              16000))
        feats, _ = tok.features(wav[None], torch.tensor([len(wav)]))
        d = torch.cdist(feats[0].double(), c.double()) ** 2
        alone = d.argmin(1).numpy()
        differ = alone != by_id[line["id"]]
        if differ.any():
            top2 = torch.topk(d[torch.from_numpy(differ)], 2, largest=False).values
            assert torch.all(top2[:, 1] - top2[:, 0] < 1e-3)
        assert differ.mean() < 0.01


def test_two_runs_give_byte_identical_shards(encoded, hubert_tok, speech_corpus, tmp_path):
    again = tmp_path / "run2"
    r = run("encode", speech_corpus, "-t", hubert_tok, "-o", again, "-q", "--batch-seconds", 5,
            "--num-workers", 0)
    assert r.exit_code == 0, r.output
    names = sorted(p.name for p in encoded.glob("shard-*.tar"))
    assert names == sorted(p.name for p in again.glob("shard-*.tar")) and names
    for name in names + ["manifest.json"]:
        assert (encoded / name).read_bytes() == (again / name).read_bytes(), name


def test_dedup_is_run_length_of_frames(encoded, hubert_tok, speech_corpus, tmp_path):
    out = tmp_path / "dedup"
    r = run("encode", speech_corpus, "-t", hubert_tok, "-o", out, "-q", "--dedup")
    assert r.exit_code == 0, r.output
    assert json.loads((out / "manifest.json").read_text())["dedup"] is True
    frames = {s["id"]: s["semantic"] for s in read_shards(encoded)}
    for s in read_shards(out):
        units, durations = s["semantic"], s["semantic_durations"]
        assert np.all(units[1:] != units[:-1])
        np.testing.assert_array_equal(np.repeat(units, durations), frames[s["id"]])
        ref_units, ref_durations = run_length(frames[s["id"]])
        np.testing.assert_array_equal(units, ref_units)


def test_shard_caps_and_webdataset_compatibility(hubert_tok, speech_corpus, tmp_path):
    import webdataset as wds

    out = tmp_path / "small"
    r = run("encode", speech_corpus, "-t", hubert_tok, "-o", out, "-q", "--shard-max-count", 3)
    assert r.exit_code == 0, r.output
    shards = sorted(out.glob("shard-*.tar"))
    assert [p.name for p in shards] == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    ours = {s["id"]: s for s in read_shards(out)}
    seen = 0
    for sample in wds.WebDataset([str(p) for p in shards], shardshuffle=False).decode():
        meta = sample["json"]
        np.testing.assert_array_equal(sample["semantic.npy"], ours[meta["id"]]["semantic"])
        seen += 1
    assert seen == len(ours) == 8


def test_bad_inputs_are_reported_and_skipped(hubert_tok, speech_corpus, tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    good = sorted((speech_corpus.parent / "audio").rglob("*.wav"))[:2]
    for p in good:
        shutil.copy(p, corpus / p.name)
    (corpus / "corrupt.wav").write_bytes(b"RIFF....WAVEfmt garbage")
    sf.write(corpus / "tiny.wav", np.zeros(100, dtype=np.float32), 16000)
    out = tmp_path / "out"
    r = run("encode", corpus, "-t", hubert_tok, "-o", out, "-q")
    assert r.exit_code == 1
    errors = [json.loads(x) for x in (out / "errors.jsonl").read_text().splitlines()]
    assert {Path(e["file"]).name for e in errors} == {"corrupt.wav", "tiny.wav"}
    assert any("shorter than one token frame" in e["reason"] for e in errors)
    assert f"error: {corpus / 'corrupt.wav'}: cannot read audio header" in r.output
    assert "2 utterances" in r.output and "2 errors" in r.output
    assert sorted(s["id"] for s in read_shards(out)) == sorted(p.stem for p in good)
    r = run("train-kmeans", corpus, "-m", "mfcc", "-k", 4, "-o", tmp_path / "km", "-q")
    assert r.exit_code == 1 and "(1 inputs skipped)" in r.output, r.output  # README: exit 1, written without
    assert f"error: {corpus / 'corrupt.wav'}: cannot read audio header" in r.output
    assert (tmp_path / "km" / "tokenizer.json").exists()


def test_reader_names_truncated_and_corrupt_shards(encoded, tmp_path):
    copy = tmp_path / "c"
    shutil.copytree(encoded, copy)
    shard = copy / "shard-000000.tar"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    with pytest.raises(ShardError, match=r"shard-000000.tar: \d+ bytes, the manifest says"):
        list(read_shards(copy))
    with pytest.raises(ShardError, match="shard-000000.tar: truncated or corrupt"):
        list(read_shards(copy, verify=False))
    flipped = bytearray(data)
    flipped[700] ^= 0xFF
    shard.write_bytes(bytes(flipped))
    with pytest.raises(ShardError, match="sha256 does not match"):
        list(read_shards(copy))
    (copy / "shard-000000.tar").unlink()
    with pytest.raises(ShardError, match="missing"):
        list(read_shards(copy))


def test_python_api_matches_cli(hubert_tok, encoded, speech_corpus):
    tok = SemanticTokenizer.from_dir(hubert_tok)
    line = json.loads(speech_corpus.read_text().splitlines()[0])
    units = tok.encode(str(speech_corpus.parent / line["path"]))
    shard_units = next(iter(read_shards(encoded)))["semantic"]
    assert len(units) == len(shard_units) and (units == shard_units).mean() > 0.99


def test_readme_quickstart(tmp_path):
    """The README's offline quickstart, as a user runs it."""
    examples = Path(__file__).parents[1] / "examples" / "audio"
    km, shards = tmp_path / "km_mfcc", tmp_path / "shards"
    assert run("train-kmeans", examples, "--model", "mfcc", "-k", 16, "-o", km, "-q").exit_code == 0
    r = run("encode", examples, "-t", km, "-o", shards, "-q")
    assert r.exit_code == 0, r.output
    shown = run("show", shards, "-n", 2)
    assert shown.exit_code == 0 and "3 utterances" in shown.output and '"id": "alice"' in shown.output
    assert {s["id"] for s in read_shards(shards)} == {"alice", "bob", "carol"}


@pytest.mark.parametrize("batch_seconds,workers,buckets", [(3, 0, False), (40, 2, False), (8, 1, True)])
def test_shards_are_byte_identical_whatever_the_batches_and_workers(encoded, hubert_tok, speech_corpus,
                                                                    tmp_path,
                                                                   batch_seconds, workers, buckets):
    """Batch sizes (one utterance a batch up to all of them), loader workers and bucketed widths (the GPU
    default, padding each batch past its longest row) change neither a token nor a byte of the shards."""
    from speechtok.pipelines.encode import EncodeOptions, encode_corpus

    opts = EncodeOptions(max_batch_seconds=batch_seconds, num_workers=workers, buckets=buckets,
                         progress=False)
    encode_corpus(speech_corpus, SemanticTokenizer.from_dir(hubert_tok), tmp_path / "out", opts)
    names = sorted(p.name for p in encoded.glob("shard-*.tar"))
    for name in names + ["manifest.json"]:
        assert (encoded / name).read_bytes() == (tmp_path / "out" / name).read_bytes(), name


SYNCS = ("item", "tolist", "numpy", "cpu", "__bool__", "__int__", "__index__", "__float__")


def test_encode_loop_syncs_with_the_device_at_most_once_a_batch(tiny_ssl, speech_corpus, tmp_path,
                                                                monkeypatch):
    """The HuBERT tokenizer on the `meta` device stands in for a GPU: every value read back on the host
    (item, tolist, numpy, cpu, bool, int, ...) is counted, and so is each device→host copy. Per batch: one
    copy (the tokens) and at most one sync (today the one inside transformers' SDPA mask:
    `padding_mask.all()`; the encoder's own steps take none)."""
    from speechtok.pipelines import encode as encode_module
    from speechtok.pipelines.encode import EncodeOptions, encode_corpus
    from speechtok.tokenizers.ssl_features import SSLFeatures

    features = SSLFeatures(tiny_ssl("hubert"), 2)
    features.model.to("meta")
    tok = SemanticTokenizer(features, np.random.default_rng(0).normal(size=(K, 48)).astype(np.float32))
    assert tok.device.type == "meta"
    syncs, copies, batches = [], [], []
    for name in SYNCS:
        real = getattr(torch.Tensor, name)

        def counted(self, *a, _real=real, _name=name, **kw):
            if not self.is_meta:
                return _real(self, *a, **kw)
            syncs.append(_name)
            return {"__bool__": True, "__float__": 1.0, "tolist": [0] * (len(self) if self.dim() else 1)}.get(
                _name, torch.zeros(self.shape, dtype=self.dtype) if _name in ("cpu", "numpy") else 1)
        monkeypatch.setattr(torch.Tensor, name, counted)
    real_copy = torch.Tensor.copy_

    def copy(self, src, *a, **kw):
        if src.is_meta and not self.is_meta:
            copies.append(src.shape)
            return self.zero_()
        return real_copy(self, src, *a, **kw)
    monkeypatch.setattr(torch.Tensor, "copy_", copy)
    real_launch = encode_module.launch
    monkeypatch.setattr(encode_module, "launch", lambda toks, batch, split: batches.append(batch) or
                        real_launch(toks, batch, split))
    summary = encode_corpus(speech_corpus, tok, tmp_path / "out",
                            EncodeOptions(max_batch_seconds=6, num_workers=0, progress=False))
    assert summary.num_utterances == 8 and len(batches) >= 3
    assert len(copies) == len(batches), copies
    assert len(syncs) <= len(batches), syncs


def test_progress_counts_audio_seconds_with_an_honest_eta(capsys):
    """The bar counts audio seconds (its ETA was in utterances: 35 min shown, then done), and short inputs
    give neither a negative ETA nor a TqdmWarning (float seconds summed past the total)."""
    import warnings

    from speechtok.corpus import Utterance
    from speechtok.pipelines.batching import Item
    from speechtok.pipelines.encode import Progress

    items = [Item(i, Utterance(str(i), "x.wav"), s)
             for i, s in enumerate([0.0305, 0.1, 0.0107, 600.0, 0.3] * 3)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        progress = Progress(items, 2, enabled=True)
        for it in items[2:]:
            progress.advance(it.seconds, 1.0)
            progress.bar.refresh()
            assert "-" not in progress.bar.format_meter(**progress.bar.format_dict).split("[")[1]
        d = progress.bar.format_dict
        progress.close()
    assert d["n"] == d["total"] == pytest.approx(sum(it.seconds for it in items), abs=0.01)
    assert "1,801/1,801 s" in capsys.readouterr().err
