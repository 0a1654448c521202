"""Kinesis servers for tests: moto's (conftest's ``moto_endpoint``) and kinesalite.

kinesalite (npm) is the one that reshards like AWS (FACTS.md): ``.ci/run``
installs it into ``.ci/node_modules``; ``KINESALITE_CLI`` may point at another
``cli.js``. Tests using it skip with the reason when node or kinesalite is
missing. Import the fixtures into a test module to use them.
"""

import os
import shutil
import socket
import subprocess
import time

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KINESALITE_CLI = os.environ.get(
    'KINESALITE_CLI', os.path.join(ROOT, '.ci', 'node_modules', 'kinesalite', 'cli.js'))


def client(endpoint, **config):
    """A Kinesis client for a local server: no retries (fail fast), short timeouts."""
    return boto3.client(
        'kinesis', endpoint_url=endpoint, region_name='us-east-1',
        aws_access_key_id='testing', aws_secret_access_key='testing',
        config=Config(retries={'mode': 'standard', 'max_attempts': 1},
                      connect_timeout=2, read_timeout=10, **config))


def wait_active(kinesis, stream, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = kinesis.describe_stream_summary(StreamName=stream)[
            'StreamDescriptionSummary']['StreamStatus']
        if status == 'ACTIVE':
            return
        time.sleep(0.02)
    raise TimeoutError(f'stream {stream} not ACTIVE after {timeout}s')


def create_stream(kinesis, stream, shards=1):
    kinesis.create_stream(StreamName=stream, ShardCount=shards)
    wait_active(kinesis, stream)


def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


@pytest.fixture(scope='module')
def kinesalite_endpoint():
    """A kinesalite server (in memory) for the test module."""
    node = shutil.which('node')
    if not node:
        pytest.skip('node is not installed; kinesalite (npm) needs it for the resharding tests')
    if not os.path.exists(KINESALITE_CLI):
        pytest.skip(f'kinesalite is not installed at {KINESALITE_CLI}; run '
                    f'`npm install --prefix .ci kinesalite` (as .ci/run does)')
    port = _free_port()
    process = subprocess.Popen(
        [node, KINESALITE_CLI, '--port', str(port), '--createStreamMs', '20',
         '--deleteStreamMs', '20', '--updateStreamMs', '20', '--shardLimit', '100'],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                socket.create_connection(('127.0.0.1', port), timeout=0.2).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    error = process.stderr.read().decode(errors='replace') if process.poll() else ''
                    pytest.skip(f'kinesalite did not start on port {port}: {error[-500:]}')
                time.sleep(0.05)
        yield f'http://127.0.0.1:{port}'
    finally:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def error(code, operation='GetRecords'):
    return ClientError({'Error': {'Code': code, 'Message': f'test {code}'}}, operation)


class Recording:
    """A client that records calls and lets a hook raise before one goes through."""

    def __init__(self, real, **hooks):
        self._real = real
        self.calls = []
        self.hooks = hooks

    def __getattr__(self, name):
        fn = getattr(self._real, name)

        def call(**kwargs):
            self.calls.append((name, kwargs))
            hook = self.hooks.get(name)
            if hook:
                hook(kwargs)
            return fn(**kwargs)
        call.__name__ = name
        return call

    def named(self, name):
        return [kw for n, kw in self.calls if n == name]
