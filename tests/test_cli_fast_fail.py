"""Trainer configs fail fast (issue 16, items 5, 6, 12): a typo, a wrong type, a missing value or a bad
command-line value in `tok lm train`, `tok acoustic train` or `tok vocoder train` is one line naming the
file (or option) and the key, exit 2, before torch or transformers is imported."""

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]

# runs every case in one fresh interpreter, then says which heavy modules got imported
RUNNER = """
import contextlib, io, json, sys
from speechtok.cli.main import cli
results = {}
for name, argv in json.loads(sys.argv[1]).items():
    out, err, code = io.StringIO(), io.StringIO(), 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            cli.main(argv, prog_name="tok")
        except SystemExit as e:
            code = e.code
    results[name] = {"code": code, "stdout": out.getvalue(), "stderr": err.getvalue()}
heavy = [m for m in ("torch", "transformers", "torchaudio") if m in sys.modules]
print(json.dumps({"results": results, "heavy": heavy}))
"""


def run_fresh(cases: dict[str, list[str]]) -> tuple[dict, list[str]]:
    r = subprocess.run([sys.executable, "-c", RUNNER, json.dumps(cases)], capture_output=True, text=True,
                       timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert r.returncode == 0, r.stderr[-2000:]
    report = json.loads(r.stdout.strip().splitlines()[-1])
    return report["results"], report["heavy"]


def write(path: Path, cfg: dict) -> str:
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def test_trainer_config_mistakes_fail_in_one_line_before_torch(tmp_path):
    shards, model = tmp_path / "shards", tmp_path / "model"  # exist: the mistakes are what is checked
    shards.mkdir(), model.mkdir()
    cards = {"semantic": {"type": "semantic", "k": 12}, "encodec": {"type": "codec", "n_q": 2}}
    (shards / "manifest.json").write_text(json.dumps({"tokenizers": cards}))  # what the stream checks read
    lm = {"model": str(model), "output": "run", "data": {"shards": [str(shards)]}}
    acoustic = {"output": "run", "shards": [str(shards)], "codec": "encodec"}
    vocoder = {"kind": "vocos", "shards": str(shards), "output": "run"}
    acoustic_no_codec = {k: v for k, v in acoustic.items() if k != "codec"}
    vocoder_no_kind = {k: v for k, v in vocoder.items() if k != "kind"}
    c = {  # case: (argv, what the one error line says after 'error: ')
        "lm typo": (["lm", "train", write(tmp_path / "lm1.yaml", {**lm, "trian": {}})],
                    f"{tmp_path / 'lm1.yaml'}: trian: unknown key"),
        "lm type": (["lm", "train", write(tmp_path / "lm2.yaml", {**lm, "train": {"steps": "many"}})],
                    f"{tmp_path / 'lm2.yaml'}: train.steps: expected an integer, not 'many'"),
        "lm missing": (["lm", "train", write(tmp_path / "lm3.yaml", {"output": "run"})],
                       f"{tmp_path / 'lm3.yaml'}: model: missing (required)"),
        "lm no vocab": (["lm", "train", write(tmp_path / "lm4.yaml", lm)],
                        f"{tmp_path / 'lm4.yaml'}: model: {model / 'speech_vocab.json'}: not a speechtok LM"),
        "acoustic typo": (["acoustic", "train", write(tmp_path / "a1.yaml", {**acoustic, "n_qq": 4})],
                          f"{tmp_path / 'a1.yaml'}: n_qq: unknown key"),
        "acoustic type": (["acoustic", "train",
                           write(tmp_path / "a2.yaml", {**acoustic, "train": {"batch_size": "eight"}})],
                          f"{tmp_path / 'a2.yaml'}: train.batch_size: expected an integer, not 'eight'"),
        "acoustic missing": (["acoustic", "train",
                              write(tmp_path / "a3.yaml", acoustic_no_codec)],
                             f"{tmp_path / 'a3.yaml'}: codec: missing (required)"),
        "acoustic codec": (["acoustic", "train", write(tmp_path / "a4.yaml", {**acoustic, "codec": "dac"})],
                           f"{tmp_path / 'a4.yaml'}: no codec 'dac' in the manifest (it has ['encodec', "),
        "acoustic n_q": (["acoustic", "train", write(tmp_path / "a5.yaml", {**acoustic, "n_q": 8})],
                         f"{tmp_path / 'a5.yaml'}: encodec has 2 codebooks in the shards, 8 asked"),
        "vocoder typo": (["vocoder", "train", "--config",
                          write(tmp_path / "v1.yaml", {**vocoder, "stepz": 5})],
                         f"{tmp_path / 'v1.yaml'}: stepz: unknown key"),
        "vocoder type": (["vocoder", "train", "--config",
                          write(tmp_path / "v2.yaml", {**vocoder, "segment_seconds": "long"})],
                         f"{tmp_path / 'v2.yaml'}: segment_seconds: expected a number, not 'long'"),
        "vocoder missing": (["vocoder", "train", "--config",
                             write(tmp_path / "v3.yaml", vocoder_no_kind)],
                            f"{tmp_path / 'v3.yaml'}: kind: missing (required)"),
        "vocoder codec": (["vocoder", "train", "--kind", "vocos", "--shards", str(shards), "-o", "run",
                           "--codec", "nope"],
                          "command line: --codec: 'mel' or a codec stream of the shards (['encodec', "
                          "'semantic'])"),
        "vocoder segment": (["vocoder", "train", "--config", str(tmp_path / "v3.yaml"), "--kind", "vocos",
                             "--segment-seconds", "0"],
                            "command line: --segment-seconds: must be more than 0, not 0.0"),
        "vocoder lr": (["vocoder", "train", "--config", write(tmp_path / "v4.yaml", {**vocoder, "lr": 0})],
                       f"{tmp_path / 'v4.yaml'}: lr: must be more than 0, not 0"),
        "vocoder override": (["vocoder", "train", "--config", str(tmp_path / "v3.yaml"), "--kind", "vocos",
                              "--batch-size", "0"],
                             "command line: --batch-size: must be at least 1, not 0"),
    }
    clicked = {  # bad command-line values that click itself refuses (exit 2, before the command runs)
        "lm stop-after": ["lm", "train", str(tmp_path / "lm4.yaml"), "--stop-after", "0"],
        "vocoder steps": ["vocoder", "train", "--config", str(tmp_path / "v3.yaml"), "--steps", "x"],
        "lm device": ["lm", "train", str(tmp_path / "lm4.yaml"), "--device", "gpu"],
        "align device": ["align", str(tmp_path), "-o", str(tmp_path / "a.jsonl"), "--device", "auto"],
    }
    printed = {f"{t} print-config": [t, "train", "--print-config"] for t in ("lm", "acoustic", "vocoder")}
    results, heavy = run_fresh({**{k: v[0] for k, v in c.items()}, **clicked, **printed})
    assert heavy == [], f"imported before the config was checked: {heavy}"
    for name, (_, says) in c.items():
        r = results[name]
        assert r["code"] == 2, (name, r)
        lines = r["stderr"].splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"error: {says}"), (name, r["stderr"])
    for name in clicked:
        assert results[name]["code"] == 2 and "Invalid value" in results[name]["stderr"], results[name]
    for name in printed:
        r = results[name]
        assert r["code"] == 0 and "# output: required" in r["stdout"], (name, r)
        assert len(r["stdout"].splitlines()) >= 15
