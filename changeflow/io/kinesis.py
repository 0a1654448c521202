"""A pure-Python (boto3) Kinesis Data Streams reader, parents before children.

Beam's own ``KinesisIO`` is a Java cross-language transform (its jars cannot
be fetched here and it does not run on the local runners), so changeflow
reads Kinesis itself. This module is the reader core: no Beam. The catch-up
mode calls :meth:`KinesisShardReader.read_to_tip` once per cycle; the
unbounded mode and the pipelines wrap it in DoFns that build the client in
``setup`` (:func:`kinesis_client`).

What it guarantees:

* Shards are listed with ``ListShards`` (every page) and read in lineage
  order (:mod:`changeflow.io.shards`): a child only after all its parents are
  read to their end, so each partition key's records come in order across
  splits and merges. Shards are re-listed whenever one finishes, so children
  created while reading are found.
* Nothing is skipped: a closed shard is read until the service says it
  ended, whatever empty pages come before; an expired iterator
  (``ExpiredIteratorException``, after 5 minutes) is renewed
  ``AFTER_SEQUENCE_NUMBER`` the last record read; a
  shard a checkpoint had read part way that the listing no longer holds raises
  :class:`ShardsLost` (its records expired unread) instead of being skipped.
* The shards readable at once are read concurrently: their
  ``GetShardIterator`` and ``GetRecords`` calls go out together (up to
  ``max_concurrent_calls``), one call per shard at a time, and the pages are
  taken in shard order.
* Throttling (``ProvisionedThroughputExceededException``,
  ``LimitExceededException``) is backed off per shard, capped exponential with
  full jitter, while the other shards go on; at most ``reads_per_second``
  (Kinesis allows 5) ``GetRecords`` calls per shard.

Why not botocore's retry config for throttling: its standard and adaptive
modes retry these codes, but they sleep inside the call (blocking every other
shard behind one throttled shard), give up after ``max_attempts`` (a long
catch-up on a busy stream is throttled often and must slow down, not fail),
and hide the throttles from the reader. The client keeps botocore's standard
mode with few attempts for what it is good at: connection errors and 5xx.
"""

import datetime
import functools
import logging
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Dict, Iterator, List, Mapping, NamedTuple, Optional, Tuple

from botocore.exceptions import ClientError

from changeflow.io.shards import ShardGraph, ShardPosition, split_positions
from changeflow.model import SourceRecord

__all__ = ['Start', 'ShardBatch', 'Page', 'Backoff', 'KinesisShardReader', 'kinesis_client',
           'ReadError', 'ShardsLost', 'MAX_LIMIT', 'THROTTLING', 'shared_kinesis_client',
           'stream_name']

_LOG = logging.getLogger(__name__)

MAX_LIMIT = 10_000                     # GetRecords' largest Limit
THROTTLING = frozenset({'ProvisionedThroughputExceededException', 'LimitExceededException',
                        'KMSThrottlingException'})   # GetRecords on an encrypted stream


class ReadError(RuntimeError):
    """A shard could not be read (throttled past the limit, iterator not renewable)."""


class ShardsLost(ReadError):
    """Shards read part way have expired from the stream: records were lost unread."""

    def __init__(self, stream, shard_ids):
        super().__init__(f'{stream}: shards {", ".join(shard_ids)} expired from the stream '
                         f'before they were read to the end; their remaining records are lost')
        self.stream = stream
        self.shard_ids = tuple(shard_ids)


class Start(NamedTuple):
    """Where a shard without a checkpoint starts.

    ``latest`` starts each shard at the records arriving after its iterator
    is made. To keep that point across cycles, resolve it once
    (:meth:`resolved`) and persist the resulting ``at_timestamp``; otherwise a
    shard that received nothing before the first checkpoint starts anew.
    """
    kind: str = 'trim_horizon'             # 'trim_horizon' | 'latest' | 'at_timestamp'
    timestamp_ms: Optional[int] = None     # for at_timestamp

    @classmethod
    def parse(cls, value) -> 'Start':
        """From the config: ``trim_horizon``, ``latest`` or ``{at_timestamp: ISO-8601}``."""
        if value is None:
            return cls()
        if isinstance(value, str) and value in ('trim_horizon', 'latest'):
            return cls(value)
        if isinstance(value, Mapping) and set(value) == {'at_timestamp'}:
            ts = value['at_timestamp']
            if isinstance(ts, str):
                ts = datetime.datetime.fromisoformat(ts.replace('Z', '+00:00'))
            if isinstance(ts, datetime.datetime):
                if ts.tzinfo is None:
                    raise ValueError(f'start at_timestamp needs a time zone: {value!r}')
                return cls('at_timestamp', int(ts.timestamp() * 1000))
        raise ValueError(f'start must be trim_horizon, latest or {{at_timestamp: ISO-8601}}, '
                         f'not {value!r}')

    def resolved(self, now_ms: int) -> 'Start':
        """``latest`` as the timestamp ``now_ms``; other starts unchanged."""
        return Start('at_timestamp', now_ms) if self.kind == 'latest' else self

    def iterator_args(self) -> dict:
        if self.kind == 'at_timestamp':
            return {'ShardIteratorType': 'AT_TIMESTAMP',
                    'Timestamp': datetime.datetime.fromtimestamp(
                        self.timestamp_ms / 1000, datetime.timezone.utc)}
        return {'ShardIteratorType': self.kind.upper()}


class ShardBatch(NamedTuple):
    """Records read from one shard by one ``GetRecords`` call, and the shard's
    position after them (what to checkpoint once the records are processed)."""
    shard_id: str
    records: Tuple[SourceRecord, ...]
    position: ShardPosition
    millis_behind: Optional[int]           # MillisBehindLatest: the shard's lag


class Page(NamedTuple):
    """What one ``GetRecords`` call of :meth:`KinesisShardReader.read_page` gave."""
    records: Tuple[SourceRecord, ...]
    drained: bool                          # the shard is closed and read to its end
    caught_up: bool                        # nothing more to read now (an open shard's tip)
    millis_behind: Optional[int]


class Backoff(NamedTuple):
    """Capped exponential backoff with full jitter (AWS's recommended form)."""
    base_s: float = 0.2
    cap_s: float = 10.0
    max_attempts: int = 30                 # consecutive throttles of one call before ReadError

    def delay(self, attempt: int, rng: random.Random) -> float:
        """Seconds to wait before retry number ``attempt`` (1-based)."""
        return rng.uniform(0, min(self.cap_s, self.base_s * 2 ** (attempt - 1)))


def kinesis_client(region: Optional[str] = None, endpoint_url: Optional[str] = None,
                   read_timeout: float = 20.0):
    """A Kinesis client on boto3's default credential chain.

    ``read_timeout`` bounds a call: kinesalite can hang on AT_TIMESTAMP
    iterators with no record at or after the timestamp.
    """
    import boto3
    from botocore.config import Config
    config = Config(retries={'mode': 'standard', 'max_attempts': 3},
                    connect_timeout=5, read_timeout=read_timeout)
    return boto3.client('kinesis', region_name=region, endpoint_url=endpoint_url, config=config)


@functools.lru_cache(maxsize=8)
def shared_kinesis_client(region: Optional[str] = None, endpoint_url: Optional[str] = None):
    """One :func:`kinesis_client` per process and (region, endpoint): boto3
    clients are thread-safe, and making one (loading the service model, the
    credential chain) costs 20-50 ms, which every cycle of ``--follow`` paid
    in its read's ``setup``."""
    return kinesis_client(region, endpoint_url)


def _code(error: ClientError) -> str:
    return error.response.get('Error', {}).get('Code', '')


def _stream_args(stream: str) -> dict:
    return {'StreamARN': stream} if stream.startswith('arn:') else {'StreamName': stream}


def stream_name(stream: str) -> str:
    """The name of a stream given by name or ARN (``arn:...:stream/NAME``)."""
    return stream.rsplit('stream/', 1)[-1] if stream.startswith('arn:') else stream


class _Cursor:
    """One shard being read in a cycle."""
    __slots__ = ('shard_id', 'iterator', 'position', 'next_call', 'throttles', 'renewals',
                 'closed_empty_reads')

    def __init__(self, shard_id, iterator, position):
        self.shard_id = shard_id
        self.iterator = iterator
        self.position = position
        self.next_call = 0.0
        self.throttles = 0
        self.renewals = 0
        self.closed_empty_reads = 0


class KinesisShardReader:
    """Reads the shards of Kinesis streams through a boto3 client.

    Args:
      client: a boto3 Kinesis client (:func:`kinesis_client`), opened by the
        caller or in a DoFn's ``setup``.
      limit: records per ``GetRecords`` call, at most 10,000.
      reads_per_second: ``GetRecords`` calls per shard and second (Kinesis: 5,
        shared by every consumer of the stream).
      page_size: ``MaxResults`` of ``ListShards`` (None: the service default).
      backoff: throttling backoff; ``clock``, ``sleep`` and ``rng`` are for tests.

    ``lag`` holds each shard's last ``MillisBehindLatest``.
    """

    max_limit = MAX_LIMIT
    max_renewals = 3           # consecutive expired iterators of one shard before ReadError
    # Empty pages in a row of a closed shard before ReadError: sparse stretches of a shard
    # may take several calls to cross; this many (minutes of calls) means it never ends.
    max_closed_empty_reads = 1000
    # Shards whose calls a cycle makes at once (botocore's pool keeps 10 connections).
    max_concurrent_calls = 10

    def __init__(self, client, limit: int = MAX_LIMIT, reads_per_second: float = 5.0,
                 page_size: Optional[int] = None, backoff: Backoff = Backoff(),
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep,
                 rng: Optional[random.Random] = None):
        if not 1 <= limit <= self.max_limit:
            raise ValueError(f'limit must be 1..{self.max_limit}, not {limit!r}')
        if reads_per_second <= 0:
            raise ValueError(f'reads_per_second must be positive, not {reads_per_second!r}')
        self._client = client
        self._limit = limit
        self._interval = 1.0 / reads_per_second
        self._page_size = page_size
        self._backoff = backoff
        self._clock = clock
        self._sleep = sleep
        self._rng = rng or random.Random()
        self.lag: Dict[str, Optional[int]] = {}
        self.throttled = 0                  # throttling errors seen (all calls)
        self.renewed = 0                    # expired iterators renewed
        self._count_lock = threading.Lock()

    # -- service calls ------------------------------------------------------

    def _call(self, fn, **kwargs):
        """One control-plane call (ListShards, GetShardIterator), throttling backed off."""
        attempt = 0
        while True:
            try:
                return fn(**kwargs)
            except ClientError as e:
                if _code(e) not in THROTTLING:
                    raise
                attempt += 1
                with self._count_lock:          # shards' iterators are opened concurrently
                    self.throttled += 1
                if attempt >= self._backoff.max_attempts:
                    raise ReadError(f'{fn.__name__} throttled {attempt} times: {e}') from e
                self._sleep(self._backoff.delay(attempt, self._rng))

    def list_shards(self, stream: str) -> List[dict]:
        """Every shard of the stream (all ``ListShards`` pages).

        A page after the first names the stream only by its ``NextToken``:
        AWS rejects ``StreamName`` with it (botocore's own paginator sends both,
        botocore#2009). moto 5.2 wants the stream repeated, answering
        ``InvalidToken`` (a code AWS's ListShards does not have) otherwise; that
        page is asked again its way. An expired token restarts the listing.
        (kinesalite ignores ``MaxResults`` and returns one page.)
        """
        first = dict(_stream_args(stream))
        if self._page_size:
            first['MaxResults'] = self._page_size
        shards, args, restarts = [], first, 0
        while True:
            try:
                response = self._call(self._client.list_shards, **args)
            except ClientError as e:
                if _code(e) == 'InvalidToken' and 'NextToken' in args and 'StreamName' not in args \
                        and 'StreamARN' not in args:
                    args = {**args, **_stream_args(stream)}
                    continue
                if _code(e) == 'ExpiredNextTokenException' and restarts < 3:
                    shards, args, restarts = [], first, restarts + 1
                    continue
                raise
            shards.extend(response.get('Shards', ()))
            token = response.get('NextToken')
            if not token:
                return shards
            args = {'NextToken': token}
            if self._page_size:
                args['MaxResults'] = self._page_size

    def shard_graph(self, stream: str) -> ShardGraph:
        return ShardGraph.from_descriptions(self.list_shards(stream))

    def resolve_stream(self, stream: str) -> str:
        """The stream as the reading calls take it: a Kinesis name or ARN as given."""
        return stream

    def shard_iterator(self, stream: str, shard_id: str, position: ShardPosition,
                       start: Start) -> str:
        """An iterator after ``position``, or at ``start`` when nothing was read."""
        if position.sequence is not None:
            where = {'ShardIteratorType': 'AFTER_SEQUENCE_NUMBER',
                     'StartingSequenceNumber': position.sequence}
        else:
            where = start.iterator_args()
        response = self._call(self._client.get_shard_iterator, ShardId=shard_id,
                              **_stream_args(stream), **where)
        return response['ShardIterator']

    # -- reading ------------------------------------------------------------

    def read_to_tip(self, stream: str, checkpoints: Optional[Mapping[str, ShardPosition]] = None,
                    start: Start = Start()) -> Iterator[ShardBatch]:
        """Read every shard from its checkpoint to the tip, parents first.

        Yields a ShardBatch per ``GetRecords`` call that returned records or
        finished a shard (an empty batch then carries the finished position).
        An open shard stops when caught up: no records and
        ``MillisBehindLatest`` 0, or a page short of the limit whose last
        record is the tip (``MillisBehindLatest`` 0), so that a cycle does not
        chase records that keep arriving while it reads (one more call would
        mostly find the next put's records, and the next, for a cycle of
        unbounded length); what arrives after the tip was read is the next
        cycle's. A closed one stops only when drained
        (``NextShardIterator`` null; kinesalite then still reports a
        ``MillisBehindLatest`` above 0), so its children follow. Shards
        without a checkpoint start at ``start``, except children of a shard
        this reader (or the checkpoint) has read records from: they start at
        TRIM_HORIZON, so nothing after the parent's last record is skipped.
        Commit ``batch.position`` per shard only after the batch's records
        are processed.
        """
        positions: Dict[str, ShardPosition] = dict(checkpoints or {})
        graph = self.shard_graph(stream)
        finished, sequences = split_positions(positions)
        lost = graph.lost(finished, sequences)
        if lost:
            raise ShardsLost(stream, lost)
        source = stream_name(stream)
        records_args = self._records_args(stream)
        cursors: Dict[str, _Cursor] = {}
        caught_up = set()
        with ThreadPoolExecutor(self.max_concurrent_calls, 'kinesis-read') as pool:
            while True:
                finished, sequences = split_positions(positions)
                new = [shard_id for shard_id in graph.readable(finished, sequences)
                       if shard_id not in cursors and shard_id not in caught_up]
                opened = self._each(pool, lambda shard_id: self._open(
                    stream, graph, shard_id, positions, start), new)
                cursors.update(zip(new, opened))
                if not cursors:
                    return
                due = self._due(cursors.values())
                pages = self._each(pool, lambda cursor: self._get_page(cursor, records_args), due)
                for cursor, response in zip(due, pages):
                    yield from self._take_page(stream, source, start, graph, cursor, response,
                                               positions, cursors, caught_up)
                    if cursor.shard_id not in cursors and positions[cursor.shard_id].finished:
                        graph = self.shard_graph(stream)     # children made while reading

    @staticmethod
    def _each(pool: ThreadPoolExecutor, fn: Callable, items: List) -> List:
        """``fn`` of every item, concurrently when there are several (one shard's
        calls never overlap: each cursor is in ``items`` once)."""
        if len(items) <= 1:
            return [fn(item) for item in items]
        return list(pool.map(fn, items))

    def _due(self, cursors) -> List[_Cursor]:
        """Waits for the first cursor whose next call is due; returns every
        cursor then due (by shard id), their next calls set one interval on."""
        wait = min(c.next_call for c in cursors) - self._clock()
        if wait > 0:
            self._sleep(wait)
        now = self._clock()
        due = sorted((c for c in cursors if c.next_call <= now), key=lambda c: c.shard_id)
        for cursor in due:
            cursor.next_call = now + self._interval
        return due

    def _get_page(self, cursor: _Cursor, records_args: dict):
        """One GetRecords response, or the ClientError it raised (recovered by the caller)."""
        try:
            return self._client.get_records(
                ShardIterator=cursor.iterator, Limit=self._limit, **records_args)
        except ClientError as e:
            return e

    def _advance(self, cursor: _Cursor, response: Mapping):
        """A GetRecords response taken on ``cursor``: (records, MillisBehindLatest,
        whether the shard ended), the cursor's position moved past the records."""
        cursor.throttles = cursor.renewals = 0
        records = response.get('Records', ())
        behind = response.get('MillisBehindLatest')
        self.lag[cursor.shard_id] = behind
        drained = response.get('NextShardIterator') is None
        cursor.position = ShardPosition(
            records[-1]['SequenceNumber'] if records else cursor.position.sequence,
            drained, cursor.position.parents)
        return records, behind, drained

    def _take_page(self, stream, source, start, graph, cursor, response, positions, cursors,
                   caught_up) -> Iterator[ShardBatch]:
        """One GetRecords response of ``cursor`` read: its batch, and the cursor
        moved on, recovered, or done (removed from ``cursors``)."""
        if isinstance(response, ClientError):
            self._recover(stream, cursor, response, start)
            return
        records, behind, drained = self._advance(cursor, response)
        positions[cursor.shard_id] = cursor.position
        closed = cursor.shard_id in graph and graph.shards[cursor.shard_id].closed
        if records or drained:
            yield ShardBatch(cursor.shard_id,
                             tuple(self._source_record(r, source, cursor.shard_id)
                                   for r in records),
                             cursor.position, behind)
        if drained:
            del cursors[cursor.shard_id]
        elif not self._caught_up(records, behind) and (
                closed or not self._at_tip(records, behind)):
            cursor.closed_empty_reads = 0
            cursor.iterator = response['NextShardIterator']
        elif closed:
            # A closed shard ends at a null NextShardIterator alone: an empty page with an
            # iterator may come first (kinesalite: after the last record, when the close
            # came over a second later), and the children wait for the end.
            cursor.closed_empty_reads += 1
            if cursor.closed_empty_reads > self.max_closed_empty_reads:
                raise ReadError(f'{stream}/{cursor.shard_id}: closed, but '
                                f'{cursor.closed_empty_reads} GetRecords calls in a row '
                                f'returned nothing and did not reach its end')
            cursor.iterator = response['NextShardIterator']
        else:
            del cursors[cursor.shard_id]
            caught_up.add(cursor.shard_id)

    # -- one shard at a time (the unbounded mode's splittable DoFn) ----------

    def begin(self, stream: str) -> str:
        """Prepares reading ``stream`` page by page; returns the records' source name."""
        return stream_name(stream)

    def open_cursor(self, stream: str, shard_id: str, position: ShardPosition,
                    start: Start = Start()) -> _Cursor:
        """A cursor reading ``shard_id`` after ``position`` (at ``start`` when nothing was read)."""
        cursor = _Cursor(shard_id, self.shard_iterator(stream, shard_id, position, start), position)
        cursor.next_call = self._clock()
        return cursor

    def read_page(self, stream: str, source: str, cursor: _Cursor,
                  start: Start = Start()) -> Optional[Page]:
        """One ``GetRecords`` call on ``cursor`` within the shard's read rate;
        None when it was throttled (backed off) or its iterator renewed: call
        again. The cursor moves past the page's records."""
        wait = cursor.next_call - self._clock()
        if wait > 0:
            self._sleep(wait)
        cursor.next_call = self._clock() + self._interval
        try:
            response = self._client.get_records(
                ShardIterator=cursor.iterator, Limit=self._limit, **self._records_args(stream))
        except ClientError as e:
            self._recover(stream, cursor, e, start)
            return None
        records, behind, drained = self._advance(cursor, response)
        if not drained:
            cursor.iterator = response['NextShardIterator']
        return Page(tuple(self._source_record(r, source, cursor.shard_id) for r in records),
                    drained, not drained and self._caught_up(records, behind), behind)

    # What differs in another service's reader (DynamoDB Streams) is in these
    # methods and the service calls above; the lineage loop stays the same.

    @staticmethod
    def _caught_up(records, millis_behind) -> bool:
        return not records and not millis_behind

    def _at_tip(self, records, millis_behind) -> bool:
        """A page of records that ends at the shard's tip: ``MillisBehindLatest``
        0 and fewer records than asked for (a full page may stop short of
        records of the same millisecond)."""
        return millis_behind == 0 and len(records) < self._limit

    @staticmethod
    def _records_args(stream: str) -> dict:
        """GetRecords names a stream given by ARN too (AWS accepts it; moto 5.2 needs it)."""
        return {'StreamARN': stream} if stream.startswith('arn:') else {}

    @staticmethod
    def _source_record(record: Mapping, source: str, shard_id: str) -> SourceRecord:
        arrival = record.get('ApproximateArrivalTimestamp')
        arrival_ms = int(arrival.timestamp() * 1000) if isinstance(arrival, datetime.datetime) else 0
        return SourceRecord(bytes(record['Data']), source, shard_id, record['SequenceNumber'],
                            arrival_ms)

    def _open(self, stream, graph, shard_id, positions, start) -> _Cursor:
        position = positions.get(shard_id) or ShardPosition()
        if not position.parents:
            position = position._replace(parents=graph.shards[shard_id].parents)
        if position.sequence is None and any(
                positions.get(p, ShardPosition()).sequence is not None
                for p in graph.shards[shard_id].parents):
            start = Start()
        cursor = _Cursor(shard_id, self.shard_iterator(stream, shard_id, position, start), position)
        cursor.next_call = self._clock()
        return cursor

    def _recover(self, stream, cursor: _Cursor, error: ClientError, start: Start):
        """Back off a throttled shard, or renew its expired iterator; re-raise the rest."""
        code = _code(error)
        if code in THROTTLING:
            cursor.throttles += 1
            self.throttled += 1
            if cursor.throttles >= self._backoff.max_attempts:
                raise ReadError(f'{stream}/{cursor.shard_id}: GetRecords throttled '
                                f'{cursor.throttles} times in a row') from error
            delay = self._backoff.delay(cursor.throttles, self._rng)
            _LOG.debug('%s/%s throttled (%s); retrying in %.2fs', stream, cursor.shard_id, code, delay)
            cursor.next_call = self._clock() + delay
        elif code == 'ExpiredIteratorException':
            cursor.renewals += 1
            self.renewed += 1
            if cursor.renewals > self.max_renewals:
                raise ReadError(f'{stream}/{cursor.shard_id}: iterator expired '
                                f'{cursor.renewals} times in a row') from error
            cursor.iterator = self.shard_iterator(stream, cursor.shard_id, cursor.position, start)
        else:
            raise error

