"""k-means: assignment, clustering quality against sklearn, checkpoint import and its pickle guard."""

import joblib
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from sklearn.cluster import MiniBatchKMeans

from speechtok.cli.main import cli
from speechtok.tokenizers.kmeans import (assign, kmeans_faiss, kmeans_torch, load_kmeans_checkpoint,
                                         train_kmeans)


def blobs(n_per=400, k=12, dim=16, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 6, (k, dim))
    x = np.concatenate([c + rng.normal(0, 1, (n_per, dim)) for c in centers]).astype(np.float32)
    labels = np.repeat(np.arange(k), n_per)
    return x, labels


def purity(pred, truth):
    return sum(np.bincount(truth[pred == c]).max() for c in np.unique(pred)) / len(truth)


def test_assign_matches_brute_force():
    g = torch.Generator().manual_seed(0)
    x, c = torch.randn(1000, 7, generator=g), torch.randn(13, 7, generator=g)
    labels, d = assign(x, c, chunk=97)
    brute = torch.cdist(x.double(), c.double()) ** 2
    assert torch.equal(labels, brute.argmin(1))
    torch.testing.assert_close(d.double(), brute.min(1).values, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("backend", ["torch", "faiss"])
def test_kmeans_recovers_blobs_and_beats_minibatch(backend):
    x, truth = blobs()
    result = train_kmeans(x, 12, iters=20, seed=0, backend=backend, device="cpu")
    pred, _ = assign(torch.from_numpy(x), torch.from_numpy(result.centroids))
    assert purity(pred.numpy(), truth) > 0.99
    mb = MiniBatchKMeans(12, batch_size=1000, n_init=3, random_state=0, max_iter=100,
                         compute_labels=False).fit(x)
    mb_inertia = -mb.score(x) / len(x)
    assert result.inertia <= mb_inertia * 1.001
    assert result.centroids.shape == (12, 16) and result.centroids.dtype == np.float32


def test_kmeans_torch_is_seeded_and_handles_empty_clusters():
    # 4 distinct points, k=6: clusters must be reseeded
    x = np.repeat(np.eye(4, dtype=np.float32), 50, axis=0)
    a = kmeans_torch(torch.from_numpy(x), 6, iters=5, seed=3)
    b = kmeans_torch(torch.from_numpy(x), 6, iters=5, seed=3)
    np.testing.assert_array_equal(a.centroids, b.centroids)
    assert a.inertia == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="at least k=6"):
        kmeans_torch(torch.zeros(5, 2), 6)


def test_faiss_inertia_is_exact_mean_squared_distance():
    x, _ = blobs(n_per=100, k=5, dim=4)
    r = kmeans_faiss(x, 5, iters=10)
    d = ((x[:, None, :] - r.centroids[None]) ** 2).sum(-1).min(1)
    assert r.inertia == pytest.approx(float(d.mean()), rel=1e-4)


def test_import_sklearn_pickle_needs_trust(tmp_path, tiny_ssl):
    x, _ = blobs(n_per=50, k=8, dim=48)
    km = MiniBatchKMeans(8, n_init=1, random_state=0).fit(x)
    pkl = tmp_path / "km8.bin"
    joblib.dump(km, pkl)
    with pytest.raises(PermissionError, match="--trust-pickle"):
        load_kmeans_checkpoint(str(pkl))
    np.testing.assert_array_equal(load_kmeans_checkpoint(str(pkl), trust_pickle=True), km.cluster_centers_)

    runner = CliRunner()
    model = tiny_ssl("hubert")
    refused = runner.invoke(cli, ["import-kmeans", str(pkl), "-m", model, "-l", "2", "-o",
                                  str(tmp_path / "t")])
    assert refused.exit_code == 2 and "--trust-pickle" in refused.output
    assert not (tmp_path / "t").exists()
    ok = runner.invoke(cli, ["import-kmeans", str(pkl), "-m", model, "-l", "2", "-o", str(tmp_path / "t"),
                             "--trust-pickle"])
    assert ok.exit_code == 0, ok.output
    from speechtok import SemanticTokenizer

    tok = SemanticTokenizer.from_dir(tmp_path / "t")
    np.testing.assert_allclose(tok.centroids, km.cluster_centers_.astype(np.float32))
    assert tok.card()["imported_from"]["file"] == "km8.bin"
    assert tok.card()["features"]["layer"] == 2

    wrong_dim = runner.invoke(cli, ["import-kmeans", str(pkl), "-m", "mfcc", "-o", str(tmp_path / "u"),
                                    "--trust-pickle"])
    assert wrong_dim.exit_code == 2 and "do not fit 39-dim features" in wrong_dim.output


def test_import_npy_needs_no_trust(tmp_path):
    c = np.random.default_rng(0).normal(size=(5, 39)).astype(np.float32)
    np.save(tmp_path / "c.npy", c)
    np.testing.assert_array_equal(load_kmeans_checkpoint(str(tmp_path / "c.npy")), c)
    torch.save(torch.from_numpy(c), tmp_path / "c.pt")
    np.testing.assert_array_equal(load_kmeans_checkpoint(str(tmp_path / "c.pt")), c)
    torch.save({"centroids": torch.from_numpy(c)}, tmp_path / "d.pt")
    np.testing.assert_array_equal(load_kmeans_checkpoint(str(tmp_path / "d.pt")), c)


@pytest.mark.parametrize("content", [{"weights": torch.zeros(2, 3)}, [torch.zeros(2, 3)]],
                         ids=["no-key", "list"])
def test_import_pt_without_centroids_is_one_clear_error(tmp_path, content):
    torch.save(content, tmp_path / "c.pt")
    with pytest.raises(ValueError, match=r"c\.pt: .*centroids"):
        load_kmeans_checkpoint(str(tmp_path / "c.pt"))
