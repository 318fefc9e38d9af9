"""UTMOS22 strong against tarepan/SpeechMOS' own model (tests/fixtures/utmos_reference.npz, written by
tests/reference/make_utmos_fixture.py with parameters from a seeded rule, imported from it), the checkpoint
loader's one-line errors, and `--utmos` in the reports."""

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from reference.make_utmos_fixture import seeded_weights  # the fixture's weight rule (tests/ is on sys.path)
from speechtok.eval.utmos import UTMOS

FIXTURE = Path(__file__).parent / "fixtures" / "utmos_reference.npz"


@pytest.fixture(scope="module")
def reference():
    z = np.load(FIXTURE)
    shapes = {k: tuple(v) for k, v in json.loads(str(z["shapes"])).items()}
    assert list(shapes) == list(z["keys"]) and len(shapes) > 200
    return z, shapes


@pytest.fixture(scope="module")
def checkpoint(reference, tmp_path_factory) -> Path:
    """The seeded weights saved as SpeechMOS saves its checkpoint: a plain state dict (380 MB, removed after
    the module)."""
    path = tmp_path_factory.mktemp("utmos") / "utmos22_strong_step7459_v1.pt"
    torch.save(seeded_weights(reference[1]), path)
    yield path
    path.unlink()


def test_utmos_matches_speechmos(reference, checkpoint):
    """Same state dict (key names and shapes: loaded strictly), same SSL features, per-frame scores and MOS
    within 1e-4 on an odd (49) and an even (64) frame count; the two inputs' scores differ by far more."""
    z, shapes = reference
    net = UTMOS(checkpoint).net
    scores = []
    with torch.inference_mode():
        for i in range(2):
            x = torch.from_numpy(z[f"input_{i}"])[None]
            ssl, frames = net.forward_frames(x)
            assert ssl.shape[1] == len(z[f"frame_scores_{i}"]) == (49, 64)[i]
            # 1e-4 on O(1) values: measured ≤ 8.5e-6 (≤ 21 ε·scale) over scalar/AVX2/AVX-512 kernels, MKL_CBWR
            # and 1-2 threads against the fixture's machine: ≥ 12× margin (see tests/numerics.py)
            np.testing.assert_allclose(ssl[0, :8].numpy(), z[f"ssl_head_{i}"], atol=1e-4)
            np.testing.assert_allclose(ssl[0, -8:].numpy(), z[f"ssl_tail_{i}"], atol=1e-4)
            np.testing.assert_allclose(frames[0].numpy(), z[f"frame_scores_{i}"], atol=1e-4)
            scores.append(float(net(x)[0]))
            assert scores[-1] == pytest.approx(float(z[f"score_{i}"][0]), abs=1e-4)
    assert abs(scores[0] - scores[1]) > 0.01  # a constant model cannot pass


def test_utmos_resamples_as_speechmos(reference, checkpoint):
    """A 24 kHz input goes through torchaudio's sinc resampler inside SpeechMOS' model; ours matches it
    (libsoxr instead moved this score by 7e-3)."""
    z, _ = reference
    assert UTMOS(checkpoint).score(z["input_24k"], 24000) == pytest.approx(float(z["score_24k"][0]), abs=1e-4)


def test_utmos_short_audio_is_one_line_and_tf32_is_off_only_while_scoring(checkpoint):
    """Under 25 ms (400 samples at 16 kHz, the receptive field of wav2vec 2.0's convolutions): a one-line
    ValueError, not a RuntimeError from inside the model; exactly 400 scores. TF32 is off during the forward
    (GPU scores as the CPU's) and the caller's settings come back after, also after an error."""
    utmos = UTMOS(checkpoint)
    seen = []
    utmos.net.register_forward_pre_hook(
        lambda *_: seen.append((torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)))
    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
        noise = 0.1 * np.random.default_rng(0).standard_normal(400).astype(np.float32)
        for wav, sr in ((noise[:399], 16000), (noise[:200], 16000), (noise[:599], 24000)):
            with pytest.raises(ValueError, match=r"ms of audio: shorter than 25 ms") as e:
                utmos.score(wav, sr)
            assert "\n" not in str(e.value)
        assert np.isfinite(utmos.score(noise, 16000)) and seen == [(False, False)]
        assert (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32) == (True, True)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before


def test_utmos_checkpoint_errors_are_one_line(tmp_path, reference):
    _, shapes = reference
    with pytest.raises(ValueError, match=r"nothing.pt: no UTMOS checkpoint there"):
        UTMOS(tmp_path / "nothing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"junk.pt: not a torch state dict"):
        UTMOS(tmp_path / "junk.pt")
    torch.save({"judge_emb": torch.zeros(1, 64), "blstm.extra": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(ValueError) as e:
        UTMOS(tmp_path / "other.pt")
    msg = str(e.value)
    assert "\n" not in msg and "other.pt: not a UTMOS22 strong state dict" in msg
    assert f"{len(shapes) - 1} missing" in msg and "1 unexpected (e.g. blstm.extra)" in msg
    assert "judge_emb: (1, 64), want (1, 128)" in msg


def test_eval_resynth_reports_utmos(reference, checkpoint, tmp_path):
    """`tok eval resynth --utmos`: each file's UTMOS and its reference's are SpeechMOS' scores of the two
    fixture inputs; the report names the backend and the checkpoint's sha256."""
    import soundfile as sf
    from click.testing import CliRunner

    from speechtok.cli.main import cli

    z, _ = reference
    for d, i in (("ref", 0), ("hyp", 1)):
        (tmp_path / d).mkdir()
        sf.write(tmp_path / d / "a.wav", z[f"input_{i}"], 16000, subtype="FLOAT")
    r = CliRunner().invoke(cli, ["eval", "resynth", str(tmp_path / "ref"), str(tmp_path / "hyp"), "--plots",
                                 "0", "--utmos", str(checkpoint), "-o", str(tmp_path / "out")])
    assert r.exit_code == 0, r.output
    rep = json.loads((tmp_path / "out" / "report.json").read_text())
    (row,) = rep["per_file"]
    assert row["utmos"] == pytest.approx(float(z["score_1"][0]), abs=1e-4)
    assert row["ref_utmos"] == pytest.approx(float(z["score_0"][0]), abs=1e-4)
    assert rep["utmos"] == {"backend": "utmos22_strong", "model": UTMOS.model,
                            "model_sha256": hashlib.sha256(checkpoint.read_bytes()).hexdigest()}
    assert "UTMOS" in r.output and "utmos22_strong" in (tmp_path / "out" / "report.md").read_text()


def test_short_audio_is_an_error_line_and_the_run_goes_on(reference, checkpoint, tmp_path):
    """A 200-sample file among normal ones: `tok eval generated` and `tok eval resynth` with --utmos write the
    report, one error line per unreadable file (naming it), the other files' scores and the short pair's
    other metrics; exit 1 as for any per-item error."""
    import soundfile as sf
    from click.testing import CliRunner

    from speechtok.cli.main import cli

    z, _ = reference
    short = 0.1 * np.random.default_rng(0).standard_normal(200).astype(np.float32)
    for d, i in (("ref", 0), ("hyp", 1)):
        (tmp_path / d).mkdir()
        sf.write(tmp_path / d / "a.wav", z[f"input_{i}"], 16000, subtype="FLOAT")
        sf.write(tmp_path / d / "b.wav", short, 16000, subtype="FLOAT")
    r = CliRunner().invoke(cli, ["eval", "generated", str(tmp_path / "hyp"), "--utmos", str(checkpoint),
                                 "-o", str(tmp_path / "gen")])
    assert r.exit_code == 1, r.output
    errors = [x for x in r.output.splitlines() if x.startswith("error:")]
    assert len(errors) == 1 and str(tmp_path / "hyp" / "b.wav") in errors[0], r.output
    assert "shorter than 25 ms" in errors[0]
    rep = json.loads((tmp_path / "gen" / "report.json").read_text())
    a, b = rep["per_file"]
    assert a["utmos"] == pytest.approx(float(z["score_1"][0]), abs=1e-4) and "utmos" not in b
    assert b["seconds"] == 200 / 16000

    r = CliRunner().invoke(cli, ["eval", "resynth", str(tmp_path / "ref"), str(tmp_path / "hyp"),
                                 "--plots", "0", "--utmos", str(checkpoint), "-o", str(tmp_path / "rs")])
    assert r.exit_code == 1, r.output
    errors = [x for x in r.output.splitlines() if x.startswith("error:")]
    assert len(errors) == 2 and all("UTMOS: 12.5 ms of audio: shorter than 25 ms" in e for e in errors)
    assert {str(tmp_path / d / "b.wav") for d in ("ref", "hyp")} == {e.split(": ")[1] for e in errors}
    rep = json.loads((tmp_path / "rs" / "report.json").read_text())
    a, b = rep["per_file"]
    assert a["utmos"] == pytest.approx(float(z["score_1"][0]), abs=1e-4)
    assert b["id"] == "b" and b["utmos"] is None and b["ref_utmos"] is None and np.isfinite(b["si_sdr_db"])


def test_eval_generated_reports_utmos(tmp_path, monkeypatch):
    """`tok eval generated --utmos` scores each continuation (a stand-in model: MOS = seconds)."""
    import soundfile as sf
    from click.testing import CliRunner

    import speechtok.eval.utmos as utmos_mod
    from speechtok.cli.main import cli

    class SecondsMOS:
        backend, model, model_sha256 = "utmos22_strong", "stand-in", "0" * 64

        def __init__(self, path, device):
            self.path = path

        def score(self, wav, sr):
            return len(wav) / sr

    monkeypatch.setattr(utmos_mod, "UTMOS", SecondsMOS)
    (tmp_path / "gen").mkdir()
    for name, seconds in (("a", 0.5), ("b", 0.25)):
        sf.write(tmp_path / "gen" / f"{name}.wav", np.zeros(int(16000 * seconds), np.float32), 16000)
    (tmp_path / "ckpt.pt").write_bytes(b"")
    r = CliRunner().invoke(cli, ["eval", "generated", str(tmp_path / "gen"), "--utmos",
                                 str(tmp_path / "ckpt.pt"), "-o", str(tmp_path / "out")])
    assert r.exit_code == 0, r.output
    rep = json.loads((tmp_path / "out" / "report.json").read_text())
    assert [x["utmos"] for x in rep["per_file"]] == [0.5, 0.25] and rep["mean"]["utmos"] == 0.375
    assert rep["utmos"]["backend"] == "utmos22_strong"
