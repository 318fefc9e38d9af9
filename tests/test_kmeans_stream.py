"""k-means streamed from a feature cache on disk: the in-memory result on the same (fp16) frames, exact
resume from the centroid checkpoint, and the same centroids on two gloo ranks as on one; mini-batch k-means
against Lloyd and sklearn's MiniBatchKMeans."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from speechtok.tokenizers import kmeans_stream
from speechtok.tokenizers.kmeans import assign, kmeans_torch
from speechtok.tokenizers.kmeans_stream import CHECKPOINT, FeatureCache, StreamedKMeans

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
from kmeans import mixture  # noqa: E402

K, ITERS = 24, 6
BATCH = 1_000  # mini-batch frames a step: 12 steps a pass over the 12,000 frames


@pytest.fixture(scope="module")
def frames() -> torch.Tensor:
    return mixture(12_000, 32, components=40).half()  # the cache stores fp16


@pytest.fixture(scope="module")
def cache(frames, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("cache")
    writer = FeatureCache(folder, chunk_frames=2_500)  # 5 chunks: uneven shares on 2 ranks
    for part in torch.split(frames, 1_700):  # utterances of arbitrary length
        writer.write(part.numpy())
    writer.close()
    return folder


@pytest.fixture(scope="module")
def lloyd(cache):
    """ITERS streamed Lloyd iterations over the cache, single process, seed 0."""
    return StreamedKMeans(FeatureCache(cache), K, seed=0).fit(ITERS)


def test_cache_holds_every_frame_in_fp16_chunks(cache, frames):
    sizes = FeatureCache(cache).sizes()
    assert [n for _, n, _ in sizes] == [2500] * 4 + [2000]
    back = np.concatenate([np.load(p) for p, _, _ in sizes])
    assert back.dtype == np.float16 and np.array_equal(back, frames.numpy())


def test_streamed_equals_in_memory_kmeans(lloyd, frames):
    streamed = lloyd
    memory = kmeans_torch(frames.float(), K, iters=ITERS, seed=0)  # same seeding, all frames in memory
    # only the summation differs (exact int64 vs fp32 index_add): same clusters, centroids to fp32 rounding
    assert abs(streamed.inertia - memory.inertia) <= 1e-3 * memory.inertia
    scale = float(frames.float().abs().max())
    np.testing.assert_allclose(streamed.centroids, memory.centroids, atol=1e-4 * scale)


def test_resume_from_checkpoint_equals_uninterrupted(cache, lloyd, tmp_path):
    for p in FeatureCache(cache).chunks():
        os.symlink(p, tmp_path / p.name)
    whole = lloyd
    StreamedKMeans(FeatureCache(tmp_path), K, seed=0).fit(2, checkpoint_dir=tmp_path)  # "killed" after 2
    state = torch.load(tmp_path / CHECKPOINT, weights_only=True)
    assert state["iteration"] == 2
    resumed = StreamedKMeans(FeatureCache(tmp_path), K, seed=0).fit(ITERS, checkpoint_dir=tmp_path)
    assert np.array_equal(resumed.centroids, whole.centroids)
    other_seed = StreamedKMeans(FeatureCache(tmp_path), K, seed=1)  # a checkpoint of another job is ignored
    assert other_seed.fingerprint() != state["fingerprint"]


def test_two_gloo_ranks_give_the_single_process_centroids(cache, lloyd, tmp_path):
    """Lloyd and mini-batch k-means: exact sums, so the same bits on any number of ranks."""
    one = lloyd
    one_minibatch = StreamedKMeans(FeatureCache(cache), K, seed=0, batch_frames=BATCH).fit(1)
    out = tmp_path / "two.npy"
    script = Path(__file__).parent / "kmeans_ranks.py"
    port = str(29500 + os.getpid() % 1000 + 11)
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                        "--master_port", port, str(script), str(cache), str(K), str(ITERS), str(out),
                        str(BATCH)],
                       capture_output=True, text=True, timeout=300,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    assert np.array_equal(np.load(out), one.centroids)
    assert np.load(str(out) + ".inertia.npy")[0] == pytest.approx(one.inertia, rel=1e-12)
    assert np.array_equal(np.load(str(out) + ".minibatch.npy"), one_minibatch.centroids)


def test_minibatch_inertia_near_lloyd_and_sklearn(cache, lloyd, frames):
    """Mini-batch k-means (3 passes of 1,000-frame batches) against 6 Lloyd iterations and against sklearn's
    MiniBatchKMeans from the same k-means++ seeds, batch size and passes (no reassignment, as ours). Measured
    (seeds 0-3): ours/Lloyd 0.96-0.99, sklearn/Lloyd 0.97-1.00, ours/sklearn 0.98-1.002; both are
    stochastic, so the bounds are a few times the seed-to-seed spread, not one run's numbers."""
    from sklearn.cluster import MiniBatchKMeans

    ours = StreamedKMeans(FeatureCache(cache), K, seed=0, batch_frames=BATCH)
    result = ours.fit(3)
    assert result.iterations == 36 and "minibatch" in result.backend
    x = frames.float()
    sk = MiniBatchKMeans(K, init=ours.initial_centroids().numpy(), n_init=1, batch_size=BATCH, max_iter=3,
                         max_no_improvement=None, reassignment_ratio=0.0, tol=0.0, random_state=0)
    sk.fit(x.numpy())
    sk_inertia = float(assign(x, torch.from_numpy(sk.cluster_centers_.astype(np.float32)))[1].double().mean())
    assert sk.n_steps_ == result.iterations
    assert result.inertia <= 1.05 * lloyd.inertia
    assert result.inertia <= 1.03 * sk_inertia
    before = StreamedKMeans(FeatureCache(cache), K, seed=0).inertia(ours.initial_centroids())
    assert result.inertia < 0.9 * before  # the updates did move the seeds


def test_minibatch_steps_equal_sklearn_partial_fit(cache, frames):
    """The update itself: sklearn's MiniBatchKMeans.partial_fit, fed our drawn batches in float64 from our
    seeds, ends at our centroids up to fp32 rounding (ours rounds them to fp32 every step; measured
    1e-7·scale)."""
    from sklearn.cluster import MiniBatchKMeans

    ours = StreamedKMeans(FeatureCache(cache), K, seed=0, batch_frames=BATCH)
    steps = 24  # two passes
    result = ours.fit(2)
    sk = MiniBatchKMeans(K, init=ours.initial_centroids().double().numpy(), n_init=1, reassignment_ratio=0.0)
    x = frames.double().numpy()
    for step in range(steps):
        sk.partial_fit(x[ours.batch(step)])
    scale = float(frames.float().abs().max())
    np.testing.assert_allclose(result.centroids, sk.cluster_centers_, atol=1e-5 * scale)


def test_minibatch_resumes_from_its_checkpoint(cache, tmp_path, monkeypatch):
    """A mini-batch run killed mid-pass resumes from its last checkpoint (centroids and counts) to the
    uninterrupted result; a Lloyd checkpoint of the same cache is not taken for it."""
    for p in FeatureCache(cache).chunks():
        os.symlink(p, tmp_path / p.name)
    monkeypatch.setattr(kmeans_stream, "CHECKPOINT_STEPS", 5)
    whole = StreamedKMeans(FeatureCache(cache), K, seed=0, batch_frames=BATCH).fit(2)

    def kill(step):
        if step == 13:
            raise KeyboardInterrupt

    def job() -> StreamedKMeans:
        return StreamedKMeans(FeatureCache(tmp_path), K, seed=0, batch_frames=BATCH)

    with pytest.raises(KeyboardInterrupt):
        job().fit(2, tmp_path, on_iteration=kill)
    assert torch.load(tmp_path / CHECKPOINT, weights_only=True)["iteration"] == 10
    resumed = job().fit(2, checkpoint_dir=tmp_path)
    assert np.array_equal(resumed.centroids, whole.centroids)
    assert StreamedKMeans(FeatureCache(tmp_path), K, seed=0).fingerprint() != job().fingerprint()


def test_train_kmeans_cli_streams_from_the_feature_cache(tiny_ssl, speech_corpus, tmp_path):
    from click.testing import CliRunner

    from speechtok import SemanticTokenizer
    from speechtok.cli.main import cli

    def train(out, *more, cache=("--feature-cache", str(tmp_path / "cache"))):
        return CliRunner().invoke(cli, ["train-kmeans", str(speech_corpus), "-m", tiny_ssl("hubert"), "-l",
                                        "2", "-k", "8", "-o", str(out), "-q", "--max-frames", "600",
                                        "--iters", "3", *cache, "--num-workers", "0", *more])

    r = train(tmp_path / "a")
    assert r.exit_code == 0, r.output
    tok = SemanticTokenizer.from_dir(tmp_path / "a")
    chunks = FeatureCache(tmp_path / "cache").sizes()
    frames = sum(n for _, n, _ in chunks)
    assert tok.meta["kmeans"]["frames"] == frames >= 600 and tok.k == 8
    assert "streamed" in tok.meta["kmeans"]["backend"] and (tmp_path / "cache" / CHECKPOINT).is_file()
    mtimes = [p.stat().st_mtime_ns for p, _, _ in chunks]
    r = train(tmp_path / "b")  # the same job: the cache is reused, k-means resumes from its last checkpoint
    assert r.exit_code == 0, r.output
    assert [p.stat().st_mtime_ns for p, _, _ in FeatureCache(tmp_path / "cache").sizes()] == mtimes
    assert np.array_equal(SemanticTokenizer.from_dir(tmp_path / "b").centroids, tok.centroids)
    r = train(tmp_path / "c", "--kmeans", "mini-batch", "--batch-frames", "100")  # the same cache, mini-batch
    assert r.exit_code == 0, r.output
    meta = SemanticTokenizer.from_dir(tmp_path / "c").meta["kmeans"]
    assert "minibatch" in meta["backend"] and meta["batch_frames"] == 100
    assert meta["iterations"] == -(-3 * frames // 100) and "steps" in r.output
    assert [p.stat().st_mtime_ns for p, _, _ in FeatureCache(tmp_path / "cache").sizes()] == mtimes
    r = train(tmp_path / "d", "--kmeans", "mini-batch", cache=())
    assert r.exit_code == 2 and "--feature-cache" in r.output and not (tmp_path / "d").exists()
