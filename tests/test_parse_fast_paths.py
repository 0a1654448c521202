"""The parse stage's caches and fast paths give what the slow paths give, on the
recorded MariaDB audit logs (tests/data/audit, tests/data/app/*) and on
generated text: the plan cache (by database, sql_mode flags and shape), the
known shapes, and the str.replace unescaping of string literals."""

import gzip
import json
import os
import random
import re

import pytest

from changeflow.model import SourceRecord
from changeflow.transforms import decode

from changeflow.sql import literals, plans
from changeflow.sql.errors import SqlChangeError
from changeflow.sql.plans import StatementTranslator
from changeflow.transforms.audit_log import AuditLineError, parse_audit_line
from changeflow.transforms.transactions import SessionState
from tests.audit_fixture import AUDIT, SHOP_TABLES
from tests.real_traffic import APP, FIXTURES, _specs, write_job

SESSIONS = (None, SessionState(sql_mode='ANSI_QUOTES'),
            SessionState(sql_mode='NO_BACKSLASH_ESCAPES'))


def _statements(path):
    """(database, statement) of every QUERY the log holds whole."""
    found = []
    with open(path, encoding='utf-8') as f:
        for line in f.read().splitlines():
            try:
                event = parse_audit_line(line, '', 0)
            except AuditLineError:
                continue
            if event.operation == 'QUERY':
                found.append((event.database, event.object))
    return found


def _recorded(tmp_path_factory):
    """(fixture name, table specs, statements) of every recorded log."""
    logs = [('audit', SHOP_TABLES, _statements(os.path.join(AUDIT, 'server_audit.log')))]
    for name in FIXTURES:
        folder = os.path.join(APP, name)
        specs = _specs(write_job(folder, str(tmp_path_factory.mktemp(name))))
        logs.append((name, tuple(specs.values()),
                     _statements(os.path.join(folder, 'server_audit.log'))))
    return logs


@pytest.fixture(scope='module')
def recorded(tmp_path_factory):
    return _recorded(tmp_path_factory)


def _outcome(translator, sql, database, session):
    try:
        return translator.translate(sql, database, session)
    except SqlChangeError as error:
        return error.reason, error.detail, error.table, error.keys


class _Forgetful(dict):
    """A plan cache that keeps nothing: every statement compiled afresh."""

    def setdefault(self, key, default=None):
        return default


def test_cached_translations_are_those_compiled_afresh(recorded):
    """Every recorded statement in its database and another, under three sql_modes,
    twice through one translator (the second time from its plan cache and known
    shapes), against a translator that masks with the general scan and compiles
    each statement anew. Ties the plan cache to its key: a plan found by shape
    alone would translate `elsewhere`'s statements as the fixture's database's."""
    compared = 0
    for name, specs, statements in recorded:
        cached, fresh = StatementTranslator(specs), StatementTranslator(specs)
        fresh._plans = _Forgetful()
        fresh._known_shapes.match = lambda sql: None
        cases = [(sql, db, session) for db, sql in statements for session in SESSIONS]
        cases += [(sql, 'elsewhere', None) for db, sql in statements]
        for sql, database, session in cases:
            _outcome(cached, sql, database, session)
        learnt = cached.shapes_compiled
        for sql, database, session in cases:
            assert _outcome(cached, sql, database, session) == _outcome(
                fresh, sql, database, session), (name, database, session, sql)
            compared += 1
        assert cached.shapes_compiled == learnt  # the second pass was all from the cache
    assert compared > 10_000


def test_specialized_plans_translate_as_the_general_plans(recorded, monkeypatch):
    """The plans built for one row, one assignment or one key column IN literals,
    against the general plans compiled with them turned off."""
    for name, specs, statements in recorded:
        specialized, general = StatementTranslator(specs), StatementTranslator(specs)
        cases = [(sql, db, session) for db, sql in statements for session in SESSIONS]
        expected = [_outcome(specialized, *case) for case in cases]
        with monkeypatch.context() as patch:
            patch.setattr(plans, '_SPECIALIZED', False)
            for case, outcome in zip(cases, expected):
                assert _outcome(general, *case) == outcome, (name, case)
        for case, outcome in zip(cases, expected):  # and from their caches
            assert _outcome(specialized, *case) == outcome, (name, case)
            assert _outcome(general, *case) == outcome, (name, case)


def _masked(sql):
    try:
        return literals.mask_literals(sql)
    except SqlChangeError as error:
        return error.reason


def test_known_shapes_mask_recorded_statements_as_the_general_scan_does(recorded):
    """Learnt from the recorded statements, matched against them and against each
    with a letter of its text changed after the first _HEAD characters (another
    table or column, whose bucket shares its head with the original's): a
    template found by the head is the statement's only when its text is."""
    known = literals.KnownShapes(100_000)
    statements = [sql for _, _, logged in recorded for _, sql in logged]
    for sql in statements:
        masked = _masked(sql)
        if not isinstance(masked, str):
            known.learn(sql, *masked)
    matched = renamed = 0
    for sql in statements:
        start = literals._BEFORE_LITERAL.match(sql).end()
        variants = [sql]
        if start > literals._HEAD and sql[literals._HEAD].isalpha():
            letter = 'q' if sql[literals._HEAD] != 'q' else 'z'
            variants.append(sql[:literals._HEAD] + letter + sql[literals._HEAD + 1:])
            renamed += 1
        for variant in variants:
            found = known.match(variant)
            if found is not None:
                assert found == _masked(variant), variant
                matched += 1
    assert matched > 1_000 and renamed > 500


def test_the_plan_cache_tells_databases_and_sql_modes_apart():
    translator = StatementTranslator(SHOP_TABLES)
    insert = "INSERT INTO notes (id, body) VALUES (1, 'a\\\\b')"
    assert translator.translate(insert, 'shop').changes[0].values == (('id', 1), ('body', 'a\\b'))
    assert translator.translate(insert, 'other').skipped == 'untracked-table'
    assert translator.translate(insert, 'shop', SessionState(sql_mode='NO_BACKSLASH_ESCAPES')
                                ).changes[0].values == (('id', 1), ('body', 'a\\\\b'))
    assert translator.translate(insert, 'shop').changes[0].values == (('id', 1), ('body', 'a\\b'))


def _regex_unescape(body):
    """unescape_mysql_string's regex path, for a '..' string's body."""
    if '\\' not in body and "''" not in body:
        return body
    return literals._ESCAPE["'"].sub(literals._unescaped, body)


_BODY = re.compile(r"'((?:[^'\\]|\\.|'')*)'", re.S)
_PIECES = ['a', ' ', '\\\\', "\\'", '\\n', '\\0', '\\t', '\\Z', '\\"', '\\b', '\\r', '\\%', '\\_',
           '\\x', '\\\n', "''", '""', '"', '\1', '\0', 'é', '\\']


def test_string_literals_unescape_as_the_regex_reads_them(recorded):
    """The str.replace fast path against the regex, on every string literal of the
    recorded statements and on bodies made of every escape, the sentinel and
    doubled quotes."""
    bodies = [body for _, _, statements in recorded for _, sql in statements
              for body in _BODY.findall(sql)]
    assert sum('\\' in body for body in bodies) > 50
    rng = random.Random(12)
    bodies += [''.join(rng.choice(_PIECES) for _ in range(rng.randrange(1, 9)))
               for _ in range(50_000)]
    for body in bodies:
        assert literals.unescape_mysql_string(body) == _regex_unescape(body), body


def _checked_decode(record):
    """decode_record's events by the checked loop alone, or its DecodeError."""
    events = []
    try:
        for envelope in decode.envelopes(record.data):
            if envelope.get('messageType') == 'DATA_MESSAGE':
                decode._add_checked_events(envelope['logEvents'], envelope['logGroup'],
                                           envelope['logStream'], record.position + '@', events)
    except decode.DecodeError as error:
        return error.reason, error.detail
    return events


def test_records_decode_as_the_checked_loop_reads_them():
    """Records of the recorded audit lines, two envelopes each, with entries as AWS
    writes them, with moto's int ids, or bad, anywhere: the unchecked loop gives
    what the checked one gives, also when it gives up part way."""
    with open(os.path.join(AUDIT, 'server_audit.log'), encoding='utf-8') as f:
        lines = f.read().splitlines()
    rng = random.Random(3)
    bad = [None, [], 'x', {'id': '1', 'timestamp': 1}, {'message': 1, 'id': '1', 'timestamp': 1},
           {'message': 'm', 'id': 1.5, 'timestamp': 1}, {'message': 'm', 'id': '1', 'timestamp': True}]
    kinds = {'aws': 0, 'int': 0, 'bad': 0}
    for n in range(600):
        envelopes = []
        for _ in range(2):
            entries = []
            for i in range(rng.randrange(0, 6)):
                kind = rng.choices(['aws', 'int', 'bad'], [20, 1, 1])[0]
                kinds[kind] += 1
                entry = {'id': str(i), 'timestamp': 1_795_000_000_000 + i,
                         'message': rng.choice(lines)}
                entries.append(entry if kind == 'aws' else {**entry, 'id': i} if kind == 'int'
                               else rng.choice(bad))
            envelopes.append(json.dumps({
                'messageType': 'DATA_MESSAGE', 'logGroup': 'g', 'logStream': 's',
                'logEvents': entries}).encode())
        record = SourceRecord(b''.join(gzip.compress(e) for e in envelopes), 'kinesis', 'shard',
                              str(n), 0)
        try:
            decoded = decode.decode_record(record)
        except decode.DecodeError as error:
            decoded = error.reason, error.detail
        assert decoded == _checked_decode(record), record
    assert min(kinds.values()) > 50
