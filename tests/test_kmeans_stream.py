"""k-means streamed from a feature cache on disk: the in-memory result on the same (fp16) frames, exact
resume from the centroid checkpoint, and the same centroids on two gloo ranks as on one."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from speechtok.tokenizers.kmeans import kmeans_torch
from speechtok.tokenizers.kmeans_stream import CHECKPOINT, FeatureCache, StreamedKMeans

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
from kmeans import mixture  # noqa: E402

K, ITERS = 24, 6


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


def test_cache_holds_every_frame_in_fp16_chunks(cache, frames):
    sizes = FeatureCache(cache).sizes()
    assert [n for _, n, _ in sizes] == [2500] * 4 + [2000]
    back = np.concatenate([np.load(p) for p, _, _ in sizes])
    assert back.dtype == np.float16 and np.array_equal(back, frames.numpy())


def test_streamed_equals_in_memory_kmeans(cache, frames):
    streamed = StreamedKMeans(FeatureCache(cache), K, seed=0).fit(ITERS)
    memory = kmeans_torch(frames.float(), K, iters=ITERS, seed=0)  # same seeding, all frames in memory
    # only the summation differs (exact int64 vs fp32 index_add): same clusters, centroids to fp32 rounding
    assert abs(streamed.inertia - memory.inertia) <= 1e-3 * memory.inertia
    scale = float(frames.float().abs().max())
    np.testing.assert_allclose(streamed.centroids, memory.centroids, atol=1e-4 * scale)


def test_resume_from_checkpoint_equals_uninterrupted(cache, tmp_path):
    for p in FeatureCache(cache).chunks():
        os.symlink(p, tmp_path / p.name)
    whole = StreamedKMeans(FeatureCache(cache), K, seed=0).fit(ITERS)
    StreamedKMeans(FeatureCache(tmp_path), K, seed=0).fit(2, checkpoint_dir=tmp_path)  # "killed" after 2
    state = torch.load(tmp_path / CHECKPOINT, weights_only=True)
    assert state["iteration"] == 2
    resumed = StreamedKMeans(FeatureCache(tmp_path), K, seed=0).fit(ITERS, checkpoint_dir=tmp_path)
    assert np.array_equal(resumed.centroids, whole.centroids)
    other_seed = StreamedKMeans(FeatureCache(tmp_path), K, seed=1)  # a checkpoint of another job is ignored
    assert other_seed.fingerprint() != state["fingerprint"]


def test_two_gloo_ranks_give_the_single_process_centroids(cache, tmp_path):
    one = StreamedKMeans(FeatureCache(cache), K, seed=0).fit(ITERS)
    out = tmp_path / "two.npy"
    script = Path(__file__).parent / "kmeans_ranks.py"
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                        str(29500 + os.getpid() % 1000 + 11), str(script), str(cache), str(K), str(ITERS), str(out)],
                       capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    assert np.array_equal(np.load(out), one.centroids)  # exact sums: the same bits on any number of ranks
    assert np.load(str(out) + ".inertia.npy")[0] == pytest.approx(one.inertia, rel=1e-12)


def test_train_kmeans_cli_streams_from_the_feature_cache(tiny_ssl, speech_corpus, tmp_path):
    from click.testing import CliRunner

    from speechtok import SemanticTokenizer
    from speechtok.cli.main import cli

    def train(out):
        return CliRunner().invoke(cli, ["train-kmeans", str(speech_corpus), "-m", tiny_ssl("hubert"), "-l", "2",
                                        "-k", "8", "-o", str(out), "-q", "--max-frames", "600", "--iters", "3",
                                        "--feature-cache", str(tmp_path / "cache"), "--num-workers", "0"])

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
