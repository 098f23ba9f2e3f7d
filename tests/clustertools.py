"""A dask cluster inside the test process, for the execution and cluster-build tests."""

from __future__ import annotations

import contextlib
import logging


@contextlib.contextmanager
def in_process_cluster(**options):
    """A LocalCluster of one single-thread worker in this process, reachable from other processes. The worker sets
    torch's threads when it loads the model; they are given back after, so that the next tests' builds, here and in
    the commands they start, run on as many threads and round alike."""
    import torch
    from distributed import Client, LocalCluster

    options.setdefault("protocol", "tcp://")
    threads = torch.get_num_threads()
    with (
        LocalCluster(
            n_workers=1,
            threads_per_worker=1,
            processes=False,
            scheduler_port=0,
            dashboard_address=None,
            silence_logs=logging.CRITICAL,
            **options,
        ) as cluster,
        Client(cluster, security=options.get("security")) as client,
    ):
        try:
            yield cluster, client
        finally:
            torch.set_num_threads(threads)
