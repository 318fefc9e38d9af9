"""Writes tests/fixtures/vocos_{mel,encodec}.npz: tiny seeded Vocos models built by the `vocos` package
(vocos==0.1.0) from the released configs (vocos-mel-24khz, vocos-encodec-24khz) with a smaller backbone,
their state dicts as released (no `feature_extractor.encodec.*`), fixed inputs, and the package's outputs:
mel features and copy-synthesis audio; codes → features (EncodecFeatures codebooks) and audio at two
bandwidths. Not run in CI; run in a side environment with vocos, encodec, torch, torchaudio:

    /work/refenv/bin/python tests/reference/make_vocos_fixture.py
"""

import math
from pathlib import Path

import numpy as np
import torch
import yaml

OUT = Path(__file__).resolve().parents[1] / "fixtures"
BACKBONE = {"dim": 16, "intermediate_dim": 32, "num_layers": 2}
MEL = {  # vocos-mel-24khz's config.yaml with a smaller backbone
    "feature_extractor": {"class_path": "vocos.feature_extractors.MelSpectrogramFeatures",
                          "init_args": {"sample_rate": 24000, "n_fft": 1024, "hop_length": 256, "n_mels": 100,
                                        "padding": "center"}},
    "backbone": {"class_path": "vocos.models.VocosBackbone", "init_args": {"input_channels": 100,
                                                                           **BACKBONE}},
    "head": {"class_path": "vocos.heads.ISTFTHead",
             "init_args": {"dim": 16, "n_fft": 1024, "hop_length": 256, "padding": "center"}}}
ENCODEC = {  # vocos-encodec-24khz's config.yaml with a smaller backbone
    "feature_extractor": {"class_path": "vocos.feature_extractors.EncodecFeatures",
                          "init_args": {"encodec_model": "encodec_24khz", "bandwidths": [1.5, 3.0, 6.0, 12.0],
                                        "train_codebooks": False}},
    "backbone": {"class_path": "vocos.models.VocosBackbone",
                 "init_args": {"input_channels": 128, "dim": 8, "intermediate_dim": 16, "num_layers": 2,
                               "adanorm_num_embeddings": 4}},
    "head": {"class_path": "vocos.heads.ISTFTHead",
             "init_args": {"dim": 8, "n_fft": 1280, "hop_length": 320, "padding": "same"}}}
# codes come from the first rows of the first 8 codebooks; the other rows stay zero (small file)
USED_ROWS = 16


def build(config: dict, path: Path):
    """vocos' own Vocos.from_hparams, with a random (not downloaded) EnCodec and perturbed parameters."""
    import encodec
    from vocos import Vocos

    original = encodec.EncodecModel.encodec_model_24khz
    encodec.EncodecModel.encodec_model_24khz = staticmethod(lambda pretrained=True, **kw:
                                                            original(pretrained=False))
    path.write_text(yaml.safe_dump(config))
    try:
        model = Vocos.from_hparams(str(path))
    finally:
        encodec.EncodecModel.encodec_model_24khz = original
    with torch.no_grad():  # trained-looking: norms, layer scales and biases away from their init
        for key, p in model.named_parameters():
            if not key.startswith("feature_extractor."):
                p.add_(torch.randn_like(p) * (0.1 if p.dim() == 1 or "norm" in key else 0.02))
    return model.eval()


def state_dict(model) -> dict:
    return {k: v for k, v in model.state_dict().items() if not k.startswith("feature_extractor.encodec.")}


def save(name: str, config: dict, model, **arrays) -> None:
    sd = {f"state_dict/{k}": v.numpy() for k, v in state_dict(model).items()}
    path = OUT / f"vocos_{name}.npz"
    np.savez_compressed(path, config=np.array(yaml.safe_dump(config)), **sd, **arrays)
    print(f"{path}: {path.stat().st_size / 1024:.0f} KB, {len(sd)} tensors")


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = build(MEL, OUT / "_config.yaml")
    t = torch.arange(12000) / 24000
    audio = (0.3 * torch.sin(2 * math.pi * (200 + 1500 * t) * t) + 0.05 * torch.randn(12000))[None]
    with torch.no_grad():
        features = model.feature_extractor(audio)
        out = model(audio)
    save("mel", MEL, model, audio=audio.numpy(), features=features.numpy(), output=out.numpy())

    torch.manual_seed(1)
    model = build(ENCODEC, OUT / "_config.yaml")
    fe = model.feature_extractor
    bins = fe.encodec.quantizer.bins
    with torch.no_grad():
        fe.codebook_weights.zero_()
        for q in range(8):
            fe.codebook_weights[q * bins: q * bins + USED_ROWS] = torch.randn(USED_ROWS,
                                                                              fe.codebook_weights.shape[1])
    codes = torch.randint(0, USED_ROWS, (8, 1, 24))  # 8 codebooks = 6 kbps = bandwidth id 2
    arrays = {"codes": codes.numpy()}
    for n_q, bandwidth_id in ((8, 2), (2, 0)):
        with torch.no_grad():
            feats = model.codes_to_features(codes[:n_q])
            arrays[f"features_{n_q}"] = feats.numpy()
            arrays[f"output_{n_q}"] = model.decode(feats, bandwidth_id=torch.tensor([bandwidth_id])).numpy()
    save("encodec", ENCODEC, model, **arrays)
    (OUT / "_config.yaml").unlink()


if __name__ == "__main__":
    main()
