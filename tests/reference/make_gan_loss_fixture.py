"""Writes tests/fixtures/gan_losses.npz: the vocoder GAN losses, mels and a tiny MRD sub-discriminator as
the ORIGINAL code computes them on fixed inputs: HiFi-GAN's discriminator_loss / generator_loss /
feature_loss and mel_spectrogram (jik876/hifi-gan models.py, meldataset.py; speech-resynthesis has the
same) and Vocos' DiscriminatorLoss / GeneratorLoss / FeatureMatchingLoss / MelSpecReconstructionLoss and
DiscriminatorR (vocos==0.1.0). Not run in CI; needs torch, torchaudio, vocos, librosa and a checkout:

    /work/refenv/bin/python tests/reference/make_gan_loss_fixture.py /path/to/hifi-gan
"""

import sys
import types
from pathlib import Path

import numpy as np
import torch

OUT = Path(__file__).resolve().parents[1] / "fixtures" / "gan_losses.npz"
SR = 16000


def hifigan_modules(repo: str):
    """jik876's models and meldataset, run on today's torch/librosa: matplotlib (plots only) stubbed,
    librosa's mel called with keywords, stft(return_complex=False) as view_as_real of the complex stft."""
    import librosa

    sys.path.insert(0, repo)
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        stub = types.ModuleType("matplotlib")
        stub.use = lambda *a, **k: None
        sys.modules["matplotlib"], sys.modules["matplotlib.pylab"] = (stub,
                                                                      types.ModuleType("matplotlib.pylab"))
    import meldataset
    import models

    meldataset.librosa_mel_fn = lambda sr, n_fft, n_mels, fmin, fmax: librosa.filters.mel(
        sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax)
    real_stft = torch.stft

    def stft(*args, return_complex=False, **kw):
        out = real_stft(*args, return_complex=True, **kw)
        return out if return_complex else torch.view_as_real(out)

    meldataset.torch = types.SimpleNamespace(**{k: getattr(torch, k)
                                                for k in dir(torch) if not k.startswith("__")})
    meldataset.torch.stft = stft
    return models, meldataset


def main(repo: str) -> None:
    from vocos.discriminators import DiscriminatorR
    from vocos.loss import DiscriminatorLoss, FeatureMatchingLoss, GeneratorLoss, MelSpecReconstructionLoss

    models, meldataset = hifigan_modules(repo)
    torch.manual_seed(0)
    arrays = {}
    shapes = [(2, 30), (2, 12), (2, 1, 5, 7)]  # scores of three sub-discriminators, as flat or 2-D maps
    real = [torch.randn(s) for s in shapes]
    fake = [torch.randn(s) * 0.5 for s in shapes]
    fmap_r = [[torch.randn(2, 4, 9), torch.randn(2, 8, 3)] for _ in shapes]
    fmap_g = [[torch.randn(2, 4, 9), torch.randn(2, 8, 3)] for _ in shapes]
    for i in range(len(shapes)):
        arrays[f"score_real_{i}"], arrays[f"score_fake_{i}"] = real[i].numpy(), fake[i].numpy()
        for j in range(2):
            arrays[f"fmap_real_{i}_{j}"], arrays[f"fmap_fake_{i}_{j}"] = (fmap_r[i][j].numpy(),
                                                                          fmap_g[i][j].numpy())
    arrays["hifigan_d_loss"] = np.float32(models.discriminator_loss(real, fake)[0])
    arrays["hifigan_g_loss"] = np.float32(models.generator_loss(fake)[0])
    arrays["hifigan_fm_loss"] = np.float32(models.feature_loss(fmap_r, fmap_g))  # includes its ×2
    arrays["vocos_d_loss"] = DiscriminatorLoss()(real, fake)[0].numpy()
    arrays["vocos_g_loss"] = GeneratorLoss()(fake)[0].numpy()
    arrays["vocos_fm_loss"] = FeatureMatchingLoss()(fmap_r, fmap_g).numpy()

    t = torch.arange(4800) / SR
    audio_real = torch.stack([0.5 * torch.sin(2 * np.pi * 220 * t), 0.3 * torch.sin(2 * np.pi * 1700 * t)])
    audio_real = audio_real + 0.02 * torch.randn_like(audio_real)
    audio_fake = audio_real + 0.05 * torch.randn_like(audio_real)
    arrays["audio_real"], arrays["audio_fake"] = audio_real.numpy(), audio_fake.numpy()
    # jik876 train.py: mel_spectrogram(y, n_fft, num_mels, sampling_rate, hop_size, win_size, fmin,
    # fmax_for_loss)
    arrays["hifigan_log_mel"] = meldataset.mel_spectrogram(audio_real, 1024, 80, SR, 256, 1024, 0,
                                                           None).numpy()
    arrays["vocos_mel_loss"] = MelSpecReconstructionLoss(sample_rate=SR)(audio_fake, audio_real).numpy()

    disc = DiscriminatorR(window_length=512, channels=4)
    with torch.no_grad():
        for key, p in disc.named_parameters():
            if key.endswith("weight_g"):
                p.mul_(torch.empty_like(p).uniform_(1.0, 3.0))
        score, fmaps = disc(audio_real[:1, :2400])
    arrays.update({f"mrd_state_dict/{k}": v.numpy() for k, v in disc.state_dict().items()})
    arrays["mrd_score"] = score.numpy()
    arrays.update({f"mrd_fmap_{i}": f.numpy() for i, f in enumerate(fmaps)})
    OUT.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(OUT, **arrays)
    print(f"{OUT}: {OUT.stat().st_size / 1024:.0f} KB, {len(fmaps)} MRD feature maps")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
