"""benchmarks/gpu_suite.py: the smoke run of every part (so the one GPU run does not fail on a typo), the
parent's handling of a failing part, a timed-out part and the global deadline, and that the modules the
suite needs do not import the heavy optional packages that are not carried to the device machine."""

import hashlib
import importlib.util
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SUITE = REPO / "benchmarks" / "gpu_suite.py"
HEAVY = ("matplotlib", "tensorboard", "pesq", "pyworld")


def repo_state() -> dict:
    """Hashes of BENCHMARKS.md and the files under benchmarks/results (the smoke run must not touch them)."""
    files = [REPO / "BENCHMARKS.md", *sorted((REPO / "benchmarks" / "results").glob("**/*"))]
    return {str(f): hashlib.sha256(f.read_bytes()).hexdigest() for f in files if f.is_file()}


def load_suite():
    spec = importlib.util.spec_from_file_location("gpu_suite_under_test", SUITE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_smoke_runs_every_part_into_the_given_paths(tmp_path):
    before = repo_state()
    md = tmp_path / "B.md"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, str(SUITE), "--smoke", "--out", str(tmp_path), "--benchmarks-md", str(md)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert repo_state() == before
    (results,) = tmp_path.glob("*-cpu-smoke.jsonl")
    records = {json.loads(line)["part"]: json.loads(line) for line in results.read_text().splitlines()}
    suite = load_suite()
    assert set(records) == set(suite.PARTS)
    bad = {name: rec.get("error", "")[-800:] for name, rec in records.items() if rec["status"] != "ok"}
    assert not bad, bad
    f = {name: rec["figures"] for name, rec in records.items()}
    assert f["env"]["heavy_modules_loaded"] == []
    assert f["encode"]["token_agreement"] == 1.0  # fp32 on both paths on CPU
    assert f["kmeans"]["baseline"] == ("faiss-cpu" if importlib.util.find_spec("faiss") else "torch-cpu")
    assert f["kmeans"]["inertia_ratio"] == pytest.approx(1.0, abs=1e-3)  # same seeds, same Lloyd iterations
    assert {k for k in f["codec"] if k.endswith("encode_batched_xrt")} == {
        "encodec_encode_batched_xrt", "dac_encode_batched_xrt", "mimi_encode_batched_xrt"}
    assert f["lm-350m"]["eager_tokens_s"] > 0 and f["lm-1b"]["plain_tokens_s"] > 0
    assert f["generate"]["chain_eager_xrt"] > 0 and f["vocoder"]["vocos_over_hifigan"] > 0
    assert {k for k in f["generate-patterns"] if k.endswith("_b1_xrt")} == {
        "delay_b1_xrt", "coarse_fine_b1_xrt", "valle_b1_xrt", "depth_b1_xrt"}
    assert f["pytest"]["skipped"] >= 1 and f["pytest"]["failed_or_error"] == 0  # GPU tests skip on CPU
    assert records["vocoder"]["profile"]["top"], "a missed target is profiled"
    text = md.read_text()
    for section in ("encode-cpu", "kmeans-cpu", "codec-cpu", "lm-train-tiny-cpu", "generate-batch1-cpu",
                    "vocoder-cpu", "pytest-gpu-cpu", "gpu-suite-cpu"):
        assert f"<!-- {section} -->" in text
    assert "EnCodec encode ≥ 8,000× real time" in text and "| **no** |" in text
    assert "GPU suite:" in r.stdout  # the one-screen summary


def test_a_failure_is_recorded_a_timeout_keeps_its_figures_and_the_deadline_skips(tmp_path, monkeypatch):
    suite = load_suite()

    def env(p, sz, tmp):
        p.record(device="cpu", hardware="test machine")

    def fails(p, sz, tmp):
        p.record(measured_before=1.5)
        raise RuntimeError("planted failure")

    def hangs(p, sz, tmp):
        p.record(first_figure=2.5)
        time.sleep(60)

    def never(p, sz, tmp):
        raise AssertionError("must be skipped")

    for name, fn in (("env", env), ("kmeans", fails), ("codec", hangs), ("vocoder", never)):
        monkeypatch.setitem(suite.PART_FUNCS, name, fn)
    monkeypatch.setattr(suite, "preimport", lambda: None)  # the stand-in parts import nothing
    md = tmp_path / "B.md"
    t0 = time.monotonic()
    assert suite.main(["--smoke", "--parts", "kmeans,codec,vocoder", "--budget", "4", "--out", str(tmp_path),
                       "--benchmarks-md", str(md)]) == 0
    assert time.monotonic() - t0 < 30
    (results,) = tmp_path.glob("*.jsonl")
    records = {json.loads(line)["part"]: json.loads(line) for line in results.read_text().splitlines()}
    assert records["env"]["status"] == "ok"
    assert records["kmeans"]["status"] == "error"
    assert "RuntimeError: planted failure" in records["kmeans"]["error"]
    assert records["kmeans"]["figures"] == {"measured_before": 1.5}
    assert records["codec"]["status"] == "timeout" and records["codec"]["figures"] == {"first_figure": 2.5}
    assert records["vocoder"]["status"] == "skipped"
    assert all(t["met"] is None for t in records["vocoder"]["targets"])
    summary = md.read_text()
    assert "RuntimeError: planted failure" in summary and "| vocoder | skipped |" in summary


def test_modules_the_suite_needs_do_not_import_heavy_optional_packages():
    missing = [m for m in HEAVY if importlib.util.find_spec(m) is None]
    assert not missing, f"installed here, so an eager import would show: {missing}"
    modules = ["speechtok.pipelines.encode", "speechtok.tokenizers.kmeans", "speechtok.tokenizers.codec",
               "speechtok.lm.train", "speechtok.lm.generate", "speechtok.lm.acoustic",
               "speechtok.pipelines.generate", "speechtok.vocoders.vocos", "speechtok.vocoders.hifigan",
               "speechtok.cli.main"]
    code = (f"import sys\nfor m in {modules!r}: __import__(m)\n"
            f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == ""


def test_readme_holds_a_device_command_that_fits_the_tool():
    text = (REPO / "benchmarks" / "README.md").read_text()
    (command,) = re.findall(r"- `command`:\n  `(.+)`\n", text)
    assert len(command) <= 2000 and "benchmarks/gpu_suite.py" in command and ".wheelhouse/*.whl" in command
    assert '`carry`: `[".wheelhouse", ".gpu_speech"]`' in text and re.search(r"`timeout_s`: `(\d+)`", text)
    assert "SPEECHTOK_TEST_SPEECH=$PWD/.gpu_speech" in command  # the GPU tests' corpus without espeak-ng
    ignored = (REPO / ".gitignore").read_text().splitlines()
    assert "/.wheelhouse/" in ignored and "/.gpu_speech/" in ignored


def test_full_sizes_fit_together():
    """The GPU-only configuration, which --smoke does not run: every part has a time box within the budget's
    reach, and each LM part names a model size the benchmarks know, with a batch size."""
    suite = load_suite()
    full = suite.Sizes()
    assert set(full.budgets) == set(suite.PARTS) == set(suite.SMOKE.budgets)
    assert set(full.lm_models) == {"lm-350m", "lm-1b"} and full.gen_size in suite.lm_bench.SIZES
    assert all(size in suite.lm_bench.SIZES and size in full.lm_batch for size in full.lm_models.values())
    assert full.encode_hours >= 0.5 and full.encode_sec == (10.0, 20.0) and full.compile
    assert ((full.kmeans_frames, full.kmeans_dim, full.kmeans_k, full.kmeans_iters)
            == (1_000_000, 768, 500, 20))
    assert full.voc_batches == (1, 16) and set(suite.TARGETS) <= set(suite.PARTS)


def test_a_prebuilt_speech_corpus_stands_in_without_espeak(speech_corpus, tmp_path, monkeypatch):
    """The device image has no espeak-ng: the GPU tests copy $SPEECHTOK_TEST_SPEECH (made here) instead."""
    import speech

    monkeypatch.setenv("SPEECHTOK_TEST_SPEECH", str(speech_corpus.parent))
    monkeypatch.setattr(speech.shutil, "which", lambda _name: None)
    copy = speech.build_corpus(tmp_path / "copy")
    assert copy.read_text() == speech_corpus.read_text()
    paths = [json.loads(line)["path"] for line in copy.read_text().splitlines()]
    assert len(paths) == 8 and all((copy.parent / p).read_bytes() == (speech_corpus.parent / p).read_bytes()
                                   for p in paths)
