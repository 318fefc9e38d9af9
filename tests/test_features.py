"""Feature extractors: the layer cut, frame counts, and independence from batching and padding."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from speechtok.tokenizers.features import build_features, parse_model_spec
from speechtok.tokenizers.spectral import MFCC, LogMel
from speechtok.tokenizers.ssl_features import SSLFeatures

# fp32 features of the same utterance computed in differently shaped batches (or by transformers alone)
# differ only by summation order in convolutions/matmuls. Measured over ATEN_CPU_CAPABILITY=default/avx2/
# avx512, MKL_CBWR=COMPATIBLE and 1-2 threads: ≤ 5.7e-6 (≤ 19 ε of the tensor's scale) on O(1) activations;
# 1e-4 absolute leaves ≥ 17× margin (the Intel/AMD spread seen for Kaldi features was 3.4× the emulated).
ATOL = 1e-4


def padded(wavs):
    lengths = torch.tensor([len(w) for w in wavs])
    batch = torch.zeros(len(wavs), int(lengths.max()))
    for i, w in enumerate(wavs):
        batch[i, : len(w)] = w
    return batch, lengths


def speechlike(n, seed):
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(n) / 16000
    env = 0.5 + 0.5 * torch.sin(2 * torch.pi * 3 * t + seed)
    return (0.3 * torch.sin(2 * torch.pi * (120 + 40 * seed) * t) * env + 0.05 * torch.randn(n, generator=g))


@pytest.mark.parametrize("kind", ["hubert", "wav2vec2-large", "hubert-large", "wavlm", "wavlm-large"])
def test_ssl_every_layer_batched_equals_transformers_alone(tiny_ssl, kind):
    """Layer L of a padded batch = transformers' `hidden_states[L]` of each utterance alone, for every L of
    base (post-LN), large (pre-LN: no final LayerNorm at any L, as fairseq's output_layer) and WavLM.
    transformers 4.57 puts the pre-LN encoder's final LayerNorm into `hidden_states[top]` and 5.x does not;
    the reference runs with that LayerNorm replaced by the identity, so it means fairseq's output_layer on
    either."""
    from transformers import AutoModel

    path = tiny_ssl(kind)
    wavs = [speechlike(n, i) for i, n in enumerate([16000, 7000, 11111, 400])]
    batch, lengths = padded(wavs)
    full = AutoModel.from_pretrained(path).eval()
    with torch.no_grad():
        last = full(wavs[0][None]).last_hidden_state
        if full.config.do_stable_layer_norm:
            full.encoder.layer_norm = torch.nn.Identity()
        outs = [full(w[None], output_hidden_states=True) for w in wavs]
    refs = [o.hidden_states for o in outs]
    assert len(refs[0]) == 5
    if full.config.do_stable_layer_norm:  # the final LayerNorm changes the last layer: the test can see it
        assert (last - refs[0][4]).abs().max() > 100 * ATOL
    for layer in range(1, 5):
        feats = SSLFeatures(path, layer=layer)
        assert len(feats.model.encoder.layers) == layer  # layers above the cut are not even kept
        fb, nb = feats(batch, lengths)
        for i in range(len(wavs)):
            assert int(nb[i]) == refs[i][layer].shape[1]
            torch.testing.assert_close(fb[i, : nb[i]], refs[i][layer][0], atol=ATOL, rtol=0)
            assert torch.all(fb[i, nb[i]:] == 0)


def test_plain_padding_would_change_groupnorm_features(tiny_ssl):
    """Why the masked GroupNorm exists: the unmodified model's features change with zero padding."""
    from transformers import AutoModel

    full = AutoModel.from_pretrained(tiny_ssl("hubert")).eval()
    w = speechlike(8000, 3)
    with torch.no_grad():
        alone = full(w[None]).last_hidden_state[0]
        pad = torch.nn.functional.pad(w, (0, 8000))[None]
        mask = torch.zeros(1, 16000, dtype=torch.long)
        mask[0, :8000] = 1
        batched = full(pad, attention_mask=mask).last_hidden_state[0, : alone.shape[0]]
    assert (batched - alone).abs().max() > 100 * ATOL


def test_ssl_frame_count_formula(tiny_ssl):
    feats = SSLFeatures(tiny_ssl("hubert"), layer=1)
    assert feats.frame_rate == 50.0
    for n in [400, 401, 719, 720, 16000, 48000]:
        out, count = feats(torch.randn(1, n) * 0.1, torch.tensor([n]))
        assert out.shape[1] == int(count) == (n - 400) // 320 + 1
    assert int(feats.num_frames(399)) == 0


def test_ssl_bad_layer_and_bad_checkpoint(tiny_ssl, tmp_path):
    with pytest.raises(ValueError, match="layer must be in 1..4"):
        SSLFeatures(tiny_ssl("hubert"), layer=5)
    with pytest.raises(ValueError, match="cannot load a transformers config"):
        SSLFeatures(str(tmp_path), layer=1)


def test_ssl_card_has_weights_checksum(tiny_ssl):
    feats = build_features(parse_model_spec(tiny_ssl("hubert"), 3))
    card = feats.card()
    assert card["kind"] == "ssl" and card["layer"] == 3 and card["model_type"] == "hubert"
    assert len(card["weights_sha256"]) == 64
    with pytest.raises(ValueError, match="--layer is required"):
        parse_model_spec(tiny_ssl("hubert"), None)


@pytest.mark.parametrize("cls", [MFCC, LogMel])
def test_spectral_batched_equals_alone(cls):
    ext = cls()
    wavs = [speechlike(n, i) for i, n in enumerate([16000, 5000, 401, 9999])]
    batch, lengths = padded(wavs)
    fb, nb = ext(batch, lengths)
    for i, w in enumerate(wavs):
        fa, na = ext(w[None], lengths[i:i + 1])
        assert int(na) == int(nb[i]) == 1 + (len(w) - 400) // 160
        torch.testing.assert_close(fb[i, : nb[i]], fa[0], atol=ATOL, rtol=0)
    assert fb.shape[2] == ext.dim


# torchaudio.compliance.kaldi (float32) on the same signals, as fairseq's HuBERT dump_mfcc_feature.py;
# written by tests/reference/make_kaldi_fixture.py on another machine (an AMD EPYC, torch 2.11).
KALDI = Path(__file__).parent / "fixtures" / "kaldi_mfcc_fbank.npz"
EPS = float(torch.finfo(torch.float32).eps)


def kaldi_error_bound(ext, wav: torch.Tensor) -> torch.Tensor:
    """Per value, how far two correct float32 implementations (ours and torchaudio's, run on different
    CPUs) can disagree: a bound derived from float32 eps, not a measured constant.

    An FFT errs normwise: ||δX|| ≤ 2·log2(n_fft)·ε·||X|| over the full spectrum (Higham, *Accuracy and
    Stability*, §24.1, with a few ulps for the window, DC removal and pre-emphasis), i.e. ≤ 2√2·log2(n)·ε
    ·||X_half|| for rfft. A band's energy E_j = Σ_k w_jk|X_k|² (0 ≤ w ≤ 1) then moves by at most
    2·||δX||·√E_j (Cauchy–Schwarz over the band), plus n_bins·ε·E_j for its sum: bands far below their
    frame's energy F = ||X_half||² are ill-conditioned in the log (relative error ∝ √(F/E_j)), bands at
    the Kaldi floor ε are clamped. The log's error is log(max(E+t, ε) / max(E-t, ε)), twice over (ours and the
    reference each err). MFCC's DCT, lifter and Δ/ΔΔ are linear: the bound goes through their absolute
    values, with (n_mels + 16)·ε·|log E| for their own sums and products (twice). Across the kernels one
    machine can emulate (ATEN_CPU_CAPABILITY default/avx2/avx512, MKL_CBWR=COMPATIBLE/AVX512, 1-2
    threads) the measured differences reach at most 1% of this bound; an Intel AVX-512 Xeon measured
    5.6e-4 (fbank) and 3.6e-4 (MFCC) where a flat 1e-5 had been assumed."""
    power = ext.power_spectrum(wav[None])[0].double()  # [F, bins], ours: it only scales the bound
    energy = power @ ext.fbank.double()
    fft_rel = 2 * 2 ** 0.5 * math.log2(ext.n_fft) * EPS
    t = 2 * (2 * fft_rel * torch.sqrt(power.sum(-1, keepdim=True) * energy) + power.shape[-1] * EPS * energy)
    bound = torch.log(torch.clamp(energy + t, min=EPS) / torch.clamp(energy - t, min=EPS))
    if not isinstance(ext, MFCC):
        return bound
    bound = bound + 2 * (ext.n_mels + 16) * EPS * torch.log(torch.clamp(energy, min=EPS)).abs()
    ceps = bound @ ext.dct.double().abs() * ext.lifter.double()

    def spread(x):  # |Δ| of an error of at most x per frame: Σ_k k/10 · (x[t+k] + x[t-k]), edges clamped
        t_ = torch.arange(len(x))
        return sum(k * (x[torch.clamp(t_ + k, max=len(x) - 1)] + x[torch.clamp(t_ - k, min=0)])
                   for k in (1, 2)) / 10
    return torch.cat([ceps, spread(ceps), spread(spread(ceps))], -1)


@pytest.mark.parametrize("sr", [16000, 8000])
@pytest.mark.parametrize("cls, key", [(MFCC, "mfcc39"), (LogMel, "fbank80")])
def test_spectral_features_equal_kaldi_reference(cls, key, sr):
    """MFCC (13 liftered cepstra + Δ + ΔΔ, time-major) and 80-band fbank equal torchaudio's Kaldi
    implementation, alone and inside a padded batch, within the float32 error bound of `kaldi_error_bound`
    (tight where the features are well-conditioned: median fbank bound 0, MFCC ~5e-3 on values up to ~80)."""
    ref = np.load(KALDI)
    wav, expected = torch.from_numpy(ref[f"wav_{sr}"]), torch.from_numpy(ref[f"{key}_{sr}"])
    assert (ref[f"fbank80_{sr}"] == np.log(np.finfo(np.float32).eps)).any()  # the silence hits the log floor
    ext = cls(sample_rate=sr)
    assert ext.frame_rate == 100 and ext.dim == expected.shape[1]
    bound = kaldi_error_bound(ext, wav)
    assert bound.shape == expected.shape
    other = torch.flip(wav, [0])[: len(wav) // 2]
    for batch, lengths, row in [(wav[None], torch.tensor([len(wav)]), 0),
                                (padded([other, wav])[0], torch.tensor([len(other), len(wav)]), 1)]:
        out, n = ext(batch, lengths)
        assert int(n[row]) == expected.shape[0]
        excess = (out[row, : n[row]].double() - expected.double()).abs() - bound
        assert excess.max() <= 0, f"{int((excess > 0).sum())} values beyond the float32 bound"


def test_kaldi_error_bound_sees_a_wrong_feature():
    """The bound is tight enough to fail on real mistakes: a periodic or plain Hann window, a 0 Hz low edge
    or (MFCC) a lifter of 23 each put hundreds of values of the 16 kHz reference beyond it."""
    from speechtok.tokenizers import spectral

    ref = np.load(KALDI)
    wav = torch.from_numpy(ref["wav_16000"])
    for cls, key in [(MFCC, "mfcc39"), (LogMel, "fbank80")]:
        expected = torch.from_numpy(ref[f"{key}_16000"]).double()
        bound = kaldi_error_bound(cls(), wav)
        mutants = [cls() for _ in range(4 if cls is MFCC else 3)]
        mutants[0].window = torch.hann_window(400, periodic=True).pow(0.85)
        mutants[1].window = torch.hann_window(400, periodic=False)
        mutants[2].fbank = spectral.kaldi_mel_banks(512, mutants[2].n_mels, 16000, low_freq=0.0)
        if cls is MFCC:
            mutants[3].lifter = spectral.cepstral_lifter(13, 23.0)
        for mutant in mutants:
            out, _ = mutant(wav[None], torch.tensor([len(wav)]))
            assert ((out[0].double() - expected).abs() > bound).sum() > 300


@pytest.mark.parametrize("kind", ["mfcc", "logmel"])
def test_spectral_features_take_cpu_batches_on_another_device(kind):
    """`tok train-kmeans -m mfcc` on a GPU machine handed CPU batches to features on cuda and failed with a
    device mismatch (found by the GPU suite); "meta" stands in for the other device here."""
    features = build_features(parse_model_spec(kind, None), device="meta")
    feats, n = features(torch.randn(2, 16000), torch.tensor([16000, 8000]))
    assert feats.device.type == "meta" and feats.shape[:2] == (2, 98) and n.tolist() == [98, 48]


def test_old_spectral_cards_are_refused():
    card = {"kind": "mfcc", "sample_rate": 16000, "n_mels": 23, "n_ceps": 13, "win_length": 400,
            "hop_length": 160, "n_fft": 512}
    with pytest.raises(ValueError, match="before speechtok's mfcc became Kaldi-compatible"):
        build_features(card)
    assert build_features(MFCC().card()).card() == MFCC().card()
    assert build_features(parse_model_spec("logmel", None)).card()["window"] == "povey"


def test_mfcc_deltas_of_a_ramp():
    """Δ of a linear ramp is its slope (away from the edges), ΔΔ is zero there."""
    x = torch.arange(20.0)[None, :, None].repeat(1, 1, 2) * 0.5
    n = torch.tensor([20])
    d1 = MFCC.delta(x, n)
    torch.testing.assert_close(d1[0, 2:-2], torch.full((16, 2), 0.5))
    d2 = MFCC.delta(d1, n)
    torch.testing.assert_close(d2[0, 4:-4], torch.zeros(12, 2))


def test_logmel_distinguishes_tones():
    ext = LogMel()
    t = torch.arange(16000) / 16000
    low, _ = ext(torch.sin(2 * torch.pi * 200 * t)[None], torch.tensor([16000]))
    high, _ = ext(torch.sin(2 * torch.pi * 4000 * t)[None], torch.tensor([16000]))
    assert np.argmax(low[0, 10].numpy()) < np.argmax(high[0, 10].numpy())


def test_card_normalize_is_the_truth(tiny_ssl, tmp_path):
    """The card's `normalize` survives a missing preprocessor_config.json (offline cache) and a
    contradicting one is an error naming both values."""
    import json
    import shutil

    from speechtok.tokenizers.semantic import SemanticTokenizer

    model = tmp_path / "model"
    shutil.copytree(tiny_ssl("wav2vec2-large"), model)
    (model / "preprocessor_config.json").write_text(json.dumps({"do_normalize": True}))
    feats = SSLFeatures(str(model), layer=2)
    assert feats.normalize is True
    centroids = np.random.default_rng(0).standard_normal((8, feats.dim)).astype(np.float32)
    tok = SemanticTokenizer(feats, centroids)
    tok.save(tmp_path / "tok")
    wav = speechlike(8000, 1) * 3 + 0.5  # normalisation changes these features
    before = tok.features(wav[None], torch.tensor([8000]))[0]
    (model / "preprocessor_config.json").unlink()
    loaded = SemanticTokenizer.from_dir(tmp_path / "tok")
    assert loaded.features.normalize is True
    torch.testing.assert_close(loaded.features(wav[None], torch.tensor([8000]))[0], before, atol=ATOL, rtol=0)
    unnormalized = SSLFeatures(str(model), layer=2)  # a new tokenizer, no card, no preprocessor config
    assert (unnormalized(wav[None], torch.tensor([8000]))[0] - before).abs().max() > 100 * ATOL
    (model / "preprocessor_config.json").write_text(json.dumps({"do_normalize": False}))
    with pytest.raises(ValueError, match=r"tokenizer.json: .*normalize=True.*do_normalize=False"):
        SemanticTokenizer.from_dir(tmp_path / "tok")


def test_bf16_masked_group_norm_stays_bf16_within_its_rounding(tiny_ssl):
    """Under bf16 the masked GroupNorm after the first conv reads and writes bf16 (half the traffic of the
    fp32 path it replaces) and agrees with that fp32 path on the same bf16 input to bf16 rounding: a few
    units of 2^-8 relative to the output's scale (a property of the format, not of the CPU)."""
    feats = SSLFeatures(tiny_ssl("hubert"), layer=1)
    encoder = feats.model.feature_extractor
    layer = encoder.conv_layers[0]
    wav, lengths = padded([speechlike(16000, 1), speechlike(9000, 2), speechlike(4000, 3)])
    encoder.lengths = lengths
    h = layer.conv(wav[:, None]).bfloat16()
    low = encoder._masked_group_norm(h, layer.layer_norm, layer.conv)
    ref = encoder._masked_group_norm(h.float(), layer.layer_norm, layer.conv)
    assert low.dtype == torch.bfloat16
    frames = (lengths - 400) // 320 + 1  # compare valid frames only: padding is zeroed later
    # measured: max error 0.0038-0.0047 of the max (~2^-8), mean 0.0018 of the mean (~2^-9); statistics
    # over the padding too (the bug this path exists for) give 0.33-0.99
    for i, n in enumerate(frames.tolist()):
        err, scale = (low[i, :, :n].float() - ref[i, :, :n]).abs(), ref[i, :, :n].abs()
        assert err.max() <= 2 ** -5 * scale.max() and err.mean() <= 2 ** -7 * scale.mean()


def test_batch_invariant_units_equal_each_utterance_alone(tiny_ssl):
    """`batch_invariant=True`: every utterance's units are computed alone, so they equal its units alone bit
    for bit whatever the batch (batched units may differ at near-ties: BENCHMARKS.md "batch-invariance");
    `determinism_key` says whether the batch plan matters."""
    from speechtok.tokenizers.semantic import SemanticTokenizer

    feats = SSLFeatures(tiny_ssl("hubert"), layer=2)
    centroids = np.random.default_rng(0).standard_normal((50, feats.dim)).astype(np.float32)
    tok = SemanticTokenizer(feats, centroids, batch_invariant=True)
    assert tok.determinism_key()["depends_on_batch_plan"] is False
    assert SemanticTokenizer(feats, centroids).determinism_key()["depends_on_batch_plan"] is True
    wavs = [speechlike(n, i) for i, n in enumerate([16000, 7000, 11111, 400])]
    batch, lengths = padded(wavs)
    for units, w in zip(tok.encode_batch(batch, lengths), wavs):
        assert np.array_equal(units, tok.encode_batch(w[None], torch.tensor([len(w)]))[0])
