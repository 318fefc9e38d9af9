"""What keeps the trainers (`tok lm train`, `tok vocoder train`, `tok acoustic train`) safe to stop, share
and resume (issue 23): one writer per output folder, SIGINT / SIGTERM end in a checkpoint and exit 128 + N,
checkpoints and final models are checksummed, non-finite numbers are refused, a changed schedule is
refused, and a full disk is one line."""

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner

from speechtok.cli.main import cli

from speech import linked_workdir

TINY_HIFIGAN = {"embed_dim": 32, "upsample_initial_channel": 32, "resblock_kernel_sizes": [3],
                "resblock_dilation_sizes": [[1, 3]]}


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def tok(*args) -> list[str]:
    return [sys.executable, "-m", "speechtok.cli.main", *map(str, args)]


@pytest.fixture(scope="module")
def root(units_and_codec_shards, base_llm, tmp_path_factory):
    """shards/ (MFCC units + tiny EnCodec) and lm_base/: the tiny Llama extended with the units."""
    root = linked_workdir(units_and_codec_shards, tmp_path_factory.mktemp("guard"))
    r = run("lm", "extend-vocab", base_llm, "-m", root / "shards", "-o", root / "lm_base")
    assert r.exit_code == 0, r.output
    return root


def lm_config(root: Path, name: str, **train) -> Path:
    cfg = {"model": str(root / "lm_base"), "output": str(root / name),
           "data": {"shards": [str(root / "shards")], "seq_len": 64, "shuffle_buffer": 4, "num_workers": 0},
           "train": {"batch_size": 2, "steps": 30, "lr": 3e-3, "warmup": 3, "log_every": 1,
                     "save_every": 1000, "precision": "fp32", **train}}
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def vocoder_config(root: Path, name: str, **kw) -> Path:
    cfg = {"kind": "unit-hifigan", "model": TINY_HIFIGAN, "shards": str(root / "shards"),
           "output": str(root / name), "batch_size": 2, "segment_seconds": 0.2, "lr": 2e-3, "steps": 12,
           "adv_start": 2, "log_every": 1, "save_every": 1000, "sample_every": 1000, "disc_channels": 4, **kw}
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def curve(out: Path, key: str) -> dict[int, float]:
    records = map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
    return {x["step"]: x[key] for x in records if key in x}


def wait_for(predicate, what: str, proc: subprocess.Popen, timeout: float = 300) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        assert proc.poll() is None, f"exited {proc.returncode} before {what}: {proc.communicate()[1][-3000:]}"
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.02)


def logged_steps(out: Path) -> int:
    path = out / "metrics.jsonl"
    return len(path.read_text().splitlines()) if path.exists() else 0


def stop_a_running_trainer(cmd: list[str], out: Path, signum: int) -> tuple[int, str]:
    """Start `cmd`; once it has logged 2 steps, pause it and check that a second writer of the same output
    is refused (exit 3, naming the first's pid and host); then send `signum` and let it go on. Returns the
    step it stopped after and its stderr."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        wait_for(lambda: logged_steps(out) >= 2, "step 2", first)
        first.send_signal(signal.SIGSTOP)
        second = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
        assert second.returncode == 3, second.stderr
        assert second.stderr.count("\n") == 1 and "Traceback" not in second.stderr, second.stderr
        assert f"(pid {first.pid} on host {socket.gethostname()} since " in second.stderr, second.stderr
        first.send_signal(signum)
        first.send_signal(signal.SIGCONT)
        _, err = first.communicate(timeout=300)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 128 + signum, err
    assert "Traceback" not in err and "Aborted" not in err, err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"stopped by {signal.Signals(signum).name} after step "), err
    step = int(last.split("after step ")[1].split(":")[0])
    assert f"resume from step {step}" in last
    return step, err


@pytest.fixture
def one_thread():
    """The thread count of the subprocesses (OMP_NUM_THREADS=1) in this process too: float sums are then
    split the same way, so in-process and subprocess steps agree bit for bit."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_lm_train_refuses_a_second_writer_and_resumes_exactly_after_sigint(root, one_thread):
    ref = root / "lm_ref"
    assert run("lm", "train", lm_config(root, "lm_ref")).exit_code == 0
    cfg = lm_config(root, "lm_cut")
    step, _ = stop_a_running_trainer(tok("lm", "train", cfg), root / "lm_cut", signal.SIGINT)
    assert 2 <= step < 30
    assert (root / "lm_cut" / "checkpoints" / "latest").read_text() == f"step_{step:07d}"
    assert not (root / "lm_cut" / "final").exists()
    r = run("lm", "train", cfg)
    assert r.exit_code == 0 and f"resuming from step {step}" in r.output, r.output
    assert curve(root / "lm_cut", "loss") == curve(ref, "loss")  # the same losses, bit for bit


def test_vocoder_train_refuses_a_second_writer_and_resumes_exactly_after_sigterm(root, one_thread):
    ref = root / "voc_ref"
    assert run("vocoder", "train", "--config", vocoder_config(root, "voc_ref")).exit_code == 0
    cfg = vocoder_config(root, "voc_cut")
    step, _ = stop_a_running_trainer(tok("vocoder", "train", "--config", cfg), root / "voc_cut",
                                     signal.SIGTERM)
    assert 2 <= step < 12
    r = run("vocoder", "train", "--config", cfg)
    assert r.exit_code == 0, r.output
    assert curve(root / "voc_cut", "mel_loss") == curve(ref, "mel_loss")


def test_a_second_signal_keeps_the_first_signals_name():
    from speechtok.stopping import Interrupted, stop_on_signals

    with pytest.raises(Interrupted) as e, stop_on_signals() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.signum == signal.SIGTERM
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(1)
    assert e.value.signum == signal.SIGTERM and "second signal" in str(e.value)


def flip_a_bit(path: Path, at: int | None = None) -> None:
    data = bytearray(path.read_bytes())
    at = len(data) // 2 if at is None else at
    data[at] ^= 0x10
    path.write_bytes(bytes(data))


def test_a_flipped_bit_is_refused_on_resume_and_on_load(root, speech_corpus, tmp_path):
    cfg = lm_config(root, "lm_bits", steps=4, save_every=2)
    assert run("lm", "train", cfg).exit_code == 0
    ckpt = root / "lm_bits" / "checkpoints" / "step_0000004"
    assert set(json.loads((ckpt / "sha256.json").read_text())) >= {"meta.json", "rng_rank0.json",
                                                                   "state/.metadata"}
    shard = next((ckpt / "state").glob("*.distcp"))
    flip_a_bit(shard)
    r = run("lm", "train", cfg)
    assert r.exit_code == 2 and r.output.startswith(f"error: {shard}: checksum mismatch (sha256 "), r.output
    assert r.output.count("\n") == 1, r.output

    final = root / "lm_bits" / "final"
    weights = final / "model.safetensors"
    flip_a_bit(weights, at=weights.stat().st_size - 3)  # a weight's low byte: the file still parses
    r = run("eval", "lm", final, "--shards", root / "shards", "-o", tmp_path / "eval", "--device", "cpu")
    assert r.exit_code == 2 and r.output.startswith(f"error: {weights}: checksum mismatch"), r.output
    r = run("generate", "--lm", final, "--units-only", "-o", tmp_path / "u.npy", "--device", "cpu")
    assert r.exit_code != 0 and f"{weights}: checksum mismatch" in r.output, r.output

    voc = vocoder_config(root, "voc_bits", steps=2)
    assert run("vocoder", "train", "--config", voc).exit_code == 0
    flip_a_bit(root / "voc_bits" / "final" / "vocoder.json", at=3)
    wav = next(Path(speech_corpus).parent.rglob("*.wav"))
    r = run("resynth", wav, "-t", root / "km", "--vocoder", root / "voc_bits" / "final",
            "-o", tmp_path / "x.wav", "--device", "cpu")
    assert r.exit_code == 2 and "vocoder.json: checksum mismatch" in r.output, r.output


def test_an_acoustic_final_model_is_verified_on_load(tmp_path):
    from speechtok.checksums import ChecksumError, verify_checksums, write_checksums

    (tmp_path / "a.bin").write_bytes(b"\x00" * 64)
    write_checksums(tmp_path)
    assert verify_checksums(tmp_path)
    flip_a_bit(tmp_path / "a.bin")
    with pytest.raises(ChecksumError, match=r"a\.bin: checksum mismatch"):
        verify_checksums(tmp_path)
    (tmp_path / "a.bin").unlink()
    with pytest.raises(ChecksumError, match=r"a\.bin: missing"):
        verify_checksums(tmp_path)
    from speechtok.lm.acoustic import AcousticModel

    with pytest.raises(ChecksumError):
        AcousticModel.from_dir(tmp_path)


@pytest.mark.parametrize("command, key", [("lm", "train.lr"), ("lm-model", "train.betas"),
                                          ("vocoder", "lr"), ("vocoder-model", "model.dim"),
                                          ("acoustic", "train.clip")])
def test_non_finite_config_values_are_refused(root, command, key):
    if command.startswith("lm"):
        bad = {"lr": float("inf")} if command == "lm" else {"betas": [0.9, float("nan")]}
        path = lm_config(root, "nf", **bad)
        r = run("lm", "train", path)
    elif command.startswith("vocoder"):
        path = vocoder_config(root, "nf", **({"lr": float("nan")} if command == "vocoder" else
                                             {"model": {"dim": float("-inf")}}))
        r = run("vocoder", "train", "--config", path)
    else:
        path = root / "ac.yaml"
        path.write_text(yaml.safe_dump({"output": str(root / "nf"), "shards": [str(root / "shards")],
                                        "codec": "encodec", "train": {"clip": float("inf")}}))
        r = run("acoustic", "train", path)
    assert r.exit_code == 2 and f"{path}: {key}: must be a finite number" in r.output, r.output
    assert r.output.count("\n") == 1 and not (root / "nf").exists()


@pytest.mark.parametrize("what", ["loss", "weights"])
def test_non_finite_numbers_stop_training_keeping_the_last_good_checkpoint(root, monkeypatch, what):
    """NaN in the loss of step 3, or in a weight at the save of step 4: exit 1 in one line, nothing non-finite
    is saved, the checkpoint of step 2 stays the latest."""
    import speechtok.lm.train as lm_train

    real, calls = lm_train.train_step, []

    def poisoned(model, *args):
        loss, norm = real(model, *args)
        calls.append(1)
        if what == "loss" and len(calls) == 3:
            loss = loss * float("nan")
        if what == "weights" and len(calls) == 4:
            with torch.no_grad():
                next(model.parameters())[0, 0] = float("inf")
        return loss, norm

    monkeypatch.setattr(lm_train, "train_step", poisoned)
    out = root / f"nan_{what}"
    r = run("lm", "train", lm_config(root, out.name, steps=6, save_every=2, log_every=3))
    assert r.exit_code == 1, r.output
    line = r.output.strip().splitlines()[-1]
    assert line.startswith(f"error: {out}: step {3 if what == 'loss' else 4}: "), r.output
    assert "not finite" in line, r.output
    assert "step_0000002" in line and "Traceback" not in r.output
    assert (out / "checkpoints" / "latest").read_text() == "step_0000002"
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["latest", "step_0000002"]
    assert not (out / "final").exists()


def test_changing_steps_on_resume_is_refused_naming_both_values(root):
    cfg = lm_config(root, "steps", steps=6, save_every=2)
    assert run("lm", "train", cfg, "--stop-after", 2).exit_code == 0
    cfg.write_text(cfg.read_text().replace("steps: 6", "steps: 9"))
    r = run("lm", "train", cfg)
    assert r.exit_code == 2 and r.output.count("\n") == 1, r.output
    assert "train.steps: 9 now but 6 in the checkpoint of step 2" in r.output, r.output


def test_a_full_disk_while_saving_a_checkpoint_is_one_line_and_keeps_the_last(root, monkeypatch):
    import torch.distributed.checkpoint as dcp

    real, saves = dcp.FileSystemWriter.write_data, []

    def full(self, *args, **kwargs):
        saves.append(1)
        if len(saves) == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(dcp.FileSystemWriter, "write_data", full)
    out = root / "enospc"
    r = run("lm", "train", lm_config(root, "enospc", steps=6, save_every=2))
    errors = [x for x in r.output.splitlines() if not x.startswith("step ")]  # stdout: the progress lines
    assert r.exit_code == 3 and errors == [f"error: {out / 'checkpoints' / '.tmp_step_0000004'}: No space "
                                           "left on device (disk full: free space, then rerun the same "
                                           "command to resume)"], r.output
    assert (out / "checkpoints" / "latest").read_text() == "step_0000002"
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["latest", "step_0000002"]


def test_torchrun_stops_promptly_on_sigterm_and_a_rerun_on_the_same_port_resumes(root):
    """SIGTERM to torchrun (what a scheduler sends): both gloo ranks agree on a step, save it and exit at
    once, so torchrun is gone in seconds (not after its 30 s SIGKILL grace) and a rerun on the same port
    starts and resumes from that step."""
    out = root / "ddp"
    cfg = lm_config(root, "ddp", steps=1000, batch_size=1, parallel="ddp")
    port = 29800 + os.getpid() % 150
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
           "-m", "speechtok.cli.main", "lm", "train", str(cfg)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    agent = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        wait_for(lambda: logged_steps(out) >= 2, "step 2", agent)
        t0 = time.monotonic()
        agent.send_signal(signal.SIGTERM)
        _, err = agent.communicate(timeout=120)
        took = time.monotonic() - t0
    finally:
        if agent.poll() is None:
            agent.kill()
    assert took < 20, (took, err[-3000:])
    assert "stopped by SIGTERM after step" in err, err[-3000:]
    step = int((out / "checkpoints" / "latest").read_text().split("_")[1])
    assert step >= 2
    # what 2 ranks under DDP train and save (this test stands in for a plain 2-process run)
    losses = curve(out, "loss")
    assert sorted(losses) == list(range(1, step + 1)) and all(np.isfinite(list(losses.values())))
    assert (out / "checkpoints" / f"step_{step:07d}" / "rng_rank1.json").exists()
    r = subprocess.run(cmd + ["--stop-after", "1"], capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"resuming from step {step}" in r.stdout
    assert (out / "checkpoints" / "latest").read_text() == f"step_{step + 1:07d}"


def test_a_command_with_nothing_to_resume_stops_at_once_in_one_line(capsys):
    from speechtok.stopping import exit_on_signals

    with pytest.raises(SystemExit) as e, exit_on_signals("no report was written"):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(5)
    assert e.value.code == 130
    assert capsys.readouterr().err == "stopped by SIGINT: no report was written\n"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored
