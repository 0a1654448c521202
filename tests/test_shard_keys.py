"""The shard of a row (changeflow.io.sql.shards_of): a stable hash of its
table and key values, remembered per row key of int and str values."""

import datetime
import decimal

import pytest

from changeflow.io import sql
from changeflow.model import Change, OpKind, RowOp

# Shards as the hash gave them before rows were remembered: they must not move.
PINNED = [((1,), 5, 0), ((12345,), 7, 0), (('abc',), 13, 2), (('ünï',), 14, 3),
          (('a"b',), 15, 0), ((1, 'a'), 13, 0), ((decimal.Decimal('1.50'),), 11, 0),
          ((True,), 2, 5), ((1.0,), 11, 2), ((b'x',), 6, 3), (('x' * 100,), 13, 6),
          ((datetime.date(2026, 1, 2),), 15, 2)]


def change(key, table='shop.items'):
    return Change(table, key, (RowOp(OpKind.DELETE, 'v1'),), 0)


def shard(key, shards, table='shop.items'):
    (shard_key, copy), = sql.shards_of(change(key, table), shards)
    assert shard_key[0] == table and copy.key == key
    return shard_key[1]


@pytest.fixture(autouse=True)
def fresh_memo():
    sql._ROW_HASHES.clear()
    yield
    sql._ROW_HASHES.clear()


def test_shards_are_stable_remembered_or_not():
    for _ in range(2):   # computed, then remembered
        assert [(key, shard(key, 16), shard(key, 7)) for key, _, _ in PINNED] == PINNED
        assert [sql._shard_of('shop.items', key, 16) for key, _, _ in PINNED] == [
            sixteen for _, sixteen, _ in PINNED]


def test_keys_equal_in_python_but_not_as_text_are_not_confused():
    """(True,) == (1,) == (1.0,) and hash alike, but are other rows' texts:
    only keys of int and str values are remembered."""
    assert shard((1,), 16) == 5
    assert shard((True,), 16) == 2 and shard((1.0,), 16) == 11
    assert shard((decimal.Decimal('1.50'),), 16) == 11
    assert list(sql._ROW_HASHES['shop.items']) == [(1,)]


def test_the_memo_is_per_table():
    assert shard((1,), 16) == 5
    assert shard((1,), 16, 'shop.other') == sql._shard_of('shop.other', (1,), 16) != 5


def test_the_memo_is_bounded_over_all_tables(monkeypatch):
    monkeypatch.setattr(sql, '_MEMO_KEYS', 5)
    monkeypatch.setattr(sql, '_memo_kept', 0)
    for n in range(1, 30):
        table = f'shop.t{n % 3}'
        assert shard((n,), 16, table) == sql._shard_of(table, (n,), 16)
        assert sum(len(rows) for rows in sql._ROW_HASHES.values()) < 5
    assert shard(('x' * 65,), 16) == sql._shard_of('shop.items', ('x' * 65,), 16)
    assert ('x' * 65,) not in sql._ROW_HASHES.get('shop.items', {})  # long text: not kept


def test_a_whole_table_change_goes_to_every_shard():
    whole = change(())
    assert sql.shards_of(whole, 4) == tuple((('shop.items', n), whole) for n in range(4))
