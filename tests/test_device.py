"""--device: 'auto'/'cuda' take this rank's GPU, a GPU that is not there or one index shared by a node's
ranks is one line naming --device (not a traceback from deep in torch), and the value reaches the trainer."""

import json

import pytest
import torch
import yaml
from click.testing import CliRunner

from speechtok.cli.main import cli
from speechtok.pipelines.batching import resolve_device


def fake_gpus(monkeypatch, count: int) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)


def test_resolve_device_without_a_gpu(monkeypatch):
    fake_gpus(monkeypatch, 0)
    assert resolve_device("auto") == torch.device("cpu") and resolve_device("cpu") == torch.device("cpu")
    for asked in ("cuda", "cuda:0"):
        with pytest.raises(ValueError, match=f"--device {asked}: no CUDA device is visible"):
            resolve_device(asked)


def test_resolve_device_takes_this_ranks_gpu(monkeypatch):
    fake_gpus(monkeypatch, 4)
    monkeypatch.setenv("LOCAL_RANK", "2")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert resolve_device("auto") == resolve_device("cuda") == torch.device("cuda", 2)
    with pytest.raises(ValueError, match="every rank of a node would use that one GPU"):
        resolve_device("cuda:1")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")  # one rank per node (or no torchrun): an index is fine
    assert resolve_device("cuda:3") == torch.device("cuda", 3)
    with pytest.raises(ValueError, match="--device cuda:4: there are 4 CUDA devices"):
        resolve_device("cuda:4")


def acoustic_config(tmp_path) -> str:
    shards = tmp_path / "shards"
    shards.mkdir()
    cards = {"semantic": {"type": "semantic", "k": 12}, "encodec": {"type": "codec", "n_q": 2}}
    (shards / "manifest.json").write_text(json.dumps({"tokenizers": cards}))
    path = tmp_path / "acoustic.yaml"
    path.write_text(yaml.safe_dump({"output": str(tmp_path / "run"), "shards": [str(shards)],
                                    "codec": "encodec"}))
    return str(path)


def test_the_device_reaches_the_trainer(tmp_path, monkeypatch):
    import speechtok.lm.acoustic_train as acoustic_train

    seen = []
    monkeypatch.setattr(acoustic_train, "train_acoustic",
                        lambda run, stop_after, device: seen.append(device) or {})
    r = CliRunner().invoke(cli, ["acoustic", "train", acoustic_config(tmp_path), "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert seen == ["cpu"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_a_missing_gpu_is_one_line_naming_device(tmp_path, monkeypatch):
    import speechtok.lm.acoustic_train as acoustic_train

    monkeypatch.setattr(acoustic_train, "train_acoustic", lambda *a, **k: pytest.fail("trainer started"))
    r = CliRunner().invoke(cli, ["acoustic", "train", acoustic_config(tmp_path), "--device", "cuda"])
    assert r.exit_code == 2
    assert r.output.strip().splitlines() == ["error: --device cuda: no CUDA device is visible here (use "
                                             "--device cpu or auto)"]
