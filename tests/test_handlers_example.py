"""The seed's example job (examples/dynamodb_cards) end to end: a webhook on a
local HTTP server, a backup folder, a handler that always fails, run twice."""

import glob
import http.server
import json
import os
import shutil
import threading

import pytest
import yaml

from changeflow.io.dead_letter import read_dead_letters
from changeflow.pipelines import dynamodb_sync

EXAMPLE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'examples',
                       'dynamodb_cards')
HOOK = '''
import json, os

def record(handler, events, error):
    with open(os.path.join(os.path.dirname(__file__), 'caught.jsonl'), 'a') as f:
        f.write(json.dumps([handler.name, [e.change_id for e in events], str(error)]) + '\\n')
'''


class _Webhook(http.server.BaseHTTPRequestHandler):
    """Answers 503 to the first POST (a transient error), then 200; keeps what it accepted."""
    accepted, refused = [], []

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers['Content-Length'])))
        status = 200 if self.refused else 503
        (self.accepted if status == 200 else self.refused).append(body)
        self.send_response(status)
        self.send_header('Content-Length', '0')
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def webhook():
    _Webhook.accepted, _Webhook.refused = [], []
    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), _Webhook)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f'http://127.0.0.1:{server.server_address[1]}/hook', _Webhook
    server.shutdown()
    server.server_close()


def _job(tmp_path, url):
    for name in ('cards.py', 'stream.jsonl'):
        shutil.copy(os.path.join(EXAMPLE, name), tmp_path / name)
    (tmp_path / 'hooks.py').write_text(HOOK)
    with open(os.path.join(EXAMPLE, 'job.yaml'), encoding='utf-8') as f:
        raw = yaml.safe_load(f)
    informer, failing, _ = raw['handlers']
    informer['options']['webhook_url'] = url
    informer['retry'] = {'attempts': 3, 'initial_seconds': 0, 'max_seconds': 0}
    failing['catch_error'] = 'hooks:record'
    path = tmp_path / 'job.yaml'
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def _stream_lines(tmp_path, event):
    with open(tmp_path / 'stream.jsonl', 'rb') as f:
        return [line.rstrip(b'\n') for line in f if json.loads(line)['eventName'] == event]


def test_the_card_handlers_run_once_the_failing_one_is_dead_lettered(tmp_path, webhook):
    url, server = webhook
    config = _job(tmp_path, url)
    dynamodb_sync.run(['--config', config])

    inserts = _stream_lines(tmp_path, 'INSERT')[:3]          # the 4th does not fit the model
    posted = [body['text'] for body in server.accepted]
    assert sorted(posted) == ['New Card! : 1 (a)', 'New Card! : 2 (b)', 'New Card! : 3 (c)']
    assert len(server.refused) == 1                           # retried, delivered once
    backups = sorted(os.listdir(tmp_path / 'out' / 'deleted-cards'))
    assert backups == ['2-b.json', '3-c.json']
    with open(tmp_path / 'out' / 'deleted-cards' / '3-c.json', encoding='utf-8') as f:
        assert json.load(f) | {'change_id': None} == {
            'id': 3, 'title': 'c', 'expiresAt': 1796119300, 'ttl': True, 'change_id': None}

    letters = list(read_dead_letters(str(tmp_path / 'out' / 'dead-letter')))
    failed = [l for l in letters if l.step == 'handler:New Card Error']
    assert sorted(l.original for l in failed) == sorted(inserts)
    assert {l.reason for l in failed} == {'handler-failed'}
    assert all("'New Card Error' failed: RuntimeError: XXXX" in l.detail
               and 'Traceback' in l.detail for l in failed)
    assert not [l for l in letters if l.step.startswith('handler:New Card Informer')
                or l.step == 'handler:Deleted Card Backup']
    (mismatch,) = [l for l in letters if l.step == 'handler_model']
    assert mismatch.reason == 'attribute-type' and "'expiresAt'" in mismatch.detail

    with open(tmp_path / 'caught.jsonl', encoding='utf-8') as f:
        caught = [json.loads(line) for line in f]
    assert all(name == 'New Card Error' and error == 'XXXX' for name, _, error in caught)
    assert sorted(i for _, ids, _ in caught for i in ids) == sorted(
        body['change_id'] for body in server.accepted)       # exactly the failed events

    # The same input again: nothing delivered twice (the backups, removed, are not rewritten).
    shutil.rmtree(tmp_path / 'out' / 'deleted-cards')
    dynamodb_sync.run(['--config', config])
    assert len(server.accepted) == 3 and len(server.refused) == 1
    assert not os.path.exists(tmp_path / 'out' / 'deleted-cards')
    assert glob.glob(str(tmp_path / 'out' / 'cards.state.db'))
