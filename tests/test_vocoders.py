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
from speechtok.pipelines.resynth import units_to_audio
from speechtok.vocoders.hifigan import UnitHiFiGAN, UnitHiFiGANConfig, original_config
from speechtok.unit_stream import unit_stream
from speechtok.vocoders.mel import hz_to_mel, mel_filterbank, mel_to_hz
from speechtok.vocoders.train import load_vocoder
from speechtok.vocoders.vocos import Vocos

from numerics import EPS, assert_close_to_scale, assert_log_features_close
from speech import linked_workdir

TINY_HIFIGAN = {"embed_dim": 32, "upsample_initial_channel": 32, "resblock_kernel_sizes": [3],
                "resblock_dilation_sizes": [[1, 3]]}
TINY_VOCOS = {"dim": 48, "intermediate_dim": 96, "num_layers": 2}
FIXTURES = Path(__file__).parent / "fixtures"


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def shards(units_and_codec_shards, tmp_path_factory):
    return linked_workdir(units_and_codec_shards, tmp_path_factory.mktemp("voc"))


def config(root, name, **kw) -> str:
    cfg = {"shards": str(root / "shards"), "output": str(root / name), "batch_size": 4,
           "segment_seconds": 0.3,
           "lr": 2e-3, "log_every": 1, "save_every": 1000, "sample_every": 1000, "disc_channels": 4, **kw}
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
    r = run("vocoder", "train", "--config", config(shards, "vocos_mel", kind="vocos", sample_rate=16000,
                                                   steps=100,
                                                   adv_start=90, model={**TINY_VOCOS, "n_fft": 256,
                                                                        "hop_length": 64, "n_mels": 32}))
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
    r = CliRunner().invoke(cli, ["resynth", str(audio), "--vocoder", str(hifigan / "final"), "-o",
                                 str(tmp_path / "c.wav")])
    assert r.exit_code != 0 and "semantic tokenizer" in r.output

    # tiny discriminators
    r = run("vocoder", "train", "--config", config(shards, "vocos_codec", kind="vocos"),
            "--features", "encodec", "--steps", 3, "--batch-size", 2, "--segment-seconds", 0.3)
    assert r.exit_code == 0, r.output
    r = run("resynth", audio, "-t", f"encodec:{shards / 'codec'}:nq=2", "--vocoder",
            shards / "vocos_codec" / "final", "-o", tmp_path / "d.wav")
    assert r.exit_code == 0, r.output
    wav, sr = sf.read(tmp_path / "d.wav")
    assert sr == 24000 and len(wav) == int(np.ceil(seconds * 24000 / 320)) * 320


def reference_vocos(name: str, directory: Path) -> tuple[Vocos, dict, np.lib.npyio.NpzFile]:
    """tests/fixtures/vocos_*.npz (made by the `vocos` package: tests/reference/make_vocos_fixture.py)
    written out in the released layout (config.yaml + pytorch_model.bin) and loaded from there."""
    z = np.load(FIXTURES / f"vocos_{name}.npz")
    (directory / "config.yaml").write_text(str(z["config"]))
    sd = {k.split("/", 1)[1]: torch.from_numpy(z[k]) for k in z.files if k.startswith("state_dict/")}
    torch.save(sd, directory / "pytorch_model.bin")
    return Vocos.from_pretrained(directory), sd, z


def test_vocos_mel_matches_the_vocos_package(tmp_path):
    v, sd, z = reference_vocos("mel", tmp_path)
    audio = torch.from_numpy(z["audio"])
    assert z["output"].std() > 0.01 and z["features"].std() > 0.5  # the comparison cannot pass on silence
    with torch.no_grad():
        assert_log_features_close(v.feature_extractor(audio), z["features"], axis=1, what="log mel")
        out = v(audio).numpy()
    assert out.shape == z["output"].shape == (1, 12000 // 256 * 256)  # (frames − 1) × hop, as the original
    assert_close_to_scale(out, z["output"], what="audio")
    # our own filterbank (not the loaded buffer) is torchaudio's: a weight (f_{j+2} − f) / (f_{j+2} − f_{j+1})
    # moves by a few ulps of f over the band's width, ill-conditioned for narrow bands at high f (scalar
    # kernels measured 2.9 ε·f/Δf, 1.1e-5); bound 16 ε·f/Δf
    fb = mel_filterbank(513, 0, 12000, 100, 24000).double()
    top = float(hz_to_mel(torch.tensor(12000.0, dtype=torch.float64), "htk"))
    f = mel_to_hz(torch.linspace(0.0, top, 102, dtype=torch.float64), "htk")
    width = torch.minimum(f[1:-1] - f[:-2], f[2:] - f[1:-1])
    reference = sd["feature_extractor.mel_spec.mel_scale.fb"].double()
    assert ((fb - reference).abs() <= 16 * EPS * f[2:] / width).all()
    # strict: an unknown key is an error; the EnCodec encoder the original's EncodecFeatures holds is not
    torch.save({**sd, "backbone.extra": torch.zeros(1)}, tmp_path / "pytorch_model.bin")
    with pytest.raises(RuntimeError, match="backbone.extra"):
        Vocos.from_pretrained(tmp_path)


def test_vocos_encodec_matches_the_vocos_package(tmp_path):
    v, sd, z = reference_vocos("encodec", tmp_path)
    codes = torch.from_numpy(z["codes"])
    assert len(np.unique(z["codes"])) >= 8 and z["output_8"].std() > 0.01
    for n_q in (8, 2):  # 6 kbps = bandwidth id 2, 1.5 kbps = bandwidth id 0 (AdaLayerNorm rows)
        with torch.no_grad():
            assert_close_to_scale(v.feature_extractor(codes[:n_q]), z[f"features_{n_q}"], what="features")
            out = v.codes_to_audio(codes[:n_q]).numpy()
        assert out.shape == z[f"output_{n_q}"].shape == (1, 24 * 320)
        assert_close_to_scale(out, z[f"output_{n_q}"], what="audio")
    torch.save({**sd, "feature_extractor.encodec.encoder.model.0.conv.conv.weight": torch.zeros(32, 1, 7)},
               tmp_path / "pytorch_model.bin")
    assert isinstance(Vocos.from_pretrained(tmp_path), Vocos)  # vocos' own state_dict() holds the EnCodec too


def test_mel_filterbank_matches_the_htk_and_slaney_definitions():
    fb = mel_filterbank(513, 0, 12000, 100, 24000)
    assert fb.shape == (513, 100) and (fb >= 0).all()
    peaks = fb.argmax(0).float() * 24000 / 1024  # each filter peaks at its centre frequency
    centres = 700 * (10 ** (torch.linspace(0, 2595 * np.log10(1 + 12000 / 700), 102)[1:-1] / 2595) - 1)
    assert torch.allclose(peaks, centres, atol=24000 / 1024)
    slaney = mel_filterbank(513, 0, 8000, 80, 22050, norm="slaney", scale="slaney")
    # area-normalised above 1 kHz
    assert torch.allclose(slaney.sum(0)[40:], slaney.sum(0)[40:].mean(), rtol=0.2)


@pytest.mark.parametrize("name", ["spk", "dur"])
def test_original_unit_hifigan_checkpoint_matches_the_reference_code(name):
    """tests/fixtures/codehifigan_*: g_00000000 + config.json written by speech-resynthesis' own
    CodeGenerator / DurationCodeGenerator (tests/reference/make_codehifigan_fixture.py), loaded unchanged."""
    d = FIXTURES / f"codehifigan_{name}"
    io = np.load(d / "io.npz")
    code, ref = torch.from_numpy(io["code"]), io["audio"]
    assert len(np.unique(io["code"])) >= 8 and ref.std() > 0.02  # the comparison cannot pass on silence
    voc = load_vocoder(d)
    assert isinstance(voc, UnitHiFiGAN) and voc.cfg.k == 20 and voc.cfg.sample_rate == 16000
    if name == "spk":
        assert voc.cfg.num_speakers == 200
        with torch.no_grad():
            out = voc(code, torch.from_numpy(io["speaker"][:, 0]))[0].numpy()
    else:
        assert voc.cfg.dedup and voc.cfg.duration_hidden == 24
        with torch.no_grad():
            log_d = voc.duration(voc.unit_emb(code).transpose(1, 2)).numpy()
        assert_close_to_scale(log_d, io["log_duration"], what="log durations")
        assert len(set(np.round(np.expm1(log_d[0])).tolist())) >= 3  # several distinct durations
        out = units_to_audio(voc, io["code"][0])  # the resynth path: dedup → predicted durations → audio
    assert out.shape == ref.shape
    assert_close_to_scale(out, ref, what="audio")


def test_original_unit_hifigan_config_we_cannot_run_is_one_error():
    h = json.loads((FIXTURES / "codehifigan_spk" / "config.json").read_text())
    assert original_config(h, "c.json").num_speakers == 200
    with pytest.raises(ValueError, match="c.json: 'f0' is set"):
        original_config({**h, "f0": True}, "c.json")
    with pytest.raises(ValueError, match="c.json: model_in_dim 16"):
        original_config({**h, "model_in_dim": 16}, "c.json")


def test_duration_loss_counts_only_whole_runs_inside_the_segment():
    model = UnitHiFiGAN(UnitHiFiGANConfig(k=10, embed_dim=8, dedup=True,
                                          **{k: v for k, v in TINY_HIFIGAN.items() if k != "embed_dim"}))
    with torch.no_grad():  # the predictor says log(1 + d) = 1 for every unit
        model.duration.out.weight.zero_()
        model.duration.out.bias.fill_(1.0)
    frames = torch.tensor([[1, 1, 2, 2, 2, 3, 3, 3, 3, 4],  # whole runs: 2 (3 frames), 3 (4 frames)
                           [5, 5, 5, 5, 5, 6, 6, 6, 6, 6],  # two runs, both cut by the edges: none
                           [7, 8, 8, 9, 9, 9, 9, 9, 9, 9]])  # whole run: 8 (2 frames)
    expected = np.mean([(1 - np.log(1 + d)) ** 2 for d in (3, 4, 2)])
    assert model.duration_loss(frames).item() == pytest.approx(expected, rel=1e-6)
    assert model.duration_loss(frames[1:2]).item() == 0.0


def test_unit_hifigan_weights_start_from_normal_001():
    """HiFi-GAN's init: N(0, 0.01) for the upsampling, residual and output convolutions (not conv_pre)."""
    torch.manual_seed(0)
    model = UnitHiFiGAN(UnitHiFiGANConfig(k=10, embed_dim=64, upsample_initial_channel=64))
    for name in ("ups.0", "resblocks.0.convs1.0", "resblocks.14.convs2.2", "conv_post"):
        assert model.get_submodule(name).weight.std().item() == pytest.approx(0.01, rel=0.3), name
    assert model.conv_pre.weight.std().item() > 0.02  # PyTorch's default, as the original


def test_gan_losses_and_mels_match_the_original_code():
    """tests/fixtures/gan_losses.npz: jik876/hifi-gan's and vocos' own loss functions, mels and an MRD
    sub-discriminator on fixed inputs (tests/reference/make_gan_loss_fixture.py)."""
    from speechtok.vocoders.discriminators import ResolutionDiscriminator
    from speechtok.vocoders.losses import (HiFiGANLoss, VocosLoss, feature_matching_loss,
                                           hinge_discriminator_loss, hinge_generator_loss,
                                           lsgan_discriminator_loss, lsgan_generator_loss)

    z = np.load(FIXTURES / "gan_losses.npz")
    t = {k: torch.from_numpy(z[k]) for k in z.files}
    real = [(t[f"score_real_{i}"], [t[f"fmap_real_{i}_{j}"] for j in range(2)]) for i in range(3)]
    fake = [(t[f"score_fake_{i}"], [t[f"fmap_fake_{i}_{j}"] for j in range(2)]) for i in range(3)]
    close = dict(rtol=1e-6, atol=0)
    np.testing.assert_allclose(lsgan_discriminator_loss(real, fake), z["hifigan_d_loss"], **close)
    np.testing.assert_allclose(lsgan_generator_loss(fake), z["hifigan_g_loss"], **close)
    np.testing.assert_allclose(2 * feature_matching_loss(real, fake), z["hifigan_fm_loss"], **close)
    np.testing.assert_allclose(hinge_discriminator_loss(real, fake), z["vocos_d_loss"][0], **close)
    np.testing.assert_allclose(hinge_generator_loss(fake), z["vocos_g_loss"][0], **close)
    np.testing.assert_allclose(feature_matching_loss(real, fake), z["vocos_fm_loss"][0], **close)

    audio_real, audio_fake = t["audio_real"], t["audio_fake"]
    hifigan = HiFiGANLoss(16000, ch=4)
    assert_log_features_close(hifigan.log_mel(audio_real), z["hifigan_log_mel"], axis=1, what="log mel")
    _, mel_l1 = VocosLoss(16000, ch=4).generator_loss(audio_real, audio_fake, adversarial=False)
    np.testing.assert_allclose(mel_l1, z["vocos_mel_loss"], rtol=1e-5)

    mrd = ResolutionDiscriminator(512, ch=4)
    sd = {k.split("/", 1)[1]: v for k, v in t.items() if k.startswith("mrd_state_dict/")}
    mrd.load_state_dict({k: v for k, v in sd.items() if k != "spec_fn.window"})  # torchaudio's window buffer
    with torch.no_grad():
        score, fmaps = mrd(audio_real[:1, :2400])
    assert_close_to_scale(score, z["mrd_score"].reshape(1, -1), what="MRD score")
    assert len(fmaps) == 21 and z["mrd_score"].std() > 0.01
    for i, f in enumerate(fmaps):  # per-element rtol failed on small values beside large ones (0.97 of it)
        assert_close_to_scale(f, z[f"mrd_fmap_{i}"], what=f"fmap {i}")


def test_discriminators_are_laid_out_as_the_papers():
    """HiFi-GAN's MSD (jik876 models.py) at its own width: the seven convolutions, the first scale spectral-
    normed and the others weight-normed, AvgPool1d(4, 2, padding=2) between scales; MPD periods 2-11."""
    from speechtok.vocoders.discriminators import (MultiPeriodDiscriminator, MultiScaleDiscriminator,
                                                   PeriodDiscriminator, ScaleDiscriminator)
    from speechtok.vocoders.losses import HiFiGANLoss, VocosLoss, vocoder_loss

    layout = [(1, 128, 15, 1, 1, 7), (128, 128, 41, 2, 4, 20), (128, 256, 41, 2, 16, 20),
              (256, 512, 41, 4, 16, 20),
              (512, 1024, 41, 4, 16, 20), (1024, 1024, 41, 1, 16, 20), (1024, 1024, 5, 1, 1, 2)]
    assert [(c.in_channels, c.out_channels, c.kernel_size[0], c.stride[0], c.groups, c.padding[0])
            for c in ScaleDiscriminator(128).convs] == layout
    msd = MultiScaleDiscriminator(16)
    norms = [type(d.convs[0].parametrizations.weight[0]).__name__ for d in msd.discriminators]
    assert norms == ["_SpectralNorm", "_WeightNorm", "_WeightNorm"]
    pool = msd.meanpool
    assert (pool.kernel_size, pool.stride, pool.padding) == ((4,), (2,), (2,))
    scores = msd(torch.randn(1, 4000))
    assert [s.shape[1] for s, _ in scores] == [63, 32, 16]  # the raw, ×2 and ×4 pooled waveform (stride 64)
    assert [c.out_channels for c in PeriodDiscriminator(2, 32).convs] == [32, 128, 512, 1024, 1024]
    assert [d.period for d in MultiPeriodDiscriminator(4).discriminators] == [2, 3, 5, 7, 11]
    hifigan, vocos = HiFiGANLoss(16000, ch=4), VocosLoss(24000, ch=4)
    assert sorted(n for n, _ in hifigan.named_children()) == ["mel", "mpd", "msd"]
    assert sorted(n for n, _ in vocos.named_children()) == ["mel", "mpd", "mrd"]
    assert [d.window_length for d in vocos.mrd.discriminators] == [2048, 1024, 512]
    assert (hifigan.mel_weight, hifigan.fm_weight, vocos.mel_weight, vocos.fm_weight) == (45, 2, 45, 1)
    assert (vocos.mrd_weight == 0.1 and vocoder_loss("vocos", 24000, codec_features=True,
                                                     ch=4).mrd_weight == 1.0)


def test_resynth_takes_an_original_unit_hifigan_directory(shards, tmp_path):
    """`tok resynth --vocoder DIR` with speech-resynthesis' g_00000000 + config.json as they are (k = 20,
    100 Hz); units of another rate are refused, not slowed down."""
    centroids = np.random.default_rng(0).normal(size=(20, 39)).astype(np.float32)
    np.save(tmp_path / "c.npy", centroids)
    assert run("import-kmeans", tmp_path / "c.npy", "-m", "mfcc", "-o", tmp_path / "km20").exit_code == 0
    corpus = Path(json.loads((shards / "shards" / "manifest.json").read_text())["corpus"])
    audio = corpus.parent / json.loads(corpus.read_text().splitlines()[0])["path"]
    r = run("resynth", audio, "-t", tmp_path / "km20", "--vocoder", FIXTURES / "codehifigan_spk",
            "-o", tmp_path / "o.wav")
    assert r.exit_code == 0, r.output
    wav, sr = sf.read(tmp_path / "o.wav")
    frames = (round(sf.info(audio).duration * 16000) - 400) // 160 + 1  # MFCC frames, one unit each
    assert sr == 16000 and len(wav) == frames * 160 and np.std(wav) > 0.01
    r = CliRunner().invoke(cli, ["resynth", str(audio), "-t", str(tmp_path / "km20"), "--vocoder",
                                 str(FIXTURES / "codehifigan_dur"), "-o", str(tmp_path / "p.wav")])
    assert r.exit_code != 0 and "makes 100 Hz units, but" in r.output and "trained on 50 Hz units" in r.output


def tiny_vocos(padding: str) -> Vocos:
    """A random-init mel Vocos, the published layout at a tenth of the width (3 ConvNeXt layers)."""
    torch.manual_seed(0)
    return Vocos({"feature_extractor": {"class_path": "MelSpectrogramFeatures",
                                        "init_args": {"n_fft": 256, "hop_length": 64, "n_mels": 32}},
                  "backbone": {"class_path": "VocosBackbone",
                               "init_args": {"input_channels": 32, "dim": 64, "intermediate_dim": 128,
                                             "num_layers": 3}},
                  "head": {"class_path": "ISTFTHead", "init_args": {"dim": 64, "n_fft": 256, "hop_length": 64,
                                                                    "padding": padding}}}).eval()


@pytest.mark.parametrize("padding", ["center", "same"])
def test_vocos_batch_rows_equal_each_row_alone(padding):
    # uneven rows padded in one batch: the backbone zeroes each row's padding before every convolution and
    # the ISTFT overlap-adds (and normalises by the window envelope of) each row's own frames, so a row is
    # what it gives alone up to float32 rounding (measured ≤ 7 ε·scale). Without the mask the last ~9
    # frames (3 per k=7 conv) and the last n_fft/2 samples (the envelope) differ at the scale of the audio.
    v = tiny_vocos(padding)
    torch.manual_seed(1)
    feats = [torch.randn(32, n) for n in (40, 17, 33)]
    with torch.inference_mode():
        rows = v.decode_batch(feats)
        for f, row in zip(feats, rows):
            assert_close_to_scale(row, v.decode(f[None])[0], what=f"{padding} row of {f.shape[1]} frames")
        unmasked = v.decode(nn_pad(feats))[1, : len(rows[1])]
    assert (unmasked - rows[1]).abs().max() > 1e-3 * rows[1].abs().max()  # the mask is what makes them equal


def nn_pad(feats: list[torch.Tensor]) -> torch.Tensor:
    return torch.nn.utils.rnn.pad_sequence([f.T for f in feats], batch_first=True).transpose(1, 2)


def test_vocoder_bf16_stays_within_its_rounding_of_fp32():
    # bf16 keeps 8 significant bits: each GEMM / conv rounds its input and weight to a relative error ≤ 2^-9
    # (RMS 2^-9/√3 for uniform rounding); n such ops in series, errors independent, add in quadrature to a
    # waveform error of RMS √(2n/3)·2^-9 of the waveform's RMS (tiny Vocos: n = 1 + 3·3 + 1 = 11 → 0.0053;
    # measured 0.0052). Bound: 4× that, for the network's gain on its errors (the head's exp and phase).
    from speechtok.vocoders.precision import vocoder_precision

    v = tiny_vocos("center")
    torch.manual_seed(1)
    mel = torch.randn(2, 32, 50)
    with torch.inference_mode():
        fp32 = v.decode(mel)
        with vocoder_precision("bf16", "cpu"):
            bf16 = v.decode(mel).float()
        with vocoder_precision("fp32", "cpu"):
            assert torch.equal(v.decode(mel), fp32)
    n = 1 + 3 * 3 + 1
    rel = float((bf16 - fp32).square().mean().sqrt() / fp32.square().mean().sqrt())
    assert 0 < rel <= 4 * (2 * n / 3) ** 0.5 * 2 ** -9, rel  # > 0: bf16 did run
    with pytest.raises(ValueError, match="tf32 needs a CUDA device"):
        with vocoder_precision("tf32", "cpu"):
            pass


def test_resynth_vocoder_precision_option(tmp_path):
    # the option reaches the vocoder: bf16 changes the written waveform, within the bf16 bound above (and
    # 16-bit PCM's step); tf32 on a CPU is one usage error before anything is written
    tiny_vocos("center").save_pretrained(tmp_path / "vocos")
    t = np.arange(16000) / 16000
    sf.write(tmp_path / "in.wav", (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), 16000)
    outs = {}
    for precision in ("fp32", "bf16"):
        r = run("resynth", tmp_path / "in.wav", "--vocoder", tmp_path / "vocos", "--vocoder-precision",
                precision, "-o", tmp_path / f"{precision}.wav", "--device", "cpu")
        assert r.exit_code == 0, r.output
        outs[precision] = sf.read(tmp_path / f"{precision}.wav", dtype="float64")[0]
    diff = outs["bf16"] - outs["fp32"]
    rms = np.sqrt(np.mean(outs["fp32"] ** 2))
    assert 0 < np.sqrt(np.mean(diff ** 2)) <= 4 * (22 / 3) ** 0.5 * 2 ** -9 * rms + 2 ** -15
    r = run("resynth", tmp_path / "in.wav", "--vocoder", tmp_path / "vocos", "--vocoder-precision", "tf32",
            "-o", tmp_path / "tf32.wav", "--device", "cpu")
    assert r.exit_code == 2 and r.output.strip().count("\n") == 0 and "tf32 needs a CUDA device" in r.output
    assert not (tmp_path / "tf32.wav").exists()


def test_resynthesis_decode_batch_equals_decode_alone(tmp_path):
    # the `tok resynth` route (mel → Vocos) on several uneven utterances in one batch: each as `decode` alone
    from speechtok.pipelines.resynth import Resynthesis

    tiny_vocos("same").save_pretrained(tmp_path / "vocos")
    route = Resynthesis(None, str(tmp_path / "vocos"), torch.device("cpu"))
    rng = np.random.default_rng(0)
    waves = [0.1 * rng.standard_normal(n).astype(np.float32) for n in (4000, 9000, 6400)]
    tokens = [route.encode(w, 24000) for w in waves]
    for row, t in zip(route.decode_batch(tokens), tokens):
        assert_close_to_scale(row, route.decode(t), what="batched row")


@pytest.mark.parametrize("kind, seconds, samples", [("unit-hifigan", 0.001, 160), ("vocos", 0.03, 512)])
def test_too_short_segments_are_one_config_line(shards, kind, seconds, samples):
    """A segment shorter than the mel loss' and discriminators' padding was a padding RuntimeError
    traceback at the first step: one line naming segment_seconds, exit 2, no run folder left."""
    extra = {"model": {"embed_dim": 16, "upsample_initial_channel": 16}} if kind == "unit-hifigan" else {}
    path = config(shards, f"short_{kind}", kind=kind, segment_seconds=seconds, steps=1, **extra)
    r = CliRunner().invoke(cli, ["vocoder", "train", "--config", path])
    assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1, r.output
    assert f"segment_seconds: {seconds:g} s is {samples} samples" in r.output, r.output
    assert not (shards / f"short_{kind}").exists()
