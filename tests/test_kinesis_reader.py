"""The Kinesis reader against moto's server, and against kinesalite for resharding."""

import collections
import datetime
import random
import time
import uuid

import pytest

from changeflow.io.kinesis import (
    Backoff, KinesisShardReader, ReadError, ShardsLost, Start, kinesis_client)
from changeflow.io.checkpoints import CheckpointStore
from changeflow.io.shards import ShardPosition
from changeflow.model import SourceRecord
from kinesis_servers import Recording, client, create_stream, error, wait_active


class FakeClock:
    def __init__(self):
        self.now = 1000.0
        self.sleeps = []

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.sleeps.append(seconds)
        self.now += seconds


def raise_times(code, times, when=lambda kwargs: True):
    left = [times]

    def hook(kwargs):
        if left[0] and when(kwargs):
            left[0] -= 1
            raise error(code)
    return hook


@pytest.fixture
def moto(moto_endpoint):
    return client(moto_endpoint)


@pytest.fixture
def stream(moto):
    name = f'cf-{uuid.uuid4().hex[:8]}'
    create_stream(moto, name, shards=2)
    return name


def put(kinesis, stream, keys, rounds, tag='r'):
    """Records ``tag:key:n`` for each key and round, written in order, one call per round."""
    for n in range(rounds):
        kinesis.put_records(StreamName=stream, Records=[
            {'Data': f'{tag}:{k}:{n}'.encode(), 'PartitionKey': k} for k in keys])


def next_second(margin):
    """Sleep into the next whole second: moto 5.2 reads an AT_TIMESTAMP
    ``Timestamp`` in whole seconds, cutting off its fraction."""
    time.sleep(1 - time.time() % 1 + margin)


def read_all(reader, stream, positions, start=Start()):
    batches = list(reader.read_to_tip(stream, positions, start))
    for b in batches:
        positions[b.shard_id] = b.position
    return [r for b in batches for r in b.records], batches


KEYS = [f'k{i}' for i in range(8)]


# -- moto ------------------------------------------------------------------

def test_list_shards_follows_every_page(moto):
    name = f'cf-{uuid.uuid4().hex[:8]}'
    create_stream(moto, name, shards=5)
    recording = Recording(moto)
    shards = KinesisShardReader(recording, page_size=2).list_shards(name)
    assert sorted(s['ShardId'] for s in shards) == [f'shardId-00000000000{i}' for i in range(5)]
    pages = recording.named('list_shards')
    assert pages[0] == {'StreamName': name, 'MaxResults': 2}
    assert sum('NextToken' in p for p in pages) >= 2   # pages 2 and 3 asked by token


class _StrictListing:
    """ListShards as AWS pages it: a NextToken names the stream and may not come with StreamName."""

    def __init__(self, n):
        self.shards = [{'ShardId': f'shardId-{i:012d}',
                        'SequenceNumberRange': {'StartingSequenceNumber': '1'}} for i in range(n)]

    def list_shards(self, StreamName=None, NextToken=None, MaxResults=1000):
        if StreamName and NextToken:
            raise error('InvalidArgumentException', 'ListShards')
        start = int(NextToken or 0)
        end = start + MaxResults
        page = {'Shards': self.shards[start:end]}
        if end < len(self.shards):
            page['NextToken'] = str(end)
        return page


def test_list_shards_pages_by_token_alone_as_aws_requires():
    shards = KinesisShardReader(_StrictListing(7), page_size=3).list_shards('s')
    assert [s['ShardId'] for s in shards] == [f'shardId-{i:012d}' for i in range(7)]


def test_read_to_tip_reads_everything_once_then_resumes_after_the_checkpoint(moto, stream):
    put(moto, stream, KEYS, 4)
    reader = KinesisShardReader(moto, limit=7, reads_per_second=1000)
    positions = {}
    records, batches = read_all(reader, stream, positions)
    payloads = [r.data.decode() for r in records]
    assert sorted(payloads) == sorted(f'r:{k}:{n}' for k in KEYS for n in range(4))
    assert all(len(b.records) <= 7 for b in batches)
    first = records[0]
    assert isinstance(first, SourceRecord) and first.source == stream
    assert first.shard.startswith('shardId-') and first.arrival_ms > 1_700_000_000_000
    for shard in {r.shard for r in records}:
        sequences = [int(r.sequence) for r in records if r.shard == shard]
        assert sequences == sorted(sequences) and len(set(sequences)) == len(sequences)
        assert positions[shard].sequence == str(sequences[-1])
        assert not positions[shard].finished
    assert set(reader.lag) == set(positions) and all(v == 0 for v in reader.lag.values())
    for key in KEYS:
        assert [p for p in payloads if p.split(':')[1] == key] == [f'r:{key}:{n}' for n in range(4)]

    # Caught up: nothing more. New records: only they are read (AFTER_SEQUENCE_NUMBER).
    assert read_all(reader, stream, positions)[0] == []
    put(moto, stream, KEYS, 1, tag='new')
    recording = Recording(moto)
    reader = KinesisShardReader(recording, reads_per_second=1000)
    records, _ = read_all(reader, stream, positions)
    assert sorted(r.data.decode() for r in records) == sorted(f'new:{k}:0' for k in KEYS)
    assert {kw['ShardIteratorType'] for kw in recording.named('get_shard_iterator')} == {
        'AFTER_SEQUENCE_NUMBER'}


def test_latest_skips_what_came_before(moto, stream):
    put(moto, stream, KEYS, 2)
    reader = KinesisShardReader(moto, reads_per_second=1000)
    assert read_all(reader, stream, {}, Start('latest'))[0] == []
    shard = reader.list_shards(stream)[0]['ShardId']
    iterator = reader.shard_iterator(stream, shard, ShardPosition(), Start('latest'))
    put(moto, stream, KEYS, 1, tag='after')
    got = moto.get_records(ShardIterator=iterator)['Records']
    assert got and all(r['Data'].startswith(b'after:') for r in got)


def test_at_timestamp_starts_at_the_first_record_at_or_after_it(moto, stream):
    put(moto, stream, KEYS, 2, tag='before')
    next_second(margin=0.05)
    cut_ms = int(time.time() * 1000)
    time.sleep(0.05)
    put(moto, stream, KEYS, 2, tag='after')
    reader = KinesisShardReader(moto, reads_per_second=1000)
    records, _ = read_all(reader, stream, {}, Start('at_timestamp', cut_ms))
    assert sorted(r.data.decode() for r in records) == sorted(
        f'after:{k}:{n}' for k in KEYS for n in range(2))
    assert Start.parse({'at_timestamp': '2026-12-01T10:00:00Z'}) == Start('at_timestamp',
                                                                          1796119200000)


def test_start_parse_rejects_bad_values():
    assert Start.parse(None) == Start() == Start.parse('trim_horizon')
    assert Start.parse('latest').resolved(5) == Start('at_timestamp', 5)
    # YAML reads an ISO-8601 timestamp with a zone as an aware datetime.
    assert Start.parse({'at_timestamp': datetime.datetime(
        2026, 12, 1, 12, tzinfo=datetime.timezone(datetime.timedelta(hours=2)))}) == Start(
        'at_timestamp', 1796119200000)
    for bad in ('earliest', {'at_timestamp': '2026-12-01T10:00:00'}, {'at': 1}):
        with pytest.raises(ValueError):
            Start.parse(bad)


def test_expired_iterator_is_renewed_after_the_last_record_read(moto, stream):
    put(moto, stream, KEYS, 3)
    calls = collections.Counter()

    def expire_third_call(kwargs):
        calls['get'] += 1
        if calls['get'] == 3:
            raise error('ExpiredIteratorException')
    recording = Recording(moto, get_records=expire_third_call)
    reader = KinesisShardReader(recording, limit=4, reads_per_second=1000)
    records, _ = read_all(reader, stream, {})
    payloads = [r.data.decode() for r in records]
    assert sorted(payloads) == sorted(f'r:{k}:{n}' for k in KEYS for n in range(3))
    assert len(payloads) == len(set(payloads))
    assert reader.renewed == 1
    renewal = recording.named('get_shard_iterator')[-1]
    assert renewal['ShardIteratorType'] == 'AFTER_SEQUENCE_NUMBER'
    assert renewal['StartingSequenceNumber'] == records[3].sequence  # the 4 read before expiry


def test_an_iterator_that_keeps_expiring_fails_loudly(moto, stream):
    put(moto, stream, KEYS, 1)
    reader = KinesisShardReader(
        Recording(moto, get_records=raise_times('ExpiredIteratorException', 100)),
        reads_per_second=1000)
    with pytest.raises(ReadError, match='expired'):
        read_all(reader, stream, {})


class ShardAware:
    """A client that knows which shard each iterator reads, times each GetRecords
    call per shard, and lets ``throttle(op, shard)`` raise before a call."""

    def __init__(self, real, clock=time.monotonic, throttle=lambda op, shard: None):
        self._real = real
        self._clock = clock
        self._throttle = throttle
        self.shard_of = {}
        self.times = collections.defaultdict(list)

    def __getattr__(self, name):
        return getattr(self._real, name)

    def get_shard_iterator(self, **kwargs):
        self._throttle('get_shard_iterator', kwargs['ShardId'])
        response = self._real.get_shard_iterator(**kwargs)
        self.shard_of[response['ShardIterator']] = kwargs['ShardId']
        return response

    def get_records(self, **kwargs):
        shard = self.shard_of[kwargs['ShardIterator']]
        self.times[shard].append(self._clock())
        self._throttle('get_records', shard)
        response = self._real.get_records(**kwargs)
        if response.get('NextShardIterator'):
            self.shard_of[response['NextShardIterator']] = shard
        return response


def test_throttled_shard_backs_off_with_jitter_while_others_are_read(moto, stream):
    put(moto, stream, KEYS, 3)
    shards = sorted(s['ShardId'] for s in KinesisShardReader(moto).list_shards(stream))
    left = collections.Counter({('get_records', shards[0]): 4, ('get_shard_iterator', shards[0]): 2})

    def throttle(op, shard):
        if left[op, shard]:
            left[op, shard] -= 1
            raise error('ProvisionedThroughputExceededException' if op == 'get_records'
                        else 'LimitExceededException')
    clock = FakeClock()
    timing = ShardAware(moto, clock, throttle)
    reader = KinesisShardReader(timing, limit=2, clock=clock,
                                sleep=clock.sleep, backoff=Backoff(base_s=0.5, cap_s=3.0),
                                rng=random.Random(7))
    records, _ = read_all(reader, stream, {})
    assert sorted(r.data.decode() for r in records) == sorted(
        f'r:{k}:{n}' for k in KEYS for n in range(3))
    assert reader.throttled == 6      # 4 GetRecords + 2 GetShardIterator
    # GetShardIterator's sleeps: retry 1 within [0, 0.5] s, retry 2 within [0, 1] s, jittered.
    assert 0 <= clock.sleeps[0] <= 0.5 and 0 <= clock.sleeps[1] <= 1.0
    assert clock.sleeps[0] != clock.sleeps[1]
    # Shard 0's backoff did not hold up shard 1: it was read at once, and ahead of shard 0.
    assert timing.times[shards[1]][0] == timing.times[shards[0]][0]
    order = [r.shard for r in records]
    assert order[0] == shards[1]


def test_backoff_is_capped_exponential_with_full_jitter():
    backoff = Backoff(base_s=0.1, cap_s=1.0)
    rng = random.Random(3)
    for attempt, ceiling in ((1, 0.1), (2, 0.2), (4, 0.8), (5, 1.0), (30, 1.0)):
        delays = [backoff.delay(attempt, rng) for _ in range(200)]
        assert 0 <= min(delays) and max(delays) <= ceiling
        assert max(delays) > 0.8 * ceiling and min(delays) < 0.2 * ceiling   # spread over [0, ceiling]


def test_throttling_past_the_attempt_limit_fails_loudly(moto, stream):
    reader = KinesisShardReader(
        Recording(moto, get_records=raise_times('ProvisionedThroughputExceededException', 100)),
        backoff=Backoff(base_s=0.0001, cap_s=0.0001, max_attempts=5))
    with pytest.raises(ReadError, match='throttled 5 times'):
        read_all(reader, stream, {})


def test_at_most_five_get_records_per_second_per_shard(moto, stream):
    put(moto, stream, KEYS, 3)
    clock = FakeClock()
    timing = ShardAware(moto, clock)
    reader = KinesisShardReader(timing, limit=1, clock=clock, sleep=clock.sleep)
    records, _ = read_all(reader, stream, {})
    assert len(records) == 3 * len(KEYS)
    for shard, at in timing.times.items():
        gaps = [b - a for a, b in zip(at, at[1:])]
        assert gaps and min(gaps) >= 0.2 - 1e-9, (shard, gaps)
    # The shards' reads interleave: the whole read took about calls / 2 / 5 seconds, not calls / 5.
    calls = sum(len(v) for v in timing.times.values())
    assert clock.now - 1000.0 < calls / 5 * 0.75


def test_a_half_read_shard_gone_from_the_stream_is_reported_lost(moto, stream):
    reader = KinesisShardReader(moto)
    with pytest.raises(ShardsLost, match='shardId-000000000099'):
        read_all(reader, stream, {'shardId-000000000099': ShardPosition('5')})


def test_reader_rejects_bad_limits(moto):
    with pytest.raises(ValueError):
        KinesisShardReader(moto, limit=10_001)
    with pytest.raises(ValueError):
        KinesisShardReader(moto, reads_per_second=0)


def test_kinesis_client_uses_the_endpoint_and_default_chain(moto_endpoint, aws_env, stream):
    reader = KinesisShardReader(kinesis_client(endpoint_url=moto_endpoint))
    assert len(reader.list_shards(stream)) == 2


# -- kinesalite: resharding ------------------------------------------------

def _shard_ids(kinesis, stream):
    return {s['ShardId']: s for s in kinesis.list_shards(StreamName=stream)['Shards']}


def _open_shards(kinesis, stream):
    return sorted(sid for sid, s in _shard_ids(kinesis, stream).items()
                  if 'EndingSequenceNumber' not in s['SequenceNumberRange'])


def _split(kinesis, stream, shard_id):
    hashes = _shard_ids(kinesis, stream)[shard_id]['HashKeyRange']
    middle = (int(hashes['StartingHashKey']) + int(hashes['EndingHashKey'])) // 2
    kinesis.split_shard(StreamName=stream, ShardToSplit=shard_id, NewStartingHashKey=str(middle))
    wait_active(kinesis, stream)


def _merge(kinesis, stream, a, b):
    kinesis.merge_shards(StreamName=stream, ShardToMerge=a, AdjacentShardToMerge=b)
    wait_active(kinesis, stream)


def test_split_and_merge_while_reading_lose_and_repeat_nothing(kinesalite_endpoint, tmp_path):
    """Catch-up cycles, each resuming from the checkpoint store, while shards
    split and merge under them."""
    kinesis = client(kinesalite_endpoint)
    store = CheckpointStore(f'sqlite:///{tmp_path / "ckpt.db"}')
    stream = f'rs-{uuid.uuid4().hex[:8]}'
    create_stream(kinesis, stream, shards=2)
    keys = [f'key{i}' for i in range(24)]
    reader = KinesisShardReader(kinesis, limit=10, reads_per_second=50)
    positions, read, batch_shards = {}, [], []
    rounds = collections.Counter()

    def write(n):
        for _ in range(n):
            tag = f'w{rounds["w"]}'
            rounds['w'] += 1
            put(kinesis, stream, keys, 1, tag=tag)

    def cycle():
        return reader.read_to_tip(stream, store.load('job', stream).positions)

    def commit():
        store.commit('job', stream, positions, {'records': len(read)})

    def consume(batches, stop_after=None):
        for i, batch in enumerate(batches):
            positions[batch.shard_id] = batch.position
            read.extend(batch.records)
            batch_shards.append(batch.shard_id)
            if stop_after is not None and i + 1 >= stop_after:
                return

    write(3)
    batches = cycle()
    consume(batches, stop_after=2)
    first, second = _open_shards(kinesis, stream)
    _split(kinesis, stream, first)                  # split during reading
    write(3)
    consume(batches)            # this cycle (when it reaches the parent's end) or the next
    commit()                    # reads on into the children
    children = sorted(sid for sid, s in _shard_ids(kinesis, stream).items()
                      if s.get('ParentShardId') == first)
    assert len(children) == 2
    consume(cycle())
    commit()
    assert set(children) <= set(batch_shards)

    batches = cycle()
    write(2)
    consume(batches, stop_after=1)
    _merge(kinesis, stream, *children)              # merge during reading
    _split(kinesis, stream, second)                 # and split the other original shard
    write(3)
    consume(batches)
    commit()
    for _ in range(3):                              # later cycles catch up the rest
        consume(cycle())
        commit()
    assert store.load('job', stream) == (positions, {'records': len(read)})

    listing = _shard_ids(kinesis, stream)
    assert len(listing) == 7                        # 2 + 2 (split) + 1 (merge) + 2 (split)
    merged = [sid for sid, s in listing.items() if s.get('AdjacentParentShardId')]
    assert len(merged) == 1 and merged[0] in batch_shards
    for sid in (first, second, *children):
        assert positions[sid].finished, sid
    assert set(positions[merged[0]].parents) == set(children)
    expected = [f'w{w}:{k}:0' for w in range(rounds['w']) for k in keys]
    assert sorted(r.data.decode() for r in read) == sorted(expected), 'a record was lost'
    _check_order(read, listing)


def test_closed_shard_ends_and_its_children_start_at_trim_horizon(kinesalite_endpoint):
    """Children of a shard read from start at TRIM_HORIZON whatever ``start`` says."""
    kinesis = client(kinesalite_endpoint)
    stream = f'rs-{uuid.uuid4().hex[:8]}'
    create_stream(kinesis, stream, shards=1)
    put(kinesis, stream, KEYS, 2, tag='parent')
    reader = KinesisShardReader(kinesis, reads_per_second=50)
    positions = {}
    assert len(read_all(reader, stream, positions)[0]) == 2 * len(KEYS)
    (parent,) = positions
    assert not positions[parent].finished
    _split(kinesis, stream, parent)
    put(kinesis, stream, KEYS, 2, tag='child')
    recording = Recording(kinesis)
    reader = KinesisShardReader(recording, reads_per_second=50)
    records, batches = read_all(reader, stream, positions, Start('latest'))
    assert sorted(r.data.decode() for r in records) == sorted(
        f'child:{k}:{n}' for k in KEYS for n in range(2))
    assert positions[parent].finished
    assert batches[0].shard_id == parent and batches[0].records == ()   # drained: finished marker
    kinds = {kw['ShardId']: kw['ShardIteratorType'] for kw in recording.named('get_shard_iterator')}
    assert kinds.pop(parent) == 'AFTER_SEQUENCE_NUMBER'
    assert set(kinds.values()) == {'TRIM_HORIZON'} and len(kinds) == 2


def _check_order(read, listing):
    """No record twice; each key's writes in order; no child record before a parent's last."""
    payloads = [r.data.decode() for r in read]
    assert len(payloads) == len(set(payloads)), 'a record was read twice'
    by_key = collections.defaultdict(list)
    for p in payloads:
        tag, key, _ = p.split(':')
        by_key[key].append(int(tag[1:]))
    for key, order in by_key.items():
        assert order == sorted(order), (key, order)
    at = collections.defaultdict(list)
    for i, r in enumerate(read):
        at[r.shard].append(i)
    for sid, shard in listing.items():
        for parent in filter(None, (shard.get('ParentShardId'), shard.get('AdjacentParentShardId'))):
            if at[sid] and at[parent]:
                assert max(at[parent]) < min(at[sid]), (parent, sid)


def test_a_reshard_history_is_read_parents_first(kinesalite_endpoint):
    """Split, split of a child, merge of a grandchild with its aunt, each with a
    backlog; one cycle from TRIM_HORIZON reads it all in lineage order."""
    kinesis = client(kinesalite_endpoint)
    stream = f'rs-{uuid.uuid4().hex[:8]}'
    create_stream(kinesis, stream, shards=1)
    keys = [f'key{i}' for i in range(16)]
    tags = iter(range(100))

    def write(n):
        for _ in range(n):
            put(kinesis, stream, keys, 1, tag=f'w{next(tags)}')

    write(4)
    (root,) = _open_shards(kinesis, stream)
    _split(kinesis, stream, root)
    write(4)
    low, high = _open_shards(kinesis, stream)
    _split(kinesis, stream, low)
    write(4)
    low_low, low_high = sorted(s for s in _open_shards(kinesis, stream) if s != high)
    _merge(kinesis, stream, low_high, high)
    write(4)
    listing = _shard_ids(kinesis, stream)
    assert len(listing) == 6
    merged = next(sid for sid, s in listing.items() if s.get('AdjacentParentShardId'))

    reader = KinesisShardReader(kinesis, limit=5, reads_per_second=100)
    batches = list(reader.read_to_tip(stream, {}))
    read = [r for b in batches for r in b.records]
    assert len(read) == 16 * len(keys)
    _check_order(read, listing)
    finished = {b.shard_id for b in batches if b.position.finished}
    assert finished == {root, low, low_high, high}
    assert set(next(b for b in batches if b.shard_id == merged).position.parents) == {low_high, high}


class _ClosingLate:
    """A closed parent that answers an empty page with an iterator and no lag
    before its end, as kinesalite does when the shard closed over a second
    after its last record, and an open child holding one record."""

    def __init__(self):
        self.parent_pages = [{'Records': [], 'NextShardIterator': 'parent', 'MillisBehindLatest': 0},
                             {'Records': [], 'MillisBehindLatest': 1200}]

    def list_shards(self, **kwargs):
        return {'Shards': [
            {'ShardId': 'shardId-0', 'SequenceNumberRange': {
                'StartingSequenceNumber': '1', 'EndingSequenceNumber': '9'}},
            {'ShardId': 'shardId-1', 'ParentShardId': 'shardId-0',
             'SequenceNumberRange': {'StartingSequenceNumber': '10'}}]}

    def get_shard_iterator(self, ShardId, **kwargs):
        return {'ShardIterator': 'parent' if ShardId == 'shardId-0' else 'child'}

    def get_records(self, ShardIterator, **kwargs):
        if ShardIterator == 'parent':
            return self.parent_pages.pop(0)
        if ShardIterator == 'child':
            return {'Records': [{'SequenceNumber': '11', 'Data': b'child'}],
                    'NextShardIterator': 'child-tip', 'MillisBehindLatest': 0}
        return {'Records': [], 'NextShardIterator': 'child-tip', 'MillisBehindLatest': 0}


def test_a_closed_shard_is_read_past_empty_pages_to_its_end():
    clock = FakeClock()
    reader = KinesisShardReader(_ClosingLate(), clock=clock, sleep=clock.sleep)
    positions = {'shardId-0': ShardPosition('5')}
    records, batches = read_all(reader, 's', positions)
    assert [r.data for r in records] == [b'child']
    assert positions['shardId-0'].finished and batches[0].shard_id == 'shardId-0'


class _NeverEnding:
    """A closed shard whose pages stay empty and never end (moto's, FACTS.md)."""

    def list_shards(self, **kwargs):
        return {'Shards': [{'ShardId': 'shardId-0', 'SequenceNumberRange': {
            'StartingSequenceNumber': '1', 'EndingSequenceNumber': '9'}}]}

    def get_shard_iterator(self, **kwargs):
        return {'ShardIterator': 'it'}

    def get_records(self, **kwargs):
        return {'Records': [], 'NextShardIterator': 'it', 'MillisBehindLatest': 0}


def test_a_closed_shard_that_never_ends_fails_loudly():
    clock = FakeClock()
    reader = KinesisShardReader(_NeverEnding(), clock=clock, sleep=clock.sleep)
    with pytest.raises(ReadError, match='closed, but 1001 GetRecords calls'):
        read_all(reader, 's', {})


class _Arriving:
    """One open shard that gets a record before every GetRecords call, so each
    page ends at the tip (``MillisBehindLatest`` 0) and the next holds a new
    record; after 50 calls it stays empty. ``full_pages``: the first pages
    hold ``limit`` records each (at the tip too)."""

    def __init__(self, limit=10, full_pages=0, closed=False):
        self.calls = 0
        self._limit = limit
        self._full_pages = full_pages
        self._closed = closed

    def list_shards(self, **kwargs):
        ending = {'EndingSequenceNumber': '999999'} if self._closed else {}
        return {'Shards': [{'ShardId': 'shardId-0', 'SequenceNumberRange': {
            'StartingSequenceNumber': '1', **ending}}]}

    def get_shard_iterator(self, **kwargs):
        return {'ShardIterator': 'it'}

    def get_records(self, **kwargs):
        self.calls += 1
        if self.calls > 50:
            return ({'Records': []} if self._closed else
                    {'Records': [], 'NextShardIterator': 'it', 'MillisBehindLatest': 0})
        n = self._limit if self.calls <= self._full_pages else 1
        records = [{'SequenceNumber': str(self.calls * 100 + i), 'Data': b'r'} for i in range(n)]
        return {'Records': records, 'NextShardIterator': 'it', 'MillisBehindLatest': 0}


def test_a_cycle_stops_at_the_tip_instead_of_chasing_new_records():
    """A page short of the limit at the tip ends an open shard's cycle: the
    next call would find records that arrived while reading, and so on."""
    clock = FakeClock()
    fake = _Arriving()
    reader = KinesisShardReader(fake, limit=10, clock=clock, sleep=clock.sleep)
    records, batches = read_all(reader, 's', {})
    assert fake.calls == 1 and len(records) == 1 and clock.sleeps == []
    assert batches[0].position == ShardPosition('100', False, ())


def test_a_full_page_at_the_tip_is_read_on():
    clock = FakeClock()
    fake = _Arriving(limit=3, full_pages=2)
    reader = KinesisShardReader(fake, limit=3, clock=clock, sleep=clock.sleep)
    records, _ = read_all(reader, 's', {})
    assert fake.calls == 3 and len(records) == 3 + 3 + 1


def test_a_closed_shard_at_the_tip_is_read_on_to_its_end():
    clock = FakeClock()
    fake = _Arriving(closed=True)
    reader = KinesisShardReader(fake, limit=10, clock=clock, sleep=clock.sleep)
    positions = {}
    records, _ = read_all(reader, 's', positions)
    assert fake.calls == 51 and len(records) == 50 and positions['shardId-0'].finished


class _Meeting:
    """Three open shards whose first GetRecords calls return only once all
    three are in flight (a barrier): calls made one after another time out."""

    def __init__(self):
        import threading
        self.barrier = threading.Barrier(3, timeout=5)

    def list_shards(self, **kwargs):
        return {'Shards': [{'ShardId': f'shardId-{i}', 'SequenceNumberRange': {
            'StartingSequenceNumber': '1'}} for i in range(3)]}

    def get_shard_iterator(self, ShardId, **kwargs):
        return {'ShardIterator': ShardId}

    def get_records(self, ShardIterator, **kwargs):
        if not ShardIterator.endswith('tip'):
            self.barrier.wait()
            return {'Records': [{'SequenceNumber': '5', 'Data': ShardIterator.encode()}],
                    'NextShardIterator': ShardIterator + '-tip', 'MillisBehindLatest': 0}
        return {'Records': [], 'NextShardIterator': ShardIterator, 'MillisBehindLatest': 0}


def test_shards_are_read_concurrently():
    clock = FakeClock()
    reader = KinesisShardReader(_Meeting(), clock=clock, sleep=clock.sleep)
    records, batches = read_all(reader, 's', {})
    assert sorted(r.data for r in records) == [b'shardId-0', b'shardId-1', b'shardId-2']
    assert [b.shard_id for b in batches] == ['shardId-0', 'shardId-1', 'shardId-2']
