"""Corpus-scale hardening: resume after SIGKILL, torchrun ranks, bad inputs, long files, OOM halving."""

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from click.testing import CliRunner

from speechtok import SemanticTokenizer, read_shards
from speechtok.cli.main import cli
from speechtok.pipelines.encode import encode_rows

HERE = Path(__file__).parent


def tok_cmd(*args, env=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "speechtok.cli.main", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})


@pytest.fixture(scope="module")
def hubert_km(tiny_ssl, speech_corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("km") / "km"
    r = CliRunner().invoke(cli, ["train-kmeans", str(speech_corpus), "-m", tiny_ssl("hubert"), "-l", "2", "-k", "16",
                                 "-o", str(out), "-q", "--backend", "torch"])
    assert r.exit_code == 0, r.output
    return out


@pytest.fixture(scope="module")
def reference(hubert_km, speech_corpus, tmp_path_factory):
    """An uninterrupted run, 2 utterances a shard."""
    out = tmp_path_factory.mktemp("ref") / "out"
    r = tok_cmd("encode", speech_corpus, "-t", hubert_km, "-o", out, "-q", "--shard-max-count", 2)
    assert r.returncode == 0, r.stderr
    return out


def same_output(a: Path, b: Path):
    names = sorted(p.name for p in a.iterdir() if p.name.startswith("shard-") or p.name == "manifest.json")
    assert names == sorted(p.name for p in b.iterdir() if p.name.startswith("shard-") or p.name == "manifest.json")
    for name in names:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    assert not list(b.glob("*.tmp"))


@pytest.mark.parametrize("where,n", [("write", 3), ("rename", 2), ("journal", 3), ("manifest", 1)])
def test_sigkill_then_rerun_gives_the_uninterrupted_result(hubert_km, speech_corpus, reference, tmp_path, where, n):
    out = tmp_path / "out"
    args = ["encode", speech_corpus, "-t", hubert_km, "-o", out, "-q", "--shard-max-count", 2]
    crashed = subprocess.run([sys.executable, str(HERE / "crash_encode.py"), where, str(n), "--", *map(str, args[1:])],
                             capture_output=True, text=True, timeout=300)
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    assert not (out / "manifest.json").exists()
    resumed = tok_cmd(*args)
    assert resumed.returncode == 0, resumed.stderr
    same_output(reference, out)
    ids = [s["id"] for s in read_shards(out)]
    assert len(ids) == len(set(ids)) == 8
    again = tok_cmd(*args)  # a finished job is reported, not redone
    assert again.returncode == 0 and "8 utterances (8 from a previous run)" in again.stdout
    same_output(reference, out)


def test_other_job_in_the_same_folder_is_refused(hubert_km, speech_corpus, reference, tmp_path):
    out = tmp_path / "o"
    shutil.copytree(reference, out)
    r = tok_cmd("encode", speech_corpus, "-t", hubert_km, "-o", out, "-q", "--shard-max-count", 3)
    assert r.returncode == 2 and "holds an encode job with other inputs or options" in r.stderr
    same_output(reference, out)


def test_torchrun_two_gloo_ranks_merge_one_manifest(hubert_km, speech_corpus, reference, tmp_path):
    out = tmp_path / "dist"
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                        str(29500 + os.getpid() % 1000), "-m", "speechtok.cli.main", "encode", str(speech_corpus),
                        "-t", str(hubert_km), "-o", str(out), "-q", "--shard-max-count", "2", "--num-workers", "0"],
                       capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert [s["name"] for s in manifest["shards"]] == ["shard-r000-000000.tar", "shard-r000-000001.tar",
                                                       "shard-r001-000000.tar", "shard-r001-000001.tar"]
    assert manifest["num_utterances"] == 8
    ours = {s["id"]: s["semantic"] for s in read_shards(out)}
    ref = {s["id"]: s["semantic"] for s in read_shards(reference)}
    assert list(ours) == list(ref)  # every utterance once, in corpus order
    for k in ref:
        np.testing.assert_array_equal(ours[k], ref[k])
    assert manifest["frames"] == json.loads((reference / "manifest.json").read_text())["frames"]


def write_bad_corpus(root: Path, good: list[Path]) -> Path:
    """A folder and a manifest with every kind of bad (and awkward but valid) input."""
    audio = root / "audio"
    audio.mkdir(parents=True)
    for p in good:
        shutil.copy(p, audio / p.name)
    rng = np.random.default_rng(0)
    speech, sr = sf.read(good[0], dtype="float32")
    (audio / "corrupt.wav").write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(range(40)))
    (audio / "notaudio.flac").write_bytes(b"this is text")
    sf.write(audio / "empty.wav", np.zeros(0, np.float32), 16000)
    sf.write(audio / "tiny.wav", rng.normal(0, 0.1, 200).astype(np.float32), 16000)
    nan = speech.copy()
    nan[1000] = np.nan
    sf.write(audio / "nan.wav", nan, sr, subtype="FLOAT")
    inf = speech.copy()
    inf[5] = np.inf
    sf.write(audio / "inf.wav", inf, sr, subtype="FLOAT")
    sf.write(audio / "silence.wav", np.zeros(16000, np.float32), 16000)
    sf.write(audio / "clipped.wav", np.clip(speech * 20, -1, 1), sr)
    for rate in (8000, 44100, 48000):
        from speechtok.audio import resample

        sf.write(audio / f"rate{rate}.wav", resample(speech, sr, rate), rate)
    sf.write(audio / "stereo.flac", np.stack([speech, speech * 0.5], 1), sr)
    sf.write(audio / "six_channels.wav", np.stack([speech] * 6, 1), sr)
    weird = os.fsencode(str(audio)) + b"/caf\xe9_latin1.wav"
    with open(weird, "wb") as f:
        sf.write(f, speech, sr, format="WAV")
    lines = [json.dumps({"id": p.stem, "path": f"audio/{p.name}"}) for p in good]
    lines += [
        json.dumps({"id": good[0].stem, "path": f"audio/{good[1].name}"}),  # duplicate id
        json.dumps({"id": "gone", "path": "audio/does_not_exist.wav"}),  # missing file
        json.dumps({"id": "nopath"}),  # missing field
        '{"id": "broken", "path": ',  # bad JSON
        json.dumps({"id": "span", "path": f"audio/{good[0].name}", "start": 0.2, "end": 0.9}),
        json.dumps({"id": "pastend", "path": f"audio/{good[0].name}", "start": 99.0}),
    ]
    (root / "corpus.jsonl").write_text("\n".join(lines) + "\n")
    return audio


def test_bad_inputs_each_get_a_reason_and_the_job_goes_on(hubert_km, speech_corpus, tmp_path):
    good = sorted((speech_corpus.parent / "audio").rglob("*.wav"))[:2]
    audio = write_bad_corpus(tmp_path, good)
    out = tmp_path / "folder_out"
    r = tok_cmd("encode", audio, "-t", hubert_km, "-o", out, "-q")
    assert r.returncode == 1
    errors = {Path(e["file"]).name: e["reason"] for e in map(json.loads, (out / "errors.jsonl").read_text().splitlines())}
    assert set(errors) == {"corrupt.wav", "notaudio.flac", "empty.wav", "tiny.wav", "nan.wav", "inf.wav"}
    assert "NaN or Inf" in errors["nan.wav"] and "NaN or Inf" in errors["inf.wav"]
    assert "shorter than one token frame" in errors["tiny.wav"] and "zero-length" in errors["empty.wav"]
    assert "cannot read audio header" in errors["corrupt.wav"]
    for name, reason in errors.items():
        assert f"error: {audio / name}: {reason}" in r.stderr
    assert "6 errors" in r.stdout
    samples = {s["id"]: s for s in read_shards(out)}
    assert set(samples) == {p.stem for p in good} | {"silence", "clipped", "rate8000", "rate44100", "rate48000",
                                                     "stereo", "six_channels", "caf\\xe9_latin1"}
    for sid, s in samples.items():
        expected = (round(s["duration"] * 16000) - 400) // 320 + 1
        assert abs(len(s["semantic"]) - expected) <= 1, sid
    assert samples["stereo"]["duration"] == pytest.approx(samples[good[0].stem]["duration"], abs=1e-3)

    out2 = tmp_path / "manifest_out"
    r = tok_cmd("encode", tmp_path / "corpus.jsonl", "-t", hubert_km, "-o", out2, "-q")
    assert r.returncode == 1
    reasons = [json.loads(x)["reason"] for x in (out2 / "errors.jsonl").read_text().splitlines()]
    assert sum("duplicate id" in x for x in reasons) == 1
    assert sum("missing 'path'" in x for x in reasons) == 1
    assert sum("bad JSON" in x for x in reasons) == 1
    assert sum("file not found" in x for x in reasons) == 1  # the missing file
    assert sum("past the end of the file" in x for x in reasons) == 1
    span = next(s for s in read_shards(out2) if s["id"] == "span")
    assert span["duration"] == pytest.approx(0.7, abs=1e-3) and span["start"] == 0.2

    strict = tok_cmd("encode", audio, "-t", hubert_km, "-o", tmp_path / "strict", "-q", "--strict")
    assert strict.returncode == 1 and "stopped (--strict)" in strict.stderr
    assert not (tmp_path / "strict" / "manifest.json").exists()


def test_long_inputs_in_bounded_memory(tmp_path):
    """One hour of audio: MFCC units computed in chunks, peak memory far below the unchunked need, and
    identical to the unchunked result (spectral features have a short receptive field)."""
    sr = 16000
    rng = np.random.default_rng(0)
    hour = tmp_path / "hour.flac"
    with sf.SoundFile(hour, "w", sr, 1, format="FLAC") as f:
        for _ in range(60):
            f.write((0.1 * rng.standard_normal(sr * 60)).astype(np.float32))
    CliRunner().invoke(cli, ["train-kmeans", str(Path(__file__).parents[1] / "examples" / "audio"), "-m", "mfcc",
                             "-k", "8", "-o", str(tmp_path / "km"), "-q"])
    probe = ("import resource, sys, numpy as np, soundfile as sf, torch\n"
             "from speechtok import SemanticTokenizer\n"
             "tok = SemanticTokenizer.from_dir(sys.argv[1])\n"
             "wav = torch.from_numpy(sf.read(sys.argv[2], dtype='float32')[0])\n"
             "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
             "units = tok.encode_batch(wav[None], torch.tensor([len(wav)]))[0]\n"
             "np.save(sys.argv[3], units)\n"
             "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)\n")
    r = subprocess.run([sys.executable, "-c", probe, str(tmp_path / "km"), str(hour), str(tmp_path / "u.npy")],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    extra_mb = int(r.stdout.strip())
    units = np.load(tmp_path / "u.npy")
    assert len(units) == (3600 * sr - 400) // 160 + 1
    assert extra_mb < 600  # unchunked: ~1.4 GB of spectra for an hour (frames × 512-point FFT)
    tok = SemanticTokenizer.from_dir(tmp_path / "km")
    ten_min = torch.from_numpy(sf.read(hour, dtype="float32", frames=sr * 150)[0])
    whole = tok._units(ten_min[None], torch.tensor([len(ten_min)]))[0]
    np.testing.assert_array_equal(units[: len(whole)], whole)


def test_ssl_chunking_agreement(tiny_ssl):
    """HuBERT-style attention spans the whole input, so chunked units may differ near chunk edges; with
    1 s chunks and 0.5 s context on a tiny random model the agreement stays high."""
    from speechtok.tokenizers.ssl_features import SSLFeatures

    feats = SSLFeatures(tiny_ssl("hubert"), 2)
    g = torch.Generator().manual_seed(0)
    wav = 0.1 * torch.randn(16000 * 6, generator=g)
    f, n = feats(wav[None], torch.tensor([len(wav)]))
    centroids = f[0, torch.randperm(int(n), generator=g)[:16]].numpy()
    whole = SemanticTokenizer(feats, centroids, chunk_seconds=100).encode_batch(wav[None], torch.tensor([len(wav)]))[0]
    chunked = SemanticTokenizer(feats, centroids, chunk_seconds=1.0, context_seconds=0.5)
    units = chunked.encode_batch(wav[None], torch.tensor([len(wav)]))[0]
    assert len(units) == len(whole)
    assert (units == whole).mean() > 0.8


def test_oom_halves_the_batch():
    class SmallGPU:
        """Runs out of memory above 2 utterances a batch."""
        calls = []

        def encode_batch(self, wav, lengths):
            self.calls.append(len(lengths))
            if len(lengths) > 2:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            return [wav[i, : int(n)].numpy() * 2 for i, n in enumerate(lengths)]

    wav = torch.arange(35.0).reshape(7, 5)
    lengths = torch.tensor([5, 4, 3, 5, 2, 1, 5])
    splits = []
    out = encode_rows(SmallGPU(), wav, lengths, splits.append)
    assert len(out) == 7 and splits == [7, 3, 4]
    for i in range(7):
        np.testing.assert_array_equal(out[i], wav[i, : lengths[i]].numpy() * 2)
    with pytest.raises(RuntimeError, match="other failure"):
        encode_rows(type("Broken", (), {"encode_batch": lambda self, w, n: (_ for _ in ()).throw(
            RuntimeError("other failure"))})(), wav, lengths, splits.append)
