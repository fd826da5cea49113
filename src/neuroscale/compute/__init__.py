"""Where the graph runs: a local Dask cluster by default, or any existing scheduler."""

from neuroscale.compute.cluster import cluster_client, compute_with_progress

__all__ = ["cluster_client", "compute_with_progress"]
