"""Catch-up throughput from a backlog: one ``changeflow run`` cycle over a
Kinesis stream that already holds ``--events`` audit events.

    PYTHONPATH=. python bench/catchup_backlog.py [--events 1000000] [--per-record 100]

Against moto's server (started here): the throughput issue's upsert
workload (bench/workload.py) as CloudWatch Logs subscription payloads, put
into a 4-shard stream with ``put_records`` (500 records a call), then one
catch-up cycle in this process (the job's read, replay, replica; checkpoints
committed). Prints the put time, and the cycle's wall and CPU seconds and
events per second of each.
"""

import argparse
import gzip
import json
import os
import random
import resource
import tempfile
import time

import boto3
import yaml

from bench.workload import TABLE, _audit_line, _statement

REGION = 'us-east-1'


def payload(start, statements):
    return gzip.compress(json.dumps({
        'messageType': 'DATA_MESSAGE', 'owner': '123456789012',
        'logGroup': '/aws/rds/instance/db-1/audit', 'logStream': 'db-1',
        'subscriptionFilters': ['to-kinesis'],
        'logEvents': [{'id': str(start + i).zfill(56), 'timestamp': 1795000000000 + start + i,
                       'message': _audit_line(start + i + 1, 1, sql)}
                      for i, sql in enumerate(statements)]}).encode(), 1)


def cpu_seconds():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--events', type=int, default=1_000_000)
    parser.add_argument('--per-record', type=int, default=100, help='audit lines per record')
    parser.add_argument('--shards', type=int, default=4)
    args = parser.parse_args()
    os.environ.update(AWS_ACCESS_KEY_ID='testing', AWS_SECRET_ACCESS_KEY='testing',
                      AWS_DEFAULT_REGION=REGION)

    from moto.server import ThreadedMotoServer
    server = ThreadedMotoServer(ip_address='127.0.0.1', port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f'http://{host}:{port}'
    kinesis = boto3.client('kinesis', endpoint_url=endpoint, region_name=REGION)
    kinesis.create_stream(StreamName='backlog', ShardCount=args.shards)
    kinesis.get_waiter('stream_exists').wait(StreamName='backlog')

    rng = random.Random(11)
    started = time.monotonic()
    records, batch = 0, []
    for start in range(0, args.events, args.per_record):
        count = min(args.per_record, args.events - start)
        # One connection, so one partition key: its records stay in order on one shard
        # (distribution: ByLogStream); the other shards are read and found empty.
        batch.append({'Data': payload(start, [_statement(rng, 20_000) for _ in range(count)]),
                      'PartitionKey': 'db-1'})
        if len(batch) == 500:
            kinesis.put_records(StreamName='backlog', Records=batch)
            records, batch = records + len(batch), []
    if batch:
        kinesis.put_records(StreamName='backlog', Records=batch)
        records += len(batch)
    put = time.monotonic() - started
    print(f'put {args.events:,} events in {records:,} records in {put:.1f} s')

    import apache_beam as beam
    from changeflow.config import load_config
    from changeflow.metrics import counter_totals
    from changeflow.pipelines import audit_sync
    folder = tempfile.mkdtemp(prefix='catchup-backlog-')
    path = os.path.join(folder, 'job.yaml')
    with open(path, 'w', encoding='utf-8') as f:
        yaml.safe_dump({'source': {'type': 'kinesis', 'stream': 'backlog', 'region': REGION,
                                   'endpoint_url': endpoint},
                        'job': 'backlog', 'tables': TABLE,
                        'sinks': {'database': {'url': 'sqlite:///replica.db'}},
                        'dead_letter': {'path': 'dead-letter'}}, f)
    config = load_config(path)
    started, cpu = time.monotonic(), cpu_seconds()
    p = beam.Pipeline(options=audit_sync.pipeline_options([]))
    audit_sync.build_pipeline(p, config)
    result = p.run()
    result.wait_until_finish()
    wall, cpu = time.monotonic() - started, cpu_seconds() - cpu
    totals = counter_totals(result)
    events = totals.get('changeflow.parse_audit.events_parsed', 0)
    print(f'catch-up: {totals.get("changeflow.read_kinesis.records", 0):,} records, '
          f'{events:,} events, {totals.get("changeflow.write_database.rows_upserted", 0):,} rows '
          f'upserted, {totals.get("changeflow.write_database.rows_deleted", 0):,} deleted, '
          f'{totals.get("changeflow.write_dead_letters.written", 0):,} dead letters')
    print(f'  {wall:.1f} s wall, {cpu:.1f} s CPU (this process, moto included): '
          f'{events / wall:,.0f} events/s wall, {events / cpu:,.0f} events per CPU second')
    server.stop()


if __name__ == '__main__':
    main()
