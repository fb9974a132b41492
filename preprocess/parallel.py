"""Ordered parallel map over worker processes, with a progress bar."""
import multiprocessing
import os

from tqdm import tqdm


def default_workers():
    """One worker per core this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def parallel_map(function, items, workers=0, description="", chunksize=4):
    """Yield ``function(item)`` for every item, in order, from ``workers`` processes (0: all cores).

    With one worker everything runs in this process (easier to debug, no start-up cost).
    ``function`` must be a module-level function so that it can be sent to the workers.
    """
    items = list(items)
    workers = min(workers or default_workers(), max(1, len(items)))
    if workers == 1:
        for item in tqdm(items, desc=description, unit="slice", dynamic_ncols=True):
            yield function(item)
        return
    # spawn, not fork: a forked child can inherit locks held by the parent's threads (HDF5,
    # BLAS, progress bars) and hang; spawn costs about a second of imports per worker.
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        results = pool.imap(function, items, chunksize=chunksize)
        yield from tqdm(results, total=len(items), desc=description, unit="slice", dynamic_ncols=True)
