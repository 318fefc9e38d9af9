import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from speech import build_corpus  # noqa: E402


@pytest.fixture(scope="session")
def speech_corpus(tmp_path_factory) -> Path:
    """JSONL manifest of 8 synthetic sentences by 4 speakers, with text, word timings and speaker."""
    return build_corpus(tmp_path_factory.mktemp("speech"))


def tiny_ssl_config(kind: str):
    from transformers import HubertConfig, Wav2Vec2Config, WavLMConfig

    common = dict(hidden_size=48, num_hidden_layers=4, num_attention_heads=4, intermediate_size=96,
                  conv_dim=(32,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4)
    if kind == "hubert":  # base-style: GroupNorm after the first conv, post-LN transformer
        return HubertConfig(feat_extract_norm="group", do_stable_layer_norm=False, **common)
    if kind == "wav2vec2-large":  # large-style: LayerNorm convs, pre-LN transformer
        return Wav2Vec2Config(feat_extract_norm="layer", do_stable_layer_norm=True, **common)
    if kind == "wavlm":
        return WavLMConfig(feat_extract_norm="group", num_buckets=32, max_bucket_distance=80, **common)
    raise ValueError(kind)


@pytest.fixture(scope="session")
def tiny_ssl(tmp_path_factory):
    """Factory: a tiny random-init SSL model of the given kind, saved with save_pretrained; returns its dir."""
    cache = {}

    def make(kind: str = "hubert") -> str:
        if kind not in cache:
            from transformers import AutoModel

            torch.manual_seed(0)
            model = AutoModel.from_config(tiny_ssl_config(kind))
            path = tmp_path_factory.mktemp(kind.replace("-", "_"))
            model.save_pretrained(path)
            cache[kind] = str(path)
        return cache[kind]

    return make
