"""Writes tests/fixtures/codehifigan_{spk,dur}/: tiny seeded unit HiFi-GANs built by the ORIGINAL
speech-resynthesis code (facebookresearch/speech-resynthesis: models.py `CodeGenerator` with a speaker
embedding, and examples/speech_to_speech_translation/models.py `DurationCodeGenerator` with fairseq's
duration predictor, the layout of fairseq's CodeHiFiGANVocoder checkpoints), each saved as the original
training code saves it (`g_00000000` holding {'generator': state_dict} + `config.json`), plus `io.npz`
with fixed unit inputs and the original's outputs. Not run in CI; needs torch and a checkout:

    /work/refenv/bin/python tests/reference/make_codehifigan_fixture.py /path/to/speech-resynthesis
"""

import json
import sys
import types
from pathlib import Path

import numpy as np
import torch

OUT = Path(__file__).resolve().parents[1] / "fixtures"
TINY = {"resblock": "1", "upsample_rates": [5, 4, 4, 2, 2], "upsample_kernel_sizes": [11, 8, 8, 4, 4],
        "upsample_initial_channel": 32, "resblock_kernel_sizes": [3, 5],
        "resblock_dilation_sizes": [[1, 3, 5]] * 2,
        "num_embeddings": 20, "embedding_dim": 16, "segment_size": 8960, "code_hop_size": 320, "f0": False,
        "sampling_rate": 16000}
CONFIGS = {
    "spk": {**TINY, "upsample_rates": [5, 4, 4, 2], "upsample_kernel_sizes": [11, 8, 8, 4],
            "code_hop_size": 160, "upsample_initial_channel": 16, "model_in_dim": 32,
            "multispkr": "from_input_file"},  # 100 Hz units
    "dur": {**TINY, "model_in_dim": 16, "dur_prediction_weight": 1.0,
            "dur_predictor_params": {"encoder_embed_dim": 16, "var_pred_hidden_dim": 24,
                                     "var_pred_kernel_size": 3, "var_pred_dropout": 0.5}},
}


def original_classes(repo: Path):
    sys.path.insert(0, str(repo))
    try:
        import matplotlib  # noqa: F401  (utils.py imports it for plots only)
    except ImportError:
        stub = types.ModuleType("matplotlib")
        stub.use = lambda *a, **k: None
        sys.modules["matplotlib"], sys.modules["matplotlib.pylab"] = (stub,
                                                                      types.ModuleType("matplotlib.pylab"))
    from examples.speech_to_speech_translation.models import DurationCodeGenerator
    from models import CodeGenerator
    from utils import AttrDict

    return CodeGenerator, DurationCodeGenerator, AttrDict


def main(repo: str) -> None:
    CodeGenerator, DurationCodeGenerator, AttrDict = original_classes(Path(repo))
    for name, cfg in CONFIGS.items():
        torch.manual_seed(0)
        h = AttrDict(cfg)
        gen = (DurationCodeGenerator if "dur_predictor_params" in cfg else CodeGenerator)(h)
        with torch.no_grad():  # a trained checkpoint's gains are not the norms of their directions
            for key, p in gen.named_parameters():
                if key.endswith("weight_g"):
                    p.mul_(torch.empty_like(p).uniform_(1.0, 3.0))
            if name == "dur":
                gen.dur_predictor.proj.bias.fill_(1.2)  # durations of 1-5 frames, not all 1
        d = OUT / f"codehifigan_{name}"
        d.mkdir(parents=True, exist_ok=True)
        torch.save({"generator": gen.state_dict()}, d / "g_00000000")
        (d / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
        gen.eval()
        gen.remove_weight_norm()  # as the original inference does
        g = torch.Generator().manual_seed(1)
        io = {}
        with torch.no_grad():
            if name == "dur":
                code = torch.randint(0, cfg["num_embeddings"], (1, 12), generator=g)
                code = torch.unique_consecutive(code)[None]  # deduplicated units
                log_dur = gen.dur_predictor(gen.dict(code))
                frac = (torch.exp(log_dur) - 1) % 1
                assert ((frac - 0.5).abs() > 1e-3).all(), ("a duration sits on a rounding edge: "
                                                           "change the seed")
                wav, _ = gen(code=code, dur_prediction=True)
                io["log_duration"] = log_dur.numpy()
            else:
                code = torch.randint(0, cfg["num_embeddings"], (1, 30), generator=g)
                spkr = torch.tensor([[7]])
                wav = gen(code=code, spkr=spkr)
                io["speaker"] = spkr.numpy()
        io["code"], io["audio"] = code.numpy(), wav[0, 0].numpy()
        np.savez(d / "io.npz", **io)
        print(f"{d}: {len(code[0])} units -> {wav.shape[-1]} samples, rms "
              f"{float(wav.pow(2).mean().sqrt()):.3f}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
