"""Sharded indexes and search across processes and machines, on torch.distributed.

    cluster   Cluster (rank, world, collectives, the control plane), ShardError
    index     ShardedIndex (sharded.json + one ordinary index per shard), build_sharded_index
    search    ShardedSearcher (SPMD search and re-ranking), merge_topk

How to run it (torchrun, the CLI, failure handling): docs/sharded.md.
"""

from .cluster import Cluster, ShardError
from .index import ShardedIndex, build_sharded_index, shard_ranges
from .search import SearchReport, ShardedSearcher, merge_topk

__all__ = [
    "Cluster",
    "SearchReport",
    "ShardError",
    "ShardedIndex",
    "ShardedSearcher",
    "build_sharded_index",
    "merge_topk",
    "shard_ranges",
]
