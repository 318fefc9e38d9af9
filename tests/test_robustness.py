"""Corpus-scale hardening: resume after SIGKILL, torchrun ranks, bad inputs, long files, OOM halving; the
folder lock, corpus fingerprint, verification, card integrity, crafted shards, exit codes and signals."""

import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from click.testing import CliRunner

from speechtok import SemanticTokenizer, read_shards
from speechtok.cli.main import cli
from speechtok.pipelines.encode_device import encode_rows

HERE = Path(__file__).parent


def tok_cmd(*args, env=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "speechtok.cli.main", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})


@pytest.fixture(scope="module")
def hubert_km(tiny_ssl, speech_corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("km") / "km"
    r = CliRunner().invoke(cli, ["train-kmeans", str(speech_corpus), "-m", tiny_ssl("hubert"), "-l", "2",
                                 "-k", "16", "-o", str(out), "-q", "--backend", "torch"])
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
    assert names == sorted(p.name for p in b.iterdir() if p.name.startswith("shard-")
                           or p.name == "manifest.json")
    for name in names:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    assert not list(b.glob("*.tmp"))


@pytest.mark.parametrize("where,n", [("write", 3), ("rename", 2), ("journal", 3), ("manifest", 1)])
def test_sigkill_then_rerun_gives_the_uninterrupted_result(hubert_km, speech_corpus, reference, tmp_path,
                                                           where, n):
    out = tmp_path / "out"
    args = ["encode", speech_corpus, "-t", hubert_km, "-o", out, "-q", "--shard-max-count", 2]
    crashed = subprocess.run([sys.executable, str(HERE / "crash_encode.py"), where, str(n), "--",
                              *map(str, args[1:])],
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
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                        "--master_port", str(29500 + os.getpid() % 1000), "-m", "speechtok.cli.main",
                        "encode", str(speech_corpus), "-t", str(hubert_km), "-o", str(out), "-q",
                        "--shard-max-count", "2", "--num-workers", "0"],
                       capture_output=True, text=True, timeout=300,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
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
    errors = {Path(e["file"]).name: e["reason"]
              for e in map(json.loads, (out / "errors.jsonl").read_text().splitlines())}
    assert set(errors) == {"corrupt.wav", "notaudio.flac", "empty.wav", "tiny.wav", "nan.wav", "inf.wav"}
    assert "NaN or Inf" in errors["nan.wav"] and "NaN or Inf" in errors["inf.wav"]
    assert "shorter than one token frame" in errors["tiny.wav"] and "zero-length" in errors["empty.wav"]
    assert "cannot read audio header" in errors["corrupt.wav"]
    for name, reason in errors.items():
        assert f"error: {audio / name}: {reason}" in r.stderr
    assert "6 errors" in r.stdout
    samples = {s["id"]: s for s in read_shards(out)}
    assert set(samples) == {p.stem for p in good} | {"silence", "clipped", "rate8000", "rate44100",
                                                     "rate48000", "stereo", "six_channels", "caf\\xe9_latin1"}
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
    CliRunner().invoke(cli, ["train-kmeans", str(Path(__file__).parents[1] / "examples" / "audio"), "-m",
                             "mfcc", "-k", "8", "-o", str(tmp_path / "km"), "-q"])
    probe = ("import resource, sys, numpy as np, soundfile as sf, torch\n"
             "from speechtok import SemanticTokenizer\n"
             "tok = SemanticTokenizer.from_dir(sys.argv[1])\n"
             "wav = torch.from_numpy(sf.read(sys.argv[2], dtype='float32')[0])\n"
             "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
             "units = tok.encode_batch(wav[None], torch.tensor([len(wav)]))[0]\n"
             "np.save(sys.argv[3], units)\n"
             "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)\n")
    r = subprocess.run([sys.executable, "-c", probe, str(tmp_path / "km"), str(hour),
                        str(tmp_path / "u.npy")],
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
    whole = SemanticTokenizer(feats, centroids, chunk_seconds=100).encode_batch(wav[None],
                                                                                torch.tensor([len(wav)]))[0]
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


# ---- issue 15: locking, corpus fingerprint, every kill point, verification, cards, crafted shards, bad
# metadata, operator errors, signals. MFCC units and forked crashes keep these fast.

FORK = __import__("multiprocessing").get_context("forkserver")  # fast and safe: a clean server forks
FORK.set_forkserver_preload(["crash_encode"])


def run_cli(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture(scope="module")
def mfcc_km(speech_corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("mfcc") / "km"
    r = run_cli("train-kmeans", speech_corpus, "-m", "mfcc", "-k", 8, "-o", out, "-q", "--backend", "torch")
    assert r.exit_code == 0, r.output
    return out


def abs_manifest(speech_corpus: Path, dest: Path, order=None) -> Path:
    """The test corpus's manifest with absolute audio paths (so it can live elsewhere), lines in `order`."""
    lines = [json.loads(x) for x in speech_corpus.read_text().splitlines()]
    for x in lines:
        x["path"] = str(speech_corpus.parent / x["path"])
    dest.write_text("".join(json.dumps(lines[i]) + "\n" for i in (order or range(len(lines)))))
    return dest


@pytest.fixture(scope="module")
def mfcc_reference(mfcc_km, speech_corpus, tmp_path_factory):
    """An uninterrupted MFCC run, 2 utterances a shard."""
    out = tmp_path_factory.mktemp("mfcc_ref") / "out"
    r = run_cli("encode", speech_corpus, "-t", mfcc_km, "-o", out, "-q", "--shard-max-count", 2)
    assert r.exit_code == 0, r.output
    return out


def forked_encode(where: str, n: int, *args, wait: bool = True):
    """`tok encode ARGS` in a forked child stopped at a kill point of crash_encode.py (no new interpreter)."""
    from crash_encode import run_child

    proc = FORK.Process(target=run_child, args=(where, n, [str(a) for a in args], dict(os.environ)))
    proc.start()
    if wait:
        proc.join(300)
    return proc


KILL_POINTS = [("atomic", 1), ("atomic-after", 1), ("atomic", 2), ("atomic-after", 2), ("rename", 1),
               ("torn", 2), ("atomic", 3), ("atomic-after", 3), ("atomic", 4), ("atomic-after", 4),
               ("atomic", 5)]


@pytest.mark.parametrize("where,n", KILL_POINTS)
def test_every_write_rename_and_journal_point_resumes(mfcc_km, speech_corpus, mfcc_reference, tmp_path, where,
                                                      n):
    """SIGKILL after/before each whole-file write (journal header, corpus index, journal rewrite, errors,
    manifest), between the first shard's rename and its journal line, and in a torn journal line: the
    rerun gives the uninterrupted result (the old code refused 'rename 1' as another job's folder)."""
    out = tmp_path / "out"
    args = ["encode", speech_corpus, "-t", mfcc_km, "-o", out, "-q", "--shard-max-count", 2]
    proc = forked_encode(where, n, *args[1:])
    assert proc.exitcode == -signal.SIGKILL
    assert not (out / "manifest.json").exists() or (where, n) == ("atomic-after", 5)
    resumed = run_cli(*args)
    assert resumed.exit_code == 0, resumed.output
    if where == "torn":
        assert f"note: {out / 'progress.jsonl'}: dropped a torn line" in resumed.output
    same_output(mfcc_reference, out)
    assert len({s["id"] for s in read_shards(out)}) == 8


def test_second_encode_into_a_busy_folder_is_refused_naming_the_holder(mfcc_km, speech_corpus, mfcc_reference,
                                                                      tmp_path, monkeypatch):
    out = tmp_path / "out"
    monkeypatch.setenv("PAUSE_MARKER", str(tmp_path / "paused"))
    monkeypatch.setenv("PAUSE_RELEASE", str(tmp_path / "release"))
    first = forked_encode("pause", 3, speech_corpus, "-t", mfcc_km, "-o", out, "-q", "--shard-max-count", 2,
                          wait=False)
    for _ in range(6000):
        if (tmp_path / "paused").exists() or not first.is_alive():
            break
        __import__("time").sleep(0.05)
    assert (tmp_path / "paused").exists()
    second = tok_cmd("encode", speech_corpus, "-t", mfcc_km, "-o", out, "-q", "--shard-max-count", 2)
    # other job
    other = run_cli("encode", speech_corpus, "-t", mfcc_km, "-o", out, "-q", "--shard-max-count", 3)
    (tmp_path / "release").touch()
    first.join(300)
    assert second.returncode == 3, second.stderr
    assert f"another tok encode is writing here (pid {first.pid} on host " in second.stderr
    assert "Traceback" not in second.stderr and other.exit_code == 3
    assert first.exitcode == 0
    same_output(mfcc_reference, out)
    assert len(list(read_shards(out))) == 8  # every shard's sha256 matches the manifest


def test_stale_lock_of_a_killed_job_does_not_block(mfcc_km, speech_corpus, mfcc_reference, tmp_path):
    out = tmp_path / "out"
    proc = forked_encode("write", 3, speech_corpus, "-t", mfcc_km, "-o", out, "-q", "--shard-max-count", 2)
    assert proc.exitcode == -signal.SIGKILL
    assert json.loads((out / ".lock.r000").read_text())["pid"] == proc.pid  # the dead holder's lock file
    r = run_cli("encode", speech_corpus, "-t", mfcc_km, "-o", out, "-q", "--shard-max-count", 2)
    assert r.exit_code == 0, r.output
    same_output(mfcc_reference, out)


def test_corpus_path_spelling_does_not_matter(mfcc_km, speech_corpus, mfcc_reference, tmp_path, monkeypatch):
    monkeypatch.chdir(speech_corpus.parent)
    out = tmp_path / "out"
    first = run_cli("encode", speech_corpus.name, "-t", mfcc_km, "-o", out, "-q", "--shard-max-count", 2)
    assert first.exit_code == 0, first.output
    again = run_cli("encode", f"./{speech_corpus.name}", "-t", mfcc_km, "-o", out, "-q", "--shard-max-count",
                    2)
    assert again.exit_code == 0 and "8 utterances (8 from a previous run)" in again.output, again.output
    same_output(mfcc_reference, out)


def test_resume_with_other_token_settings_is_refused_naming_both_values(mfcc_km, speech_corpus, tmp_path):
    """The journal records what tokens depend on bit for bit (batch plan, precision, device kind,
    chunking): a rerun with another batch plan is refused in one line naming both values (exit 2), one
    with only other loader workers resumes."""
    out = tmp_path / "out"
    args = ["encode", speech_corpus, "-t", mfcc_km, "-o", out, "-q", "--shard-max-count", 2]
    assert run_cli(*args, "--batch-seconds", 7).exit_code == 0
    header = json.loads((out / "progress.jsonl").read_text().splitlines()[0])
    assert header["tokens"] == {**header["tokens"], "batch_seconds": 7.0, "semantic.precision": "fp32",
                                "semantic.device": "cpu"}
    r = run_cli(*args, "--batch-seconds", 8)
    assert r.exit_code == 2 and r.output.strip().splitlines() == [
        f"error: {out}: its tokens were made with batch_seconds=7.0 and this run has batch_seconds=8.0; "
        "tokens depend on it bit for bit: rerun with the job's settings to resume it, "
        "or write to a new folder"]
    r = run_cli(*args, "--batch-seconds", 7, "--num-workers", 1)
    assert r.exit_code == 0 and "8 utterances (8 from a previous run)" in r.output, r.output
    assert header["tokens"]["semantic.batch_invariant"] is False
    r = run_cli(*args, "--batch-seconds", 7, "--batch-invariant")  # reaches the tokenizer and the journal
    assert r.exit_code == 2 and "semantic.batch_invariant=False and this run has " \
        "semantic.batch_invariant=True" in r.output, r.output


def test_changed_corpus_is_refused_saying_what_changed(mfcc_km, speech_corpus, tmp_path):
    corpus = abs_manifest(speech_corpus, tmp_path / "c.jsonl", order=range(6))
    out = tmp_path / "out"
    args = ["encode", corpus, "-t", mfcc_km, "-o", out, "-q", "--shard-max-count", 2]
    assert run_cli(*args).exit_code == 0
    ids = [json.loads(x)["id"] for x in speech_corpus.read_text().splitlines()]
    abs_manifest(speech_corpus, corpus, order=[1, 0, 2, 3, 4, 5])
    r = run_cli(*args)
    assert (r.exit_code == 2 and f"utterance 1 was '{ids[0]}', now '{ids[1]}'" in r.output
            and "reordered" in r.output)
    abs_manifest(speech_corpus, corpus, order=[0, 1, 2, 3, 5])
    r = run_cli(*args)
    assert r.exit_code == 2 and "1 removed" in r.output, r.output
    abs_manifest(speech_corpus, corpus, order=range(8))  # 2 appended
    r = run_cli(*args)
    assert r.exit_code == 2 and "2 new utterances appended" in r.output and "--append" in r.output
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.glob("shard-*.tar")}
    r = run_cli(*args, "--append")
    assert r.exit_code == 0 and "8 utterances (6 from a previous run)" in r.output, r.output
    for name, (data, mtime) in before.items():  # the old shards were not rewritten
        assert (out / name).read_bytes() == data and (out / name).stat().st_mtime_ns == mtime
    new = sorted(set(p.name for p in out.glob("shard-*.tar")) - set(before))
    assert new == ["shard-000003.tar"]
    assert [s["id"] for s in read_shards(out)] == ids
    folder = tmp_path / "folder"  # a folder corpus: a file added later is noticed, not ignored
    shutil.copytree(speech_corpus.parent / "audio", folder)
    assert run_cli("encode", folder, "-t", mfcc_km, "-o", tmp_path / "f_out", "-q").exit_code == 0
    (folder / "zz").mkdir()
    shutil.copy(next(folder.rglob("*.wav")), folder / "zz" / "late.wav")
    r = run_cli("encode", folder, "-t", mfcc_km, "-o", tmp_path / "f_out", "-q")
    assert r.exit_code == 2 and "1 new utterances appended (the first is 'zz/late')" in r.output, r.output


def test_torn_journal_line_from_a_full_disk(mfcc_km, speech_corpus, mfcc_reference, tmp_path):
    """ENOSPC while journaling: one line naming the file, exit 3; the rerun drops the torn line (a note
    names the journal) and ends identical to an uninterrupted run."""
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, str(HERE / "crash_encode.py"), "torn-enospc", "2", "--",
                        str(speech_corpus),
                        "-t", str(mfcc_km), "-o", str(out), "-q", "--shard-max-count", "2"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 3, r.stderr
    assert r.stderr.strip().splitlines() == [f"error: {out / 'progress.jsonl'}: No space left on device "
                                             "(disk full: free space, then rerun the same command to resume)"]
    assert not list(out.glob("*.tmp"))
    resumed = run_cli("encode", speech_corpus, "-t", mfcc_km, "-o", out, "-q", "--shard-max-count", 2)
    assert resumed.exit_code == 0 and "dropped a torn line 3" in resumed.output, resumed.output
    same_output(mfcc_reference, out)


def test_disk_full_inside_a_shard(mfcc_km, speech_corpus, mfcc_reference, tmp_path):
    out = tmp_path / "out"
    proc = forked_encode("enospc", 3, speech_corpus, "-t", mfcc_km, "-o", out, "-q", "--shard-max-count", 2)
    assert proc.exitcode == 3 and not list(out.glob("*.tmp"))
    assert run_cli("encode", speech_corpus, "-t", mfcc_km, "-o", out, "-q", "--shard-max-count",
                   2).exit_code == 0
    same_output(mfcc_reference, out)


def test_sigterm_stops_cleanly_and_resumes_identically(mfcc_km, speech_corpus, mfcc_reference, tmp_path):
    """A real SIGTERM from outside while a shard is open: exit 143, no .tmp, how to resume; the rerun
    gives the uninterrupted bytes. SIGINT: exit 130."""
    out = tmp_path / "out"
    env = {**os.environ, "PAUSE_MARKER": str(tmp_path / "paused"), "PAUSE_RELEASE": str(tmp_path / "release")}
    proc = subprocess.Popen([sys.executable, str(HERE / "crash_encode.py"), "pause", "3", "--",
                             str(speech_corpus),
                             "-t", str(mfcc_km), "-o", str(out), "-q", "--shard-max-count", "2"],
                            stderr=subprocess.PIPE, text=True, env=env)
    for _ in range(6000):
        if (tmp_path / "paused").exists() or proc.poll() is not None:
            break
        __import__("time").sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    (tmp_path / "release").touch()
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 143, stderr
    assert "stopped by SIGTERM" in stderr and "rerun the same command to resume" in stderr
    assert "Traceback" not in stderr and not list(out.glob("*.tmp")) and not (out / "manifest.json").exists()
    assert [p.name for p in out.glob("shard-*.tar")] == ["shard-000000.tar"]  # the open shard was dropped
    assert run_cli("encode", speech_corpus, "-t", mfcc_km, "-o", out, "-q", "--shard-max-count",
                   2).exit_code == 0
    same_output(mfcc_reference, out)
    proc = forked_encode("sigint", 5, speech_corpus, "-t", mfcc_km, "-o", tmp_path / "o2", "-q",
                         "--shard-max-count", 2)
    assert proc.exitcode == 130 and not list((tmp_path / "o2").glob("*.tmp"))


def flip_byte(path: Path, at: int = 700) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))


def test_every_reader_verifies_and_a_rerun_repairs(mfcc_km, speech_corpus, mfcc_reference, tmp_path):
    from speechtok.lm.data import shard_paths
    from speechtok.shards import ShardError
    from speechtok.training.stream import shard_source

    out = tmp_path / "out"
    shutil.copytree(mfcc_reference, out)
    flip_byte(out / "shard-000003.tar")  # the last shard: `tok show -n 1` never prints from it
    shown = run_cli("show", out, "-n", 1)
    assert shown.exit_code == 2 and "shard-000003.tar: sha256 does not match" in shown.output
    assert run_cli("show", out, "-n", 1, "--no-verify").exit_code == 0
    with pytest.raises(ShardError, match="shard-000003.tar: sha256 does not match"):
        shard_paths([str(out)])
    with pytest.raises(ShardError, match="shard-000003.tar: sha256 does not match"):
        shard_source([str(out)])  # what the LM, acoustic and vocoder trainers read their shards through
    assert len(shard_paths([str(out)], verify=False)) == 4
    assert len(shard_source([str(out)], verify=False).units) == 4
    (out / "shard-000001.tar").unlink()
    r = run_cli("encode", speech_corpus, "-t", mfcc_km, "-o", out, "-q", "--shard-max-count", 2)
    assert r.exit_code == 0, r.output
    assert ("shard-000001.tar: shard listed in the manifest is missing; encoding its utterances again"
            in r.output)
    assert "shard-000003.tar: sha256 does not match" in r.output
    same_output(mfcc_reference, out)


def test_tokenizer_card_is_checksummed_as_a_whole(mfcc_km, tmp_path):
    SemanticTokenizer.from_dir(mfcc_km)
    for edit, message in [(lambda c: c["centroids"].pop("sha256"), "does not match its 'card_sha256'"),
                          (lambda c: c["features"].update(hop_length=80), "does not match its 'card_sha256'"),
                          (lambda c: c["features"].update(n_fft=1024), "does not match its 'card_sha256'"),
                          (lambda c: c.update(sample_rate=8000), "does not match its 'card_sha256'"),
                          (lambda c: c.pop("card_sha256"), "no 'card_sha256'")]:
        copy = tmp_path / "tok"
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(mfcc_km, copy)
        card = json.loads((copy / "tokenizer.json").read_text())
        edit(card)
        (copy / "tokenizer.json").write_text(json.dumps(card))
        with pytest.raises(ValueError, match=message):
            SemanticTokenizer.from_dir(copy)
        r = run_cli("encode", copy, "-t", copy, "-o", tmp_path / "never", "-q")
        assert r.exit_code == 2 and message in r.output and not (tmp_path / "never").exists()


def test_replaced_model_weights_are_refused_unless_allowed(tiny_ssl, tmp_path):
    from safetensors.torch import load_file, save_file

    from speechtok.tokenizers.card import ModelMismatch
    from speechtok.tokenizers.ssl_features import SSLFeatures

    model = tmp_path / "hubert"
    shutil.copytree(tiny_ssl("hubert"), model)
    feats = SSLFeatures(str(model), 2)
    SemanticTokenizer(feats,
                      np.random.default_rng(0).normal(size=(4, 48)).astype(np.float32)).save(tmp_path / "tok")
    weights = load_file(model / "model.safetensors")
    save_file({k: v + 0.01 for k, v in weights.items()}, model / "model.safetensors",
              metadata={"format": "pt"})
    with pytest.raises(ModelMismatch,
                       match="model weights of .* do not match the card .*--allow-model-mismatch"):
        SemanticTokenizer.from_dir(tmp_path / "tok")
    with pytest.warns(UserWarning, match="model weights differ"):
        tok = SemanticTokenizer.from_dir(tmp_path / "tok", allow_model_mismatch=True)
    # the card tells the truth
    assert tok.card()["features"]["weights_sha256"] != feats.card()["weights_sha256"]


def rewrite_shard(folder: Path, name: str, members: list[tarfile.TarInfo | tuple[str, bytes]]) -> None:
    """Replace a shard with the given members and update the manifest (a consistent shard from elsewhere)."""
    import io

    from speechtok.shards import sha256_of

    with tarfile.open(folder / name, "w", format=tarfile.GNU_FORMAT) as tar:
        for m in members:
            if isinstance(m, tarfile.TarInfo):
                tar.addfile(m)
            else:
                info = tarfile.TarInfo(m[0])
                info.size = len(m[1])
                tar.addfile(info, io.BytesIO(m[1]))
    manifest = json.loads((folder / "manifest.json").read_text())
    for s in manifest["shards"]:
        if s["name"] == name:
            s["bytes"], s["sha256"] = (folder / name).stat().st_size, sha256_of(folder / name)
    (folder / "manifest.json").write_text(json.dumps(manifest))


def test_crafted_shards_cannot_write_outside_the_output_folder(units_and_codec_shards, tmp_path):
    from speechtok.shards import ShardError, iter_tar

    src = units_and_codec_shards / "shards"
    first = src / "shard-000000.tar"
    key, files = next(iter_tar(first))
    meta = json.loads(files["json"])
    folder = tmp_path / "crafted"
    shutil.copytree(src, folder)
    for bad, what in [("../up.json", "a path with '..'"), ("/abs.json", "an absolute path")]:
        rewrite_shard(folder, first.name, [(bad, b"{}")])
        with pytest.raises(ShardError, match=rf"shard-000000.tar: member '{re.escape(bad)}' is {what}"):
            list(read_shards(folder))
    for kind, what in [(tarfile.SYMTYPE, "a link"), (tarfile.LNKTYPE, "a link"),
                       (tarfile.CHRTYPE, "a device")]:
        info = tarfile.TarInfo("x.json")
        info.type, info.linkname = kind, "/etc/passwd"
        rewrite_shard(folder, first.name, [info])
        r = run_cli("decode", folder, "-o", tmp_path / "wav")
        assert r.exit_code == 2 and f"member 'x.json' is {what}" in r.output
    # a json claiming another key, and keys that are not file names: only sanitized names inside -o
    evil = {**meta, "__key__": "../../escaped"}
    rewrite_shard(folder, first.name, [("sub/a b;c.json", json.dumps(evil).encode()),
                                       ("sub/a b;c.encodec.npy", files["encodec.npy"]),
                                       ("-rf --x.json", json.dumps(evil).encode()),
                                       ("-rf --x.encodec.npy", files["encodec.npy"])])
    out = tmp_path / "out" / "wav"
    r = run_cli("decode", folder, "-o", out)
    assert r.exit_code == 0, r.output
    assert not list((tmp_path / "out").glob("*.wav")) and not list(tmp_path.glob("escaped*"))
    names = sorted(p.name for p in out.iterdir() if not p.name.startswith(".lock."))  # the output lock stays
    assert names == ["rf_--x.wav", "sub_a_b_c.wav"] and all(p.is_file() for p in out.iterdir())


BAD_LINES = {
    "nul": ({"id": "a\u0000b"}, "control character"),
    "esc": ({"id": "a\u001bb"}, "control character"),
    "negative": ({"start": -1.0}, "'start' must be a finite number of seconds >= 0, got -1.0"),
    "bool": ({"start": True}, "'start' must be a number of seconds, got true"),
    "text": ({"end": "abc"}, "'end' must be a number of seconds, got \"abc\""),
    "nan": ({"start": float("nan")}, "'start' must be a finite number of seconds >= 0, got nan"),
    "inf": ({"end": float("inf")}, "'end' must be a finite number of seconds >= 0, got inf"),
    "order": ({"start": 1.0, "end": 0.5}, "end 0.5 is not after start 1.0"),
}
BAD_WORDS = {
    "w_order": ([{"word": "a", "start": 0.5, "end": 0.6}, {"word": "b", "start": 0.1, "end": 0.2}],
                "before word 1"),
    "w_negative": ([{"word": "a", "start": -0.1, "end": 0.2}], "word 1: 'start' must be a finite"),
    "w_reversed": ([{"word": "a", "start": 0.3, "end": 0.2}], "end 0.2 is before start 0.3"),
    "w_nan": ([{"word": "a", "start": 0.1, "end": float("nan")}], "word 1: 'end' must be a finite"),
}


def test_every_corpus_field_is_validated_at_read_time(mfcc_km, speech_corpus, tmp_path):
    good = [json.loads(x) for x in speech_corpus.read_text().splitlines()]
    for x in good:
        x["path"] = str(speech_corpus.parent / x["path"])
    lines = [good[0]]
    lines += [{**good[1], "id": f"bad_{name}", **change} for name, (change, _) in BAD_LINES.items()]
    lines += [{**good[2], "id": name, "words": words} for name, (words, _) in BAD_WORDS.items()]
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps(x) + "\n" for x in lines))
    out = tmp_path / "out"
    r = run_cli("encode", corpus, "-t", mfcc_km, "-o", out, "-q")
    assert r.exit_code == 1, r.output
    for i, (name, (_, reason)) in enumerate(BAD_LINES.items(), 2):
        assert f"error: {corpus}:{i}: " in r.output and reason in r.output, (name, r.output)
    for i, (name, (_, reason)) in enumerate(BAD_WORDS.items(), 2 + len(BAD_LINES)):
        assert (f"error: {corpus}:{i}: words dropped, utterance kept: " in r.output
                and reason in r.output), name
    samples = {s["id"]: s for s in read_shards(out)}
    assert set(samples) == {good[0]["id"], *BAD_WORDS}
    assert all("words" not in samples[k] for k in BAD_WORDS) and samples[good[0]["id"]]["words"]
    assert run_cli("show", out).exit_code == 0


def test_operator_errors_end_in_one_line_with_their_exit_code(mfcc_km, speech_corpus, tmp_path, monkeypatch):
    from speechtok import folder_lock

    def usage(*args):
        r = run_cli(*args)
        assert r.exit_code == 2 and "Traceback" not in r.output and r.exception is None or \
            isinstance(r.exception, SystemExit), r.output
        return r.output

    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    (tmp_path / "empty_dir").mkdir()
    assert "empty corpus" in usage("encode", empty, "-t", mfcc_km, "-o", tmp_path / "o1", "-q")
    assert "empty corpus" in usage("encode", tmp_path / "empty_dir", "-t", mfcc_km, "-o", tmp_path / "o1",
                                   "-q")
    for opt, value in [("--shard-max-count", 0), ("--shard-max-count", -3), ("--shard-max-mb", -1)]:
        assert opt in usage("encode", speech_corpus, "-t", mfcc_km, "-o", tmp_path / "o2", opt, value)
    (tmp_path / "afile").write_text("x")
    assert "is a file" in usage("encode", speech_corpus, "-t", mfcc_km, "-o", tmp_path / "afile")
    assert "does not exist" in usage("encode", tmp_path / "missing.jsonl", "-t", mfcc_km, "-o",
                                     tmp_path / "o3")
    assert "neither a tokenizer directory" in usage("encode", speech_corpus, "-t", tmp_path / "nokm", "-o",
                                                    tmp_path / "o3")

    def read_only(path, *a, **kw):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))

    monkeypatch.setattr(folder_lock.os, "open", read_only)  # the first file a job writes
    r = run_cli("encode", speech_corpus, "-t", mfcc_km, "-o", tmp_path / "ro", "-q")
    assert r.exit_code == 3 and r.output.strip() == (f"error: {tmp_path / 'ro' / '.lock.r000'}: Read-only "
                                                     "file system (read-only file system: choose another "
                                                     "output folder)")


def test_describe_change_names_what_changed():
    from speechtok.pipelines.encode_job import describe_change

    old = [["a", "1"], ["b", "2"], ["c", "3"]]
    assert describe_change(old, old + [["d", "4"]]) == ("1 new utterances appended (the first is 'd')", True)
    assert (describe_change(old, [["b", "2"], ["a", "1"], ["c", "3"]])[0]
            == "utterance 1 was 'a', now 'b', reordered")
    assert describe_change(old, [["a", "1"], ["c", "3"], ["x", "9"]])[0] == \
        "utterance 2 was 'b', now 'c', 1 added, 1 removed"
    assert describe_change(old, [["a", "1"], ["b", "5"], ["c", "3"]]) == \
        ("utterance 2 'b' changed (file, span or labels), 1 changed", False)


def test_decode_refuses_other_codec_weights_unless_allowed(units_and_codec_shards, tmp_path):
    from safetensors.torch import load_file, save_file

    codec = tmp_path / "codec"
    shutil.copytree(units_and_codec_shards / "codec", codec)
    weights = load_file(codec / "model.safetensors")
    save_file({k: v + 0.01 if v.is_floating_point() else v for k, v in weights.items()},
              codec / "model.safetensors", metadata={"format": "pt"})
    folder = tmp_path / "shards"
    shutil.copytree(units_and_codec_shards / "shards", folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["tokenizers"]["encodec"]["model"] = str(codec)  # same recorded sha256, other weights
    (folder / "manifest.json").write_text(json.dumps(manifest))
    r = run_cli("decode", folder, "-o", tmp_path / "wav")
    assert r.exit_code == 2 and "do not match the card" in r.output and "--allow-model-mismatch" in r.output
    assert not (tmp_path / "wav").exists()
    with pytest.warns(UserWarning, match="weights differ"):
        r = run_cli("decode", folder, "-o", tmp_path / "wav", "--allow-model-mismatch")
    assert r.exit_code == 0, r.output
    assert len(list((tmp_path / "wav").glob("*.wav"))) == manifest["num_utterances"]


def test_a_stop_inside_a_long_batch_is_honoured_at_once(mfcc_km, speech_corpus, tmp_path, monkeypatch):
    """SIGTERM while a batch computes (here a forward that would take 120 s) stops the job at once, not
    after the batch: exit 143, the finished shards kept, and the rerun gives the uninterrupted bytes."""
    import time

    from speechtok.pipelines import encode

    calls, launch = [], encode.launch

    def slow_launch(*args):
        calls.append(time.perf_counter())
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(120)  # a long batch: the stop must not wait for it
        return launch(*args)

    monkeypatch.setattr(encode, "launch", slow_launch)
    out = tmp_path / "out"
    r = run_cli("encode", speech_corpus, "-t", mfcc_km, "-o", out, "-q", "--shard-max-count", 2,
                "--batch-seconds", 3)
    assert r.exit_code == 143 and "stopped by SIGTERM" in r.output, r.output
    assert time.perf_counter() - calls[-1] < 60 and not list(out.glob("*.tmp"))
    monkeypatch.undo()
    for folder in (out, tmp_path / "uninterrupted"):
        assert run_cli("encode", speech_corpus, "-t", mfcc_km, "-o", folder, "-q", "--shard-max-count", 2,
                       "--batch-seconds", 3).exit_code == 0
    same_output(tmp_path / "uninterrupted", out)


def test_decode_stops_at_once_on_a_signal_and_leaves_only_whole_files(units_and_codec_shards, tmp_path,
                                                                      monkeypatch):
    """SIGTERM while a wav is being written: one line, exit 143, and every file in the folder is a whole
    wav (written aside, then renamed); no partial file is left."""
    import time

    import soundfile as sf

    real, calls = sf.write, []

    def write(path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 2:
            with open(path, "wb") as f:
                f.write(b"RIFF")  # half a file on disk when the signal comes
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(30)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(sf, "write", write)
    out = tmp_path / "wav"
    r = run_cli("decode", units_and_codec_shards / "shards", "-o", out, "-q")
    assert r.exit_code == 143 and r.output.startswith("stopped by SIGTERM: ") and r.output.count("\n") == 1
    files = [p for p in out.iterdir() if not p.name.startswith(".lock")]
    assert len(files) == 1 and files[0].suffix == ".wav" and sf.info(files[0]).frames > 0, files
