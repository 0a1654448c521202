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
without decoding it; a list of Changes of one table also has its *span*
there (the table, earliest and latest event time, ops), so a sink learns
where a batch goes without decoding it either. Data packed by earlier
versions (zlib and no header, or a header without a span) still unpacks.
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
from typing import (Any, Callable, Iterable, Iterator, List, NamedTuple, Optional, Sequence,
                    Tuple)

import zstandard
from apache_beam import Map, typehints

from changeflow.model import AuditEvent, Change, RowOp

__all__ = ['pack', 'unpack', 'packed_counts', 'packed_span', 'Span', 'gc_paused', 'Run',
           'make_run', 'merge_runs', 'make_batch', 'batch_changes', 'batch_counts', 'batch_span',
           'typed_keys', 'SHARD_KEY']

SHARD_KEY = typehints.Tuple[str, int]   # (table, shard), (serverhost, connection id)

Run = Tuple[Any, bytes]  # (smallest key, packed sorted records)

_HEADER = struct.Struct('<BII')  # format, records, keyless Changes
_SPAN = struct.Struct('<qqIIH')  # after a spanned header: Span's fields but the table, whose
# UTF-8 bytes (their length last here) follow
_ANY, _EVENTS, _CHANGES = 1, 2, 3
_SPANNED = 0x10  # a format flag: the span follows the header
_INT64 = (-2 ** 63, 2 ** 63 - 1)
_ZLIB = 0x78  # the first byte of every zlib stream: data packed before the header existed
_ops_of = operator.itemgetter(2)
_table_of = operator.itemgetter(0)
_time_of = operator.itemgetter(3)
_event = functools.partial(tuple.__new__, AuditEvent)
_op = functools.partial(tuple.__new__, RowOp)
_new = tuple.__new__


class Span(NamedTuple):
    """What a packed list of Changes of one table covers, read without decoding it."""
    table: str
    earliest_us: int  # the least and greatest event_time_us
    latest_us: int
    ops: int          # of all the Changes
    opless: int       # Changes without ops


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
    form, body, span = _ANY, records, b''
    if types == {Change}:
        keyless = sum(1 for change in records if not change[1])
        if _plain_ops(records):
            form = _CHANGES
            body = [(change[0], change[1], change[3], *map(tuple, change[2]))
                    for change in records]
        span = _span(records)
        if span:
            form |= _SPANNED
    elif types == {AuditEvent}:
        form, body = _EVENTS, list(map(tuple, records))
    return _HEADER.pack(form, len(records), keyless) + span + _CODECS.compress(
        pickle.dumps(body, protocol=pickle.HIGHEST_PROTOCOL))


def _span(changes: List[Change]) -> bytes:
    """The packed span of Changes of one table with event times in int64,
    b'' for any others."""
    tables = set(map(_table_of, changes))
    times = list(map(_time_of, changes))
    if len(tables) != 1 or set(map(type, times)) != {int}:
        return b''
    table, = tables
    earliest, latest = min(times), max(times)
    if type(table) is not str or earliest < _INT64[0] or latest > _INT64[1]:
        return b''
    try:
        name = table.encode('utf-8')
    except UnicodeEncodeError:
        return b''
    try:
        counts = list(map(len, map(_ops_of, changes)))
    except TypeError:  # ops that are not a sequence: packed as they are, without a span
        return b''
    if len(name) > 0xFFFF or sum(counts) > 0xFFFFFFFF:
        return b''
    return _SPAN.pack(earliest, latest, sum(counts), counts.count(0), len(name)) + name


def _body(data: bytes) -> memoryview:
    """The compressed records of headed ``data``, after its header and span."""
    start = _HEADER.size
    if data[0] & _SPANNED:
        start += _SPAN.size + _SPAN.unpack_from(data, start)[-1]
    return memoryview(data)[start:]


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
    form = data[0] & ~_SPANNED
    raw = _CODECS.decompress(_body(data))
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


def packed_span(data: bytes) -> Optional[Span]:
    """The :class:`Span` of packed ``data``, without decoding it; None unless
    it is a list of Changes of one table (and packed by this version)."""
    if data[0] == _ZLIB or not data[0] & _SPANNED:
        return None
    earliest, latest, ops, opless, size = _SPAN.unpack_from(data, _HEADER.size)
    start = _HEADER.size + _SPAN.size
    return Span(bytes(data[start:start + size]).decode('utf-8'), earliest, latest, ops, opless)


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


def batch_span(batch: tuple) -> Optional[Span]:
    """The :class:`Span` of a shard batch's changes, without decoding them."""
    return packed_span(batch[2])


def _same(element):
    return element


def typed_keys(key=SHARD_KEY, value=typehints.Any):
    """A pass-through step declaring its (key, value) elements' types, so the
    grouping or state after it encodes keys with a deterministic coder (on
    Flink and Dataflow the encoding decides the group; pickled, it may vary)."""
    return Map(_same).with_output_types(typehints.Tuple[key, value])
