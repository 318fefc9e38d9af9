"""The first hour with speechtok (issue 16): numbers that mean what they say across sample rates, short
and odd inputs that fail in one line, offline model paths that fail fast, readable `tok show`, portable
artefacts."""

import re
import shutil

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

from speechtok.audio import resample
from speechtok.cli.main import cli


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def voiced_32k(seconds: float = 1.5, sr: int = 32000) -> np.ndarray:
    """A speech-like broadband signal: a gliding 120-160 Hz glottal pulse train through moving resonances,
    plus a little noise, with energy up to 16 kHz."""
    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * sr)) / sr
    f0 = 140 + 20 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / sr
    x = sum(np.sin(h * phase) / h * (1 + np.cos(2 * np.pi * (h * f0 / 900 + t))) for h in range(1, 100)
            if h * 165 < sr / 2)
    x = x + 0.05 * rng.standard_normal(len(t))
    return (0.2 * x / np.abs(x).max()).astype(np.float32)


# ---- 1. MCD across sample rates ---------------------------------------------------------------------------

def test_mcd_of_a_lower_rate_copy_is_small():
    from speechtok.eval.resynth import resynth_metrics

    sr = 32000
    ref = voiced_32k()
    copy16 = resample(ref, sr, 16000)
    same = resynth_metrics(ref, sr, copy16, 16000)
    noise = np.random.default_rng(1).standard_normal(len(copy16)).astype(np.float32) * 0.05
    bad = resynth_metrics(ref, sr, noise, 16000)
    assert same["analysis_sample_rate"] == 16000
    assert same["mcd_db"] < 1.5, same["mcd_db"]
    assert bad["mcd_db"] > 3 * max(same["mcd_db"], 1.0)
    assert same["voicing_error"] < 0.05 and same["stoi"] > 0.99


# ---- 2. short hypotheses, negative zero, plot warnings, labelled heat maps ---------------------------------

def test_a_2_5_ms_hypothesis_gets_defined_metrics(tmp_path):
    ref, hyp = tmp_path / "ref", tmp_path / "hyp"
    ref.mkdir(), hyp.mkdir()
    x = voiced_32k(1.0)
    sf.write(ref / "a.wav", x, 32000)
    sf.write(hyp / "a.wav", resample(x, 32000, 16000)[:40], 16000)  # 2.5 ms
    r = run("eval", "resynth", ref, hyp, "-o", tmp_path / "rep", "--plots", 1)
    assert r.exit_code == 0, r.output
    import json

    row = json.loads((tmp_path / "rep" / "report.json").read_text())["per_file"][0]
    assert row["stoi"] is None and "too short" in row["stoi_error"] and row["pesq_wb"] is None
    assert row["mcd_db"] > 0 and (tmp_path / "rep" / "spectrogram_01.png").exists()


def test_negative_zero_is_printed_as_zero():
    from speechtok.eval.report import fmt

    assert fmt(-0.0) == "0.000" and fmt(-1e-7) == "0.000" and fmt(-0.0004, 3) == "0.000"
    assert fmt(-0.001) == "-0.001" and fmt(-1234.5, 1) == "-1,234.5" and fmt(0.0) == "0.000"


def test_plots_of_silence_warn_nothing(tmp_path):
    import warnings

    from speechtok.eval.report import plot_phone_unit, plot_spectrograms

    x = np.zeros(16000, np.float32)
    x[8000:] = np.random.default_rng(0).standard_normal(8000) * 0.1  # half digital silence
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plot_spectrograms(x, x[:40], 16000, tmp_path / "s.png", "t")
        plot_phone_unit(np.eye(3, 5, dtype=np.int64), ["a", "b", "c"], tmp_path / "p.png", "p(phone | unit)")
    assert (tmp_path / "s.png").stat().st_size > 0 and (tmp_path / "p.png").stat().st_size > 0


# ---- 7. missing / empty audio, hub ids without network -----------------------------------------------------

def test_missing_and_empty_audio_say_so(tmp_path):
    from speechtok.audio import AudioError, audio_info, read_audio

    (tmp_path / "empty.wav").touch()
    for read in (audio_info, read_audio):
        with pytest.raises(AudioError, match="^file not found$"):
            read(str(tmp_path / "missing.wav"))
        with pytest.raises(AudioError, match=r"^empty file \(0 bytes\)$"):
            read(str(tmp_path / "empty.wav"))


def test_hub_id_offline_fails_fast_with_a_hint(tmp_path, monkeypatch, tiny_ssl):
    import time

    from speechtok.hub import ModelUnavailable, check_model_ref, hub_reachable

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    local = tiny_ssl("hubert")
    assert check_model_ref(local) == local  # a local directory is fine offline
    with pytest.raises(ModelUnavailable, match="no such directory"):
        check_model_ref(tmp_path / "nope" / "model")
    t = time.perf_counter()
    r = run("encode", tmp_path, "-t", "encodec:someone/not-cached-model", "-o", tmp_path / "o", "-q")
    assert time.perf_counter() - t < 10
    assert r.exit_code != 0
    assert ("someone/not-cached-model: not a local directory and offline mode is set (HF_HUB_OFFLINE=1)"
            in r.output), r.output
    assert "pass a local directory" in r.output and len(r.output.strip().splitlines()) <= 2
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # the discard port: connection refused at once
    hub_reachable.cache_clear()
    with pytest.raises(ModelUnavailable, match="not a local directory and the hub is unreachable"):
        check_model_ref("someone/not-cached-model")


# ---- 10. tok show ------------------------------------------------------------------------------------------

def test_show_prints_shapes_and_first_values(units_and_codec_shards):
    import json

    from speechtok import read_shards

    shards = units_and_codec_shards / "shards"
    sample = next(iter(read_shards(shards)))
    codes = next(v for v in sample.values() if getattr(v, "ndim", 0) == 2 and v.shape[1] > 100)
    short = run("show", shards, "--num", 1)
    assert short.exit_code == 0, short.output
    assert len(short.output.splitlines()) == 2 + sum(hasattr(v, "dtype") for v in sample.values())
    assert f"{codes.dtype} {list(codes.shape)} [{codes[0, :20].tolist()} ...;" in short.output
    assert len(short.output) < 2000
    full = run("show", shards, "-n", 1, "--full")
    assert json.dumps(codes.tolist()) in full.output and len(full.output) > len(short.output) + codes.size


# ---- 11. portable artefacts --------------------------------------------------------------------------------

def test_a_tree_moved_together_keeps_working(speech_corpus, tiny_ssl, tiny_codec, tmp_path, monkeypatch):
    import json
    import shutil

    from speechtok.tokenizers.semantic import SemanticTokenizer

    proj = tmp_path / "proj"
    proj.mkdir()
    shutil.copytree(tiny_ssl("hubert"), proj / "models" / "ssl")
    shutil.copytree(tiny_codec("encodec"), proj / "models" / "codec")
    monkeypatch.chdir(proj)  # the user types paths relative to the working directory
    r = run("train-kmeans", speech_corpus, "-m", "models/ssl", "--layer", 2, "-k", 4, "-o", "tok", "-q")
    assert r.exit_code == 0, r.output
    r = run("encode", speech_corpus, "-t", "tok", "-t", "encodec:models/codec:nq=1", "-o", "shards", "-q")
    assert r.exit_code == 0, r.output
    cards = json.loads((proj / "shards" / "manifest.json").read_text())["tokenizers"]
    assert cards["encodec"]["model"] == "../models/codec"
    assert json.loads((proj / "tok" / "tokenizer.json").read_text())["features"]["model"] == "../models/ssl"

    moved = tmp_path / "elsewhere" / "moved"
    moved.parent.mkdir()
    shutil.move(proj, moved)
    monkeypatch.chdir(tmp_path)
    assert not (tmp_path / "models").exists() and not (tmp_path / "tok").exists()
    tok = SemanticTokenizer.from_dir(moved / "tok")
    assert tok.features.model_ref == str((moved / "models" / "ssl").resolve())
    r = run("decode", moved / "shards", "-o", tmp_path / "wavs")
    assert r.exit_code == 0, r.output
    assert len(list((tmp_path / "wavs").glob("*.wav"))) == 8

    shutil.rmtree(moved / "models" / "codec")  # a missing model is named
    r = run("decode", moved / "shards", "-o", tmp_path / "wavs2")
    assert r.exit_code != 0 and "codec: no such directory" in r.output and str(moved) in r.output, r.output


def test_portable_card_round_trip(tmp_path):
    from speechtok.hub import portable_card, resolve_card

    (tmp_path / "models" / "codec").mkdir(parents=True)
    card = {"codec_card": {"kind": "dac", "model": str(tmp_path / "models" / "codec")},
            "hub": {"model": "org/x"}}
    stored = portable_card(card, tmp_path / "run" / "acoustic")
    assert stored["codec_card"]["model"] == "../../models/codec" and stored["hub"] == {"model": "org/x"}
    assert resolve_card(stored, tmp_path / "run" / "acoustic") == card
    assert resolve_card(portable_card(card, tmp_path),
                        tmp_path)["codec_card"]["model"] == card["codec_card"]["model"]


# ---- 8. tok generate --voice: lengths checked first --------------------------------------------------------

@pytest.mark.parametrize("pattern", ["delay", "coarse_fine", "valle"])
def test_acoustic_positions_match_the_model(pattern):
    import torch

    from speechtok.lm.acoustic import AcousticConfig, acoustic_model
    from speechtok.pipelines.generate import acoustic_positions

    cfg = AcousticConfig(k=6, n_q=3, codebook_size=8, pattern=pattern, n_coarse=1, dim=16, layers=1, heads=2,
                         max_len=40)
    torch.manual_seed(0)
    model = acoustic_model(cfg).eval()
    units = np.arange(5) % 6
    frames = next(t for t in range(1, 40) if acoustic_positions(cfg, 5, t + 1) > cfg.max_len)
    assert acoustic_positions(cfg, 5, frames) <= cfg.max_len
    assert model.generate(units, frames, temperature=0).shape == (3, frames)  # the oracle: the model itself
    with pytest.raises(ValueError, match="exceeds max_len"):
        model.generate(units, frames + 1, temperature=0)


def test_voice_prompt_is_fitted_before_generation(tmp_path):
    import math as m

    from speechtok.lm.acoustic import AcousticConfig, AcousticModel
    from speechtok.lm.generate import SamplingOptions
    from speechtok.pipelines.generate import acoustic_positions, fit_voice_prompt, generate_speech

    cfg = AcousticConfig(k=6, n_q=8, codebook_size=8, dim=16, layers=1, heads=2, max_len=908,
                         semantic_rate=50, codec_rate=75, frames_per_unit=1.5)
    fits = fit_voice_prompt(cfg, 100, None)
    assert 0 < fits < 8

    def need(seconds):  # an undeduplicated prompt of `seconds` and a continuation of 100 units
        return acoustic_positions(cfg, m.ceil(seconds * 50) + 100, m.ceil(seconds * 75) + round(100 * 1.5))

    assert need(fits) <= cfg.max_len < need(fits + 0.3)
    assert fit_voice_prompt(cfg, 100, 1.0) == 1.0
    with pytest.raises(ValueError, match=f"at most {fits:g} s fit"):
        fit_voice_prompt(cfg, 100, 8.0)
    with pytest.raises(ValueError, match="lower --max-units"):
        fit_voice_prompt(cfg, 900, None)

    AcousticModel(cfg).save(tmp_path / "acoustic")
    voice = tmp_path / "voice.wav"
    sf.write(voice, np.zeros(8 * 16000, np.float32), 16000)
    with pytest.raises(ValueError, match="a 8 s voice prompt"):  # before the LM (which does not exist) loads
        generate_speech(tmp_path / "no-lm", tmp_path / "acoustic", None, voice=str(voice),
                        opts=SamplingOptions(max_new_tokens=100), voice_seconds=8.0)


def test_training_shows_progress_resume_point_and_final_model(units_and_codec_shards, tmp_path):
    """`tok acoustic train` (the trainers share training/loop.Metrics): a line per `log_every` steps with
    step/steps, loss, rate and ETA; a resumed run names its checkpoint; a finished one its final model."""
    import yaml

    cfg = {"output": str(tmp_path / "run"), "shards": [str(units_and_codec_shards / "shards")],
           "codec": "encodec",
           "model": {"dim": 16, "layers": 1, "heads": 2},
           "train": {"batch_size": 2, "steps": 4, "warmup": 1, "crop_seconds": 0.5, "log_every": 2,
                     "save_every": 100, "precision": "fp32", "shuffle_buffer": 2}}
    path = tmp_path / "a.yaml"
    path.write_text(yaml.safe_dump(cfg))
    first = run("acoustic", "train", path, "--stop-after", 2)
    assert first.exit_code == 0, first.output
    line = r"^step 2/4 loss [\d.]+ .*\| [\d.e+-]+ steps/s ETA \d+:\d\d:\d\d$"
    assert re.search(line, first.output, re.M), first.output
    assert "resuming" not in first.output and "final model" not in first.output
    second = run("acoustic", "train", path)
    assert second.exit_code == 0, second.output
    ckpt = tmp_path / "run" / "checkpoints" / "step_0000002"
    assert f"resuming from step 2 (checkpoint {ckpt})" in second.output
    assert re.search(r"^step 4/4 loss .* ETA 0:00:00$", second.output, re.M), second.output
    assert f"final model: {tmp_path / 'run' / 'final'}" in second.output


def test_lm_eval_settings_without_eval_shards_are_a_config_error(units_and_codec_shards, tmp_path):
    import yaml

    (tmp_path / "model").mkdir()
    cfg = {"model": "model", "output": "run", "data": {"shards": [str(units_and_codec_shards / "shards")]},
           "train": {"eval_every": 10}}
    path = tmp_path / "lm.yaml"
    path.write_text(yaml.safe_dump(cfg))
    r = run("lm", "train", path)
    assert r.exit_code == 2
    assert r.output.strip().splitlines() == \
        [f"error: {path}: train.eval_every: set, but data.eval_shards is empty (nothing to evaluate)"], \
        r.output


def test_decode_and_eval_resynth_show_a_progress_bar(units_and_codec_shards, tmp_path):
    import json

    shards = units_and_codec_shards / "shards"
    n = json.loads((shards / "manifest.json").read_text())["num_utterances"]
    r = run("decode", shards, "-o", tmp_path / "wav")
    assert r.exit_code == 0, r.output
    assert re.search(rf"decode: 100%.*{n}/{n} \[.*(utt/s|s/utt)\]", r.stderr), r.stderr
    quiet = run("decode", shards, "-o", tmp_path / "wav2", "-q")
    assert quiet.exit_code == 0 and quiet.stderr == "", quiet.stderr
    ref, hyp = tmp_path / "ref", tmp_path / "hyp"  # two files keep the metrics quick
    ref.mkdir(), hyp.mkdir()
    for p in sorted((tmp_path / "wav").glob("*.wav"))[:2]:
        shutil.copy(p, ref / p.name), shutil.copy(tmp_path / "wav2" / p.name, hyp / p.name)
    r = run("eval", "resynth", ref, hyp, "-o", tmp_path / "rep", "--plots", 0)
    assert r.exit_code == 0, r.output
    assert re.search(r"resynth: 100%.*2/2 \[.*(file/s|s/file)\]", r.stderr), r.stderr
    quiet = run("eval", "resynth", ref, hyp, "-o", tmp_path / "rep2", "--plots", 0, "-q")
    assert quiet.exit_code == 0 and "resynth:" not in quiet.stderr, quiet.stderr


@pytest.mark.parametrize("command", ["lm", "acoustic", "vocoder"])
def test_print_config_lists_every_default_and_loads_back(command, units_and_codec_shards, tmp_path):
    """`tok X train --print-config`: YAML of every key with its default; with the required keys filled in,
    it loads through the trainer's own loader into the same config as the required keys alone."""
    import yaml

    from speechtok.lm.acoustic_config import load_acoustic_config
    from speechtok.lm.config import load_config
    from speechtok.vocoders.train_config import load_vocoder_config

    shards = str(units_and_codec_shards / "shards")
    (tmp_path / "model").mkdir()
    required, load = {
        "lm": ({"model": "model", "output": "run", "data": {"shards": [shards], "eval_shards": [shards]}},
               load_config),
        "acoustic": ({"output": "run", "shards": [shards], "codec": "encodec"}, load_acoustic_config),
        "vocoder": ({"kind": "vocos", "shards": shards, "output": "run"}, load_vocoder_config)}[command]
    r = run(command, "train", "--print-config")
    assert r.exit_code == 0, r.output
    printed = yaml.safe_load(r.output)
    assert len(r.output.splitlines()) >= 15 and "# output: required" in r.output

    def merged(a: dict, b: dict) -> dict:
        return {**a, **{k: merged(a[k], v) if isinstance(v, dict) and k in a else v for k, v in b.items()}}

    (tmp_path / "full.yaml").write_text(yaml.safe_dump(merged(printed, required)))
    (tmp_path / "bare.yaml").write_text(yaml.safe_dump(required))
    assert load(tmp_path / "full.yaml") == load(tmp_path / "bare.yaml")


def test_vocoder_train_takes_the_codec_stream_as_codec(units_and_codec_shards, tmp_path):
    shards = units_and_codec_shards / "shards"
    r = run("vocoder", "train", "--kind", "vocos", "--codec", "nope", "--shards", shards,
            "-o", tmp_path / "v")
    assert r.exit_code == 2 and "a codec stream of the shards (['encodec'" in r.output, r.output
    r = run("vocoder", "train", "--kind", "vocos", "--codec", "encodec", "--features", "mel",
            "--shards", shards, "-o", tmp_path / "v")
    assert r.exit_code == 2 and "disagree" in r.output, r.output
    assert "--features" not in run("vocoder", "train", "--help").output  # the old name still works, unlisted


def test_two_semantic_tokenizers_share_one_encode_pass(speech_corpus, units_and_codec_shards, tmp_path):
    """`KM_DIR:name=NAME`: two MFCC tokenizers of different k in one `tok encode`, each in its own field."""
    import json

    from speechtok import read_shards

    k12 = units_and_codec_shards / "km"
    r = run("train-kmeans", speech_corpus, "-m", "mfcc", "-k", 5, "-o", tmp_path / "km5", "-q")
    assert r.exit_code == 0, r.output
    r = run("encode", speech_corpus, "-t", f"{k12}:name=mfcc12", "-t", f"{tmp_path / 'km5'}:name=mfcc5",
            "-o", tmp_path / "shards", "-q")
    assert r.exit_code == 0, r.output
    manifest = json.loads((tmp_path / "shards" / "manifest.json").read_text())
    assert {n: c["k"] for n, c in manifest["tokenizers"].items()} == {"mfcc12": 12, "mfcc5": 5}
    samples = list(read_shards(tmp_path / "shards"))
    assert samples and all(s["mfcc12"].max() < 12 and s["mfcc5"].max() < 5 for s in samples)
    assert max(s["mfcc12"].max() for s in samples) >= 5  # the streams differ: not one k twice
    same = run("encode", speech_corpus, "-t", k12, "-t", tmp_path / "km5", "-o", tmp_path / "s2", "-q")
    assert same.exit_code == 2 and "name them with ':name=NAME' (DIR:name=NAME" in same.output, same.output


def test_a_bad_tokenizer_spec_fails_in_one_line_before_loading(speech_corpus, tmp_path):
    r = run("encode", speech_corpus, "-t", "encodec:some/model:nq=abc", "-o", tmp_path / "s")
    assert r.exit_code == 2, r.output
    assert r.output == "error: 'encodec:some/model:nq=abc': nq='abc' is not a number\n", r.output
    r = run("encode", speech_corpus, "-t", tmp_path / "nokm", "-o", tmp_path / "s")
    assert r.exit_code == 2
    assert r.output.startswith(f"error: {tmp_path / 'nokm'}: neither a tokenizer directory"), r.output
    assert not (tmp_path / "s").exists()
    (tmp_path / "lm").mkdir()
    r = run("generate", "--lm", tmp_path / "lm", "--units-only", "-o", tmp_path / "u.npy")
    assert r.exit_code == 2
    assert f"{tmp_path / 'lm' / 'speech_vocab.json'}: not a speechtok LM directory" in r.output
    r = run("generate", "--lm", tmp_path / "lm", "--units-only", "--top-p", 1.5, "-o", tmp_path / "u.npy")
    assert r.exit_code == 2 and "--top-p" in r.output
