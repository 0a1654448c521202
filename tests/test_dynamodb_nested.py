"""Nested DynamoDB values (maps, lists, sets) in the Parquet backup: columns
declared with a shape are Arrow structs, lists and maps, read back with
pyarrow equal to the items exactly (38-digit decimals, bytes, sets); an
undeclared shape stays JSON text; an item that does not fit its shape is a
dead letter naming the attribute's path."""

import decimal
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa
import yaml

from changeflow.dynamodb.columns import ItemColumns, ItemMismatch
from changeflow.dynamodb.records import item
from changeflow.handlers.models import model_columns
from changeflow.io.dead_letter import read_dead_letters
from changeflow.sql.types import arrow_type, canonical_type, parse_type
from test_dynamodb_sync import (
    KEY, create_table, key, parquet_rows, run_job, stream_lines, stream_record)

D = decimal.Decimal
BIG = '12345678901234567890123456789012345678'          # 38 digits
SMALL = '0.1234567890123456789012345678901234567'       # 37 places, 37 digits
COLUMNS = {
    'id': 'integer', 'title': 'string',
    'meta': 'struct<dims: list<decimal(10,2)>, seen: boolean, raw: binary, '
            'exact: decimal(38,37), extra: json>',
    'tags': 'set<string>', 'nums': 'set<decimal(38,0)>', 'blobs': 'set<binary>',
    'items': 'list<bigint>', 'attrs': 'map<string>',
    'free': 'json',            # a shape that varies: JSON text
}


def write_items(ddb, name):
    ddb.put_item(TableName=name, Item={
        **key(1),
        'meta': {'M': {'dims': {'L': [{'N': '8.5'}, {'NULL': True}, {'N': '-0.01'}]},
                       'seen': {'BOOL': False}, 'raw': {'B': b'\x00\xff\x80'},
                       'exact': {'N': SMALL},
                       'extra': {'M': {'any': {'L': [{'S': 'x'}, {'N': BIG}]}}}}},
        'tags': {'SS': ['new', 'a', 'Z']}, 'nums': {'NS': [BIG, '-7', '0']},
        'blobs': {'BS': [b'\xff', b'\x00\x01']}, 'items': {'L': [{'N': '3'}, {'N': '-1'}]},
        'attrs': {'M': {'colour': {'S': 'red'}, 'size': {'S': 'L'}}},
        'free': {'L': [{'N': '1.5'}, {'M': {'k': {'BOOL': True}}}]}})
    ddb.put_item(TableName=name, Item={**key(2), 'meta': {'M': {'seen': {'BOOL': True}}},
                                       'items': {'L': []}, 'attrs': {'M': {}}})
    ddb.update_item(TableName=name, Key=key(2), UpdateExpression='SET meta.dims = :d, tags = :t',
                    ExpressionAttributeValues={':d': {'L': [{'N': '1'}]}, ':t': {'SS': ['b']}})
    ddb.delete_item(TableName=name, Key=key(1))


# What pyarrow reads back for each item's image: every declared struct field,
# sets sorted, maps as (name, value) pairs, decimals at the column's scale.
EXPECTED = {
    (1, 'replace'): {
        'meta': {'dims': [D('8.50'), None, D('-0.01')], 'seen': False, 'raw': b'\x00\xff\x80',
                 'exact': D(SMALL), 'extra': json.dumps({'any': ['x', int(BIG)]},
                                                        separators=(',', ':'))},
        'tags': ['Z', 'a', 'new'], 'nums': [D(-7), D(0), D(BIG)],
        'blobs': [b'\x00\x01', b'\xff'], 'items': [3, -1],
        'attrs': [('colour', 'red'), ('size', 'L')],
        'free': [1.5, {'k': True}]},
    (2, 'replace'): [
        {'meta': {'dims': None, 'seen': True, 'raw': None, 'exact': None, 'extra': None},
         'tags': None, 'nums': None, 'blobs': None, 'items': [], 'attrs': [], 'free': None},
        {'meta': {'dims': [D('1.00')], 'seen': True, 'raw': None, 'exact': None, 'extra': None},
         'tags': ['b'], 'nums': None, 'blobs': None, 'items': [], 'attrs': [], 'free': None}],
}


def write_job(tmp_path, name, archive, database_url):
    raw = {'source': {'type': 'dynamodb-archive', 'format': 'dynamodb-jsonl',
                      'path': str(archive)},
           'tables': {name: {'key': KEY, 'target': 'cards', 'columns': COLUMNS}},
           'sinks': {'database': {'url': database_url}, 'parquet': {'path': 'out/backup'}},
           'dead_letter': {'path': 'out/dead-letter'}}
    path = tmp_path / 'job.yaml'
    path.write_text(yaml.safe_dump(raw), encoding='utf-8')
    return str(path)


def test_declared_shapes_are_arrow_structs_lists_and_maps_with_exact_values(
        moto_endpoint, tmp_path, sqlite_url):
    name, ddb, streams = create_table(moto_endpoint, 'prod-Nested.cards')
    write_items(ddb, name)
    archive = tmp_path / 'stream.jsonl'
    archive.write_bytes(b'\n'.join(stream_lines(ddb, streams, name)))
    run_job(write_job(tmp_path, name, archive, sqlite_url))
    assert list(read_dead_letters(str(tmp_path / 'out' / 'dead-letter'))) == []

    paths = list((tmp_path / 'out' / 'backup').rglob('*.parquet'))  # one per write shard
    assert paths and len({pq.read_schema(path) for path in paths}) == 1
    schema = pq.read_schema(paths[0])
    assert schema.field('meta').type == pa.struct([
        ('dims', pa.list_(pa.decimal128(10, 2))), ('seen', pa.bool_()), ('raw', pa.binary()),
        ('exact', pa.decimal128(38, 37)), ('extra', pa.string())])
    assert schema.field('tags').type == pa.list_(pa.string())
    assert schema.field('nums').type == pa.list_(pa.decimal128(38, 0))
    assert schema.field('blobs').type == pa.list_(pa.binary())
    assert schema.field('items').type == pa.list_(pa.int64())
    assert schema.field('attrs').type == pa.map_(pa.string(), pa.string())
    assert schema.field('free').type == pa.string()

    rows = sorted(parquet_rows(tmp_path / 'out' / 'backup'), key=lambda r: r['version'])
    got = {}
    for row in rows:
        values = {column: row[column] for column in COLUMNS if column not in KEY}
        if values['free'] is not None:
            values['free'] = json.loads(values['free'])
        got.setdefault((json.loads(row['key'])[0], row['op']), []).append(values)
    assert got.pop((1, 'delete'))
    assert got == {(1, 'replace'): [EXPECTED[1, 'replace']], (2, 'replace'): EXPECTED[2, 'replace']}
    exact = rows[0]['meta']['exact']
    assert exact.as_tuple() == D(SMALL).as_tuple()               # every digit kept
    assert rows[0]['nums'][2].as_tuple() == D(BIG).as_tuple()

    # The replica keeps them as JSON documents, as a json column.
    with sa.create_engine(sqlite_url).connect() as conn:
        meta, tags = conn.execute(sa.text('SELECT meta, tags FROM cards')).one()
    assert json.loads(meta) == {'dims': [1], 'seen': True} and json.loads(tags) == ['b']


def test_an_item_that_does_not_fit_its_shape_is_a_dead_letter_naming_the_path(
        tmp_path, sqlite_url):
    lines = [
        stream_record('INSERT', 1, 1, new={**key(1), 'meta': {'M': {'dims': {'L': [
            {'N': '1'}, {'S': 'wide'}]}}}}),
        stream_record('INSERT', 2, 2, new={**key(2), 'meta': {'M': {'colour': {'S': 'red'}}}}),
        stream_record('INSERT', 3, 3, new={**key(3), 'nums': {'NS': ['1.5']}}),
        stream_record('INSERT', 4, 4, new={**key(4), 'tags': {'L': [{'S': 'a'}]}}),
        stream_record('INSERT', 5, 5, new={**key(5), 'items': {'L': [{'N': '2'}]}}),
    ]
    archive = tmp_path / 'stream.jsonl'
    archive.write_text('\n'.join(lines))
    run_job(write_job(tmp_path, 'prod-Card', archive, sqlite_url))
    letters = sorted((d.reason, d.detail) for d in read_dead_letters(
        str(tmp_path / 'out' / 'dead-letter')))
    assert [reason for reason, _ in letters] == ['attribute-type'] * 3 + ['unknown-attribute']
    details = ' | '.join(detail for _, detail in letters)
    for path in ("'meta.dims[1]' is of type S", "'meta.colour'", "'nums': a number",
                 "'tags' is of type L"):
        assert path in details
    rows = parquet_rows(tmp_path / 'out' / 'backup')
    assert [(json.loads(r['key'])[0], r['items']) for r in rows if r['op'] == 'replace'] == [
        (5, [2])]


def test_nested_types_parse_to_json_columns_with_a_shape():
    text = 'struct< dims : list<decimal(10)>,seen:boolean >'
    assert canonical_type(text) == 'struct<dims: list<decimal(10,0)>, seen: boolean>'
    parsed = parse_type(text)
    assert parsed.kind == 'json' and parsed.changeflow
    assert arrow_type('map<set<binary>>') == pa.map_(pa.string(), pa.list_(pa.binary()))
    for bad in ('list<>', 'set<list<string>>', 'struct<a: int>', 'list<string',
                'struct<a: string, a: bigint>', 'list<decimal(40,2)>', 'map<string>>'):
        with pytest.raises(ValueError):
            parse_type(bad)


def test_a_nested_column_takes_json_text_too():
    """A MySQL JSON column declared with a shape: its document's text, decimals exact."""
    convert = parse_type('struct<n: list<decimal(38,0)>, b: binary>').shape.converter()
    assert convert('{"n": [%s, 1], "b": "AP8="}' % BIG) == {'n': [D(BIG), D(1)], 'b': b'\x00\xff'}


def test_a_model_declares_nested_columns():
    import dataclasses
    from typing import Any, Optional

    @dataclasses.dataclass(frozen=True)
    class Card:
        __key__ = ('id',)
        id: int
        tags: Optional[frozenset[str]] = None
        dims: tuple[decimal.Decimal, ...] = ()
        attrs: dict[str, list[int]] = dataclasses.field(default_factory=dict)
        rows: list[dict] = dataclasses.field(default_factory=list)
        anything: Any = None
        loose: list = dataclasses.field(default_factory=list)
    assert dict(model_columns(Card)) == {
        'id': 'bigint', 'tags': 'set<string>', 'dims': 'list<decimal>',
        'attrs': 'map<list<bigint>>', 'rows': 'list<json>', 'anything': 'json', 'loose': 'json'}
    columns = ItemColumns(model_columns(Card))
    assert dict(columns.values(item({'id': {'N': '1'}, 'attrs': {'M': {'a': {'L': [
        {'N': '2'}]}}}}))) == {'id': D(1), 'attrs': {'a': [2]}}
    with pytest.raises(ItemMismatch, match=r"'attrs\.a\[0\]'"):
        columns.values(item({'id': {'N': '1'}, 'attrs': {'M': {'a': {'L': [{'N': '2.5'}]}}}}))
