"""WriteNotifications: rule filtering, redaction, JSONL idempotence, stdout, failures."""

import datetime
import decimal
import json
import sqlite3

import apache_beam as beam
import pytest
from apache_beam.testing.util import assert_that, equal_to

from changeflow.config import NotifyRule, TableSpec
from changeflow.sql.expressions import col, lit
from changeflow.io import notify
from changeflow.io.notify import REDACTED, JsonLinesFileWriter, WriteNotifications
from changeflow.metrics import counter_totals
from changeflow.model import DEAD_LETTER_TAG, Change, OpKind, RowOp, audit_version
from tests.beam_helpers import local_pipeline

T = int(datetime.datetime(2026, 11, 22, 14, 16, 18, tzinfo=datetime.timezone.utc)
        .timestamp()) * 1_000_000
CUSTOMERS = TableSpec('shop.customers', ('email',), 'customers',
                      (('email', 'string'), ('name', 'string'), ('card', 'string')),
                      redact=('email', 'card'))


def op(kind, query_id, values=(), assignments=()):
    return RowOp(kind, audit_version(T, query_id, query_id, 0), tuple(values),
                 tuple(assignments), f'audit.log#{query_id}')


def changes():
    return [
        Change('shop.orders', (1, 1), (op(OpKind.INSERT, 1, [('id', 1), ('note', 'ü\nx')]),), T),
        Change('shop.orders', (1, 2), (
            op(OpKind.INSERT, 2, [('id', 2), ('total', decimal.Decimal('9.50'))]),
            op(OpKind.UPDATE, 3, assignments=[('total', ('bin', '+', col('total'), lit(1))),
                                              ('status', lit('paid')), ('note', lit(None))])), T),
        Change('shop.orders', (1, 3), (op(OpKind.DELETE, 4),), T),
        Change('shop.orders', (1, 4), (op(OpKind.UPSERT, 5, [('id', 4)]),), T),
        Change('shop.customers', ('a@b.c',), (
            op(OpKind.REPLACE, 6, [('email', 'a@b.c'), ('name', 'Ann'), ('card', None)]),), T),
    ]


def run(rules, elements, written=None, letters=None, tables=(CUSTOMERS,), **kwargs):
    """Runs the sink with checks of its outputs; returns its counters by name."""
    p = local_pipeline()
    result = p | beam.Create(elements) | WriteNotifications(rules, tables=tables, **kwargs)
    if written is not None:
        assert_that(result.written | beam.Map(json.loads), written, label='Written')
    if letters is not None:
        assert_that(result[DEAD_LETTER_TAG], letters, label='DeadLetters')
    outcome = p.run()
    outcome.wait_until_finish()
    return counter_totals(outcome, 'changeflow.write_notify')


def lines(path):
    with open(path, encoding='utf-8') as f:
        return [json.loads(line) for line in f]


def keys_ops(*expected):
    def check(notes):
        assert sorted((n['table'], n['key'], n['op']) for n in notes) == sorted(expected)
    return check


def test_rules_filter_render_and_redact(tmp_path):
    orders = tmp_path / 'orders.jsonl'
    people = tmp_path / 'out' / 'people.jsonl'
    rules = [
        {'to': f'file:{orders}', 'when': {'table': 'shop.orders', 'op': ['insert', 'delete']}},
        {'to': f'file:{people}', 'when': {'table': 'shop.cust*'}},
        NotifyRule(f'file:{people}', ops=('replace',)),  # same target: same ids
    ]
    counters = run(rules, changes(), written=keys_ops(
        ('shop.orders', [1, 1], 'insert'), ('shop.orders', [1, 2], 'update'),
        ('shop.orders', [1, 3], 'delete'), ('shop.customers', [REDACTED], 'replace')),
        letters=equal_to([]))
    assert counters == {'received': 5, 'written': 4}

    by_key = {tuple(n['key']): n for n in lines(orders)}
    assert sorted(by_key) == [(1, 1), (1, 2), (1, 3)]  # the upsert matches no rule
    assert by_key[1, 1]['values'] == {'id': 1, 'note': 'ü\nx'}
    updated = by_key[1, 2]
    assert list(updated) == ['id', 'table', 'key', 'op', 'version', 'event_time', 'values']
    assert (updated['op'], updated['version']) == ('update', audit_version(T, 3, 3, 0))
    assert updated['event_time'] == '2026-11-22T14:16:18.000000Z'
    assert updated['values'] == {'status': 'paid', 'note': None}  # computed total left out
    assert by_key[1, 3]['values'] == {}
    assert len({n['id'] for n in by_key.values()}) == 3

    (person,) = lines(people)
    assert person['values'] == {'email': REDACTED, 'name': 'Ann', 'card': REDACTED}
    assert 'a@b.c' not in people.read_text()


def test_rerun_leaves_the_file_unchanged(tmp_path):
    target = tmp_path / 'all.jsonl'
    rules = [{'to': f'file:{target}'}]
    run(rules, changes())
    first = target.read_bytes()
    assert len(first.splitlines()) == 5
    counters = run(rules, changes()[::-1], written=equal_to([]), batch_size=2)
    assert counters == {'received': 5, 'skipped_existing': 5}
    assert target.read_bytes() == first

    # Lines appended by others are kept; a torn last line is closed before appending.
    target.write_bytes(first[:first.index(b'\n') + 1] + b'not json\n{"id": "x", "tru')
    run(rules, changes(), written=keys_ops(*[
        (n['table'], n['key'], n['op']) for n in map(json.loads, first.splitlines()[1:])]))
    text = target.read_bytes().splitlines()
    assert text[1:3] == [b'not json', b'{"id": "x", "tru']
    assert sorted(text[3:]) == sorted(first.splitlines()[1:])


def test_a_moved_file_keeps_its_ids_and_nothing_is_sent_again(tmp_path):
    """Ids hash the row and version, not the target: a notification file moved
    to another path (another `to:`) is not filled again on a re-run."""
    first, moved = tmp_path / 'a' / 'notes.jsonl', tmp_path / 'b' / 'moved.jsonl'
    run([{'to': f'file:{first}'}], changes())
    moved.parent.mkdir()
    moved.write_bytes(first.read_bytes())
    counters = run([{'to': f'file:{moved}'}], changes(), written=equal_to([]))
    assert counters == {'received': 5, 'skipped_existing': 5}
    assert moved.read_bytes() == first.read_bytes()


def test_stdout_prints_every_time(capsys):
    rules = [{'to': 'stdout', 'when': {'op': 'delete'}}]
    run(rules, changes())
    run(rules, changes())
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(n['key'], n['op']) for n in printed] == [([1, 3], 'delete')] * 2


def test_failing_target_is_dead_lettered_and_others_written(tmp_path):
    good = tmp_path / 'good.jsonl'
    rules = [{'to': f'file:{tmp_path}'},  # a directory: cannot be opened for appending
             {'to': f'file:{good}', 'when': {'op': 'delete'}}]

    def failed(letters):
        assert len(letters) == 5
        assert {(l.step, l.reason) for l in letters} == {('write_notify', 'write-failed')}
        assert sorted(l.position for l in letters) == [f'audit.log#{n}' for n in (1, 3, 4, 5, 6)]
        assert all(json.loads(l.original)['id'] for l in letters)

    counters = run(rules, changes(), letters=failed,
                   written=keys_ops(('shop.orders', [1, 3], 'delete')))
    assert counters == {'received': 5, 'written': 1, 'dead_lettered': 5}


def test_text_that_is_not_utf8_is_escaped(tmp_path):
    target = tmp_path / 'notes.jsonl'
    change = Change('shop.orders', (1, 9), (op(OpKind.INSERT, 9, [('note', 'caf\udce9')]),), T)
    run([{'to': f'file:{target}'}], [change], letters=equal_to([]))
    (note,) = lines(target)
    assert note['values'] == {'note': 'caf\udce9'}
    assert run([{'to': f'file:{target}'}], [change]) == {'received': 1, 'skipped_existing': 1}


def test_malformed_change_is_dead_lettered():
    def bad(letters):
        (letter,) = letters
        assert (letter.reason, letter.position) == ('bad-change', '')
    run([{'to': 'stdout'}], [Change('shop.orders', (1,), (), T)], letters=bad)


@pytest.mark.parametrize('rules, message', [
    ([{'to': 'sms:+15550100'}], "scheme 'sms'"),
    ([{'to': 'sns:arn:aws:sns:x'}], 'topic ARN'),
    ([{'to': 'stdout', 'template': '{op}'}], "'template'.*takes to, when"),
    ([{'to': 'stdout', 'when': {'columns': {'status': 'shipped'}}}], "'changed'"),
    ([{'to': 'stdout', 'when': {'op': 'merge'}}], "op 'merge'"),
    ([{'to': 'stdout', 'when': {'op': ['insert', 'upsert', 'create']}}], "op 'create'"),
    ([{'to': 'stdout', 'when': {'tables': 'a.b'}}], 'tables'),
    ([{'to': 'stdout', 'if': {}}], "'if'"),
    ([{'to': 'file:'}], 'needs a path'),
    ([{'to': 'stdout:x'}], "'x'"),
    ([NotifyRule('stdout', ops=('insert', 'merge'))], "op 'merge'"),
    ({'to': 'stdout'}, 'list of rules'),
    ([], 'list of rules'),
])
def test_rules_are_checked(rules, message):
    with pytest.raises(ValueError, match=message):
        WriteNotifications(rules)


def note_lines(*ids):
    return [(i, json.dumps({'id': i, 'n': 'x' * 40}).encode()) for i in ids]


def file_writer(path):
    writer = JsonLinesFileWriter(str(path))
    writer.open()
    return writer


def test_the_id_index_survives_a_restart_and_a_replay_writes_nothing(tmp_path, monkeypatch):
    """The ids are the SQLite index's, not a set read from the file: a restart
    reads none of the file back, and a replay (as a whole or per line) writes
    nothing."""
    target = tmp_path / 'notes.jsonl'
    writer = file_writer(target)
    assert writer.write(note_lines('a', 'b', 'a')) == {'a', 'b'}
    assert writer.write(note_lines('b', 'c')) == {'c'}
    writer.close()
    written = target.read_bytes()
    assert written == b''.join(line + b'\n' for _, line in note_lines('a', 'b', 'c'))

    parsed = []
    monkeypatch.setattr(notify, '_line_ids', lambda data: parsed.append(data) or [])
    writer = file_writer(target)
    assert writer.write(note_lines('c', 'b', 'a')) == set()
    assert writer.write(note_lines('d')) == {'d'}
    writer.close()
    assert parsed == []  # nothing read back from the file
    assert target.read_bytes() == written + note_lines('d')[0][1] + b'\n'


@pytest.mark.parametrize('damage', ['deleted', 'not a database', 'another file'])
def test_the_id_index_is_rebuilt_from_the_file(tmp_path, damage):
    target = tmp_path / 'notes.jsonl'
    index = tmp_path / 'notes.jsonl.ids'
    writer = file_writer(target)
    writer.write(note_lines('a', 'b'))
    writer.close()
    if damage == 'deleted':
        index.unlink()
    elif damage == 'not a database':
        index.write_bytes(b'\0garbage' * 100)
    else:  # the file replaced by a longer one without 'a': its index is not this file's
        target.write_bytes(b''.join(line + b'\n' for _, line in note_lines('b', 'c', 'e')))
    before = target.read_bytes()
    writer = file_writer(target)
    fresh = writer.write(note_lines('a', 'b', 'c', 'd'))
    writer.close()
    assert fresh == ({'a', 'd'} if damage == 'another file' else {'c', 'd'})
    assert target.read_bytes() == before + b''.join(
        line + b'\n' for i, line in note_lines('a', 'b', 'c', 'd') if i in fresh)


def indexed(path):
    """(offset, sorted ids) of a file's id index."""
    index = sqlite3.connect(f'{path}.ids')
    try:
        (offset,), = index.execute('SELECT offset FROM indexed')
        return offset, [row[0] for row in index.execute('SELECT id FROM ids ORDER BY id')]
    finally:
        index.close()


def test_a_writer_indexes_its_own_lines_every_few_thousand_ids_and_at_close(
        tmp_path, monkeypatch):
    """Its own lines' ids are held and added to the index every _INDEX_EVERY
    ids (and at close), not at every write; another writer meanwhile reads
    them from the file, and each id is written once."""
    monkeypatch.setattr(JsonLinesFileWriter, '_INDEX_EVERY', 4)
    target = tmp_path / 'notes.jsonl'
    writer = file_writer(target)
    assert writer.write(note_lines('a', 'b')) == {'a', 'b'}
    assert writer.write(note_lines('b', 'c')) == {'c'}
    assert indexed(target) == (0, [])
    assert writer.write(note_lines('d', 'a', 'e')) == {'d', 'e'}
    assert indexed(target) == (target.stat().st_size, ['a', 'b', 'c', 'd', 'e'])
    assert writer.write(note_lines('f')) == {'f'}
    other = file_writer(target)
    assert other.write(note_lines('f', 'g')) == {'g'}
    assert writer.write(note_lines('g', 'h')) == {'h'}
    assert indexed(target)[1] == ['a', 'b', 'c', 'd', 'e', 'f', 'g']
    writer.close()
    other.close()
    assert indexed(target) == (target.stat().st_size, list('abcdefgh'))
    assert [json.loads(line)['id'] for line in target.read_bytes().splitlines()] == list(
        'abcdefgh')


def test_lines_appended_by_another_writer_are_caught_up(tmp_path):
    """Two writers of one file (two workers), and lines appended without the
    index (a crash between the append and the index update): each id once."""
    target = tmp_path / 'notes.jsonl'
    first, second = file_writer(target), file_writer(target)
    assert first.write(note_lines('a')) == {'a'}
    assert second.write(note_lines('a', 'b')) == {'b'}
    with open(target, 'ab') as f:
        f.write(note_lines('c')[0][1] + b'\n')
    assert first.write(note_lines('a', 'b', 'c', 'd')) == {'d'}
    assert second.write(note_lines('d', 'c')) == set()
    first.close()
    second.close()
    assert [json.loads(line)['id'] for line in target.read_bytes().splitlines()] == [
        'a', 'b', 'c', 'd']
