"""Handlers: models, strategies and order per key, retries, the ledger, dead letters, config."""

import dataclasses
import decimal
import threading
from typing import Optional

import pytest
from apache_beam.pvalue import TaggedOutput

from changeflow.config import ConfigError, parse_config
from changeflow.dynamodb.records import DynamoMap
from changeflow.handlers import (
    Handler, Handlers, InsertEvent, ModifyEvent, RemoveEvent, RetryPolicy, TransientError,
    is_transient)
from changeflow.handlers.events import ChangeEvent, audit_events, change_id, event_version
from changeflow.handlers.models import ModelMismatch, fit
from changeflow.handlers.transforms import MODEL_STEP, HandlerOutcome, _HandleShardFn
from changeflow.model import Change, OpKind, RowOp
from changeflow.sql.expressions import lit
from changeflow.transforms.runs import make_run

TABLE = 'prod-Card'
NO_WAIT = RetryPolicy(attempts=3, initial_seconds=0, max_seconds=0)


@dataclasses.dataclass(frozen=True)
class Card:
    __key__ = ('id', 'title')
    id: int
    title: str
    expiresAt: Optional[int] = None


def image(i, title='t', **extra):
    return DynamoMap(sorted({'id': decimal.Decimal(i), 'title': title, **extra}.items()))


def event(i, seq, kind='insert', title='t', **extra):
    version = f'{seq:017d}.{seq:056d}'
    new = None if kind == 'remove' else image(i, title, **extra)
    old = image(i, title) if kind != 'insert' else None
    return ChangeEvent(TABLE, (i, title), kind, old, new, version, seq, f'line{seq}',
                       f'{{"record": {seq}}}'.encode())


def element(events, shard=0):
    return (TABLE, shard), [make_run(events, event_version)]


def run_fn(handlers, events, state_url, models=None):
    """The branch's DoFn on one shard batch: (outcomes by handler, dead letters)."""
    fn = _HandleShardFn(tuple(handlers), {TABLE: Card} if models is None else models, state_url)
    fn.setup()
    try:
        outputs = list(fn.process(element(events)))
    finally:
        fn.teardown()
    letters = [o.value for o in outputs if isinstance(o, TaggedOutput)]
    outcomes = {o[0]: o for o in outputs if isinstance(o, HandlerOutcome)}
    return outcomes, letters


@pytest.fixture
def state_url(tmp_path):
    return f'sqlite:///{tmp_path / "state.db"}'


def test_events_are_typed_by_the_model(state_url):
    seen = []
    events = [event(1, 1), event(1, 2, 'modify', expiresAt=decimal.Decimal(9)),
              event(1, 3, 'remove')]
    run_fn([Handler('all', TABLE, seen.extend)], events, state_url)
    insert, modify, remove = seen
    assert isinstance(insert, InsertEvent) and insert.new == Card(1, 't')
    assert isinstance(modify, ModifyEvent) and (modify.old, modify.new) == (
        Card(1, 't'), Card(1, 't', 9))
    assert isinstance(remove, RemoveEvent) and remove.old == Card(1, 't') and not remove.ttl
    assert [e.change_id for e in seen] == [change_id(TABLE, (1, 't'), e.version) for e in events]


def test_untyped_tables_get_plain_dicts(state_url):
    seen = []
    run_fn([Handler('all', TABLE, seen.extend)], [event(1, 1, tags=('a',))], state_url, {})
    assert seen[0].new == {'id': decimal.Decimal(1), 'title': 't', 'tags': ['a']}


@pytest.mark.parametrize('extra, reason, attribute', [
    ({'expiresAt': 'tomorrow'}, 'attribute-type', 'expiresAt'),
    ({'colour': 'red'}, 'unknown-attribute', 'colour'),
])
def test_an_item_that_does_not_fit_its_model_is_dead_lettered(state_url, extra, reason,
                                                               attribute):
    seen = []
    outcomes, letters = run_fn([Handler('all', TABLE, seen.extend)],
                               [event(1, 1), event(2, 2, **extra)], state_url)
    assert [e.key for e in seen] == [(1, 't')]          # the one that fits still goes
    assert [(l.step, l.reason) for l in letters] == [(MODEL_STEP, reason)]
    assert repr(attribute) in letters[0].detail and letters[0].original == b'{"record": 2}'


def test_model_fitting_names_a_missing_attribute():
    with pytest.raises(ModelMismatch) as caught:
        fit(Card, (('id', decimal.Decimal(1)),))
    assert (caught.value.reason, caught.value.attribute) == ('missing-attribute', 'title')
    assert fit(Card, (('id', decimal.Decimal(1)),), partial=True) == Card(1, None)


def _keys_in_order(events):
    return [(e.key[0], e.version) for e in events]


def _per_key_versions(calls):
    by_key = {}
    for e in calls:
        by_key.setdefault(e.key[0], []).append(e.version)
    return by_key


def test_series_runs_handlers_one_after_another_in_version_order_per_key(state_url):
    log, lock = [], threading.Lock()

    def record(name):
        def handle(events):
            with lock:
                log.extend((name, e) for e in events)
        return handle

    events = [event(k, seq) if seq < 4 else event(k, seq, 'modify')
              for seq in range(1, 7) for k in (1, 2, 3)]
    handlers = [Handler(name, TABLE, record(name), batch_size=2) for name in ('a', 'b')]
    run_fn(handlers, list(reversed(events)), state_url)   # runs merge by version
    assert [name for name, _ in log] == ['a'] * 18 + ['b'] * 18
    for name in ('a', 'b'):
        mine = [e for n, e in log if n == name]
        assert _per_key_versions(mine) == _per_key_versions(sorted(events, key=event_version))


def test_map_runs_a_tables_handlers_concurrently_each_in_order_per_key(state_url):
    released = threading.Event()
    seen = {'a': [], 'b': []}

    def waits(events):   # returns only once b has run: a and b overlap
        assert released.wait(30), 'handler b never ran while a was running'
        seen['a'].extend(events)

    def releases(events):
        seen['b'].extend(events)
        released.set()

    events = [event(k, seq) for seq in range(1, 5) for k in (1, 2)]
    outcomes, letters = run_fn(
        [Handler('a', TABLE, waits, strategy='map', batch_size=3),
         Handler('b', TABLE, releases, strategy='map', batch_size=3)], events, state_url)
    assert letters == [] and outcomes['a'][3] == outcomes['b'][3] == 8
    for name in ('a', 'b'):
        assert _per_key_versions(seen[name]) == _per_key_versions(events)


def test_a_transient_error_is_retried_a_permanent_one_is_not(state_url):
    calls = {'flaky': 0, 'broken': 0}

    def flaky(events):
        calls['flaky'] += 1
        if calls['flaky'] < 3:
            raise TransientError('try again')

    def broken(events):
        calls['broken'] += 1
        raise KeyError('bug')

    outcomes, letters = run_fn([Handler('flaky', TABLE, flaky, retry=NO_WAIT),
                                Handler('broken', TABLE, broken, retry=NO_WAIT)],
                               [event(1, 1)], state_url)
    assert calls == {'flaky': 3, 'broken': 1}
    assert outcomes['flaky'][3:] == (1, 0, 0) and outcomes['broken'][3:] == (0, 0, 1)
    assert [(l.step, l.reason) for l in letters] == [('handler:broken', 'handler-failed')]


def test_transient_errors():
    import urllib.error
    assert is_transient(ConnectionRefusedError()) and is_transient(TimeoutError())
    assert is_transient(urllib.error.HTTPError('u', 503, 'busy', {}, None))
    assert not is_transient(urllib.error.HTTPError('u', 404, 'gone', {}, None))
    assert not is_transient(ValueError()) and not is_transient(FileNotFoundError())


def test_a_failure_dead_letters_its_events_and_calls_catch_error_with_exactly_them(state_url):
    hooked, delivered = [], []

    def fails_on_key_2(events):
        if any(e.key[0] == 2 for e in events):
            raise RuntimeError('XXXX')
        delivered.extend(events)

    events = [event(1, 1), event(2, 2), event(2, 3, 'modify'), event(3, 4)]
    outcomes, letters = run_fn(
        [Handler('picky', TABLE, fails_on_key_2, batch_size=1,
                 catch_error=lambda handler, failed, error: hooked.append(
                     (handler.name, [e.version for e in failed], str(error)))),
         Handler('other', TABLE, lambda events: None)], events, state_url)
    assert hooked == [('picky', [events[1].version], 'XXXX')]
    assert [e.key[0] for e in delivered] == [1, 3]
    assert [(l.step, l.reason, l.original) for l in letters] == [
        ('handler:picky', 'handler-failed', b'{"record": 2}'),
        ('handler:picky', 'blocked-by-failure', b'{"record": 3}')]  # key 2's later change
    assert "handler 'picky' failed: RuntimeError: XXXX" in letters[0].detail
    assert 'Traceback' in letters[0].detail
    assert outcomes['other'][3] == 4                  # never re-run nor blocked


def test_the_ledger_keeps_each_handler_at_most_once_per_change(state_url):
    calls = []
    handler = Handler('once', TABLE, lambda events: calls.extend(events))
    first, _ = run_fn([handler], [event(1, 1), event(2, 2)], state_url)
    again, _ = run_fn([handler], [event(1, 1), event(2, 2), event(3, 3)], state_url)
    assert [e.key[0] for e in calls] == [1, 2, 3]
    assert first['once'][3:] == (2, 0, 0) and again['once'][3:] == (1, 2, 0)
    other, _ = run_fn([Handler('another', TABLE, lambda events: calls.extend(events))],
                      [event(1, 1)], state_url)
    assert other['another'][3] == 1                   # the ledger is per handler


def test_events_filter_by_kind(state_url):
    seen = []
    run_fn([Handler('removes', TABLE, seen.extend, events=['remove'])],
           [event(1, 1), event(1, 2, 'modify'), event(1, 3, 'remove')], state_url)
    assert [e.kind for e in seen] == ['remove']


def test_audit_changes_are_events_without_old_images(state_url):
    table = 'shop.orders'
    changes = [
        Change(table, (1,), (RowOp(OpKind.INSERT, 'v1', (('id', 1), ('status', 'new'))),), 1),
        Change(table, (1,), (RowOp(OpKind.UPDATE, 'v2', assignments=(
            ('status', lit('paid')),)),), 2),
        Change(table, (1,), (RowOp(OpKind.DELETE, 'v3'),), 3),
        Change(table, (), (RowOp(OpKind.TRUNCATE, 'v4'),), 4),
    ]
    events = [e for c in changes for e in audit_events(c)]
    assert [(e.kind, e.old, e.new, e.written) for e in events] == [
        ('insert', None, (('id', 1), ('status', 'new')), None),
        ('modify', None, (('status', 'paid'),), ('status',)),
        ('remove', None, None, None)]
    seen = []
    fn = _HandleShardFn((Handler('orders', table, seen.extend),), {}, state_url)
    fn.setup()
    list(fn.process(((table, 0), [make_run(changes, lambda c: c.ops[0].version)])))
    assert [(type(e).__name__, getattr(e, 'new', None)) for e in seen] == [
        ('InsertEvent', {'id': 1, 'status': 'new'}),
        ('ModifyEvent', {'status': 'paid'}), ('RemoveEvent', None)]


def test_python_registry():
    handlers = Handlers(catch_error=print)

    @handlers.on(TABLE, 'insert', name='New Card Informer', strategy='map')
    def inform(events):
        pass

    (handler,) = handlers
    assert (handler.name, handler.events, handler.strategy, handler.catch_error) == (
        'New Card Informer', frozenset({'insert'}), 'map', print)
    with pytest.raises(ValueError, match='events'):
        Handler('x', TABLE, inform, events=['created'])


def _write(tmp_path, text):
    (tmp_path / 'card_models.py').write_text(
        'import dataclasses\nfrom typing import Optional\n\n'
        '@dataclasses.dataclass\nclass Card:\n    __key__ = ("id", "title")\n'
        '    id: int\n    title: str\n    expiresAt: Optional[int] = None\n\n'
        'def handle(events):\n    pass\n')
    (tmp_path / 'stream.jsonl').write_text('')
    path = tmp_path / 'cards-job.yaml'
    path.write_text(text)
    import yaml
    return parse_config(yaml.safe_load(text), str(tmp_path), str(path))


_JOB = '''
source: {type: dynamodb-archive, format: dynamodb-jsonl, path: stream.jsonl}
tables: {prod-Card: {model: "card_models:Card"}}
handlers:
  - {name: a, table: prod-Card, events: [insert, remove], function: "card_models:handle"}
  - {name: b, table: prod-Card, function: "card_models:handle", STRATEGY}
sinks: {database: {url: "sqlite:///out/replica.db"}}
dead_letter: {path: out/dead}
'''


def test_config_handlers_models_and_state(tmp_path):
    config = _write(tmp_path, _JOB.replace(', STRATEGY', ''))
    (spec,) = config.tables
    assert (spec.key, spec.columns, spec.model) == (
        ('id', 'title'), (('id', 'bigint'), ('title', 'string'), ('expiresAt', 'bigint')),
        'card_models:Card')
    assert [(h.name, sorted(h.events)) for h in config.handlers] == [
        ('a', ['insert', 'remove']), ('b', ['insert', 'modify', 'remove'])]
    assert config.state_url == f'sqlite:///{tmp_path}/cards-job.state.db'


@pytest.mark.parametrize('change, message', [
    (('"card_models:handle"}', '"card_models:nothing"}'), r"handlers\[0\].function: cannot import"),
    ((', STRATEGY', ', strategy: map'), 'share one strategy'),
    (('name: b', 'name: a'), 'used twice'),
    (('table: prod-Card, function', 'table: other, function'), 'not among'),
    (('"card_models:Card"', '"card_models:Missing"'), 'tables.prod-Card.model'),
])
def test_config_errors(tmp_path, change, message):
    with pytest.raises(ConfigError, match=message):
        _write(tmp_path, _JOB.replace(*change).replace(', STRATEGY', ', strategy: series'))


def _recorder(path):
    """A handler appending (kind, key, version, old, new) lines to ``path``."""
    def handle(events):
        import json
        with open(path, 'a', encoding='utf-8') as f:
            for e in events:
                f.write(json.dumps([e.kind, list(e.key), e.version, getattr(e, 'old', None),
                                    getattr(e, 'new', None)], default=str) + '\n')
    return handle


def test_audit_job_runs_python_handlers_once_per_change(tmp_path):
    """The bundled audit example with a handler from the Python registry, run twice."""
    import json
    import os

    import apache_beam as beam
    import yaml

    from changeflow.metrics import counter_totals
    from changeflow.pipelines import audit_sync
    example = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                           'examples')
    with open(os.path.join(example, 'shop.yaml'), encoding='utf-8') as f:
        raw = yaml.safe_load(f)
    raw['sinks'] = {}
    raw['dead_letter'] = {'path': str(tmp_path / 'dead')}
    raw['state'] = {'url': f'sqlite:///{tmp_path / "state.db"}'}
    config = parse_config(raw, example)
    log = tmp_path / 'orders.jsonl'
    handlers = Handlers()
    handlers.on('shop.orders', name='orders')(_recorder(str(log)))

    def run():
        p = beam.Pipeline(options=audit_sync.pipeline_options([]))
        audit_sync.build_pipeline(p, config, handlers=handlers)
        result = p.run()
        result.wait_until_finish()
        return counter_totals(result)

    first = run()
    events = [json.loads(line) for line in log.read_text().splitlines()]
    assert {kind for kind, *_ in events} == {'insert', 'modify', 'remove'}
    assert all(old is None for _, _, _, old, _ in events)      # the log has no old image
    by_key = {}
    for _, key, version, _, _ in events:
        by_key.setdefault(tuple(key), []).append(version)
    assert all(versions == sorted(versions) for versions in by_key.values())
    assert first['changeflow.handlers.delivered'] == len(events)
    again = run()
    assert len(log.read_text().splitlines()) == len(events)      # nothing twice
    assert again['changeflow.handlers.already_done'] == len(events)
    assert again.get('changeflow.handlers.delivered', 0) == 0


def test_a_model_that_cannot_be_imported_dead_letters_its_tables_events(state_url):
    seen = []
    outcomes, letters = run_fn([Handler('all', TABLE, seen.extend)], [event(1, 1)], state_url,
                               {TABLE: 'no_such_module_here:Card'})
    assert seen == [] and [(l.step, l.reason) for l in letters] == [
        (MODEL_STEP, 'model-unavailable')]


def test_a_python_handler_must_name_a_configured_table():
    from changeflow.handlers.transforms import RunHandlers
    with pytest.raises(ValueError, match='not among'):
        RunHandlers([Handler('x', 'other', print)], 'sqlite://', tables=[TABLE])
