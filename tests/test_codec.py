"""Codecs: shapes, dtypes, frame counts, batch exactness, long-file chunking, encode/decode/resynth CLIs."""

import json
import math

import numpy as np
import pytest
import soundfile as sf
import torch
from click.testing import CliRunner

from speechtok import read_shards
from speechtok.cli.main import cli
from speechtok.tokenizers.codec import Codec, parse_codec_spec

KINDS = ["encodec", "dac", "mimi"]


def signal(n, seed, sr=16000):
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(n) / sr
    return 0.3 * torch.sin(2 * torch.pi * (150 + 50 * seed) * t) + 0.03 * torch.randn(n, generator=g)


def batch_of(wavs):
    lengths = torch.tensor([len(w) for w in wavs])
    out = torch.zeros(len(wavs), int(lengths.max()))
    for i, w in enumerate(wavs):
        out[i, : len(w)] = w
    return out, lengths


def test_parse_codec_spec():
    assert parse_codec_spec("encodec:facebook/encodec_24khz:nq=8") == {
        "kind": "encodec", "model": "facebook/encodec_24khz", "n_q": 8}
    assert parse_codec_spec("dac:/m/dac:16k:nq=4:name=dac16") == {
        "kind": "dac", "model": "/m/dac:16k", "n_q": 4, "name": "dac16"}
    with pytest.raises(ValueError, match="KIND:MODEL"):
        parse_codec_spec("wavtokenizer:x")
    with pytest.raises(ValueError, match="unknown option 'foo'"):
        parse_codec_spec("mimi:x:foo=1")


@pytest.mark.parametrize("kind", KINDS)
def test_shapes_frames_and_batch_exactness(tiny_codec, kind):
    codec = Codec(kind, tiny_codec(kind), n_q=2)
    sr, hop = codec.sample_rate, codec.hop
    wavs = [signal(n, i, sr) for i, n in enumerate([sr, 7001, 4000, 3 * hop + 1])]
    wav, lengths = batch_of(wavs)
    codes, frames = codec.encode(wav, lengths)
    assert codes.dtype == torch.int64 and codes.shape == (4, 2, int(frames.max()))
    assert int(codes.max()) < codec.codebook_size and int(codes.min()) >= 0
    for i, w in enumerate(wavs):
        n = len(w)
        expected = math.ceil(n / hop) if kind != "dac" else int(codec.num_frames(n))
        assert int(frames[i]) == expected
        if kind == "dac":
            assert abs(expected - n / hop) < 1
        alone, f1 = codec.encode(w[None], torch.tensor([n]))
        assert int(f1) == int(frames[i])
        assert torch.equal(alone[0], codes[i, :, : frames[i]])  # padding never reaches an utterance's codes
        assert torch.all(codes[i, :, frames[i]:] == 0)
    out, samples = codec.decode(codes, frames)
    assert torch.equal(samples, frames * hop)
    for i, w in enumerate(wavs):
        assert abs(int(samples[i]) - len(w)) < hop  # decode gives the input length, rounded to frames


def test_dac_needs_the_conv_mask(tiny_codec):
    """Without masking, DAC's two-sided convolutions let padding change the last frames."""
    codec = Codec("dac", tiny_codec("dac"), n_q=3)
    w = signal(3001, 1)
    padded = torch.nn.functional.pad(w, (0, 2000))[None, None]
    with torch.no_grad():
        plain = codec.model.encode(padded, n_quantizers=3).audio_codes[0, :, : int(codec.num_frames(3001))]
    alone, _ = codec.encode(w[None], torch.tensor([3001]))
    assert not torch.equal(plain, alone[0])


def test_codebook_choice(tiny_codec):
    enc = Codec("encodec", tiny_codec("encodec"), n_q=1)
    assert enc.n_q == 1 and enc.bandwidth == 3.75 and enc.card()["bandwidth"] == 3.75
    assert Codec("encodec", tiny_codec("encodec")).n_q == 2  # default: the highest bandwidth
    with pytest.raises(ValueError, match=r"nq=1 \(3.75 kbps\), nq=2 \(7.5 kbps\)"):
        Codec("encodec", tiny_codec("encodec"), n_q=3)
    with pytest.raises(ValueError, match="nq must be in 1..4"):
        Codec("dac", tiny_codec("dac"), n_q=5)
    with pytest.raises(ValueError, match="is a DacModel, not a MimiModel"):
        Codec("mimi", tiny_codec("dac"))


@pytest.mark.parametrize("kind,min_agree", [("dac", 1.0), ("encodec", 0.97), ("mimi", 0.97)])
def test_long_inputs_are_chunked(tiny_codec, kind, min_agree):
    """DAC: convolutions only, context covers the receptive field → exact. EnCodec's LSTM and Mimi's
    attention carry state beyond the 0.5 s context, so a few frames near chunk starts may differ."""
    whole = Codec(kind, tiny_codec(kind), n_q=2, chunk_seconds=100)
    chunked = Codec(kind, tiny_codec(kind), n_q=2, chunk_seconds=1.0, context_seconds=0.5)
    w = signal(int(4.3 * whole.sample_rate), 2, whole.sample_rate)
    a, fa = whole.encode(w[None], torch.tensor([len(w)]))
    b, fb = chunked.encode(w[None], torch.tensor([len(w)]))
    assert torch.equal(fa, fb) and a.shape == b.shape
    assert (a == b).float().mean().item() >= min_agree


@pytest.fixture(scope="module")
def multi_shards(tiny_codec, tiny_ssl, speech_corpus, tmp_path_factory):
    root = tmp_path_factory.mktemp("multi")
    runner = CliRunner()
    r = runner.invoke(cli, ["train-kmeans", str(speech_corpus), "-m", "mfcc", "-k", "12", "-o", str(root / "km"), "-q"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(cli, ["encode", str(speech_corpus), "-t", str(root / "km"),
                            "-t", f"encodec:{tiny_codec('encodec')}:nq=2", "-t", f"dac:{tiny_codec('dac')}:nq=3",
                            "-t", f"mimi:{tiny_codec('mimi')}:nq=4", "-o", str(root / "shards"), "-q"])
    assert r.exit_code == 0, r.output
    return root / "shards"


def test_one_pass_writes_every_tokenizer(multi_shards, speech_corpus):
    manifest = json.loads((multi_shards / "manifest.json").read_text())
    assert list(manifest["tokenizers"]) == ["semantic", "encodec", "dac", "mimi"]
    enc = manifest["tokenizers"]["encodec"]
    assert enc["type"] == "codec" and enc["n_q"] == 2 and enc["sample_rate"] == 24000 and enc["frame_rate"] == 375
    assert len(enc["weights_sha256"]) == 64
    assert manifest["tokenizers"]["dac"]["n_q"] == 3 and manifest["tokenizers"]["mimi"]["n_q"] == 4
    lines = {x["id"]: x for x in map(json.loads, speech_corpus.read_text().splitlines())}
    totals = {k: 0 for k in manifest["tokenizers"]}
    for s in read_shards(multi_shards):
        dur = sf.info(speech_corpus.parent / lines[s["id"]]["path"]).duration
        assert s["duration"] == pytest.approx(dur, abs=1e-4)
        assert s["encodec"].shape == (2, math.ceil(round(dur * 24000) / 64)) and s["encodec"].dtype == np.uint16
        assert s["dac"].shape[0] == 3 and s["dac"].dtype == np.uint8
        assert s["mimi"].shape == (4, math.ceil(round(dur * 16000) / 128)) and s["mimi"].dtype == np.uint8
        assert s["semantic"].ndim == 1
        for name in totals:
            assert s["streams"][name]["num_frames"] == s[name].shape[-1]
            totals[name] += s[name].shape[-1]
    assert manifest["frames"] == totals


def test_decode_cli_writes_audio_of_the_right_length(multi_shards, tmp_path):
    runner = CliRunner()
    out = tmp_path / "wav"
    r = runner.invoke(cli, ["decode", str(multi_shards), "-o", str(out)])
    assert r.exit_code == 2 and "several codecs" in r.output
    r = runner.invoke(cli, ["decode", str(multi_shards), "-o", str(out), "--codec", "encodec"])
    assert r.exit_code == 0, r.output
    samples = {s["__key__"]: s for s in read_shards(multi_shards)}
    assert sorted(p.stem for p in out.glob("*.wav")) == sorted(samples)
    for p in out.glob("*.wav"):
        info = sf.info(p)
        assert info.samplerate == 24000 and info.frames == samples[p.stem]["encodec"].shape[-1] * 64
        assert info.frames == pytest.approx(samples[p.stem]["duration"] * 24000, abs=64)


def test_resynth_cli(tiny_codec, tmp_path):
    src = tmp_path / "in.wav"
    sf.write(src, signal(22050, 0, 22050).numpy(), 22050)
    out = tmp_path / "out.wav"
    r = CliRunner().invoke(cli, ["resynth", str(src), "-t", f"dac:{tiny_codec('dac')}:nq=2", "-o", str(out)])
    assert r.exit_code == 0, r.output
    info = sf.info(out)
    assert info.samplerate == 16000 and abs(info.frames - 16000) < 32
    bad = CliRunner().invoke(cli, ["resynth", str(src), "-t", "dac:/nonexistent/dac", "-o", str(out)])
    assert bad.exit_code == 2 and "/nonexistent/dac: no such directory" in bad.output
