"""Catch-up cycles on recorded traffic: the interleaved and bulk fixtures'
logs put a third at a time through a CloudWatch Logs subscription filter
into a two-shard Kinesis stream (moto's server spreads a log stream's
deliveries over the shards, as ``distribution: Random`` does), a cycle after
each third and two more after the reorder buffer's lateness: no replica row
differs from MariaDB's final SELECT unmarked. Transactions and whole-table
writes straddle cycles, a connection's statements arrive on both shards."""

import os
import time

import pytest
import yaml

import real_traffic
from changeflow.pipelines import audit_sync
from test_kinesis_source import CloudWatchToKinesis

LINES_PER_PUT = 20
LATENESS_SECONDS = 1


@pytest.mark.parametrize('fixture', ['interleaved', 'bulk'])
def test_catch_up_cycles_leave_no_silent_row(tmp_path, moto_endpoint, aws_env, fixture):
    folder = os.path.join(real_traffic.APP, fixture)
    with open(os.path.join(folder, 'server_audit.log'), encoding='utf-8') as f:
        lines = f.read().splitlines()
    source = CloudWatchToKinesis(moto_endpoint, shards=2)
    config = real_traffic.write_job(folder, str(tmp_path), 'job-schema.yaml')
    with open(config, encoding='utf-8') as f:
        raw = yaml.safe_load(f)
    raw['source'] = {'type': 'kinesis', 'stream': source.stream, 'region': 'us-east-1',
                     'endpoint_url': moto_endpoint, 'start': 'trim_horizon',
                     'lateness_seconds': LATENESS_SECONDS}
    raw['job'] = fixture
    with open(config, 'w', encoding='utf-8') as f:
        yaml.safe_dump(raw, f, allow_unicode=True)
    third = len(lines) // 3 + 1
    for part in range(3):
        chunk = lines[part * third:(part + 1) * third]
        for start in range(0, len(chunk), LINES_PER_PUT):
            source.put(chunk[start:start + LINES_PER_PUT])
        audit_sync.run(['--config', config])
    time.sleep(LATENESS_SECONDS + 0.5)
    for _ in range(2):  # the held-back tail, then nothing left
        audit_sync.run(['--config', config])
    report = real_traffic.compare(folder, config)
    assert report.totals['silent'] == 0, report.format()
    if fixture == 'interleaved':  # as in one run: nothing refused, nothing came too late
        assert not report.dead_letters, report.dead_letters
