"""Where the second worker idles: the whole job's fused stages, one by one, on
one worker or on two (``--direct_num_workers=2 --direct_running_mode=multi_processing``).

    python bench/stage_profile.py [--events 200000] [--connections 50] [--workers 1,2]

The FnApiRunner runs a batch job's fused stages one after another; with two
workers it splits each stage's input in two (a GroupByKey's keys round-robin,
a plain input's chunks, or its elements when there are fewer chunks than
workers) and runs the halves at once. Per stage this prints the wall seconds,
the CPU seconds of the runner process (it groups every shuffle's data) and of
each worker process (from /proc), and how many input bytes each worker was
sent, so a stage that one worker runs alone shows at once.
"""

import argparse
import collections
import json
import os
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))

_CHILD = r'''
import collections, json, os, sys, time
sys.path.insert(0, {bench!r})
from apache_beam.runners.portability.fn_api_runner import fn_runner
from pipeline_throughput import UPSERT_TABLE, write_config
from changeflow.pipelines import audit_sync

TICK = os.sysconf('SC_CLK_TCK')


def children_cpu():
    """CPU seconds (user + system) of each process under this one (the
    workers run under a shell), by pid."""
    parent, cpu = {{}}, {{}}
    for pid in os.listdir('/proc'):
        if not pid.isdigit():
            continue
        try:
            with open(f'/proc/{{pid}}/stat') as f:
                fields = f.read().rsplit(')', 1)[1].split()
        except OSError:
            continue
        parent[int(pid)] = int(fields[1])
        cpu[int(pid)] = (int(fields[11]) + int(fields[12])) / TICK
    me, under = os.getpid(), {{}}
    for pid in cpu:
        ancestor = parent.get(pid)
        while ancestor not in (None, 0, 1, me):
            ancestor = parent.get(ancestor)
        if ancestor == me:
            under[pid] = cpu[pid]
    return under


stages, sent_parts = [], []
execute_bundle = fn_runner.FnApiRunner._execute_bundle
process_bundle = fn_runner.BundleManager.process_bundle


def timed_execute_bundle(self, context, bundle_context_manager, bundle_input):
    del sent_parts[:]
    before, wall, cpu = children_cpu(), time.perf_counter(), time.process_time()
    try:
        return execute_bundle(self, context, bundle_context_manager, bundle_input)
    finally:
        after = children_cpu()
        stages.append({{'stage': bundle_context_manager.stage.name,
                       'wall': time.perf_counter() - wall, 'runner_cpu': time.process_time() - cpu,
                       'workers': {{pid: after[pid] - before.get(pid, 0) for pid in after}},
                       'sent': list(sent_parts)}})


def counted_process_bundle(self, inputs, *args, **kwargs):
    sent = sum(len(chunk) for chunks in inputs.values() for chunk in chunks)
    result = process_bundle(self, inputs, *args, **kwargs)
    sent_parts.append(sent)  # from ParallelBundleManager's threads: list.append is atomic
    return result


fn_runner.FnApiRunner._execute_bundle = timed_execute_bundle
fn_runner.BundleManager.process_bundle = counted_process_bundle
folder, extra = sys.argv[1], sys.argv[2:]
config = write_config(folder, os.path.join(folder, 'audit.gz'), 'firehose', UPSERT_TABLE,
                      'shop.items')
started = time.perf_counter()
audit_sync.run(['--config', config, *extra])
print(json.dumps({{'seconds': time.perf_counter() - started, 'stages': stages}}))
'''


def profile(folder, workers, pin=''):
    """``workers``: '1' (the runner's own process), 'Nmp' or N > 1 (N worker processes)."""
    extra = [] if workers == '1' else [f'--direct_num_workers={workers.rstrip("mp")}',
                                       '--direct_running_mode=multi_processing']
    for name in ('replica.db', 'notifications.jsonl', 'backup', 'dead-letter'):
        path = os.path.join(folder, name)
        if os.path.isdir(path):
            shutil.rmtree(path)
        elif os.path.exists(path):
            os.remove(path)
    done = subprocess.run([*(['taskset', '-c', pin] if pin else []), sys.executable, '-c', _CHILD.format(bench=HERE), folder, *extra],
                          capture_output=True, text=True)
    if done.returncode:
        sys.exit(done.stderr[-5000:])
    out = done.stdout
    return json.loads(out.strip().splitlines()[-1])


def show(result, events, workers):
    print(f'\n{workers} worker(s): {result["seconds"]:.2f} s, {events / result["seconds"]:,.0f}'
          f' events/s')
    merged = collections.OrderedDict()
    for stage in result['stages']:  # a stage may run as several bundles (timers, residuals)
        into = merged.setdefault(stage['stage'], {'wall': 0, 'runner_cpu': 0, 'bundles': 0,
                                                  'workers': collections.Counter(), 'sent': []})
        into['wall'] += stage['wall']
        into['runner_cpu'] += stage['runner_cpu']
        into['bundles'] += 1
        into['workers'].update(stage['workers'])
        into['sent'].extend(stage['sent'])
    pids = sorted({pid for stage in merged.values() for pid in stage['workers']})
    print(f'{"wall s":>7} {"runner":>7} ' + ' '.join(f'{"w" + str(i):>6}' for i in range(len(pids)))
          + f'  {"KiB sent per part":<22} stage')
    for name, stage in sorted(merged.items(), key=lambda item: -item[1]['wall']):
        if stage['wall'] < 0.05:
            continue
        sent = ','.join(f'{s / 1024:.0f}' for s in stage['sent'])
        print(f'{stage["wall"]:>7.2f} {stage["runner_cpu"]:>7.2f} '
              + ' '.join(f'{stage["workers"].get(pid, 0):>6.2f}' for pid in pids)
              + f'  {sent:<22} {name[:90]}')
    total = sum(s['wall'] for s in merged.values())
    print(f'{total:>7.2f} {sum(s["runner_cpu"] for s in merged.values()):>7.2f} '
          + ' '.join(f'{sum(s["workers"].get(pid, 0) for s in merged.values()):>6.2f}'
                     for pid in pids) + '  (all stages)')


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--events', type=int, default=200_000)
    parser.add_argument('--connections', type=int, default=50)
    parser.add_argument('--workers', default='1,2', help="comma list, run in this order; '1mp': one worker process")
    parser.add_argument('--pin', default='', help="the jobs on these CPUs only (taskset's list, "
                        "e.g. 0: two workers sharing one core do the work of two without "
                        "running at once)")
    parser.add_argument('--json', help='also write the raw per-bundle figures here')
    args = parser.parse_args()
    sys.path.insert(0, HERE)
    from workload import write_firehose_archive
    raw = []
    with tempfile.TemporaryDirectory() as folder:
        write_firehose_archive(os.path.join(folder, 'audit.gz'), args.events,
                               connections=args.connections)
        for workers in args.workers.split(','):
            result = profile(folder, workers, args.pin)
            raw.append({'workers': workers, **result})
            show(result, args.events, workers)
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(raw, f)


if __name__ == '__main__':
    main()
