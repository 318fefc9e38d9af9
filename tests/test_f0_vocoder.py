"""F0-conditioned unit HiFi-GAN (issue 26 item 5): F0 input at the unit frames (hand-built alignment), the
generator hears it, `tok vocoder train` with `f0:` and `tok resynth --f0-from` (F0 transfer)."""

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml
from click.testing import CliRunner

from speechtok.checksums import write_checksums
from speechtok.cli.main import cli
from speechtok.vocoders.f0_input import F0_CHANNELS, F0_REFERENCE, at_unit_frames, f0_features, stretch
from speechtok.vocoders.hifigan import UnitHiFiGAN, UnitHiFiGANConfig


SIZES = dict(embed_dim=16, upsample_initial_channel=16, resblock_kernel_sizes=[3],
             resblock_dilation_sizes=[[1]])
TINY = dict(SIZES, upsample_rates=[5, 4, 4, 2], upsample_kernel_sizes=[10, 8, 8, 4])


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_f0_input_lines_up_with_the_unit_frames():
    """200 Hz F0 onto 50 Hz units: unit j reads F0 frame 4j + 2 (under its centre), unvoiced past the end."""
    f0 = np.arange(1, 13) * 10.0  # 10 .. 120 Hz, frame 6 unvoiced
    f0[6] = 0
    feats = at_unit_frames(f0_features(f0, "none"), 200.0, 50.0, 4)
    assert feats.shape == (F0_CHANNELS, 4)
    want = [np.log(30 / F0_REFERENCE), 0, np.log(110 / F0_REFERENCE), 0]
    np.testing.assert_allclose(feats[0], want, rtol=1e-6)
    np.testing.assert_array_equal(feats[1], [1, 0, 1, 0])
    same = f0_features(f0, "meanstd")
    np.testing.assert_array_equal(at_unit_frames(same, 50.0, 50.0, 12), same)  # same rate: frame for frame
    voiced = same[0][same[1] > 0]
    assert abs(voiced.mean()) < 1e-6 and abs(voiced.std() - 1) < 1e-6
    np.testing.assert_array_equal(stretch(np.arange(3.0)[None], 6), [[0, 0, 1, 1, 2, 2]])


def tiny_vocoder(f0: str = "f0") -> UnitHiFiGAN:
    """A tiny generator whose layers pass signal on: weight-norm gains 1.5 (a fresh one's N(0, 0.01)
    weights leave only the biases: its output hardly depends on any input)."""
    torch.manual_seed(0)
    voc = UnitHiFiGAN(UnitHiFiGANConfig(k=10, sample_rate=16000, frame_rate=100.0, f0=f0, **TINY)).eval()
    return with_gains(voc)


def with_gains(voc: UnitHiFiGAN) -> UnitHiFiGAN:
    with torch.no_grad():
        for name, p in voc.named_parameters():
            if name.endswith("original0"):
                p.fill_(1.5)
    return voc


def test_generator_output_depends_on_f0():
    voc = tiny_vocoder()
    units = torch.randint(0, 10, (1, 20), generator=torch.Generator().manual_seed(0))
    f0 = torch.from_numpy(f0_features(np.linspace(100, 200, 20), "none"))[None]
    with torch.no_grad():
        y = voc(units, None, f0)
        shifted = voc(units, None, f0 + torch.tensor([[0.5], [0.0]]))  # log-F0 up by 0.5: the pitch × 1.65
        unvoiced = voc(units, None)
        zeros = voc(units, None, torch.zeros(1, F0_CHANNELS, 20))
    assert y.shape == (1, 20 * 160) and torch.isfinite(unvoiced).all()
    torch.testing.assert_close(unvoiced, zeros, rtol=0, atol=0)  # no F0: all unvoiced
    heard = 0.01 * y.std()  # rounding moves the output by ~1e-7 of it
    assert (shifted - y).abs().mean() > heard and (unvoiced - y).abs().mean() > heard
    with pytest.raises(ValueError, match="F0 input"):
        voc(units, None, f0[:, :, :10])


def test_unconditioned_vocoder_is_unchanged(tmp_path):
    """No `f0`: the unit embedding alone feeds conv_pre; a vocoder.json written before the F0 fields loads."""
    voc = tiny_vocoder(f0="")
    assert voc.conv_pre.weight.shape[1] == 16
    voc.save(tmp_path)
    raw = json.loads((tmp_path / "vocoder.json").read_text())
    for key in ("f0", "f0_norm", "f0_card", "f0_source"):
        del raw[key]
    (tmp_path / "vocoder.json").write_text(json.dumps(raw))
    units = torch.arange(10)[None]
    with torch.no_grad():
        torch.testing.assert_close(UnitHiFiGAN.from_dir(tmp_path)(units), voc(units), rtol=0, atol=0)


def passing_signal(directory: Path) -> None:
    """The vocoder in `directory` with tiny_vocoder's gains (its checksums rewritten)."""
    with_gains(UnitHiFiGAN.from_dir(directory)).save(directory)
    write_checksums(directory)


@pytest.fixture(scope="module")
def f0_shards(speech_corpus, units_and_codec_shards, tmp_path_factory):
    """(MFCC units (100 Hz) and WORLD F0 (200 Hz) of two sentences by two voices in one shard folder, the
    units' k-means folder)."""
    root = tmp_path_factory.mktemp("f0voc")
    rows = [json.loads(line) for line in speech_corpus.read_text().splitlines()[::4]]
    corpus = root / "two.jsonl"
    corpus.write_text("".join(json.dumps({**r, "path": str(speech_corpus.parent / r["path"])}) + "\n"
                              for r in rows))
    km = units_and_codec_shards / "km"
    r = run("encode", corpus, "-t", km, "-t", "f0:world:rate=200", "-o", root / "shards", "-q")
    assert r.exit_code == 0, r.output
    return root / "shards", km


def test_f0_vocoder_trains_and_transfers_f0(f0_shards, tmp_path):
    shards, km = f0_shards
    cfg = {"kind": "unit-hifigan", "shards": str(shards), "output": str(tmp_path / "voc"), "f0": "f0",
           "batch_size": 2, "segment_seconds": 0.2, "steps": 2, "adv_start": 2, "log_every": 1,
           "disc_channels": 4, "model": SIZES}
    (tmp_path / "voc.yaml").write_text(yaml.safe_dump(cfg))
    r = run("vocoder", "train", "--config", tmp_path / "voc.yaml", "--f0", "pitch", "-o", tmp_path / "bad")
    assert r.exit_code == 2 and "--f0: 'pitch' is not an F0 stream" in r.output, r.output
    assert not (tmp_path / "bad").exists()
    r = run("vocoder", "train", "--config", tmp_path / "voc.yaml")
    assert r.exit_code == 0, r.output
    saved = json.loads((tmp_path / "voc" / "final" / "vocoder.json").read_text())
    assert saved["f0"] == "f0" and saved["f0_card"]["tracker"] == "world"
    assert saved["f0_card"]["frame_rate"] == 200 and saved["frame_rate"] == 100

    corpus = Path(json.loads((shards / "manifest.json").read_text())["corpus"])
    a, b = [tmp_path / f"{name}.wav" for name in "ab"]  # the first 1.5 s of each voice's sentence
    for path, line in zip((a, b), corpus.read_text().splitlines()):
        wav, sr = sf.read(json.loads(line)["path"])
        sf.write(path, wav[: int(1.5 * sr)], sr)
    voc = tmp_path / "voc" / "final"
    passing_signal(voc)  # 2 steps leave a near-constant output, which no input changes
    r = run("resynth", a, "-t", km, "--vocoder", voc, "-o", tmp_path / "own.wav")
    assert r.exit_code == 0 and "F0" in r.output, r.output
    r = run("resynth", a, "-t", km, "--vocoder", voc, "--f0-from", b, "-o", tmp_path / "moved.wav")
    assert r.exit_code == 0, r.output
    own, sr = sf.read(tmp_path / "own.wav")
    moved, _ = sf.read(tmp_path / "moved.wav")
    units = (round(sf.info(a).duration * 16000) - 400) // 160 + 1  # MFCC frames: 25 ms windows, 10 ms apart
    assert sr == 16000 and len(own) == len(moved) == units * 160
    assert np.abs(own - moved).mean() > 0.01 * own.std()  # B's contour is heard
    r = run("resynth", a, "-t", km, "--vocoder", voc, "--f0-from", km / "tokenizer.json", "-o",
            tmp_path / "x")
    assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1, r.output
    plain = tmp_path / "plain"
    UnitHiFiGAN(UnitHiFiGANConfig(k=12, sample_rate=16000, frame_rate=100.0, **TINY)).save(plain)
    write_checksums(plain)
    r = run("resynth", a, "-t", km, "--vocoder", plain, "--f0-from", b, "-o", tmp_path / "y.wav")
    assert r.exit_code == 2 and r.output.startswith("error: F0 transfer needs an F0-conditioned"), r.output


def test_f0_follows_units_expanded_by_predicted_durations():
    """A dedup F0 vocoder: the F0 input of the frame-level units is stretched onto the expanded runs."""
    from speechtok.pipelines.resynth import units_to_audio

    torch.manual_seed(0)
    voc = UnitHiFiGAN(UnitHiFiGANConfig(k=10, sample_rate=16000, frame_rate=100.0, f0="f0", dedup=True,
                                        **TINY))
    units = np.repeat([1, 4, 2, 7], [3, 2, 4, 1])
    f0 = f0_features(np.full(len(units), 120.0), "none")
    expanded = voc.expand(torch.tensor([[1, 4, 2, 7]])).shape[1]
    assert units_to_audio(voc.eval(), units, f0=f0).shape == (expanded * 160,)


def test_pitch_tokens_decode_to_the_expected_contour():
    """Known bins tokens → F0: token 0 unvoiced, token b the exp of bin b's median plus the level put back
    (`mean`: the speaker's log-F0 mean); the vocoder's input stretches the 50 Hz contour onto 100 Hz units
    (each pitch frame twice). The level: the named speaker's, else the mean over the card's speakers."""
    from speechtok.prosody.f0_tokenizer import F0Tokenizer
    from speechtok.prosody.pitch_bins import PitchBins
    from speechtok.prosody.pitch_decode import pitch_contour, speaker_level

    bins = PitchBins(F0Tokenizer("world", rate=50), "mean", np.array([-0.1, 0.1]), np.array([-0.2, 0.0, 0.2]))
    f0, rate = pitch_contour(bins, np.array([0, 1, 2, 3, 3, 0]), (np.log(100.0), 0.3))
    assert rate == 50.0
    np.testing.assert_allclose(f0, [0, 100 * np.exp(-0.2), 100, 100 * np.exp(0.2), 100 * np.exp(0.2), 0],
                               rtol=1e-12)
    feats = stretch(f0_features(f0, "none"), 12)
    np.testing.assert_allclose(feats, np.repeat(f0_features(f0, "none"), 2, axis=1))
    card = {"speakers": {"a": {"logf0_mean": 4.0, "logf0_std": 0.1},
                         "b": {"logf0_mean": 5.0, "logf0_std": 0.3}}}
    assert speaker_level(card, "b") == (5.0, 0.3) and speaker_level(card) == (4.5, 0.2)
    with pytest.raises(ValueError, match="speaker 'c' has no F0 statistics"):
        speaker_level(card, "c")
    absolute = PitchBins(F0Tokenizer("world", rate=50), "none", np.array([5.0]), np.array([4.6, 5.3]))
    np.testing.assert_allclose(pitch_contour(absolute, np.array([2, 1]), (0.0, 1.0))[0], np.exp([5.3, 4.6]))


def test_vqvae_pitch_tokens_decode_on_the_5ms_grid():
    """F0 VQ-VAE codes (12.5 Hz) decode through its decoder to 16 frames each at 200 Hz, the utterance-std
    units scaled by the level's std and shifted by its mean (`meanstd`); an LM's VQ-VAE card needs the
    tokenizer's folder."""
    from speechtok.prosody.f0_tokenizer import F0Tokenizer
    from speechtok.prosody.f0_vqvae import F0VQVAE, PitchVQVAE, VQVAEConfig
    from speechtok.prosody.pitch_decode import load_pitch_tokenizer, pitch_contour

    torch.manual_seed(0)
    tok = PitchVQVAE(F0Tokenizer("world", rate=200), F0VQVAE(VQVAEConfig(codes=4)))
    with torch.no_grad():
        tok.model.codebook.normal_()
    codes = np.array([0, 3, 1])
    f0, rate = pitch_contour(tok, codes, (np.log(120.0), 0.25))
    x = tok.decode(codes)
    assert rate == 200.0 and len(f0) == len(x) == 48
    voiced = ~np.isnan(x)
    np.testing.assert_allclose(f0[voiced], 120.0 * np.exp(0.25 * x[voiced].astype(np.float64)), rtol=1e-12)
    assert (f0[~voiced] == 0).all()
    with pytest.raises(ValueError, match="--pitch-tokenizer DIR"):
        load_pitch_tokenizer(tok.card())


def speaker_vocoder(directory: Path, f0_card: dict | None = None) -> Path:
    """A tiny unit HiFi-GAN (k=12, 100 Hz) with speakers alice and carol (F0-conditioned with `f0_card`)."""
    torch.manual_seed(0)
    f0 = dict(f0="f0", f0_card=f0_card) if f0_card else {}
    voc = UnitHiFiGAN(UnitHiFiGANConfig(k=12, sample_rate=16000, frame_rate=100.0, num_speakers=2,
                                        speaker_dim=8, speakers=["alice", "carol"], **f0, **TINY))
    with torch.no_grad():
        voc.speaker_emb.weight.normal_(0, 3.0)  # voices far apart
    with_gains(voc).save(directory)
    write_checksums(directory)
    return directory


def test_resynth_speaker_transfer(f0_shards, tmp_path):
    """`tok resynth A --speaker carol` speaks A's units with carol's embedding row (with --f0-from B too: A's
    units, B's voice and B's F0), unlike alice's; an unknown speaker or a vocoder without speakers is one
    error line."""
    from speechtok.pipelines.resynth import Resynthesis, units_to_audio

    shards, km = f0_shards
    card = json.loads((shards / "manifest.json").read_text())["tokenizers"]["f0"]
    voc = speaker_vocoder(tmp_path / "voc", card)
    corpus = Path(json.loads((shards / "manifest.json").read_text())["corpus"])
    a, b = [tmp_path / f"{n}.wav" for n in "ab"]
    for path, line in zip((a, b), corpus.read_text().splitlines()):
        wav, sr = sf.read(json.loads(line)["path"])
        sf.write(path, wav[: int(sr)], sr, subtype="FLOAT")
    for who in ("alice", "carol"):
        r = run("resynth", a, "-t", km, "--vocoder", voc, "--f0-from", b, "--speaker", who,
                "-o", tmp_path / f"{who}.wav")
        assert r.exit_code == 0 and f"(speaker {who})" in r.output, r.output
    wav, sr = sf.read(a, dtype="float32")
    resynthesis = Resynthesis(str(km), str(voc), torch.device("cpu"))
    units, f0 = resynthesis.encode(wav, sr, sf.read(b, dtype="float32"))
    model = UnitHiFiGAN.from_dir(voc)
    carol, alice = [sf.read(tmp_path / f"{who}.wav", dtype="float32")[0] for who in ("carol", "alice")]
    np.testing.assert_allclose(carol, units_to_audio(model, units, 1, f0), atol=2 / 32768)  # 16-bit wav
    assert np.abs(carol - alice).mean() > 0.01 * carol.std()
    r = run("resynth", a, "-t", km, "--vocoder", voc, "--speaker", "bob", "-o", tmp_path / "x.wav")
    assert r.exit_code == 2 and "'bob' is not one of the vocoder's 2 speakers (alice, carol)" in r.output
    assert len(r.output.strip().splitlines()) == 1, r.output
    plain = tmp_path / "plain"
    UnitHiFiGAN(UnitHiFiGANConfig(k=12, sample_rate=16000, frame_rate=100.0, **TINY)).save(plain)
    write_checksums(plain)
    r = run("resynth", a, "-t", km, "--vocoder", plain, "--speaker", "bob", "-o", tmp_path / "y.wav")
    assert r.exit_code == 2 and "has no speaker embedding" in r.output, r.output


def test_generate_decodes_pitch_tokens_to_the_f0_the_vocoder_hears(f0_shards, base_llm, tmp_path):
    """An expressive LM (units + pitch bins, untrained: it draws both) → `tok generate --vocoder` with an
    F0-conditioned unit HiFi-GAN: the audio is the vocoder's output for the generated units with the pitch
    tokens decoded to F0 (bin medians + the speaker's level, stretched onto the units), redone here from
    the same seed; not the all-unvoiced output."""
    from speechtok.lm.generate import SamplingOptions, generate_ids, generated_streams, speech_prompt
    from speechtok.pipelines.generate import load_lm
    from speechtok.pipelines.resynth import units_to_audio
    from speechtok.prosody.pitch_decode import pitch_contour, speaker_level
    from speechtok.prosody.pitch_bins import PitchBins

    shards, km = f0_shards
    r = run("prosody", "train", shards, "-o", tmp_path / "bins", "--method", "bins", "--bins", "8")
    assert r.exit_code == 0, r.output
    # extend-vocab reads only the manifest: that of these shards with the pitch stream `tok encode -t
    # tmp_path/bins` would add (beside the original, so the units' card resolves as there)
    manifest = json.loads((shards / "manifest.json").read_text())
    manifest["tokenizers"]["pitch"] = json.loads((tmp_path / "bins" / "tokenizer.json").read_text())
    (shards / "manifest_pitch.json").write_text(json.dumps(manifest))
    r = run("lm", "extend-vocab", base_llm, "-m", shards / "manifest_pitch.json", "--pitch", "pitch",
            "-o", tmp_path / "lm")
    assert r.exit_code == 0, r.output
    card = json.loads((shards / "manifest.json").read_text())["tokenizers"]["f0"]
    voc = speaker_vocoder(tmp_path / "voc", card)
    r = run("generate", "--lm", tmp_path / "lm", "--vocoder", voc, "--speaker", "carol", "--max-units", "60",
            "--temperature", "1.0", "--seed", "3", "-o", tmp_path / "out.wav")
    assert r.exit_code == 0 and "pitch tokens -> F0" in r.output, r.output
    model, tokenizer, vocab = load_lm(tmp_path / "lm", torch.device("cpu"))
    ids = generate_ids(model, tokenizer, vocab, [speech_prompt(tokenizer, vocab)],
                       SamplingOptions(max_new_tokens=60, temperature=1.0, seed=3))[0]
    streams = generated_streams(vocab, ids)
    assert len(streams["pitch"]) and len(streams["units"])
    bins = PitchBins.from_card(json.loads((tmp_path / "bins" / "tokenizer.json").read_text()))
    hz, _ = pitch_contour(bins, streams["pitch"], speaker_level(bins.card(), "carol"))
    vocoder = UnitHiFiGAN.from_dir(voc)
    want = units_to_audio(vocoder, streams["units"], 1, f0_features(hz, "none"))
    got, sr = sf.read(tmp_path / "out.wav", dtype="float32")
    np.testing.assert_allclose(got, want, atol=2 / 32768)  # written as 16-bit wav
    unvoiced = units_to_audio(vocoder, streams["units"], 1)
    assert np.abs(got - unvoiced).mean() > 0.01 * np.abs(got).mean()
    # --pitch-tokenizer where it would be ignored (bins decode from the LM's card; a vocoder without F0)
    plain = speaker_vocoder(tmp_path / "plain")
    for vocoder_dir, why in ((voc, "are pitch bins"), (plain, "the vocoder is not F0-conditioned")):
        r = run("generate", "--lm", tmp_path / "lm", "--vocoder", vocoder_dir, "--pitch-tokenizer",
                tmp_path / "bins", "--max-units", "6", "-o", tmp_path / "x.wav")
        assert r.exit_code == 2 and why in r.output and len(r.output.strip().splitlines()) == 1, r.output


def world_median_f0(wav: np.ndarray, sr: int = 16000) -> float:
    """Median F0 over the voiced frames, as pyworld's DIO + StoneMask track it (0 if none is voiced)."""
    import pyworld

    x = wav.astype(np.float64) / (np.abs(wav).max() + 1e-12)
    f0, t = pyworld.dio(x, sr, f0_floor=60, f0_ceil=400)
    f0 = pyworld.stonemask(x, f0, t, sr)
    return float(np.median(f0[f0 > 0])) if (f0 > 0).any() else 0.0


def test_harmonic_source_is_the_phase_integral_of_f0():
    """The sines equal sin(2π k Σ F0 / sr), the phase summed sample by sample in float64 as NSF's SineGen
    does, over a contour with jumps and unvoiced frames; F0 survives f0_features ∘ f0_hz; a harmonic at or
    above Nyquist is silent; a constant F0's spectrum peaks at F0."""
    from speechtok.vocoders.harmonic_source import HARMONICS, SINE_AMPLITUDE, f0_hz, sines

    hop, sr = 160, 16000
    rng = np.random.default_rng(0)
    f0 = rng.uniform(70, 400, 2000) * (rng.random(2000) > 0.2)  # 20 s, a new F0 every 10 ms, 20% unvoiced
    feats = torch.from_numpy(f0_features(f0, "none"))[None]
    hz = f0_hz(feats)[0].numpy()
    np.testing.assert_allclose(hz, f0, rtol=1e-6)
    spoilt = hz.copy()
    spoilt[[5, 50, 500]] = np.inf, np.nan, 9000.0  # unvoiced where they are: the later phase is unharmed
    f0[[5, 50, 500]] = 0
    got = sines(torch.from_numpy(spoilt)[None], hop, sr)[0].numpy()
    per_sample = np.repeat(f0, hop)
    cycles = np.concatenate([[0.0], np.cumsum(per_sample)[:-1]]) / sr
    k = np.arange(1, HARMONICS + 2)[:, None]
    want = SINE_AMPLITUDE * np.sin(2 * np.pi * k * cycles) * ((per_sample > 0) & (k * per_sample < sr / 2))
    assert got.shape == (HARMONICS + 1, 2000 * hop)
    np.testing.assert_allclose(got, want, atol=SINE_AMPLITUDE * 1e-3)  # float32 sin of a wrapped phase
    assert (got[:, per_sample == 0] == 0).all()
    high = sines(torch.full((1, 10), 1000.0), hop, sr)[0]
    assert high[:7].abs().max() > 0.09 and high[7:].abs().max() == 0  # 8 kHz and up: none
    steady = sines(torch.full((1, 100), 200.0), hop, sr)[0, 0].numpy()
    assert np.argmax(np.abs(np.fft.rfft(steady))) * sr / len(steady) == 200


def test_harmonic_vocoder_speaks_at_its_f0():
    """`f0_source: harmonic`: even untrained, the output's pitch (pyworld, not ours) is the F0 it is given —
    the concatenated log-F0 alone does not do that; rows batched equal each alone; the config refuses it
    without F0 in Hz."""
    torch.manual_seed(0)
    cfg = dict(k=10, sample_rate=16000, frame_rate=100.0, f0="f0", **TINY)
    voc = UnitHiFiGAN(UnitHiFiGANConfig(**cfg, f0_source="harmonic")).eval()
    plain = UnitHiFiGAN(UnitHiFiGANConfig(**cfg)).eval()
    units = torch.randint(0, 10, (1, 100), generator=torch.Generator().manual_seed(0))
    f0s = [torch.from_numpy(f0_features(np.full(100, hz), "none"))[None] for hz in (90.0, 140.0, 220.0)]
    with torch.no_grad():
        alone = [voc(units, None, f0)[0] for f0 in f0s]
        batched = voc(units.expand(3, -1), None, torch.cat(f0s))
        others = [plain(units, None, f0)[0] for f0 in f0s]
    def at_f0(outputs: list[torch.Tensor]) -> list[bool]:
        return [abs(world_median_f0(y.numpy()) / hz - 1) < 0.03 for hz, y in zip((90, 140, 220), outputs)]

    assert all(at_f0(alone)) and not all(at_f0(others))  # measured: within 1.2%; others unvoiced
    torch.testing.assert_close(batched, torch.stack(alone), rtol=0, atol=1e-6)
    for bad, why in (({"f0": ""}, "needs F0 in Hz"), ({"f0_norm": "meanstd"}, "needs F0 in Hz"),
                     ({"f0_source": "sine"}, "'' or 'harmonic'")):
        with pytest.raises(ValueError, match=why):
            UnitHiFiGANConfig(**{**cfg, "f0_source": "harmonic", **bad})


def test_harmonic_vocoder_trains_and_speaks_with_the_transferred_f0(f0_shards, tmp_path):
    """`tok vocoder train --f0 f0 --f0-source harmonic` (mistakes: one line, exit 2; resuming it without the
    source is refused, not a silent drop), then `tok resynth A --f0-from B`: the output's median F0 is B's
    (pyworld on both), not A's."""
    shards, km = f0_shards
    cfg = {"kind": "unit-hifigan", "shards": str(shards), "output": str(tmp_path / "voc"), "f0": "f0",
           "batch_size": 2, "segment_seconds": 0.2, "steps": 2, "adv_start": 2, "log_every": 1,
           "disc_channels": 4, "model": SIZES}
    (tmp_path / "voc.yaml").write_text(yaml.safe_dump({**cfg, "f0_norm": "mean"}))
    r = run("vocoder", "train", "--config", tmp_path / "voc.yaml", "--f0-source", "harmonic")
    assert r.exit_code == 2 and "f0_source: harmonic reads F0 in Hz" in r.output, r.output
    assert len(r.output.strip().splitlines()) == 1 and not (tmp_path / "voc").exists()
    (tmp_path / "voc.yaml").write_text(yaml.safe_dump({**cfg, "steps": 30, "adv_start": 30, "lr": 5e-4}))
    r = run("vocoder", "train", "--config", tmp_path / "voc.yaml", "--f0-source", "harmonic")
    assert r.exit_code == 0, r.output
    voc = tmp_path / "voc" / "final"
    assert json.loads((voc / "vocoder.json").read_text())["f0_source"] == "harmonic"
    r = run("vocoder", "train", "--config", tmp_path / "voc.yaml", "--steps", 40)  # resumed, no source
    assert r.exit_code == 2 and "has generator.model.source." in r.output and "lacks" in r.output, r.output
    assert len(r.output.strip().splitlines()) == 1
    corpus = Path(json.loads((shards / "manifest.json").read_text())["corpus"])
    a, b = [tmp_path / f"{name}.wav" for name in "ab"]
    for path, line in zip((a, b), corpus.read_text().splitlines()):
        wav, sr = sf.read(json.loads(line)["path"])
        sf.write(path, wav[: int(1.5 * sr)], sr)
    r = run("resynth", a, "-t", km, "--vocoder", voc, "--f0-from", b, "-o", tmp_path / "a_b.wav")
    assert r.exit_code == 0, r.output
    from speechtok.pipelines.resynth import Resynthesis
    from speechtok.vocoders.harmonic_source import f0_hz

    wav, sr = sf.read(a, dtype="float32")
    resynthesis = Resynthesis(str(km), str(voc), torch.device("cpu"))
    _, given = resynthesis.encode(wav, sr, sf.read(b, dtype="float32"))
    hz = f0_hz(torch.from_numpy(given)[None])[0].numpy()
    b_f0, a_f0 = float(np.median(hz[hz > 0])), world_median_f0(wav, sr)
    assert b_f0 / a_f0 > 1.8  # B speaks about an octave above A, and far from the 100 Hz hop
    out_f0 = world_median_f0(*sf.read(tmp_path / "a_b.wav"))
    assert abs(np.log(out_f0 / b_f0)) < 0.1, (out_f0, a_f0, b_f0)  # measured: 0.3% off after 30 steps


def test_resynth_refuses_an_f0_source_without_pitch_and_an_input_without_a_unit(f0_shards, tmp_path):
    """`--f0-from` audio with no voiced frame (silence, noise, 10 samples) would be heard as an all-unvoiced
    contour: one line naming that file, exit 2, nothing written; an input too short for one unit frame
    was a conv1d traceback, now one line naming it."""
    shards, km = f0_shards
    card = json.loads((shards / "manifest.json").read_text())["tokenizers"]["f0"]
    voc = speaker_vocoder(tmp_path / "voc", card)
    corpus = Path(json.loads((shards / "manifest.json").read_text())["corpus"])
    speech = json.loads(corpus.read_text().splitlines()[0])["path"]
    noise = np.random.default_rng(0).standard_normal(16000).astype(np.float32) * 0.1
    for name, wav in (("silence", np.zeros(16000, np.float32)), ("noise", noise),
                      ("ten", np.zeros(10, np.float32))):
        sf.write(tmp_path / f"{name}.wav", wav, 16000)
        r = run("resynth", speech, "-t", km, "--vocoder", voc, "--f0-from", tmp_path / f"{name}.wav",
                "-o", tmp_path / "out.wav")
        assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1, r.output
        assert r.output.startswith(f"error: {tmp_path / name}.wav: no voiced frame"), r.output
        assert not (tmp_path / "out.wav").exists()
    r = run("resynth", tmp_path / "ten.wav", "-t", km, "--vocoder", voc, "-o", tmp_path / "out.wav")
    assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1, r.output
    assert r.output.startswith(f"error: {tmp_path / 'ten.wav'}: too short"), r.output
