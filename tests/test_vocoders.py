"""Vocoders: tiny unit HiFi-GAN and Vocos (mel and codec-token) trained on synthetic speech on CPU, the
original Vocos checkpoint layout, exact resume, and `tok resynth` through each."""

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml
from click.testing import CliRunner

from speechtok.cli.main import cli
from speechtok.unit_stream import unit_stream
from speechtok.vocoders.mel import mel_filterbank
from speechtok.vocoders.vocos import Vocos

from speech import linked_workdir

TINY_HIFIGAN = {"embed_dim": 32, "upsample_initial_channel": 32, "resblock_kernel_sizes": [3],
                "resblock_dilation_sizes": [[1, 3]]}
TINY_VOCOS = {"dim": 48, "intermediate_dim": 96, "num_layers": 2}


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def shards(units_and_codec_shards, tmp_path_factory):
    return linked_workdir(units_and_codec_shards, tmp_path_factory.mktemp("voc"))


def config(root, name, **kw) -> str:
    cfg = {"shards": str(root / "shards"), "output": str(root / name), "batch_size": 4, "segment_seconds": 0.3,
           "lr": 2e-3, "log_every": 1, "save_every": 1000, "sample_every": 1000, "disc_channels": 8, **kw}
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def mel_curve(out) -> list[float]:
    return [x["mel_loss"] for x in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())]


@pytest.fixture(scope="module")
def hifigan(shards):
    r = run("vocoder", "train", "--config", config(shards, "hifigan", kind="unit-hifigan", model=TINY_HIFIGAN,
                                                   steps=100, adv_start=90, sample_every=100, speakers=True))
    assert r.exit_code == 0, r.output
    return shards / "hifigan"


@pytest.fixture(scope="module")
def vocos_mel(shards):
    r = run("vocoder", "train", "--config", config(shards, "vocos_mel", kind="vocos", sample_rate=16000, steps=100,
                                                   adv_start=90, model={**TINY_VOCOS, "n_fft": 256, "hop_length": 64,
                                                                        "n_mels": 32}))
    assert r.exit_code == 0, r.output
    return shards / "vocos_mel"


def test_unit_hifigan_learns(hifigan):
    curve = mel_curve(hifigan)
    assert len(curve) == 100 and np.mean(curve[-10:]) < 0.8 * np.mean(curve[:10])
    samples = hifigan / "samples" / "step_0000100"
    assert (samples / "mel.png").stat().st_size > 1000
    orig, sr = sf.read(samples / "original.wav")
    resy, _ = sf.read(samples / "resynthesized.wav")
    assert sr == 16000 and len(orig) == len(resy) == 30 * 160
    assert list((hifigan / "tensorboard").glob("events.*"))
    cfg = json.loads((hifigan / "final" / "vocoder.json").read_text())
    assert cfg["speakers"] == ["alice", "bob", "carol", "dave"] and cfg["upsample_rates"] == [5, 4, 4, 2]
    card = json.loads((hifigan.parent / "km" / "tokenizer.json").read_text())
    assert cfg["unit_stream"] == unit_stream(card, dedup=False)  # the units it was trained on (issue 14)


def test_vocos_mel_learns(vocos_mel):
    curve = mel_curve(vocos_mel)
    assert np.mean(curve[-10:]) < 0.8 * np.mean(curve[:10])
    v = Vocos.from_pretrained(vocos_mel / "final")
    wav = torch.randn(1, 16000) * 0.1
    assert v(wav).shape == (1, 16000)


def test_vocoder_training_resumes_exactly(shards):
    args = dict(kind="unit-hifigan", model=TINY_HIFIGAN, steps=6, adv_start=2, dedup=True)
    assert run("vocoder", "train", "--config", config(shards, "ref", **args)).exit_code == 0
    cut = config(shards, "cut", **args)
    assert run("vocoder", "train", "--config", cut, "--stop-after", 3).exit_code == 0
    assert run("vocoder", "train", "--config", cut).exit_code == 0
    assert mel_curve(shards / "cut") == mel_curve(shards / "ref")


def test_resynth_through_each_vocoder(hifigan, vocos_mel, shards, tmp_path):
    corpus = Path(json.loads((shards / "shards" / "manifest.json").read_text())["corpus"])
    audio = corpus.parent / json.loads(corpus.read_text().splitlines()[0])["path"]
    seconds = sf.info(audio).duration
    r = run("resynth", audio, "-t", shards / "km", "--vocoder", hifigan / "final", "-o", tmp_path / "a.wav")
    assert r.exit_code == 0, r.output
    wav, sr = sf.read(tmp_path / "a.wav")
    frames = (round(seconds * 16000) - 400) // 160 + 1
    assert sr == 16000 and len(wav) == frames * 160
    r = run("resynth", audio, "--vocoder", vocos_mel / "final", "-o", tmp_path / "b.wav")
    assert r.exit_code == 0, r.output
    wav, sr = sf.read(tmp_path / "b.wav")
    assert sr == 16000 and len(wav) == round(seconds * 16000) // 64 * 64
    r = CliRunner().invoke(cli, ["resynth", str(audio), "--vocoder", str(hifigan / "final"), "-o", str(tmp_path / "c.wav")])
    assert r.exit_code != 0 and "semantic tokenizer" in r.output

    r = run("vocoder", "train", "--kind", "vocos", "--shards", shards / "shards", "-o", shards / "vocos_codec",
            "--features", "encodec", "--steps", 3, "--batch-size", 2, "--segment-seconds", 0.3)
    assert r.exit_code == 0, r.output
    r = run("resynth", audio, "-t", f"encodec:{shards / 'codec'}:nq=2", "--vocoder", shards / "vocos_codec" / "final",
            "-o", tmp_path / "d.wav")
    assert r.exit_code == 0, r.output
    wav, sr = sf.read(tmp_path / "d.wav")
    assert sr == 24000 and len(wav) == int(np.ceil(seconds * 24000 / 320)) * 320


def original_state_dict(config: dict) -> dict:
    """Random tensors under the parameter names and shapes of the original Vocos code."""
    fe, bb, hd = (config[k]["init_args"] for k in ("feature_extractor", "backbone", "head"))
    dim, inter = bb["dim"], bb["intermediate_dim"]
    sd = {}
    if "n_mels" in fe:
        sd["feature_extractor.mel_spec.spectrogram.window"] = torch.hann_window(fe["n_fft"])
        sd["feature_extractor.mel_spec.mel_scale.fb"] = torch.rand(fe["n_fft"] // 2 + 1, fe["n_mels"])
    else:
        n_q = int(max(fe["bandwidths"]) * 1000 / 750)
        sd["feature_extractor.codebook_weights"] = torch.randn(n_q * 1024, bb["input_channels"])
        sd["feature_extractor.encodec.encoder.model.0.conv.conv.weight"] = torch.randn(32, 1, 7)  # ignored
    sd["backbone.embed.weight"], sd["backbone.embed.bias"] = torch.randn(dim, bb["input_channels"], 7) * 0.02, torch.zeros(dim)
    ada = bb.get("adanorm_num_embeddings")

    def norm(prefix):
        if ada:
            sd[prefix + ".scale.weight"], sd[prefix + ".shift.weight"] = torch.ones(ada, dim), torch.zeros(ada, dim)
        else:
            sd[prefix + ".weight"], sd[prefix + ".bias"] = torch.ones(dim), torch.zeros(dim)

    norm("backbone.norm")
    for i in range(bb["num_layers"]):
        p = f"backbone.convnext.{i}"
        sd[p + ".dwconv.weight"], sd[p + ".dwconv.bias"] = torch.randn(dim, 1, 7) * 0.02, torch.zeros(dim)
        norm(p + ".norm")
        sd[p + ".pwconv1.weight"], sd[p + ".pwconv1.bias"] = torch.randn(inter, dim) * 0.02, torch.zeros(inter)
        sd[p + ".pwconv2.weight"], sd[p + ".pwconv2.bias"] = torch.randn(dim, inter) * 0.02, torch.zeros(dim)
        sd[p + ".gamma"] = torch.full((dim,), 1 / bb["num_layers"])
    sd["backbone.final_layer_norm.weight"], sd["backbone.final_layer_norm.bias"] = torch.ones(dim), torch.zeros(dim)
    sd["head.out.weight"], sd["head.out.bias"] = torch.randn(hd["n_fft"] + 2, dim) * 0.02, torch.zeros(hd["n_fft"] + 2)
    sd["head.istft.window"] = torch.hann_window(hd["n_fft"])
    return sd


ORIGINAL_MEL = {  # vocos-mel-24khz's config.yaml, with a smaller backbone
    "feature_extractor": {"class_path": "vocos.feature_extractors.MelSpectrogramFeatures",
                          "init_args": {"sample_rate": 24000, "n_fft": 1024, "hop_length": 256, "n_mels": 100,
                                        "padding": "center"}},
    "backbone": {"class_path": "vocos.models.VocosBackbone",
                 "init_args": {"input_channels": 100, "dim": 64, "intermediate_dim": 128, "num_layers": 2}},
    "head": {"class_path": "vocos.heads.ISTFTHead",
             "init_args": {"dim": 64, "n_fft": 1024, "hop_length": 256, "padding": "center"}}}
ORIGINAL_ENCODEC = {  # vocos-encodec-24khz's config.yaml, with a smaller backbone
    "feature_extractor": {"class_path": "vocos.feature_extractors.EncodecFeatures",
                          "init_args": {"encodec_model": "encodec_24khz", "bandwidths": [1.5, 3.0, 6.0, 12.0],
                                        "train_codebooks": False}},
    "backbone": {"class_path": "vocos.models.VocosBackbone",
                 "init_args": {"input_channels": 128, "dim": 64, "intermediate_dim": 128, "num_layers": 2,
                               "adanorm_num_embeddings": 4}},
    "head": {"class_path": "vocos.heads.ISTFTHead",
             "init_args": {"dim": 64, "n_fft": 1280, "hop_length": 320, "padding": "same"}}}


@pytest.mark.parametrize("config", [ORIGINAL_MEL, ORIGINAL_ENCODEC], ids=["mel", "encodec"])
def test_original_vocos_checkpoint_loads_and_runs(config, tmp_path):
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    sd = original_state_dict(config)
    torch.save(sd, tmp_path / "pytorch_model.bin")
    v = Vocos.from_pretrained(tmp_path)
    if "n_mels" in config["feature_extractor"]["init_args"]:
        torch.testing.assert_close(v.feature_extractor.mel_spec.mel_scale.fb, sd["feature_extractor.mel_spec.mel_scale.fb"])
        assert v(torch.randn(1, 24000) * 0.1).shape == (1, 24000 // 256 * 256)  # (frames - 1) × hop, as the original
    else:
        torch.testing.assert_close(v.feature_extractor.codebook_weights, sd["feature_extractor.codebook_weights"])
        codes = torch.randint(0, 1024, (8, 1, 75))  # 8 codebooks = 6 kbps = bandwidth id 2
        out = v.codes_to_audio(codes)
        assert out.shape == (1, 75 * 320)
        assert not torch.equal(out, v.codes_to_audio(codes[:2]))  # 1.5 kbps: other codebooks, other bandwidth id
    torch.save({**sd, "backbone.extra": torch.zeros(1)}, tmp_path / "pytorch_model.bin")
    with pytest.raises(RuntimeError, match="backbone.extra"):
        Vocos.from_pretrained(tmp_path)


def test_mel_filterbank_matches_the_htk_and_slaney_definitions():
    fb = mel_filterbank(513, 0, 12000, 100, 24000)
    assert fb.shape == (513, 100) and (fb >= 0).all()
    peaks = fb.argmax(0).float() * 24000 / 1024  # each filter peaks at its centre frequency
    centres = 700 * (10 ** (torch.linspace(0, 2595 * np.log10(1 + 12000 / 700), 102)[1:-1] / 2595) - 1)
    assert torch.allclose(peaks, centres, atol=24000 / 1024)
    slaney = mel_filterbank(513, 0, 8000, 80, 22050, norm="slaney", scale="slaney")
    assert torch.allclose(slaney.sum(0)[40:], slaney.sum(0)[40:].mean(), rtol=0.2)  # area-normalised above 1 kHz
