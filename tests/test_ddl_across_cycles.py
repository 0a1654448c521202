"""DDL followed across catch-up cycles: the recorded DDL workload (real
MariaDB traffic: ADD/DROP/RENAME COLUMN, RENAME TABLE, DROP and CREATE
TABLE) put through a CloudWatch Logs subscription filter into Kinesis
(moto's server) in parts, one catch-up cycle after each. A cycle must
translate its statements against the schema as the earlier cycles' DDL left
it, not as the configuration starts it: every replica row equals the source
or is covered, as in one run over the whole log."""

import os

import yaml

from real_traffic import APP, compare, run_fixture, write_job
from test_kinesis_source import REGION, CloudWatchToKinesis, run_cycle

DDL = os.path.join(APP, 'ddl')
CYCLES = 4


def stream_job(workdir, stream, endpoint):
    path = write_job(DDL, str(workdir), 'job-schema.yaml')
    with open(path, encoding='utf-8') as f:
        raw = yaml.safe_load(f)
    raw['source'] = {'type': 'kinesis', 'stream': stream, 'region': REGION,
                     'endpoint_url': endpoint}
    with open(path, 'w', encoding='utf-8') as f:
        yaml.safe_dump(raw, f, allow_unicode=True, sort_keys=False)
    return path


def test_each_cycle_follows_the_ddl_of_the_cycles_before(tmp_path, moto_endpoint, aws_env):
    with open(os.path.join(DDL, 'server_audit.log'), encoding='utf-8') as f:
        lines = f.read().splitlines()
    source = CloudWatchToKinesis(moto_endpoint, shards=1)
    config = stream_job(tmp_path, source.stream, moto_endpoint)
    part = -(-len(lines) // CYCLES)
    for start in range(0, len(lines), part):
        for at in range(start, min(start + part, len(lines)), 50):
            source.put(lines[at:min(at + 50, start + part, len(lines))])
        run_cycle(config)
    report = compare(DDL, config)
    assert report.crash is None
    assert report.totals['silent'] == 0, report.format()
    whole = run_fixture(DDL, str(tmp_path / 'whole'), 'job-schema.yaml')
    assert report.totals == whole.totals, (report.format(), whole.format())
