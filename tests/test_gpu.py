"""CUDA paths: run with a GPU (skipped cleanly on CPU)."""

import numpy as np
import pytest
import torch

from speechtok.tokenizers.kmeans import assign, train_kmeans
from speechtok.tokenizers.semantic import SemanticTokenizer
from speechtok.tokenizers.ssl_features import SSLFeatures

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(),
                                                  reason="needs a CUDA device")]


def test_torch_kmeans_on_gpu_matches_cpu_quality():
    rng = np.random.default_rng(0)
    centers = rng.normal(0, 6, (16, 32))
    x = np.concatenate([c + rng.normal(0, 1, (500, 32)) for c in centers]).astype(np.float32)
    gpu = train_kmeans(torch.from_numpy(x).cuda(), 16, backend="torch", device="cuda")
    cpu = train_kmeans(x, 16, backend="torch", device="cpu")
    assert gpu.backend == "torch-cuda"
    assert gpu.inertia == pytest.approx(cpu.inertia, rel=1e-3)


def test_bf16_tokens_agree_with_fp32(tiny_ssl):
    path = tiny_ssl("hubert")
    g = torch.Generator().manual_seed(0)
    wav = torch.randn(3, 32000, generator=g) * 0.1
    lengths = torch.tensor([32000, 20000, 9000])
    f32 = SSLFeatures(path, 3, device="cuda", precision="fp32")
    feats, n = f32(wav, lengths)
    x = torch.cat([feats[i, : n[i]] for i in range(3)])
    centroids = train_kmeans(x, 16, backend="torch", device="cuda").centroids
    tok32 = SemanticTokenizer(f32, centroids)
    tok16 = SemanticTokenizer(SSLFeatures(path, 3, device="cuda", precision="bf16"), centroids)
    a, b = tok32.encode_batch(wav, lengths), tok16.encode_batch(wav, lengths)
    agree = np.mean(np.concatenate([x == y for x, y in zip(a, b)]))
    assert agree > 0.9
    labels, _ = assign(x, torch.from_numpy(centroids).cuda())
    assert labels.device.type == "cuda"
