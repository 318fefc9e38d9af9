"""Run under torchrun by test_kmeans_stream: streamed k-means over a feature cache on gloo ranks; rank 0
saves the centroids and inertia. Usage: kmeans_ranks.py CACHE K ITERS OUT.npy"""

import sys

import numpy as np
import torch.distributed as dist

from speechtok.tokenizers.kmeans_stream import FeatureCache, StreamedKMeans

cache, k, iters, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
dist.init_process_group("gloo")
result = StreamedKMeans(FeatureCache(cache), k, seed=0).fit(iters)
if dist.get_rank() == 0:
    np.save(out, result.centroids)
    np.save(out + ".inertia.npy", np.array([result.inertia]))
dist.destroy_process_group()
