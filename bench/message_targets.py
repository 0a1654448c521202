"""Message targets: notifications/s into SQS through the writer, and a replay.

    PYTHONPATH=. python bench/message_targets.py [--changes 2000] [--fifo] [--template]

Starts moto's server in another process (so this process's CPU time is the
writer's: rendering, the ledger on SQLite, boto3), creates a queue, and
writes ``--changes`` notifications of one-row inserts through an
``SqsWriter`` (no Beam: its ``message`` and ``write`` as WriteNotifications
calls them, 500 per write), then the same notifications again (all in the
ledger: nothing sent). Prints, per pass, notifications/s by wall and by this
process's CPU time, and the messages in the queue at the end.
"""

import argparse
import datetime
import os
import socket
import subprocess
import sys
import tempfile
import time

import boto3

from changeflow.io.messaging import SqsWriter
from changeflow.io.notify import _notification
from changeflow.model import Change, OpKind, RowOp, audit_version

T = int(datetime.datetime(2026, 12, 1, tzinfo=datetime.timezone.utc).timestamp()) * 1_000_000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def changes(n):
    for i in range(n):
        yield Change('shop.orders', (1, i), (RowOp(
            OpKind.INSERT, audit_version(T, i, i, 0),
            (('tenant_id', 1), ('order_id', i), ('status', 'new'), ('card', f'4111-{i}')),
            (), f'audit.log#{i}'),), T)


def notifications(writer, n):
    redact, key_columns = frozenset({'card'}), ('tenant_id', 'order_id')
    for change in changes(n):
        note_id, line = _notification('', change, redact, key_columns)
        yield note_id, writer.message(change, note_id, line, redact, key_columns)


def one_pass(writer, n):
    wall, cpu = time.perf_counter(), time.process_time()
    batch, sent = [], 0
    for note in notifications(writer, n):
        batch.append(note)
        if len(batch) == 500:
            sent += len(writer.write(batch))
            batch = []
    if batch:
        sent += len(writer.write(batch))
    return sent, time.perf_counter() - wall, time.process_time() - cpu


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--changes', type=int, default=2000)
    parser.add_argument('--fifo', action='store_true')
    parser.add_argument('--template', action='store_true')
    args = parser.parse_args()
    os.environ.update(AWS_ACCESS_KEY_ID='testing', AWS_SECRET_ACCESS_KEY='testing',
                      AWS_DEFAULT_REGION='us-east-1')
    port = free_port()
    server = subprocess.Popen([os.path.join(os.path.dirname(sys.executable), 'moto_server'),
                               '-H', '127.0.0.1', '-p', str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f'http://127.0.0.1:{port}'
    try:
        for _ in range(100):
            try:
                socket.create_connection(('127.0.0.1', port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        sqs = boto3.client('sqs', endpoint_url=endpoint)
        name = 'bench.fifo' if args.fifo else 'bench'
        queue = sqs.create_queue(QueueName=name, Attributes={'FifoQueue': 'true'} if args.fifo
                                 else {})['QueueUrl']
        with tempfile.TemporaryDirectory() as folder:
            writer = SqsWriter(queue, endpoint_url=endpoint,
                               state_url=f'sqlite:///{folder}/state.db',
                               template='order {key[1]} is {new[status]}' if args.template
                               else None)
            writer.open()
            for label in ('send', 'replay'):
                sent, wall, cpu = one_pass(writer, args.changes)
                print(f'{label:7} {sent:6,} sent  {args.changes / wall:8,.0f} notifications/s '
                      f'wall  {args.changes / cpu:8,.0f}/s of CPU ({cpu:.2f} s)')
            writer.close()
        count = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=[
            'ApproximateNumberOfMessages'])['Attributes']['ApproximateNumberOfMessages']
        print(f'queue holds {int(count):,} messages')
    finally:
        server.terminate()
        server.wait()


if __name__ == '__main__':
    main()
