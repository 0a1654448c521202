"""The fixed cost of a ``--follow`` cycle: CPU and wall seconds per catch-up cycle.

    PYTHONPATH=. python bench/follow_cycle_cost.py [--cycles 10] [--statements 0 100]

Against moto's server (in another process, so its CPU is not counted): the
job of bench/follow_latency.py (a 2-shard stream fed by a CloudWatch Logs
subscription, a SQLite replica, dead letters), its cycles run in this process
by the Follower as ``changeflow run JOB --follow`` runs them. The first cycle
(building and translating the job) is left out. For each ``--statements``
count, that many statements are put before every cycle (0: empty cycles, the
fixed cost) and the mean CPU (this process, all threads) and wall seconds per
cycle are printed, with the number of stages (bundles) a cycle runs. Compare
trees in one sitting (``PYTHONPATH=TREE``, runs alternated): the machine is
shared and its wall times are noisy.
"""

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time

from follow_latency import audit_line, delivery, write_job


def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _moto_server():
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, '-c', 'import sys; from moto.server import main; main(sys.argv[1:])',
         '-p', str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(200):
        try:
            socket.create_connection(('127.0.0.1', port)).close()
            return server, f'http://127.0.0.1:{port}'
        except OSError:
            time.sleep(0.05)
    raise RuntimeError('moto server did not start')


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--cycles', type=int, default=10, help='cycles per statement count')
    parser.add_argument('--statements', type=int, nargs='+', default=[0, 100],
                        help='statements put before each cycle')
    args = parser.parse_args()
    os.environ.update(AWS_ACCESS_KEY_ID='testing', AWS_SECRET_ACCESS_KEY='testing',
                      AWS_DEFAULT_REGION='us-east-1')
    server, endpoint = _moto_server()
    try:
        logs, group = delivery(endpoint, 'cycles')
        job = write_job(tempfile.mkdtemp(prefix='follow-cycles-'), 'cycles', endpoint, 0)
        from apache_beam.runners.portability.fn_api_runner import fn_runner

        from changeflow.config import load_config
        from changeflow.pipelines import audit_sync, follow
        bundles = [0]
        execute = fn_runner.FnApiRunner._execute_bundle

        def counted(self, *a, **kw):
            bundles[0] += 1
            return execute(self, *a, **kw)

        fn_runner.FnApiRunner._execute_bundle = counted
        follower = follow.Follower(load_config(job), audit_sync.pipeline_options([]),
                                   audit_sync.build_pipeline, poll_seconds=0, max_cycles=1,
                                   out=open(os.devnull, 'w'))
        follower.run()   # the first cycle builds and translates the job
        query_id = 0
        for statements in args.statements:
            cpu = wall = 0.0
            bundles[0] = 0
            for _ in range(args.cycles):
                if statements:
                    lines = []
                    for _ in range(statements):
                        query_id += 1
                        lines.append(audit_line(
                            query_id, f'INSERT INTO items (id, put) VALUES ({query_id}, 0)'))
                    logs.put_log_events(logGroupName=group, logStreamName='db-1', logEvents=[
                        {'timestamp': int(time.time() * 1000), 'message': line}
                        for line in lines])
                c, w = time.process_time(), time.perf_counter()
                follower._cycle()
                cpu += time.process_time() - c
                wall += time.perf_counter() - w
            print(f'{statements:>5,} statements per cycle: {cpu / args.cycles:.3f} CPU s, '
                  f'{wall / args.cycles:.3f} wall s per cycle '
                  f'({bundles[0] / args.cycles:.0f} stages), {args.cycles} cycles')
    finally:
        server.terminate()


if __name__ == '__main__':
    main()
