"""Coarse elements for the bounded data flow: runs of records packed as one
compressed element, and their ordered merge.

Beam pays per element (a DoFn call, a coder, state-cache sizing) and its
default coder pickles each NamedTuple on its own. A *run* is a sorted list of
records pickled together and zstd-compressed: one element through a shuffle
instead of hundreds, 7-12x smaller in the runner's buffers. Merging runs in
key order decodes a run only when its smallest key is reached, so only runs
that overlap are decoded at once (a connection's payloads, or a connection's
flushes, follow each other in time).

A list of AuditEvents or of Changes (nearly every run) is pickled as plain
tuples and rebuilt on unpacking: pickle reduces a NamedTuple through Python
calls (``__getnewargs__``, the class's ``__new__``), twice per Change: packing
and unpacking were a third of a 50k-event job's samples (py-spy), 23% after. The values inside (Decimal, bytes, nested
tuples, None, OpKind members) are pickled as they are, so a record unpacks
equal to what was packed, of the same types. A packed list starts with a
header (format, record count, keyless Changes), so a batch's size is read
without decoding it; data packed by earlier versions (zlib, no header)
still unpacks.
"""

import contextlib
import functools
import gc
import heapq
import itertools
import operator
import pickle
import struct
import threading
import zlib
from typing import Any, Callable, Iterable, Iterator, List, Sequence, Tuple

import zstandard
from apache_beam import Map, typehints

from changeflow.model import AuditEvent, Change, RowOp

__all__ = ['pack', 'unpack', 'packed_counts', 'gc_paused', 'Run', 'make_run', 'merge_runs',
           'make_batch', 'batch_changes', 'batch_counts', 'typed_keys', 'SHARD_KEY']

SHARD_KEY = typehints.Tuple[str, int]   # (table, shard), (serverhost, connection id)

Run = Tuple[Any, bytes]  # (smallest key, packed sorted records)

_HEADER = struct.Struct('<BII')  # format, records, keyless Changes
_ANY, _EVENTS, _CHANGES = 1, 2, 3
_ZLIB = 0x78  # the first byte of every zlib stream: data packed before the header existed
_ops_of = operator.itemgetter(2)
_event = functools.partial(tuple.__new__, AuditEvent)
_op = functools.partial(tuple.__new__, RowOp)
_new = tuple.__new__


class _Codecs(threading.local):
    """A zstd compressor and decompressor per thread: neither may be used by
    two threads at once, and a runner may run bundles on several."""

    def __init__(self):
        self.compress = zstandard.ZstdCompressor(level=1).compress
        self.decompress = zstandard.ZstdDecompressor().decompress


_CODECS = _Codecs()


def pack(records: Sequence) -> bytes:
    """``records`` (a list of any picklable values) as compressed bytes.

    Packed with the garbage collector paused: the plain tuples made for
    pickling are freed before it resumes, and their allocations would
    otherwise start collections that scan everything the worker holds (half
    of packing's time with 200k Changes held)."""
    with gc_paused():
        return _pack(list(records))


def _pack(records: List) -> bytes:
    types = set(map(type, records))
    keyless = 0
    form, body = _ANY, records
    if types == {Change}:
        keyless = sum(1 for change in records if not change[1])
        if _plain_ops(records):
            form = _CHANGES
            body = [(change[0], change[1], change[3], *map(tuple, change[2]))
                    for change in records]
    elif types == {AuditEvent}:
        form, body = _EVENTS, list(map(tuple, records))
    return _HEADER.pack(form, len(records), keyless) + _CODECS.compress(
        pickle.dumps(body, protocol=pickle.HIGHEST_PROTOCOL))


def _plain_ops(changes: List[Change]) -> bool:
    """Every Change's ops a tuple of RowOps (what unpacking rebuilds)."""
    return (set(map(type, map(_ops_of, changes))) <= {tuple}
            and set(map(type, itertools.chain.from_iterable(map(_ops_of, changes)))) <= {RowOp})


def unpack(data: bytes) -> List:
    """The records :func:`pack` made ``data`` of, unpickled with the garbage
    collector paused (see :func:`gc_paused`)."""
    if data[0] == _ZLIB:
        data = zlib.decompress(data)
        with gc_paused():
            return pickle.loads(data)
    form = data[0]
    raw = _CODECS.decompress(memoryview(data)[_HEADER.size:])
    with gc_paused():
        body = pickle.loads(raw)
        if form == _CHANGES:
            return [_new(Change, (row[0], row[1], tuple(map(_op, row[3:])), row[2]))
                    for row in body]
        if form == _EVENTS:
            return list(map(_event, body))
        return body


def packed_counts(data: bytes) -> Tuple[int, int]:
    """(records, keyless Changes) of packed ``data``, without decoding it."""
    if data[0] == _ZLIB:
        records = unpack(data)
        return len(records), sum(1 for record in records
                                 if isinstance(record, Change) and not record.key)
    _, records, keyless = _HEADER.unpack_from(data)
    return records, keyless


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
    reaches its smallest key. Each run's records are sorted by ``key`` (as
    :func:`make_run` makes them), so the heap holds one cursor per decoded run."""
    pending = sorted(runs, key=lambda run: run[0])
    # (key of the run's next record, run's rank, its position, records, key of its last)
    heap: List[tuple] = []
    next_run = 0
    while next_run < len(pending) or heap:
        while next_run < len(pending) and (not heap or pending[next_run][0] <= heap[0][0]):
            records = unpack(pending[next_run][1])
            if records:
                heapq.heappush(heap, (key(records[0]), next_run, 0, records, key(records[-1])))
            next_run += 1
        if not heap:
            continue
        if len(heap) == 1 and (next_run == len(pending) or heap[0][4] <= pending[next_run][0]):
            # The one run decoded ends before the next run starts (a connection's
            # payloads, a shard's flushes): the rest of it at once, no heap per record.
            _, _, position, records, _ = heap.pop()
            yield from records[position:] if position else records
            continue
        _, rank, position, records, last = heap[0]
        yield records[position]
        position += 1
        if position < len(records):
            heapq.heapreplace(heap, (key(records[position]), rank, position, records, last))
        else:
            heapq.heappop(heap)


def make_batch(table: str, shard: int, changes: Sequence) -> tuple:
    """A shard batch, ``(table, shard, packed changes)``: packed, because Beam's
    default coder walks into a tuple and pickles each NamedTuple on its own."""
    return table, shard, pack(changes)


def batch_changes(batch: tuple) -> List:
    """The changes of a shard batch."""
    return unpack(batch[2])


def batch_counts(batch: tuple) -> Tuple[int, int]:
    """(changes, whole-table changes) of a shard batch, without decoding it."""
    return packed_counts(batch[2])


def _same(element):
    return element


def typed_keys(key=SHARD_KEY, value=typehints.Any):
    """A pass-through step declaring its (key, value) elements' types, so the
    grouping or state after it encodes keys with a deterministic coder (on
    Flink and Dataflow the encoding decides the group; pickled, it may vary)."""
    return Map(_same).with_output_types(typehints.Tuple[key, value])
