"""Coarse elements for the bounded data flow: runs of records packed as one
compressed element, and their ordered merge.

Beam pays per element (a DoFn call, a coder, state-cache sizing) and its
default coder pickles each NamedTuple on its own. A *run* is a sorted list of
records pickled together and zlib-compressed: one element through a shuffle
instead of hundreds, ~10x smaller in the runner's buffers. Merging runs in
key order decodes a run only when its smallest key is reached, so only runs
that overlap are decoded at once (a connection's payloads, or a connection's
flushes, follow each other in time).
"""

import contextlib
import gc
import heapq
import pickle
import zlib
from typing import Any, Callable, Iterable, Iterator, List, Sequence, Tuple

__all__ = ['pack', 'unpack', 'gc_paused', 'Run', 'make_run', 'merge_runs', 'make_batch', 'batch_changes']

Run = Tuple[Any, bytes]  # (smallest key, packed sorted records)


def pack(records: Sequence) -> bytes:
    return zlib.compress(pickle.dumps(list(records), protocol=pickle.HIGHEST_PROTOCOL), 1)


def unpack(data: bytes) -> List:
    """The records of ``pack``, unpickled with the garbage collector paused
    (see :func:`gc_paused`)."""
    data = zlib.decompress(data)
    with gc_paused():
        return pickle.loads(data)


@contextlib.contextmanager
def gc_paused():
    """The cyclic garbage collector paused for the block (kept paused if it was).

    Unpickling a run, or building a partition's rows, allocates hundreds of
    thousands of tuples; every 700 allocations start a collection, and every
    tenth of those scans the older objects too, all the records the worker
    holds by then: the cost grows with what is held, for records that hold no
    cycles to collect. Collections resume (and catch up once) after the block.
    """
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def make_run(records: Sequence, key: Callable[[Any], Any]) -> Run:
    """A run of ``records`` sorted by ``key`` (stable)."""
    ordered = sorted(records, key=key)
    return key(ordered[0]), pack(ordered)


def merge_runs(runs: Iterable[Run], key: Callable[[Any], Any]) -> Iterator:
    """The records of every run in ``key`` order (ties in the order of the
    runs' smallest keys, then of each run), decoding a run only once the merge
    reaches its smallest key."""
    pending = sorted(runs, key=lambda run: run[0])
    heap: List[tuple] = []
    order = 0
    next_run = 0
    while next_run < len(pending) or heap:
        while next_run < len(pending) and (not heap or pending[next_run][0] <= heap[0][0]):
            for record in unpack(pending[next_run][1]):
                heapq.heappush(heap, (key(record), order, record))
                order += 1
            next_run += 1
        yield heapq.heappop(heap)[2]


def make_batch(table: str, shard: int, changes: Sequence) -> tuple:
    """A shard batch, ``(table, shard, packed changes)``: packed, because Beam's
    default coder walks into a tuple and pickles each NamedTuple on its own."""
    return table, shard, pack(changes)


def batch_changes(batch: tuple) -> List:
    """The changes of a shard batch."""
    return unpack(batch[2])
