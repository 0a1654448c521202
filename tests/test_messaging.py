"""Message targets: SNS, SQS (FIFO), webhooks; templates, column predicates, the ledger."""

import datetime
import hashlib
import http.server
import json
import threading
import uuid

import apache_beam as beam
import boto3
import pytest
import yaml
from apache_beam.testing.util import assert_that, equal_to

from changeflow.config import ConfigError, TableSpec, parse_config
from changeflow.io.json_records import dumps_json
from changeflow.io.messaging import (
    SqsWriter, _entry_results, display_target, render_template, template_fields)
from changeflow.io.notify import WriteNotifications
from changeflow.io.notify_columns import columns_match, parse_columns
from changeflow.metrics import counter_totals
from changeflow.model import DEAD_LETTER_TAG, Change, OpKind, RowOp, audit_version
from changeflow.sql.expressions import col, lit
from tests.beam_helpers import local_pipeline

T = int(datetime.datetime(2026, 11, 22, 14, 16, 18, tzinfo=datetime.timezone.utc)
        .timestamp()) * 1_000_000
ORDERS = TableSpec('shop.orders', ('tenant_id', 'order_id'), 'orders',
                   (('tenant_id', 'integer'), ('order_id', 'integer'), ('status', 'string'),
                    ('card', 'string')), redact=('card',))
FAST = {'attempts': 3, 'initial_seconds': 0.01, 'max_seconds': 0.05}


def op(kind, query_id, values=(), assignments=()):
    return RowOp(kind, audit_version(T, query_id, query_id, 0), tuple(values),
                 tuple(assignments), f'audit.log#{query_id}')


def changes(n=12):
    """n orders inserted, the first two updated in later windows (one row, two versions)."""
    out = [Change('shop.orders', (1, i), (op(OpKind.INSERT, i, [
        ('tenant_id', 1), ('order_id', i), ('status', 'new'), ('card', f'4111-{i}')]),), T)
        for i in range(1, n + 1)]
    out.append(Change('shop.orders', (1, 1), (op(OpKind.UPDATE, 100, assignments=[
        ('status', lit('shipped'))]),), T))
    out.append(Change('shop.orders', (1, 1), (op(OpKind.UPDATE, 101, assignments=[
        ('status', lit('delivered'))]),), T))
    return out


def run(rules, elements, state_url, written=None, letters=None):
    p = local_pipeline()
    result = p | beam.Create(elements) | WriteNotifications(
        rules, tables=(ORDERS,), batch_size=100, state_url=state_url)
    if written is not None:
        assert_that(result.written | beam.Map(json.loads), written, label='Written')
    if letters is not None:
        assert_that(result[DEAD_LETTER_TAG], letters, label='DeadLetters')
    outcome = p.run()
    outcome.wait_until_finish()
    return counter_totals(outcome, 'changeflow.write_notify')


def receive_all(sqs, url, **kwargs):
    """Every message in the queue (deleted as read), until it reads empty."""
    messages = []
    while True:
        got = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=0,
                                  MessageAttributeNames=['All'], **kwargs).get('Messages', [])
        if not got:
            return messages
        messages.extend(got)
        sqs.delete_message_batch(QueueUrl=url, Entries=[
            {'Id': str(i), 'ReceiptHandle': m['ReceiptHandle']} for i, m in enumerate(got)])


def test_sns_topic_with_sqs_subscription_receives_each_notification_once(aws_env, sqlite_url):
    name = f'orders-{uuid.uuid4().hex[:8]}'
    sns, sqs = boto3.client('sns'), boto3.client('sqs')
    topic = sns.create_topic(Name=name)['TopicArn']
    queue = sqs.create_queue(QueueName=name)['QueueUrl']
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=['QueueArn'])[
        'Attributes']['QueueArn']
    sns.subscribe(TopicArn=topic, Protocol='sqs', Endpoint=queue_arn,
                  Attributes={'RawMessageDelivery': 'true'})
    rules = [{'to': f'sns:{topic}', 'when': {'table': 'shop.orders'}, 'retry': FAST}]

    counters = run(rules, changes(), sqlite_url, letters=equal_to([]))
    assert counters == {'received': 14, 'written': 14}
    # The same input again (a replay, a restart): nothing is published twice.
    counters = run(rules, changes()[::-1], sqlite_url, written=equal_to([]))
    assert counters == {'received': 14, 'skipped_existing': 14}

    messages = receive_all(sqs, queue)
    bodies = [json.loads(m['Body']) for m in messages]
    assert len(bodies) == 14
    assert len({b['id'] for b in bodies}) == 14      # each once
    assert sorted((tuple(b['key']), b['op']) for b in bodies) == sorted(
        [((1, i), 'insert') for i in range(1, 13)] + [((1, 1), 'update')] * 2)
    assert {b['values'].get('card') for b in bodies if b['op'] == 'insert'} == {'***'}
    attributes = messages[0]['MessageAttributes']
    assert attributes['table']['StringValue'] == 'shop.orders'
    assert attributes['notification_id']['StringValue'] == json.loads(messages[0]['Body'])['id']


def test_sqs_fifo_dedup_and_group_ids(aws_env, sqlite_url):
    sqs = boto3.client('sqs')
    queue = sqs.create_queue(QueueName=f'orders-{uuid.uuid4().hex[:8]}.fifo',
                             Attributes={'FifoQueue': 'true'})['QueueUrl']
    rules = [{'to': f'sqs:{queue}', 'template': 'order {key[1]} is {new[status]}',
              'retry': FAST}]
    assert run(rules, changes(3), sqlite_url, letters=equal_to([])) == {
        'received': 5, 'written': 5}

    messages = receive_all(sqs, queue, AttributeNames=['All'], MessageSystemAttributeNames=['All'])
    assert len(messages) == 5
    for message in messages:
        attributes = message['Attributes']
        assert attributes['MessageDeduplicationId'] == (
            message['MessageAttributes']['notification_id']['StringValue'])
    groups = {}
    for message in messages:
        groups.setdefault(message['Attributes']['MessageGroupId'], []).append(message['Body'])
    row_1 = hashlib.sha256(dumps_json(['shop.orders', [1, 1]])).hexdigest()[:32]
    assert len(groups) == 3
    assert groups[row_1] == ['order 1 is new', 'order 1 is shipped', 'order 1 is delivered']


class _Hook(http.server.BaseHTTPRequestHandler):
    """Answers POSTs with the statuses scripted for their path, then 200."""
    script: dict = {}
    received: list = []
    headers_seen: list = []

    def do_POST(self):  # noqa: N802 - http.server's name
        body = json.loads(self.rfile.read(int(self.headers['Content-Length'])))
        statuses = self.script.get(self.path, [])
        status = statuses.pop(0) if statuses else 200
        self.received.append((self.path, status, body))
        self.headers_seen.append(dict(self.headers))
        self.send_response(status)
        self.end_headers()
        if status == 401:  # as some servers do: the credential echoed back
            self.wfile.write(f'bad token {self.headers.get("Authorization")}'.encode())
            return
        self.wfile.write(b'ok' if status == 200 else b'invalid_payload')

    def log_message(self, *args):
        pass


@pytest.fixture
def webhook():
    _Hook.script, _Hook.received, _Hook.headers_seen = {}, [], []
    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), _Hook)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f'http://127.0.0.1:{server.server_port}', _Hook
    server.shutdown()
    server.server_close()


def test_webhook_retries_a_500_dead_letters_a_400_and_never_posts_twice(
        webhook, sqlite_url, tmp_path):
    base, hook = webhook
    good, bad = f'{base}/services/T0/good-SECRET', f'{base}/services/T0/bad-SECRET'
    hook.script = {'/services/T0/good-SECRET': [500], '/services/T0/bad-SECRET': [400]}
    notes = tmp_path / 'notes.jsonl'
    inserts = {'table': 'shop.orders', 'op': 'insert'}
    rules = [
        {'to': bad, 'when': inserts, 'retry': FAST},
        {'to': good, 'when': inserts, 'template': 'New order {key[1]} ({new[card]})',
         'retry': FAST},
        {'to': f'file:{notes}', 'when': inserts},
    ]
    letters = []

    def check(dead):
        letters.extend(dead)
        assert [d.reason for d in dead] == ['rejected']
        assert 'SECRET' not in dead[0].detail and 'invalid_payload' in dead[0].detail
        assert dead[0].detail.startswith(f'{base}/services/***: HTTP 400')
        assert json.loads(dead[0].original)['key'] == [1, 1]

    counters = run(rules, changes(1), sqlite_url, letters=check)
    assert counters == {'received': 3, 'written': 2, 'dead_lettered': 1, 'retried': 1}
    assert [(p, s) for p, s, _ in hook.received] == [
        ('/services/T0/bad-SECRET', 400), ('/services/T0/good-SECRET', 500),
        ('/services/T0/good-SECRET', 200)]
    assert hook.received[-1][2] == {'text': 'New order 1 (***)'}
    assert len(notes.read_text().splitlines()) == 1   # the file target is not held up

    hook.received.clear()
    counters = run(rules, changes(1), sqlite_url)
    # The good hook is not posted again; the rejected notification is tried again (it was
    # never sent) and now accepted.
    assert [p for p, _, _ in hook.received] == ['/services/T0/bad-SECRET']
    assert counters == {'received': 3, 'written': 1, 'skipped_existing': 2}


def test_webhook_headers_come_from_the_environment_and_are_never_shown(
        webhook, sqlite_url, monkeypatch, caplog, tmp_path):
    base, hook = webhook
    monkeypatch.setenv('CF_TEST_TOKEN', 'xoxb-42-SECRET')
    hook.script = {'/services/T0/bad': [401]}
    headers = {'Authorization': 'Bearer ${CF_TEST_TOKEN}', 'X-Team': 'ops'}
    inserts = {'op': 'insert'}
    rules = [{'to': f'{base}/services/T0/good', 'headers': headers, 'retry': FAST,
              'when': inserts},
             {'to': f'{base}/services/T0/bad', 'headers': headers, 'retry': FAST,
              'when': inserts}]
    def check(dead):
        assert [d.reason for d in dead] == ['rejected']
        assert 'HTTP 401: bad token ***' in dead[0].detail
        assert 'SECRET' not in dead[0].detail + dead[0].original.decode()
        assert '${CF_TEST_TOKEN}' not in dead[0].detail   # nor the rule: the target alone

    caplog.set_level('DEBUG')
    counters = run(rules, changes(1), sqlite_url, letters=check)
    assert counters == {'received': 3, 'written': 1, 'dead_lettered': 1}
    assert [(h['Authorization'], h['X-Team']) for h in hook.headers_seen] == [
        ('Bearer xoxb-42-SECRET', 'ops')] * 2
    assert 'SECRET' not in caplog.text

    # The config names the variable and holds no secret; an unset one is an error there.
    (tmp_path / 'audit.log').write_text('')
    raw = {'source': {'type': 'archive', 'format': 'server-audit', 'path': 'audit.log'},
           'tables': {'shop.orders': {'key': ['tenant_id', 'order_id']}},
           'sinks': {'notify': [{'to': f'{base}/services/T0/good', 'headers': headers}]},
           'dead_letter': {'path': 'dead'}}
    assert dict(parse_config(raw, str(tmp_path)).notify[0].options)['headers'] == headers
    monkeypatch.delenv('CF_TEST_TOKEN')
    with pytest.raises(ConfigError, match=r'headers: environment variable CF_TEST_TOKEN is not set'):
        parse_config(raw, str(tmp_path))
    for bad, why in (({'Content-Type': 'text/plain'}, 'set by changeflow'),
                     ({'X-A': 'one\r\nX-B: two'}, 'one line'), ({'bad name': 'x'}, 'header name'),
                     ('Bearer x', 'mapping')):
        raw['sinks']['notify'][0]['headers'] = bad
        with pytest.raises(ConfigError, match=why):
            parse_config(raw, str(tmp_path))


def test_unreachable_webhook_exhausts_retries_into_dead_letters(sqlite_url):
    rules = [{'to': 'http://127.0.0.1:9/hook/TOKEN', 'retry': FAST}]

    def check(dead):
        assert {d.reason for d in dead} == {'retries-exhausted'}
        assert all('TOKEN' not in d.detail for d in dead)

    counters = run(rules, changes(2), sqlite_url, letters=check)
    assert counters == {'received': 4, 'dead_lettered': 4, 'retried': 2}


def status_walk(*ops):
    return Change('shop.orders', (1, 1), tuple(ops), T)


@pytest.mark.parametrize('when, change, matches', [
    ({'status': {'to': 'shipped'}},
     status_walk(op(OpKind.UPDATE, 1, assignments=[('status', lit('shipped'))])), True),
    ({'status': {'to': 'shipped'}},
     status_walk(op(OpKind.UPDATE, 1, assignments=[('status', lit('paid'))])), False),
    ({'status': {'to': ['shipped', 'delivered']}},
     status_walk(op(OpKind.REPLACE, 1, [('status', 'delivered')])), True),
    ({'status': {'to': 'shipped'}},                       # another column written
     status_walk(op(OpKind.UPDATE, 1, assignments=[('note', lit('x'))])), False),
    ({'status': {'to': 'shipped'}},                       # already shipped: not a change
     status_walk(op(OpKind.INSERT, 1, [('status', 'shipped')]),
                 op(OpKind.UPDATE, 2, assignments=[('status', lit('shipped'))])), False),
    ({'status': {'from': 'paid', 'to': 'shipped'}},
     status_walk(op(OpKind.INSERT, 1, [('status', 'paid')]),
                 op(OpKind.UPDATE, 2, assignments=[('status', lit('shipped'))])), True),
    ({'status': {'from': 'paid'}},                        # the old value is not known
     status_walk(op(OpKind.UPDATE, 2, assignments=[('status', lit('shipped'))])), False),
    ({'qty': 'changed'},                                  # computed: written, value unknown
     status_walk(op(OpKind.UPDATE, 1, assignments=[('qty', ('bin', '+', col('qty'), lit(1)))])),
     True),
    ({'qty': {'to': 2}},
     status_walk(op(OpKind.UPDATE, 1, assignments=[('qty', ('bin', '+', col('qty'), lit(1)))])),
     False),
    ({'total': {'to': 9.5}, 'paid': {'to': True}},        # numbers numerically, true as 1
     status_walk(op(OpKind.UPDATE, 1, assignments=[
         ('total', lit(__import__('decimal').Decimal('9.50'))), ('paid', lit(1))])), True),
    ({'status': 'changed'}, status_walk(op(OpKind.DELETE, 1)), False),
    ({'note': {'to': None}},
     status_walk(op(OpKind.UPDATE, 1, assignments=[('NOTE', lit(None))])), True),
])
def test_column_predicates(when, change, matches):
    assert columns_match(parse_columns(when), change) is matches


def test_column_predicates_route_notifications(tmp_path, sqlite_url):
    shipped = tmp_path / 'shipped.jsonl'
    rules = [{'to': f'file:{shipped}',
              'when': {'table': 'shop.orders', 'columns': {'status': {'to': 'shipped'}}}}]
    assert run(rules, changes(2), sqlite_url) == {'received': 4, 'written': 1}
    (note,) = [json.loads(line) for line in shipped.read_text().splitlines()]
    assert note['values'] == {'status': 'shipped'}


def test_template_fields_are_redacted():
    change = Change('shop.orders', (1, 7), (
        op(OpKind.INSERT, 1, [('tenant_id', 1), ('order_id', 7), ('status', 'paid'),
                              ('card', '4111')]),
        op(OpKind.UPDATE, 2, assignments=[('status', lit('shipped')), ('card', lit('5500'))])), T)
    note = {'id': 'abc', 'table': 'shop.orders', 'key': [1, 7], 'op': 'update',
            'version': change.version, 'event_time': '2026-11-22T14:16:18.000000Z'}
    fields = template_fields(change, note, frozenset({'card'}), ORDERS.key)
    text = render_template('{table} {key[1]}: {old[status]} -> {new[status]}, card {new[card]} '
                           '(was {old[card]}); {changes}; {new}; {old[missing]}|{key}', fields)
    assert text == ('shop.orders 7: paid -> shipped, card *** (was ***); status=shipped, '
                    'card=***; {"status":"shipped","card":"***"}; |[1,7]')
    assert '4111' not in text and '5500' not in text


@pytest.mark.parametrize('template, message', [
    ('{new.__class__}', 'is not one of'),
    ('{0}', 'is not one of'),
    ('{secret}', 'is not one of'),
    ('{new[status]:{op}}', 'nested'),
    ('{op:d}', 'does not render'),
])
def test_templates_are_checked(template, message, sqlite_url):
    with pytest.raises(ValueError, match=message):
        WriteNotifications([{'to': 'https://hooks.example.com/x', 'template': template}],
                           state_url=sqlite_url)


def test_targets_are_shown_without_their_secrets():
    assert display_target('https://hooks.slack.com/services/T0/B0/XXXX') == (
        'https://hooks.slack.com/services/***')
    assert display_target('https://u:pw@example.com/hook?token=abc') == (
        'https://u:***@example.com/***?***')
    assert display_target('sns:arn:aws:sns:eu-west-1:123456789012:orders') == (
        'sns:arn:aws:sns:eu-west-1:123456789012:orders')


class _ScriptedQueue(SqsWriter):
    """An SQS writer whose calls answer as scripted: the entry-level outcomes
    of SendMessageBatch that moto never produces (it accepts every entry)."""

    def __init__(self, *args, answers, **kwargs):
        super().__init__(*args, **kwargs)
        self.answers, self.calls = list(answers), []

    def _connect(self):
        pass

    def _send(self, messages):
        self.calls.append([m.note_id for m in messages])
        return _entry_results(self.answers.pop(0))


def test_batch_entries_fail_one_by_one(sqlite_url):
    def failed(note_id, sender):
        return {'Id': note_id, 'Code': 'X', 'Message': 'no', 'SenderFault': sender}

    writer = _ScriptedQueue(
        'https://sqs.eu-west-1.amazonaws.com/123456789012/orders', state_url=sqlite_url,
        retry=FAST, answers=[
            {'Successful': [{'Id': 'a'}], 'Failed': [failed('b', False), failed('c', True)]},
            {'Successful': [{'Id': 'b'}]}])
    writer.open()
    line = {'table': 'shop.orders', 'op': 'insert', 'group': 'g'}
    batch = [(i, dumps_json({**line, 'id': i})) for i in 'abc'] + [
        ('d', dumps_json({**line, 'id': 'd', 'message': 'x' * (256 * 1024 + 1)}))]
    assert writer.write(batch) == {'a', 'b'}
    assert writer.calls == [['a', 'b', 'c'], ['b']]   # only the service's own failure again
    assert writer.failures() == {'c': ('rejected', 'X: no'),
                                 'd': ('too-large', '262,145 bytes; a message takes at most '
                                                    '262,144')}
    assert writer._ledger.done(writer.scope, 'abcd') == {'a', 'b'}
    writer.answers = [{'Successful': [{'Id': 'c'}]}]
    assert writer.write(batch[:3]) == {'c'}           # a and b are not sent again
    assert writer.calls[-1] == ['c']
    writer.close()


def test_yaml_rules_and_the_state_store(tmp_path, aws_env):
    (tmp_path / 'audit.log').write_text('')
    raw = yaml.safe_load(f"""
        source: {{type: archive, format: server-audit, path: audit.log}}
        tables: {{shop.orders: {{key: [tenant_id, order_id], redact: [card]}}}}
        sinks:
          notify:
            - to: "sns:arn:aws:sns:eu-west-1:123456789012:orders"
              when: {{table: shop.orders, op: update, columns: {{status: {{to: shipped}}}}}}
              template: "Order {{key[1]}} shipped"
              endpoint_url: {aws_env}
              retry: {{attempts: 2}}
        dead_letter: {{path: dead}}
    """)
    config = parse_config(raw, str(tmp_path))
    (rule,) = config.notify
    assert rule.columns == parse_columns({'status': {'to': 'shipped'}})
    assert dict(rule.options) == {'template': 'Order {key[1]} shipped', 'endpoint_url': aws_env,
                                  'retry': {'attempts': 2}}
    assert config.state_url == f'sqlite:///{tmp_path}/changeflow.state.db'
    raw['state'] = {'url': 'sqlite:///state/ledger.db'}
    assert parse_config(raw, str(tmp_path)).state_url == f'sqlite:///{tmp_path}/state/ledger.db'
    WriteNotifications(config.notify, config.tables, state_url=config.state_url)


def test_the_dynamodb_job_run_twice_publishes_each_notification_once(
        aws_env, moto_endpoint, tmp_path):
    """The job end to end: a table's stream records through the DynamoDB job
    to an SNS topic with an SQS subscription, twice over the same input."""
    from tests.test_dynamodb_sync import clients, stream_lines
    from changeflow.pipelines import dynamodb_sync

    ddb, streams = clients(moto_endpoint)
    name = f'prod-Card.{uuid.uuid4().hex[:6]}'
    ddb.create_table(
        TableName=name, BillingMode='PAY_PER_REQUEST',
        KeySchema=[{'AttributeName': 'id', 'KeyType': 'HASH'}],
        AttributeDefinitions=[{'AttributeName': 'id', 'AttributeType': 'N'}],
        StreamSpecification={'StreamEnabled': True, 'StreamViewType': 'NEW_AND_OLD_IMAGES'})
    for i in range(1, 6):
        ddb.put_item(TableName=name, Item={'id': {'N': str(i)}, 'status': {'S': 'new'},
                                           'card': {'S': f'4111-{i}'}})
    ddb.update_item(TableName=name, Key={'id': {'N': '2'}}, UpdateExpression='SET #s = :s',
                    ExpressionAttributeNames={'#s': 'status'},
                    ExpressionAttributeValues={':s': {'S': 'shipped'}})
    ddb.delete_item(TableName=name, Key={'id': {'N': '5'}})
    source = tmp_path / 'stream.jsonl'
    source.write_bytes(b'\n'.join(stream_lines(ddb, streams, name)) + b'\n')

    sns, sqs = boto3.client('sns'), boto3.client('sqs')
    topic = sns.create_topic(Name=f'cards-{uuid.uuid4().hex[:8]}')['TopicArn']
    queue = sqs.create_queue(QueueName=f'cards-{uuid.uuid4().hex[:8]}')['QueueUrl']
    shipped = sqs.create_queue(QueueName=f'shipped-{uuid.uuid4().hex[:8]}')['QueueUrl']
    sns.subscribe(TopicArn=topic, Protocol='sqs', Attributes={'RawMessageDelivery': 'true'},
                  Endpoint=sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=['QueueArn'])[
                      'Attributes']['QueueArn'])
    config = tmp_path / 'cards.yaml'
    config.write_text(yaml.safe_dump({
        'source': {'type': 'dynamodb-archive', 'format': 'dynamodb-jsonl', 'path': str(source)},
        'tables': {name: {'key': ['id'], 'redact': ['card']}},
        'sinks': {'notify': [
            {'to': f'sns:{topic}', 'template': '{op} card {key[0]} ({new[card]})'},
            {'to': f'sqs:{shipped}', 'when': {'columns': {'status': {'to': 'shipped'}}}}]},
        'dead_letter': {'path': 'out/dead'}}), encoding='utf-8')

    first = counter_totals(dynamodb_sync.run(['--config', str(config)]))
    again = counter_totals(dynamodb_sync.run(['--config', str(config)]))
    # One notification per source op: 7 to the topic, the shipping update to the queue too.
    assert first['changeflow.write_notify.written'] == 8
    assert again['changeflow.write_notify.skipped_existing'] == 8
    assert 'changeflow.write_notify.written' not in again
    assert sorted(m['Body'] for m in receive_all(sqs, queue)) == [
        'delete card 5 ()', 'replace card 1 (***)', 'replace card 2 (***)',
        'replace card 2 (***)', 'replace card 3 (***)', 'replace card 4 (***)',
        'replace card 5 (***)']
    (note,) = [json.loads(m['Body']) for m in receive_all(sqs, shipped)]
    assert (note['key'], note['values']['status']) == ([2], 'shipped')
    assert (tmp_path / 'cards.state.db').exists()     # the ledger: <job>.state.db beside the config


def test_fifo_calls_hold_one_message_per_row(tmp_path):
    """An entry sent again must not overtake the next version of its row."""
    writer = _ScriptedQueue(   # the state store's folder is made
        'https://sqs.eu-west-1.amazonaws.com/123456789012/orders.fifo',
        state_url=f'sqlite:///{tmp_path}/state/ledger.db',
        retry=FAST, answers=[
            {'Failed': [{'Id': 'v1', 'Code': 'InternalError', 'SenderFault': False}],
             'Successful': [{'Id': 'w1'}]},
            {'Successful': [{'Id': 'v1'}]}, {'Successful': [{'Id': 'v2'}]}])
    writer.open()
    batch = [(i, dumps_json({'id': i, 'table': 't', 'op': 'update', 'group': i[0]}))
             for i in ('v1', 'w1', 'v2')]
    assert writer.write(batch) == {'v1', 'w1', 'v2'}
    assert writer.calls == [['v1', 'w1'], ['v1'], ['v2']]
    writer.close()


def test_a_failing_ledger_write_stops_sending(sqlite_url):
    writer = _ScriptedQueue('https://sqs.eu-west-1.amazonaws.com/123456789012/orders',
                            state_url=sqlite_url, retry=FAST,
                            answers=[{'Successful': [{'Id': f'n{i}'} for i in range(10)]}])
    writer.open()

    def refuse(scope, ids):
        raise OSError('disk full')

    writer._ledger.record = refuse
    batch = [(f'n{i}', dumps_json({'id': f'n{i}', 'table': 't', 'op': 'insert', 'group': 'g'}))
             for i in range(12)]
    assert writer.write(batch) == set()
    assert writer.calls == [[f'n{i}' for i in range(10)]]   # the last two are held back
    reasons = {note_id: reason for note_id, (reason, _) in writer.failures().items()}
    assert reasons == {**{f'n{i}': 'unrecorded' for i in range(10)},
                       'n10': 'not-sent', 'n11': 'not-sent'}
    writer.close()
