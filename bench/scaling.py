"""How the whole job scales: memory with input size, the fixed cost of a job,
and two workers against one. Each run is its own process, so its peak RSS is
its own.

    python bench/scaling.py [--small 200000] [--large 800000] [--workers-events 200000]

Prints, from runs made back to back on the same machine:

* peak RSS of the job at ``--small`` and ``--large`` events of the upsert
  workload (bench/workload.py, one connection) and their ratio (issue 6: within
  1.2x, and under 400 MB); the archive is written by this process, so a
  child's peak is its job's (imports included);
* the fixed cost of a job: ``changeflow run`` of a 100-event job against a
  bare one-element Beam pipeline, both on the FnApiRunner in a fresh process,
  whole processes (imports included), CPU and wall seconds, the median of
  ``--repeat`` runs alternated (target: within 1.5 s);
* throughput of ``--workers-events`` events from 50 connections on one worker
  and on two (``--direct_num_workers=2 --direct_running_mode=multi_processing``;
  target: 1.6x), ``--workers-runs`` of each alternated over one archive, with
  the CPU seconds of the runner process and of each worker process (stage by
  stage: bench/stage_profile.py).
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))

_CHILD = r'''
import json, os, resource, shutil, sys, threading, time
sys.path.insert(0, {bench!r})
started = time.perf_counter()
folder, events, connections, extra = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4:]
from pipeline_throughput import UPSERT_TABLE, write_config
from changeflow.pipelines import audit_sync
archive = os.path.join(folder, 'audit.gz')  # written by the parent: not in this RSS
config = write_config(folder, archive, 'firehose', UPSERT_TABLE, 'shop.items')
without = [sink for sink in os.environ.get('SCALING_WITHOUT', '').split(',') if sink]
if without:
    import yaml
    with open(config) as f:
        raw = yaml.safe_load(f)
    for sink in without:
        del raw['sinks'][sink]
    with open(config, 'w') as f:
        yaml.safe_dump(raw, f)
for name in ('replica.db', 'notifications.jsonl', 'notifications.jsonl.ids'):  # a rerun's
    if os.path.exists(os.path.join(folder, name)):
        os.remove(os.path.join(folder, name))
for name in ('backup', 'dead-letter'):
    shutil.rmtree(os.path.join(folder, name), ignore_errors=True)
workers, watching = {{}}, threading.Event()


def watch_workers():
    # The worker processes (under a shell) are gone once the job returns:
    # their CPU seconds are read from /proc while they run.
    tick, me = os.sysconf('SC_CLK_TCK'), os.getpid()
    while not watching.wait(0.1):
        parent, cpu = {{}}, {{}}
        for pid in filter(str.isdigit, os.listdir('/proc')):
            try:
                with open(f'/proc/{{pid}}/stat') as f:
                    fields = f.read().rsplit(')', 1)[1].split()
            except OSError:
                continue
            parent[int(pid)], cpu[int(pid)] = int(fields[1]), (int(fields[11]) + int(fields[12])) / tick
        for pid, seconds in cpu.items():
            ancestor = parent[pid]
            while ancestor in parent and ancestor != me:
                ancestor = parent[ancestor]
            if ancestor == me:
                workers[pid] = max(seconds, workers.get(pid, 0))


watcher = threading.Thread(target=watch_workers, daemon=True)
watcher.start()
imported, cpu = time.perf_counter(), time.process_time()
audit_sync.run(['--config', config, *extra])
done, cpu = time.perf_counter(), time.process_time() - cpu
watching.set()
watcher.join()
children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(json.dumps({{'seconds': done - imported, 'total': done - started, 'cpu': cpu,
                  'workers_cpu': sorted((s for s in workers.values() if s >= 0.05), reverse=True),
                  'rss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  'children_rss_mb': children / 1024}}))
'''


def run(events, connections=1, extra=()):
    with tempfile.TemporaryDirectory() as folder:
        write_archive(folder, events, connections)
        return run_job(folder, events, connections, extra)


def write_archive(folder, events, connections):
    # Here, not in the child: generating the workload holds every statement
    # (~120 MB at 800k events), which the job's peak RSS must not count.
    sys.path.insert(0, HERE)
    from workload import write_firehose_archive
    write_firehose_archive(os.path.join(folder, 'audit.gz'), events, connections=connections)


def run_job(folder, events, connections, extra=()):
    """The job's figures, from a fresh process over the archive in ``folder``."""
    out = subprocess.run(
        [sys.executable, '-c', _CHILD.format(bench=HERE), folder, str(events),
         str(connections), *extra],
        check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


TWO_WORKERS = ('--direct_num_workers=2', '--direct_running_mode=multi_processing')


def workers(events, runs):
    """One worker (the runner's own process) against two worker processes,
    ``runs`` of each alternated over one archive of 50 connections."""
    figures = {1: [], 2: []}
    with tempfile.TemporaryDirectory() as folder:
        write_archive(folder, events, 50)
        for _ in range(runs):
            for count, extra in ((1, ()), (2, TWO_WORKERS)):
                job = run_job(folder, events, 50, extra)
                figures[count].append(job)
                print(f'{count} worker(s), 50 connections   {events / job["seconds"]:>8,.0f} events/s'
                      f' {job["seconds"]:>6.2f} s; CPU s: runner {job["cpu"]:.2f}, workers '
                      + (' '.join(f'{s:.2f}' for s in job['workers_cpu']) or '-'), flush=True)
    return figures


_BARE = '''
import apache_beam as beam
with beam.Pipeline(runner='FnApiRunner') as p:
    p | beam.Create([1]) | beam.Map(lambda x: x)
'''


def process_cost(argv):
    """(CPU seconds, wall seconds) of a whole process running ``argv``."""
    before, started = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    subprocess.run(argv, check=True, capture_output=True)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime), wall


def fixed_cost(repeat):
    """Median (CPU, wall) of a bare pipeline's process and a 100-event job's."""
    sys.path.insert(0, HERE)
    from pipeline_throughput import UPSERT_TABLE, write_config
    from workload import write_firehose_archive
    bare, job = [], []
    with tempfile.TemporaryDirectory() as folder:
        archive = os.path.join(folder, 'audit.gz')
        write_firehose_archive(archive, 100)
        config = write_config(folder, archive, 'firehose', UPSERT_TABLE, 'shop.items')
        for _ in range(repeat):
            bare.append(process_cost([sys.executable, '-c', _BARE]))
            for name in ('replica.db', 'notifications.jsonl'):
                if os.path.exists(os.path.join(folder, name)):
                    os.remove(os.path.join(folder, name))
            job.append(process_cost([sys.executable, '-m', 'changeflow', 'run', config]))
    return ([statistics.median(c for c, _ in runs) for runs in (bare, job)],
            [statistics.median(w for _, w in runs) for runs in (bare, job)])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--small', type=int, default=200_000)
    parser.add_argument('--large', type=int, default=800_000)
    parser.add_argument('--workers-events', type=int, default=200_000)
    parser.add_argument('--without', default='', help='comma list of sinks (database, parquet, '
                        'notify) the jobs leave out, to tell what holds the memory')
    parser.add_argument('--repeat', type=int, default=5, help='runs of each for the fixed cost')
    parser.add_argument('--workers-runs', type=int, default=3,
                        help='runs of one and of two workers, alternated')
    parser.add_argument('--skip', default='', help='comma list of memory,fixed,workers')
    args = parser.parse_args()
    os.environ['SCALING_WITHOUT'] = args.without
    skip = set(filter(None, args.skip.split(',')))
    if 'memory' not in skip:
        small, large = run(args.small), run(args.large)
        print(f'peak RSS {args.small:>9,} events   {small["rss_mb"]:>8,.0f} MiB '
              f'({args.small / small["seconds"]:,.0f} events/s)')
        print(f'peak RSS {args.large:>9,} events   {large["rss_mb"]:>8,.0f} MiB '
              f'({args.large / large["seconds"]:,.0f} events/s)')
        print(f'memory ratio large/small       {large["rss_mb"] / small["rss_mb"]:>8.2f} x')
    if 'fixed' not in skip:
        (bare_cpu, job_cpu), (bare_wall, job_wall) = fixed_cost(args.repeat)
        print(f'bare Beam pipeline (process)   {bare_cpu:>8.2f} CPU s {bare_wall:>6.2f} wall s')
        print(f'changeflow run, 100 events     {job_cpu:>8.2f} CPU s {job_wall:>6.2f} wall s '
              f'(fixed cost over bare: {job_cpu - bare_cpu:.2f} CPU s, '
              f'{job_wall - bare_wall:.2f} wall s; medians of {args.repeat})')
    if 'workers' not in skip:
        figures = workers(args.workers_events, args.workers_runs)
        one, two = (statistics.median(job['seconds'] for job in figures[n]) for n in (1, 2))
        print(f'1 worker, 50 connections       {args.workers_events / one:>8,.0f} events/s (median)')
        print(f'2 workers, 50 connections      {args.workers_events / two:>8,.0f} events/s (median)')
        print(f'speed-up                       {one / two:>8.2f} x (medians of {args.workers_runs})')

if __name__ == '__main__':
    main()
