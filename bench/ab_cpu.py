"""Interleaved A/B of the whole job between checkouts: CPU seconds per run.

    python bench/ab_cpu.py TREE [TREE ...] [--events 50000] [--runs 2] [--connections 1]

Writes the upsert workload's archive (bench/workload.py) once, then runs the
job on it (FnApiRunner, into SQLite, Parquet and a JSONL notification file,
as bench/pipeline_throughput.py configures it) in a fresh process per run,
with each TREE's changeflow first on the path, alternating the trees run by
run. Prints, per run, the job's CPU seconds (user + system of the process,
archive writing and imports excluded), events per CPU-second and peak RSS;
then each tree's best and median. CPU time, not wall time: the machine is
shared, and runs alternate so a busy spell hits every tree alike.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))

_CHILD = r'''
import os, resource, sys, json
tree, folder = sys.argv[1], sys.argv[2]
sys.path[:0] = [tree, os.path.join(tree, 'bench')]
import changeflow
assert changeflow.__file__.startswith(os.path.abspath(tree)), changeflow.__file__
from changeflow.pipelines import audit_sync
def cpu():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime
started = cpu()
audit_sync.run(['--config', os.path.join(folder, 'job.yaml')])
print(json.dumps({'cpu': cpu() - started,
                  'rss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
'''


def run_once(tree, archive, workdir):
    sys.path.insert(0, HERE)
    from pipeline_throughput import UPSERT_TABLE, write_config
    with tempfile.TemporaryDirectory(dir=workdir) as folder:
        write_config(folder, archive, 'firehose', UPSERT_TABLE, 'shop.items')
        out = subprocess.run([sys.executable, '-c', _CHILD, os.path.abspath(tree), folder],
                             check=True, capture_output=True, text=True,
                             env={**os.environ, 'PYTHONPATH': ''}).stdout
    return json.loads(out.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('trees', nargs='+', help='checkouts whose changeflow to run')
    parser.add_argument('--events', type=int, default=50_000)
    parser.add_argument('--runs', type=int, default=2, help='runs per tree')
    parser.add_argument('--connections', type=int, default=1)
    args = parser.parse_args()
    sys.path.insert(0, HERE)
    from workload import write_firehose_archive
    results = {tree: [] for tree in args.trees}
    with tempfile.TemporaryDirectory() as workdir:
        archive = os.path.join(workdir, 'audit.gz')
        write_firehose_archive(archive, args.events, connections=args.connections)
        for attempt in range(args.runs):
            for tree in args.trees:
                result = run_once(tree, archive, workdir)
                results[tree].append(result)
                print(f'run {attempt + 1} {tree:<30} {result["cpu"]:7.2f} CPU s  '
                      f'{args.events / result["cpu"]:>8,.0f} events/CPU-s  '
                      f'{result["rss_mb"]:6.0f} MiB', flush=True)
    for tree, runs in results.items():
        cpus = [run['cpu'] for run in runs]
        print(f'{tree:<30} best {min(cpus):7.2f} CPU s ({args.events / min(cpus):,.0f} '
              f'events/CPU-s), median {statistics.median(cpus):7.2f}')


if __name__ == '__main__':
    main()
