"""Handlers on a real DynamoDB stream (moto's server): every write kind reaches
the handler as the typed event it was, in order per key."""

import json

import apache_beam as beam
import pytest
import yaml

from changeflow.config import load_config
from changeflow.handlers import Handlers
from changeflow.pipelines import audit_sync, dynamodb_sync
from test_dynamodb_sync import KEY, create_table, mark_ttl, stream_lines, write_workload


@pytest.fixture
def card_table(moto_endpoint):
    return create_table(moto_endpoint)


def _recorder(path):
    def handle(events):
        with open(path, 'a', encoding='utf-8') as f:
            for e in events:
                f.write(json.dumps([e.kind, [int(e.key[0]), e.key[1]], e.version,
                                    getattr(e, 'old', None), getattr(e, 'new', None),
                                    getattr(e, 'ttl', False)], default=str) + '\n')
    return handle


def test_handlers_get_every_stream_event_in_order_per_key(card_table, tmp_path):
    name, ddb, streams = card_table
    write_workload(ddb, name)
    lines = mark_ttl(stream_lines(ddb, streams, name), 5)
    (tmp_path / 'stream.jsonl').write_bytes(b'\n'.join(lines) + b'\n')
    (tmp_path / 'job.yaml').write_text(yaml.safe_dump({
        'source': {'type': 'dynamodb-archive', 'format': 'dynamodb-jsonl', 'path': 'stream.jsonl'},
        'tables': {name: {'key': KEY}}, 'sinks': {}, 'dead_letter': {'path': 'out/dead'}}))
    config = load_config(str(tmp_path / 'job.yaml'))
    handlers = Handlers()
    handlers.on(name, name='all')(_recorder(str(tmp_path / 'events.jsonl')))
    p = beam.Pipeline(options=audit_sync.pipeline_options([]))
    dynamodb_sync.build_pipeline(p, config, handlers=handlers)
    p.run().wait_until_finish()

    expected = {}
    for line in lines:
        record = json.loads(line)
        body = record['dynamodb']
        if record['eventName'] == 'MODIFY' and body['OldImage'] == body['NewImage']:
            continue                                        # a no-op MODIFY is no event
        k = (int(body['Keys']['id']['N']), body['Keys']['title']['S'])
        expected.setdefault(k, []).append((record['eventName'].lower(),
                                           'OldImage' in body, 'NewImage' in body))
    got, ttl = {}, {}
    for kind, k, version, old, new, is_ttl in (json.loads(l) for l in
                                               (tmp_path / 'events.jsonl').read_text().splitlines()):
        got.setdefault(tuple(k), []).append((version, (kind, old is not None, new is not None)))
        ttl[tuple(k), kind] = is_ttl
    assert {k: [v for _, v in sorted(events)] for k, events in got.items()} == expected
    assert all([version for version, _ in events] == sorted(version for version, _ in events)
               for events in got.values())                  # delivered in version order
    assert ttl[(5, 'card 5'), 'remove'] and not ttl[(4, 'card 4'), 'remove']
    assert sum(map(len, expected.values())) == len(lines) - 1
