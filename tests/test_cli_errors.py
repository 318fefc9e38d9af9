"""Every command as honest as `tok encode` (issue 23, sections 3 and 4): one line `error: ...` and the
README's exit code for refused pickles, read-only or missing output folders, bad numbers, duplicate YAML keys
and click's own usage errors; `--overwrite` to replace a tokenizer; `--stream` among several semantic streams;
every model size in `--print-config`; progress bars that never pass 100 %."""

import argparse
import errno
import json
import os
import shutil
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner

from speechtok.cli.main import cli
from speechtok.folder_lock import FolderLock

FIXTURES = Path(__file__).parent / "fixtures"


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def one_line(r, code: int, *says: str) -> str:
    """The command ended with `code` and exactly one stderr line `error: ...` containing each of `says`."""
    assert r.exit_code == code and r.exception is None or isinstance(r.exception, SystemExit), r.output
    assert r.exit_code == code, (r.exit_code, r.output)
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    for s in says:
        assert s in lines[0], (s, lines[0])
    return lines[0]


def evil_torch_file(path: Path, state: dict) -> Path:
    """`state` saved with torch.save plus a pickled object that torch.load(weights_only=True) refuses."""
    torch.save({**state, "payload": argparse.Namespace(run="code")}, path)
    return path


def read_only(*_args, **_kw):
    raise OSError(errno.EROFS, os.strerror(errno.EROFS))


@pytest.fixture(scope="module")
def km(units_and_codec_shards) -> Path:
    return units_and_codec_shards / "km"


@pytest.fixture(scope="module")
def two_streams(units_and_codec_shards, tmp_path_factory) -> Path:
    """A manifest of two semantic streams (`a`, `b`: one tokenizer under two names, as the README's
    `-t DIR:name=NAME` twice writes them) and EnCodec; the stream choices read only the manifest."""
    out = tmp_path_factory.mktemp("two_streams") / "shards"
    out.mkdir()
    manifest = json.loads((units_and_codec_shards / "shards" / "manifest.json").read_text())
    for key, value in manifest.items():
        if isinstance(value, dict) and "semantic" in value:
            semantic = value.pop("semantic")
            manifest[key] = {"a": semantic, "b": semantic, **value}
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


# --- section 3: refused pickles name the file ---------------------------------------------------------------

def test_refused_pickles_are_one_line_naming_the_file(tmp_path, km, base_llm):
    from speechtok.vocoders.hifigan import UnitHiFiGAN
    from speechtok.vocoders.vocos import Vocos

    voc = tmp_path / "hifigan"  # a speech-resynthesis layout: config.json + g_XXXXXXXX
    voc.mkdir()
    shutil.copy(FIXTURES / "codehifigan_dur" / "config.json", voc / "config.json")
    evil_torch_file(voc / "g_00000000", {"generator": {}})
    with pytest.raises(ValueError,
                       match=rf"^{voc / 'g_00000000'}: refused: holds a pickled argparse.Namespace"):
        UnitHiFiGAN.from_dir(voc)

    mel = {"sample_rate": 16000, "n_fft": 64, "hop_length": 16, "n_mels": 8, "padding": "center"}
    config = {"feature_extractor": {"class_path": "vocos.feature_extractors.MelSpectrogramFeatures",
                                    "init_args": mel},
              "backbone": {"class_path": "vocos.models.VocosBackbone",
                           "init_args": {"input_channels": 8, "dim": 8, "intermediate_dim": 16,
                                         "num_layers": 1}},
              "head": {"class_path": "vocos.heads.ISTFTHead",
                       "init_args": {"dim": 8, "n_fft": 64, "hop_length": 16, "padding": "center"}}}
    Vocos(config).save_pretrained(tmp_path / "vocos")
    evil_torch_file(tmp_path / "vocos" / "pytorch_model.bin", {})
    with pytest.raises(ValueError, match=rf"^{tmp_path / 'vocos' / 'pytorch_model.bin'}: refused: "):
        Vocos.from_pretrained(tmp_path / "vocos")

    ckpt = evil_torch_file(tmp_path / "km.pt", {"centroids": torch.zeros(4, 39)})
    one_line(run("import-kmeans", ckpt, "-m", "mfcc", "-o", tmp_path / "imported"), 2,
             f"{ckpt}: refused: holds a pickled argparse.Namespace")
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    one_line(run("import-kmeans", tmp_path / "obj.npy", "-m", "mfcc", "-o", tmp_path / "imported"), 2,
             f"{tmp_path / 'obj.npy'}: not a numeric .npy array")

    base = tmp_path / "base"  # an LM whose weights are a pickle with a payload
    shutil.copytree(base_llm, base)
    from safetensors.torch import load_file

    weights = load_file(base / "model.safetensors")
    (base / "model.safetensors").unlink()
    evil_torch_file(base / "pytorch_model.bin", weights)
    manifest = {"tokenizers": json.loads((km / "tokenizer.json").read_text()) | {}}
    (tmp_path / "shards").mkdir()
    (tmp_path / "shards" / "manifest.json").write_text(
        json.dumps({"tokenizers": {"semantic": manifest["tokenizers"]}, "shards": []}))
    one_line(run("lm", "extend-vocab", base, "-m", tmp_path / "shards", "-o", tmp_path / "lm"), 2,
             f"{base / 'pytorch_model.bin'}: refused: holds a pickled argparse.Namespace")


# --- section 3: outputs that cannot be written, folders that do not exist ----------------------------------

def test_read_only_outputs_exit_3_before_the_work(tmp_path, speech_corpus, monkeypatch):
    from speechtok.align import jobs

    monkeypatch.setattr(FolderLock, "__enter__", read_only)  # the lock file is the first thing written
    one_line(run("train-kmeans", speech_corpus, "-m", "mfcc", "-k", 4, "-o", tmp_path / "km", "-q"), 3,
             f"{tmp_path / 'km'}: Read-only file system")  # the folder its lock made
    monkeypatch.undo()
    monkeypatch.setattr(jobs.os, "open", read_only)  # the aligned manifest, opened before any alignment
    one_line(run("align", speech_corpus, "-o", tmp_path / "aligned.jsonl", "-q"), 3, "Read-only file system")


def test_resynth_creates_the_output_folder(tmp_path, speech_corpus, monkeypatch):
    from speechtok.pipelines import resynth

    calls = []  # the round trip itself is tested elsewhere: here, what happens to its result

    def round_trip(wav, sr, *_args):
        calls.append(len(wav))
        return wav, sr, "a stand-in round trip"

    monkeypatch.setattr(resynth, "resynthesize", round_trip)
    audio = speech_corpus.parent / json.loads(speech_corpus.read_text().splitlines()[0])["path"]
    out = tmp_path / "new" / "dir" / "x.wav"
    r = run("resynth", audio, "-t", "encodec:any", "-o", out, "--device", "cpu")
    assert r.exit_code == 0 and out.is_file() and len(calls) == 1, r.output
    (tmp_path / "afile").write_text("x")
    one_line(run("resynth", audio, "-t", "encodec:any", "-o", tmp_path / "afile" / "x.wav"), 2,
             str(tmp_path / "afile"))
    monkeypatch.setattr(FolderLock, "__enter__", read_only)
    one_line(run("resynth", audio, "-t", "encodec:any", "-o", tmp_path / "ro" / "x.wav"), 3,
             "Read-only file system")
    assert len(calls) == 1  # both refused before the work


# --- section 3: one format, one exit-code table; validation -------------------------------------------------

def test_usage_errors_are_one_line_with_exit_2(tmp_path, speech_corpus, km, base_llm):
    (tmp_path / "shards").mkdir()
    lm = {"model": str(base_llm), "output": str(tmp_path / "run"),
          "data": {"shards": [str(tmp_path / "shards")]}}
    (tmp_path / "long.yaml").write_text(yaml.safe_dump({**lm, "data": {**lm["data"], "seq_len": 4096}}))
    (tmp_path / "span.yaml").write_text(yaml.safe_dump({**lm, "data": {**lm["data"], "span_words": [5, 1]}}))
    (tmp_path / "codec_dedup.yaml").write_text(
        yaml.safe_dump({**lm, "data": {**lm["data"], "speech": "codec", "dedup": True}}))
    (tmp_path / "dup.yaml").write_text(yaml.safe_dump(lm)
                                       + "train:\n  lr: 1.0e-3\n  steps: 5\n  lr: 2.0e-3\n")
    dup_line = len((tmp_path / "dup.yaml").read_text().splitlines())  # the second 'lr', the last line
    out = tmp_path / "o"
    wav = speech_corpus.parent / json.loads(speech_corpus.read_text().splitlines()[0])["path"]
    cases = {  # argv: what the one line says
        ("train-kmeans", speech_corpus, "-m", "mfcc", "-k", 0, "-o", out):
            "'-k' / '--clusters': 0 is not in the range",
        ("train-kmeans", speech_corpus, "-m", "mfcc", "-k", 4, "--batch-seconds", "nan", "-o", out):
            "--batch-seconds': 'nan' is not a finite number",
        ("encode", speech_corpus, "-t", km, "--batch-seconds", "nan", "-o", out):
            "--batch-seconds': 'nan' is not a finite number",
        ("align", speech_corpus, "-o", out / "a.jsonl", "--jobs", 0):
            "'--jobs' / '-j': 0 is not in the range",
        ("align", speech_corpus, "-o", out / "a.jsonl", "--batch-seconds", "inf"):
            "'inf' is not a finite number",
        ("show", tmp_path, "-n", -5): "'-n' / '--num': -5 is not in the range",
        ("encode",): "Missing argument 'CORPUS'",
        ("encode", speech_corpus, "-t", km, "-o", out, "--no-such-option"):
            "No such option '--no-such-option'",
        ("no-such-command",): "No such command 'no-such-command'",
        ("lm", "train", tmp_path / "long.yaml"): f"{tmp_path / 'long.yaml'}: data.seq_len: 4096 is more than "
                                                 f"the 512 positions of the model (max_position_embeddings "
                                                 f"in {base_llm / 'config.json'})",
        ("lm", "train", tmp_path / "span.yaml"): f"{tmp_path / 'span.yaml'}: data.span_words: ",
        ("lm", "train", tmp_path / "codec_dedup.yaml"):  # dedup was ignored
            f"{tmp_path / 'codec_dedup.yaml'}: data.dedup: true deduplicates units, and speech: codec",
        ("lm", "train", tmp_path / "dup.yaml"): f"{tmp_path / 'dup.yaml'}: line {dup_line}: not valid YAML "
                                                "(duplicate key 'lr', first on line",
        ("generate", "--lm", tmp_path, "--units-only", "-o", out / "u.npy"): "not a speechtok LM directory",
        ("resynth", wav, "-t", km, "--vocoder", tmp_path, "-o", out / "x"):
            f"{out / 'x'}: no audio format for the extension ''",
        ("resynth", wav, "-t", km, "--vocoder", tmp_path, "-o", out / "x.mp9"): "extension '.mp9' (use .wav",
    }
    failed = []
    for argv, says in cases.items():
        try:
            one_line(run(*argv), 2, says)
        except AssertionError as e:
            failed.append(f"{argv[:2]}: {e}")
    assert not failed, "\n".join(failed)
    assert not out.exists()  # each was refused before any work
    line = one_line(run("lm", "train", tmp_path / "dup.yaml", "--stop-after", 0), 2, "--stop-after")
    assert "lm train" in line and "--help" in line  # names the command and where its help is


def test_train_kmeans_refuses_to_replace_a_tokenizer(tmp_path, speech_corpus, km):
    out = tmp_path / "km"
    shutil.copytree(km, out)
    before = (out / "centroids.npy").read_bytes()
    one_line(run("train-kmeans", speech_corpus, "-m", "mfcc", "-k", 4, "-o", out, "-q"), 2,
             f"{out}: holds a tokenizer", "--overwrite")
    assert (out / "centroids.npy").read_bytes() == before
    one_line(run("import-kmeans", km / "centroids.npy", "-m", "mfcc", "-o", out), 2, "--overwrite")
    r = run("train-kmeans", speech_corpus, "-m", "mfcc", "-k", 4, "-o", out, "-q", "--overwrite", "--iters",
            2, "--max-frames", 500, "--backend", "torch")
    assert r.exit_code == 0, r.output
    assert json.loads((out / "tokenizer.json").read_text())["k"] == 4


# --- section 4: several semantic streams --------------------------------------------------------------------

def test_stream_chooses_among_several_semantic_streams(two_streams, base_llm, tmp_path):
    from speechtok.lm.acoustic_config import checked_streams, load_acoustic_config
    from speechtok.lm.vocab import SpeechVocab
    from speechtok.shards import read_manifest
    from speechtok.vocoders.train_config import load_vocoder_config, vocoded_stream

    one_line(run("lm", "extend-vocab", base_llm, "-m", two_streams, "-o", tmp_path / "lm"), 2,
             "the shards hold 2 semantic streams ['a', 'b']", "--stream NAME")
    one_line(run("lm", "extend-vocab", base_llm, "-m", two_streams, "-o", tmp_path / "lm", "--stream", "c"),
             2, "stream: no semantic stream 'c' in the shards (they hold ['a', 'b'])")
    assert not (tmp_path / "lm").exists()
    r = run("lm", "extend-vocab", base_llm, "-m", two_streams, "-o", tmp_path / "lm", "--stream", "b")
    assert r.exit_code == 0, r.output
    # what lm train, generate and eval lm read
    assert SpeechVocab.load(tmp_path / "lm").semantic_stream == "b"

    acoustic = {"output": str(tmp_path / "ac"), "shards": [str(two_streams)], "codec": "encodec"}
    (tmp_path / "ac.yaml").write_text(yaml.safe_dump(acoustic))
    one_line(run("acoustic", "train", tmp_path / "ac.yaml"), 2, "stream: NAME")
    (tmp_path / "ac_b.yaml").write_text(yaml.safe_dump({**acoustic, "stream": "b"}))
    assert checked_streams(load_acoustic_config(tmp_path / "ac_b.yaml"))[1] == 2
    from speechtok.lm.acoustic_train import acoustic_config

    assert acoustic_config(load_acoustic_config(tmp_path / "ac_b.yaml")).semantic_stream == "b"

    one_line(run("vocoder", "train", "--kind", "unit-hifigan", "--shards", two_streams, "-o", tmp_path / "v"),
             2, "stream: the shards hold 2 semantic streams ['a', 'b']; choose one with --stream NAME")
    cfg = load_vocoder_config(None, {"kind": "unit-hifigan", "shards": str(two_streams), "output": "v",
                                     "stream": "a"})
    assert vocoded_stream(cfg, read_manifest(two_streams)[1]["tokenizers"]) == "a"


# --- section 4: --print-config shows the model sizes; progress bars stay within 100 % -----------------------

def test_print_config_shows_every_model_size_with_its_default():
    from dataclasses import fields

    from speechtok.lm.acoustic import AcousticConfig
    from speechtok.lm.acoustic_config import SIZES
    from speechtok.vocoders.hifigan import UnitHiFiGANConfig
    from speechtok.vocoders.train_config import HIFIGAN_SIZES

    defaults = {f.name: f.default for f in fields(AcousticConfig)}
    assert SIZES == {k: defaults[k] for k in SIZES}  # the printed defaults are the model's
    hifigan = UnitHiFiGANConfig(k=2)
    assert HIFIGAN_SIZES == {k: getattr(hifigan, k) for k in HIFIGAN_SIZES}
    r = run("acoustic", "train", "--print-config")
    assert r.exit_code == 0 and yaml.safe_load(r.output)["model"] == {"dim": 512, "layers": 8, "heads": 8}
    assert "# max_len:" in r.output
    r = run("vocoder", "train", "--print-config")
    assert r.exit_code == 0 and yaml.safe_load(r.output)["model"] == {}
    for key in ("embed_dim: 128", "upsample_initial_channel: 512", "upsample_rates", "dim: 512",
                "intermediate_dim: 1536", "num_layers: 8", "n_mels: 100", "feature_dim: 128"):
        assert key in r.output, key


def test_progress_bar_never_passes_its_total(capsys):
    from tqdm import TqdmWarning

    from speechtok.align.jobs import run_jobs

    def slow(_worker, item):  # past tqdm's 0.1 s between redraws, so that every update is drawn
        time.sleep(0.15)
        return item

    seconds = [1.04, 2.2]  # 3.24 s: a total rounded to 3.2 s ended at 101 % with ETA -00:00 and a TqdmWarning
    with warnings.catch_warnings():
        warnings.simplefilter("error", TqdmWarning)
        out = list(run_jobs(seconds, seconds, lambda: None, (), slow, progress=True, desc="align"))
    assert out == seconds
    err = capsys.readouterr().err
    assert "<-" not in err and "101%" not in err and "100%" in err, err


@pytest.mark.parametrize("delay", [0.2, 0.8])
def test_a_signal_while_tok_starts_is_one_line_and_exit_130(tmp_path, speech_corpus, delay):
    """SIGINT at any moment after `tok` starts (here mostly during its imports, before the command's own
    handlers): one line and exit 130, never click's "Aborted!" (exit 1) or a KeyboardInterrupt traceback."""
    import signal
    import subprocess
    import sys

    start = ("import os, signal, sys, threading; from speechtok.cli import main; "
             f"threading.Timer({delay}, os.kill, (os.getpid(), signal.SIGINT)).start(); "
             "sys.argv = ['tok', *sys.argv[1:]]; main()")
    r = subprocess.run([sys.executable, "-c", start, "train-kmeans", str(speech_corpus), "-m", "mfcc", "-k",
                        "2", "-o", str(tmp_path / "km")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 128 + signal.SIGINT, r.stderr
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("stopped by SIGINT"), r.stderr
