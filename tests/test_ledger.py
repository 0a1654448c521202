"""The side-effect ledger: check before, record after, on every store dialect."""

import threading

from changeflow.state.ledger import Ledger


def test_records_and_filters_per_scope(database_url, table_prefix):
    ledger = Ledger(database_url, prefix=table_prefix)
    assert ledger.done('slack', ['a', 'b']) == set()
    ledger.record('slack', ['a', 'b', 'a'])
    assert ledger.done('slack', ['a', 'b', 'c']) == {'a', 'b'}
    assert ledger.done('backup', ['a']) == set()  # scopes are independent
    ledger.record('slack', ['b', 'c'])           # recording again keeps one row per id
    assert ledger.done('slack', ['a', 'b', 'c', 'd']) == {'a', 'b', 'c'}
    ledger.dispose()


def test_survives_a_new_instance_and_large_id_sets(sqlite_url):
    ids = [f'id{i}' for i in range(1_300)]       # more than one IN (...) chunk
    Ledger(sqlite_url).record('sns', ids[:700])
    assert Ledger(sqlite_url).done('sns', ids) == set(ids[:700])


def test_concurrent_writers_of_the_same_ids(sqlite_url):
    Ledger(sqlite_url).done('x', [])             # tables exist before the race
    errors = []

    def write():
        try:
            Ledger(sqlite_url).record('x', [f'{i}' for i in range(200)])
        except Exception as error:  # noqa: BLE001 - the test reports any failure
            errors.append(error)

    threads = [threading.Thread(target=write) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(Ledger(sqlite_url).done('x', [f'{i}' for i in range(300)])) == 200
