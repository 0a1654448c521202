"""Memory of the Parquet writer alone: one (table, day) partition written.

    python bench/parquet_memory.py [--events 800000] [--keys 20000] [--shards 4]

The workload's source ops (bench/workload.py, as bench/sink_throughput.py
builds them) keyed by partition as the job keys them (``--shards`` write
shards of the day, the sink's default), then each partition written by the
sink's DoFn called directly, one after the other, into a temporary directory.
Prints the process's anonymous and file-backed RSS (``/proc/self/status``,
sampled every 20 ms) before the write (garbage collected) and at its peak,
and the write's CPU time in rows/s. File-backed pages include the spilled slices' memory maps.
"""

import argparse
import collections
import gc
import tempfile
import threading
import time

from sink_throughput import ITEMS, log_batches, source_ops

from changeflow.io import parquet


def rss_mib():
    found = {}
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith(('RssAnon', 'RssFile')):
                name, value = line.split(':')
                found[name] = int(value.split()[0]) // 1024
    return found


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--events', type=int, default=800_000)
    parser.add_argument('--keys', type=int, default=20_000)
    parser.add_argument('--shards', type=int, default=4)
    args = parser.parse_args()
    batches = log_batches(source_ops(args.events, args.keys))
    layouts = {ITEMS.source: parquet._layout(ITEMS)}
    keyer = parquet._KeyBatchByPartition(layouts, args.shards)
    keyer.setup()
    partitions = collections.defaultdict(list)
    for batch in batches:
        for partition, packed in keyer.process(batch):
            partitions[partition].append(packed)
    del batches
    # Cyclic garbage left by building the workload, collected: the writer's memory is
    # measured, not what a collection has yet to free (a keyer decoding batches started one).
    gc.collect()
    with tempfile.TemporaryDirectory() as folder:
        writer = parquet._WritePartitionFn(folder, layouts, 250_000, args.shards)
        writer.setup()
        before = rss_mib()
        peak = dict(before, total=sum(before.values()))
        done = threading.Event()

        def sample():
            while not done.wait(0.02):
                now = rss_mib()
                peak.update({name: max(peak[name], value) for name, value in now.items()},
                            total=max(peak['total'], sum(now.values())))
        sampler = threading.Thread(target=sample)
        sampler.start()
        started = time.process_time()
        written = sum(output.records for element in partitions.items()
                      for output in writer.process(element)
                      if isinstance(output, parquet.WrittenFile))
        seconds = time.process_time() - started
        done.set()
        sampler.join()
    print(f'{args.events:,} events: {len(partitions)} partition(s), {written:,} rows written in {seconds:.1f} CPU s ({written / seconds:,.0f} rows/s)')
    print(f'RSS before the write: anonymous {before["RssAnon"]:,} MiB, file {before["RssFile"]:,} MiB')
    print(f'peak during the write: anonymous {peak["RssAnon"]:,} MiB, file {peak["RssFile"]:,} MiB, '
          f'sum {peak["total"]:,} MiB')


if __name__ == '__main__':
    main()
