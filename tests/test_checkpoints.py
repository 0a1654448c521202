"""The checkpoint store on SQLite, PostgreSQL and MariaDB."""

import random
import threading
import uuid

import pytest
import sqlalchemy as sa

from changeflow.io.checkpoints import (
    Checkpoint, CheckpointConflict, CheckpointStore, sqlite_url_beside)
from changeflow.io.shards import ShardPosition


@pytest.fixture
def store(database_url):
    prefix = f'cf_ckpt_{uuid.uuid4().hex[:8]}_'
    store = CheckpointStore(database_url, prefix=prefix)
    yield store
    store._metadata.drop_all(store.engine)
    store.engine.dispose()


def counts(store):
    with store.engine.connect() as c:
        return (c.execute(sa.select(sa.func.count()).select_from(store.shards)).scalar(),
                c.execute(sa.select(sa.func.count()).select_from(store.states)).scalar())


STATE = {'open_transactions': {'db1/7': [{'query_id': 23, 'sql': "UPDATE t SET a = 'é'"}]},
         'cycle': 4}


def test_nothing_committed_loads_empty(store):
    assert store.load('job', 'orders') == Checkpoint({}, None)


def test_commit_then_load_round_trips_positions_lineage_and_state(store):
    big = '49680742114452818571751649052949190868806650014178738178'
    positions = {'shardId-0': ShardPosition(big, True, ()),
                 'shardId-1': ShardPosition('5', False, ('shardId-0',)),
                 'shardId-2': ShardPosition(None, False, ('shardId-0', 'shardId-9'))}
    store.commit('job', 'orders', positions, STATE)
    assert store.load('job', 'orders') == Checkpoint(positions, STATE)
    assert store.load('job', 'other') == Checkpoint({}, None)
    assert store.load('other', 'orders') == Checkpoint({}, None)


def test_commit_is_idempotent(store):
    positions = {'a': ShardPosition('10'), 'b': ShardPosition('3', True)}
    store.commit('job', 's', positions, STATE)
    store.commit('job', 's', positions, STATE)
    assert store.load('job', 's') == Checkpoint(positions, STATE)
    assert counts(store) == (2, 1)


def test_positions_move_forward_as_integers(store):
    store.commit('job', 's', {'a': ShardPosition('9')}, 1)
    store.commit('job', 's', {'a': ShardPosition('10')}, 2)      # '10' < '9' as text
    store.commit('job', 's', {'a': ShardPosition('10', True)}, 3)
    assert store.load('job', 's') == Checkpoint({'a': ShardPosition('10', True)}, 3)


@pytest.mark.parametrize('backwards', [ShardPosition('9'), ShardPosition(None),
                                       ShardPosition('11', False)])
def test_a_commit_moving_a_shard_back_changes_nothing(store, backwards):
    before = {'a': ShardPosition('10', True), 'b': ShardPosition('4')}
    store.commit('job', 's', before, 'old')
    with pytest.raises(CheckpointConflict, match='s/a'):
        store.commit('job', 's', {'b': ShardPosition('8'), 'a': backwards, 'c': ShardPosition('1')},
                     'new')
    assert store.load('job', 's') == Checkpoint(before, 'old')


def test_shards_left_out_keep_their_position_and_lineage_is_kept(store):
    store.commit('job', 's', {'a': ShardPosition('1', True), 'c': ShardPosition('2', False, ('a',))},
                 None)
    store.commit('job', 's', {'c': ShardPosition('3')}, {'x': 1})
    assert store.load('job', 's') == Checkpoint(
        {'a': ShardPosition('1', True), 'c': ShardPosition('3', False, ('a',))}, {'x': 1})


def test_large_state(store):
    state = {'statements': ['x' * 1000] * 200}      # 200 kB: beyond MariaDB's TEXT
    store.commit('job', 's', {}, state)
    assert store.load('job', 's').state == state


def test_concurrent_commits_of_one_job_lose_nothing(store, database_url):
    other = CheckpointStore(database_url, prefix=store.shards.name[:-len('checkpoints')])
    errors = []

    def run(s, shard):
        try:
            for n in range(1, 16):
                s.commit('job', 'st', {shard: ShardPosition(str(n))}, {shard: n})
        except Exception as e:   # noqa: BLE001 - reported below
            errors.append(e)
    threads = [threading.Thread(target=run, args=(s, shard))
               for s, shard in ((store, 'a'), (other, 'b'))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    other.engine.dispose()
    assert errors == []
    loaded = store.load('job', 'st')
    assert loaded.positions == {'a': ShardPosition('15'), 'b': ShardPosition('15')}
    assert loaded.state in ({'a': 15}, {'b': 15})


def test_concurrent_commits_of_one_shard_never_move_it_back(store, database_url):
    """Check and write are one step: the stored position is the highest that
    any commit succeeded with, however two writers interleave."""
    other = CheckpointStore(database_url, prefix=store.shards.name[:-len('checkpoints')])
    store.commit('job', 'st', {'a': ShardPosition('0')}, None)
    succeeded, errors = [], []

    def run(s, seed):
        rng = random.Random(seed)
        for _ in range(25):
            n = rng.randrange(1, 1000)
            try:
                s.commit('job', 'st', {'a': ShardPosition(str(n))}, n)
                succeeded.append(n)
            except CheckpointConflict:
                pass
            except Exception as e:   # noqa: BLE001 - reported below
                errors.append(e)
    threads = [threading.Thread(target=run, args=args) for args in ((store, 1), (other, 2))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    other.engine.dispose()
    assert errors == []
    loaded = store.load('job', 'st')
    assert loaded.positions['a'] == ShardPosition(str(max(succeeded)))
    assert loaded.state == max(succeeded)


def test_default_sqlite_file_beside_the_job(tmp_path):
    url = sqlite_url_beside(str(tmp_path / 'shop.yaml'))
    assert url == f'sqlite:///{tmp_path}/shop.checkpoints.db'
    store = CheckpointStore(url)
    store.commit('shop', 's', {'a': ShardPosition('1')}, [1])
    assert CheckpointStore(url).load('shop', 's') == Checkpoint({'a': ShardPosition('1')}, [1])
    assert (tmp_path / 'shop.checkpoints.db').exists()


def test_the_first_read_time_is_kept_from_the_first_call(store):
    assert store.start_time_ms('job', 's', 1_000) == 1_000
    assert store.start_time_ms('job', 's', 2_000) == 1_000
    assert store.start_time_ms('job', 'other', 3_000) == 3_000
    assert store.start_time_ms('other', 's', 4_000) == 4_000
    store.commit('job', 's', {'a': ShardPosition('1')}, None)   # positions do not touch it
    assert store.start_time_ms('job', 's', 5_000) == 1_000


def test_concurrent_first_reads_agree_on_one_time(store, database_url):
    other = CheckpointStore(database_url, prefix=store.shards.name[:-len('checkpoints')])
    barrier = threading.Barrier(2)
    times, errors = [], []

    def run(s, now_ms):
        try:
            barrier.wait()
            times.append(s.start_time_ms('job', 'race', now_ms))
        except Exception as e:   # noqa: BLE001 - reported below
            errors.append(e)
    threads = [threading.Thread(target=run, args=args) for args in ((store, 1), (other, 2))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    other.engine.dispose()
    assert errors == [] and len(set(times)) == 1 and times[0] in (1, 2)
