"""Run under torchrun by test_kmeans_stream: streamed k-means over a feature cache on gloo ranks; rank 0
saves the centroids and inertia of Lloyd (OUT.npy) and of mini-batch k-means with BATCH frames a step
(OUT.npy.minibatch.npy). Usage: kmeans_ranks.py CACHE K ITERS OUT.npy BATCH"""

import sys

import numpy as np
import torch.distributed as dist

from speechtok.tokenizers.kmeans_stream import FeatureCache, StreamedKMeans

cache, k, iters, out, batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
dist.init_process_group("gloo")
result = StreamedKMeans(FeatureCache(cache), k, seed=0).fit(iters)
minibatch = StreamedKMeans(FeatureCache(cache), k, seed=0, batch_frames=batch).fit(1)
if dist.get_rank() == 0:
    np.save(out, result.centroids)
    np.save(out + ".inertia.npy", np.array([result.inertia]))
    np.save(out + ".minibatch.npy", minibatch.centroids)
dist.destroy_process_group()
