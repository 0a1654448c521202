"""End-to-end latency while following: from ``put_log_events`` to the row in the replica.

    PYTHONPATH=. python bench/follow_latency.py [--rate 1000] [--seconds 30] [--lateness 0]

Against moto's server (started here): a CloudWatch Logs group whose
subscription filter delivers to a 2-shard Kinesis stream, and
``changeflow run JOB --follow`` in a subprocess. A writer puts a steady
``--rate`` statements per second (autocommit INSERTs of new rows, one
``put_log_events`` call every 0.1 s); a poller reads the replica every 20 ms
and notes when each call's rows appear. Writing starts once the follow run's
first cycle (which builds and translates the job) is done. Prints
p50/p90/p99/max of the latency per call after the first ``--warmup``
seconds, the cycles' status lines, and the CPU seconds of the follow
process. The target is p99 <= 5 s at 1,000 statements/s.
"""

import argparse
import logging
import os
import resource
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time

import boto3
import yaml

REGION = 'us-east-1'
PER_PUT_SECONDS = 0.1


def aws(service, endpoint):
    return boto3.client(service, endpoint_url=endpoint, region_name=REGION,
                        aws_access_key_id='testing', aws_secret_access_key='testing')


def delivery(endpoint, stream):
    """A log group and stream delivering to a new 2-shard Kinesis stream."""
    kinesis, logs = aws('kinesis', endpoint), aws('logs', endpoint)
    kinesis.create_stream(StreamName=stream, ShardCount=2)
    kinesis.get_waiter('stream_exists').wait(StreamName=stream)
    arn = kinesis.describe_stream_summary(StreamName=stream)['StreamDescriptionSummary'][
        'StreamARN']
    group = f'/aws/rds/instance/{stream}/audit'
    logs.create_log_group(logGroupName=group)
    logs.create_log_stream(logGroupName=group, logStreamName='db-1')
    logs.put_subscription_filter(logGroupName=group, filterName='to-kinesis', filterPattern='',
                                 destinationArn=arn, roleArn='arn:aws:iam::123456789012:role/r')
    return logs, group


def write_job(folder, stream, endpoint, lateness):
    raw = {'source': {'type': 'kinesis', 'stream': stream, 'region': REGION,
                      'endpoint_url': endpoint, 'lateness_seconds': lateness},
           'job': 'latency',
           'tables': {'shop.items': {'key': 'id', 'columns': {'id': 'integer', 'put': 'integer'}}},
           'sinks': {'database': {'url': 'sqlite:///replica.db'}},
           'dead_letter': {'path': 'dead-letter'}}
    path = os.path.join(folder, 'job.yaml')
    with open(path, 'w', encoding='utf-8') as f:
        yaml.safe_dump(raw, f)
    return path


def audit_line(query_id, sql):
    seconds = 1_795_600_000 + query_id // 1000
    at = time.strftime('%Y%m%d %H:%M:%S', time.gmtime(seconds))
    return f"{at},db-1,app,10.0.0.7,7,{query_id},QUERY,shop,'{sql}',0"


def percentile(values, p):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--rate', type=int, default=1000, help='statements per second')
    parser.add_argument('--seconds', type=float, default=30, help='how long to write')
    parser.add_argument('--warmup', type=float, default=5, help='seconds left out of the figures')
    parser.add_argument('--lateness', type=float, default=0, help='source.lateness_seconds')
    parser.add_argument('--poll-seconds', type=float, default=0.2)
    args = parser.parse_args()

    from moto.server import ThreadedMotoServer
    logging.getLogger('werkzeug').setLevel(logging.ERROR)   # one line per request otherwise
    server = ThreadedMotoServer(ip_address='127.0.0.1', port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f'http://{host}:{port}'
    folder = tempfile.mkdtemp(prefix='follow-latency-')
    logs, group = delivery(endpoint, 'latency')
    job = write_job(folder, 'latency', endpoint, args.lateness)
    env = {**os.environ, 'AWS_ACCESS_KEY_ID': 'testing', 'AWS_SECRET_ACCESS_KEY': 'testing',
           'AWS_DEFAULT_REGION': REGION}
    follow = subprocess.Popen(
        [sys.executable, '-m', 'changeflow', 'run', job, '--follow',
         '--poll-seconds', str(args.poll_seconds), '--status-seconds', '0'],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    output = []
    threading.Thread(target=lambda: output.extend(follow.stdout), daemon=True).start()
    while not any(': cycle ' in line for line in output):
        assert follow.poll() is None, ''.join(output)
        time.sleep(0.1)

    per_put = max(1, round(args.rate * PER_PUT_SECONDS))
    put_at = {}            # put number -> when its call returned
    seen_at = {}           # put number -> when its rows were in the replica
    stop = threading.Event()

    def poll():
        replica = os.path.join(folder, 'replica.db')
        while not stop.is_set():
            time.sleep(0.02)
            if not os.path.exists(replica):
                continue
            try:
                with sqlite3.connect(replica, timeout=1) as db:
                    puts = db.execute('SELECT DISTINCT put FROM items').fetchall()
            except sqlite3.OperationalError:  # the table is not there yet
                continue
            now = time.monotonic()
            for (put,) in puts:
                seen_at.setdefault(put, now)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    started = time.monotonic()
    query_id = row = put = 0
    while time.monotonic() - started < args.seconds:
        lines = []
        for _ in range(per_put):
            query_id += 1
            row += 1
            lines.append(audit_line(query_id, f'INSERT INTO items (id, put) VALUES ({row}, {put})'))
        now_ms = int(time.time() * 1000)
        logs.put_log_events(logGroupName=group, logStreamName='db-1', logEvents=[
            {'timestamp': now_ms, 'message': line} for line in lines])
        put_at[put] = time.monotonic()
        put += 1
        time.sleep(max(0.0, started + put * PER_PUT_SECONDS - time.monotonic()))
    written = time.monotonic() - started
    deadline = time.monotonic() + 60
    while len(seen_at) < len(put_at) and time.monotonic() < deadline:
        time.sleep(0.1)
    stop.set()
    follow.send_signal(signal.SIGTERM)
    follow.wait(120)
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    latencies = [seen_at[p] - put_at[p] for p in put_at
                 if p in seen_at and put_at[p] - started >= args.warmup]
    print(f'wrote {row:,} statements in {put:,} calls over {written:.1f} s '
          f'({row / written:,.0f}/s); {len(seen_at):,} calls seen in the replica')
    if latencies:
        print(f'latency after the first {args.warmup:.0f} s ({len(latencies)} calls): '
              f'p50 {percentile(latencies, 50):.2f} s, p90 {percentile(latencies, 90):.2f} s, '
              f'p99 {percentile(latencies, 99):.2f} s, max {max(latencies):.2f} s')
    cycles = [line for line in output if ': cycle ' in line]
    cpu = usage.ru_utime + usage.ru_stime
    print(f'follow process: {cpu:.1f} CPU seconds ({cpu / written:.2f} per second written, '
          f'{cpu / max(1, len(cycles)):.2f} per cycle, the first included), '
          f'peak RSS {usage.ru_maxrss / 1024:.0f} MB')
    print(f'{len(cycles)} cycles; the last status lines:')
    for line in cycles[-3:] + [line for line in output if line.startswith(
            ('changeflow: followed', '  read', '  replica', '  dead'))]:
        print(line.rstrip()[:300])
    server.stop()


if __name__ == '__main__':
    main()
