"""Before-images of DynamoDB records in notifications: with NEW_AND_OLD_IMAGES,
``when.columns`` predicates and templates read a MODIFY's and a REMOVE's old
image, so "status changed to shipped" fires once, not on every later write of
a shipped item; with NEW_IMAGE the old value is unknown (documented)."""

import http.server
import json
import threading
import uuid

import pytest
import yaml

from changeflow.io.dead_letter import read_dead_letters
from test_dynamodb_sync import KEY, create_table, key, run_job, stream_lines


class _Hook(http.server.BaseHTTPRequestHandler):
    received: list = []

    def do_POST(self):  # noqa: N802 - http.server's name
        self.received.append(json.loads(self.rfile.read(int(self.headers['Content-Length']))))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def webhook():
    _Hook.received = []
    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), _Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f'http://127.0.0.1:{server.server_port}/hook/TOKEN', _Hook.received
    server.shutdown()
    server.server_close()


def write_workload(ddb, name):
    ddb.put_item(TableName=name, Item={**key(1), 'status': {'S': 'paid'}, 'note': {'S': 'a'}})
    ddb.update_item(TableName=name, Key=key(1), UpdateExpression='SET #s = :s',
                    ExpressionAttributeNames={'#s': 'status'},
                    ExpressionAttributeValues={':s': {'S': 'shipped'}})
    ddb.update_item(TableName=name, Key=key(1), UpdateExpression='SET note = :n',
                    ExpressionAttributeValues={':n': {'S': 'b'}})      # still shipped
    ddb.update_item(TableName=name, Key=key(1), UpdateExpression='REMOVE note')
    ddb.put_item(TableName=name, Item={**key(2), 'status': {'S': 'shipped'}})
    ddb.delete_item(TableName=name, Key=key(1))


@pytest.mark.parametrize('view', ['NEW_AND_OLD_IMAGES', 'NEW_IMAGE'])
def test_column_predicates_and_templates_read_the_old_image(
        moto_endpoint, tmp_path, webhook, view):
    url, posted = webhook
    name, ddb, streams = create_table(moto_endpoint, f'prod-Order.{uuid.uuid4().hex[:6]}', view)
    write_workload(ddb, name)
    lines = stream_lines(ddb, streams, name)
    assert len(lines) == 6
    (tmp_path / 'stream.jsonl').write_bytes(b'\n'.join(lines))
    (tmp_path / 'job.yaml').write_text(yaml.safe_dump({
        'source': {'type': 'dynamodb-archive', 'format': 'dynamodb-jsonl',
                   'path': 'stream.jsonl'},
        'tables': {name: {'key': KEY, 'target': 'orders', 'redact': ['note'], 'columns': {
            'id': 'integer', 'title': 'string', 'status': 'string', 'note': 'string'}}},
        'sinks': {'notify': [
            {'to': 'file:out/all.jsonl'},
            {'to': 'file:out/shipped.jsonl', 'when': {'columns': {'status': {'to': 'shipped'}}}},
            {'to': 'file:out/paid-shipped.jsonl',
             'when': {'columns': {'status': {'from': 'paid', 'to': 'shipped'}}}},
            {'to': 'file:out/note-removed.jsonl', 'when': {'columns': {'note': {'to': None}}}},
            {'to': url, 'template': '{op} {key[0]}: {old[status]} -> {new[status]}',
             'retry': {'attempts': 1}}]},
        'dead_letter': {'path': 'out/dead'}}))
    run_job(str(tmp_path / 'job.yaml'))
    assert list(read_dead_letters(str(tmp_path / 'out' / 'dead'))) == []

    def notes(file):
        return sorted((json.loads(line) for line in
                       (tmp_path / 'out' / file).read_text().splitlines()),
                      key=lambda n: n['version'])

    everything = notes('all.jsonl')
    assert [(n['key'][0], n['op']) for n in everything] == [
        (1, 'replace'), (1, 'replace'), (1, 'replace'), (1, 'replace'), (2, 'replace'),
        (1, 'delete')]
    shipped = [(n['key'][0], n['values']['status']) for n in notes('shipped.jsonl')]
    texts = sorted(post['text'] for post in posted)
    if view == 'NEW_AND_OLD_IMAGES':
        # The note updates of an item already shipped are not "changed to shipped".
        assert shipped == [(1, 'shipped'), (2, 'shipped')]
        assert [n['version'] for n in notes('paid-shipped.jsonl')] == [everything[1]['version']]
        # An attribute the MODIFY removed changed to null (a delete matches no predicate).
        assert [n['version'] for n in notes('note-removed.jsonl')] == [everything[3]['version']]
        # Each change's old values are its item's previous values, redacted alike.
        card_1 = [n for n in everything if n['key'][0] == 1]
        assert [n.get('old') for n in card_1] == [None] + [n['values'] for n in card_1[:-1]]
        assert card_1[1]['old'] == {'id': '1', 'title': 'card 1', 'status': 'paid',
                                    'note': '***'}
        assert 'old' not in everything[4]                   # an INSERT has none
        assert texts == sorted(['replace 1:  -> paid', 'replace 1: paid -> shipped',
                                'replace 1: shipped -> shipped', 'replace 1: shipped -> shipped',
                                'replace 2:  -> shipped', 'delete 1: shipped -> '])
    else:
        # No old image: every write of status=shipped matches, 'from' never does.
        assert shipped == [(1, 'shipped')] * 3 + [(2, 'shipped')]
        for unknown in ('paid-shipped.jsonl', 'note-removed.jsonl'):
            assert not (tmp_path / 'out' / unknown).exists() or not notes(unknown)
        assert all('old' not in n for n in everything)
        assert texts == sorted(['replace 1:  -> paid', 'replace 1:  -> shipped',
                                'replace 1:  -> shipped', 'replace 1:  -> shipped',
                                'replace 2:  -> shipped', 'delete 1:  -> '])
