"""Following a stream: catch-up cycles one after another in one process.

``changeflow run CONFIG --follow`` on a stream source. Each cycle is the
bounded catch-up job (:func:`changeflow.pipelines.audit_sync.build_pipeline`):
read every shard from the checkpoints to the tip, write every sink, commit
the checkpoints with the connections' carried state. The process keeps its
imports, its options and the job's configuration between cycles, and on the
FnApiRunner (the local default) the job's translation too: the first cycle's
pipeline proto runs again in every later cycle. The runner makes a cycle's
DoFns anew (it sets up a new worker per run), so what is costly to open and
does not change is kept by the process instead: the Kinesis client
(:func:`~changeflow.io.kinesis.shared_kinesis_client`), the frozen startup
heap. An empty cycle of the job in bench/follow_cycle_cost.py (9 stages)
costs ~0.18 CPU s and 0.2-0.4 s wall, against ~3 s for a process start;
most of it is the runner's per-stage set-up. This is the local
continuous mode: Beam's local runners fire windows and timers only when an
unbounded source ends (FACTS.md), so the unbounded mode is for Flink and
Dataflow.

A cycle that read records is followed at once; one that read nothing, after
the poll interval (counted from its start). SIGINT or SIGTERM stops after the
cycle running (its checkpoints committed); a second one ends the process at
once, as a crash would (``os._exit``: an exception raised from a signal
handler may be caught inside the runner): the cycle's input is read again by
the next run, into the idempotent sinks.
"""

import os

import signal
import sys
import time
from typing import Callable, Dict, NamedTuple, Optional, TextIO

import apache_beam as beam
from apache_beam.options.pipeline_options import StandardOptions
from apache_beam.runners.portability.fn_api_runner import FnApiRunner

from changeflow.metrics import counter_totals

__all__ = ['Follower', 'FollowResult', 'STOPPED', 'FINISHED', 'FAILED', 'SINK_UNAVAILABLE']

# How a follow run ended.
STOPPED = 'stopped'                  # by a signal, after a complete cycle
FINISHED = 'finished'                # the input ended (an archive read in slices)
FAILED = 'failed'                    # a cycle failed
SINK_UNAVAILABLE = 'sink-unavailable'  # a cycle could not reach the replica database

_READ = 'changeflow.read_kinesis'


class FollowResult(NamedTuple):
    """What a follow run did: every cycle's counters summed, how it ended."""
    ended: str
    cycles: int
    totals: Dict[str, int]
    error: Optional[BaseException] = None


class _TranslateOnce(FnApiRunner):
    """The FnApiRunner, keeping the pipeline proto of its first run, so later
    cycles run the same job without building and translating it again."""

    proto = None

    def run_via_runner_api(self, pipeline_proto, options):
        if self.proto is None:
            self.proto = pipeline_proto
        return super().run_via_runner_api(pipeline_proto, options)


class Follower:
    """Runs a stream job's catch-up cycles until a signal stops it.

    Args:
        config: the JobConfig (a stream source).
        options: Beam PipelineOptions (a local runner).
        build_pipeline: adds one cycle's job to a pipeline
            (:func:`changeflow.pipelines.audit_sync.build_pipeline`).
        poll_seconds: the least time between the starts of two cycles when
            the first read nothing.
        status_seconds: the least time between two status lines.
        out: where status lines go (default: sys.stderr).
        max_cycles: stop after this many (tests and benchmarks); None: never.
        stop_now_status: the exit status of a process a second signal ends.
        read_namespace: the metrics namespace of the job's stream reader
            (records read, lag, checkpoints committed).
        until: a cycle's counter totals -> True when the input has ended
            (an archive's last slice): the run stops there, FINISHED.
    """

    def __init__(self, config, options, build_pipeline: Callable, poll_seconds: float = 1.0,
                 status_seconds: float = 5.0, out: Optional[TextIO] = None,
                 max_cycles: Optional[int] = None, stop_now_status: int = 1,
                 read_namespace: str = _READ,
                 until: Optional[Callable[[Dict[str, int]], bool]] = None):
        if not poll_seconds >= 0 or not status_seconds >= 0:
            raise ValueError(f'poll_seconds and status_seconds must be 0 or more, got '
                             f'{poll_seconds!r}, {status_seconds!r}')
        self._config = config
        self._options = options
        self._build = build_pipeline
        self._poll = poll_seconds
        self._status_every = status_seconds
        self._out = out or sys.stderr  # the stream of the time the Follower is made
        self._max_cycles = max_cycles
        self._stop_now_status = stop_now_status
        self._read = read_namespace
        self._until = until
        self._runner = (_TranslateOnce() if options.view_as(StandardOptions).runner
                        == 'FnApiRunner' else None)
        self._signals = 0
        self._running = False
        self.totals: Dict[str, int] = {}
        self.lag: Dict[str, int] = {}         # shard id -> its last MillisBehindLatest
        self.last_checkpoint: Optional[float] = None   # epoch seconds of the last commit
        self.carried_open = 0                 # open writes carried by the last cycle
        self.files_left: Optional[int] = None  # an archive's files after the last slice

    # -- signals ------------------------------------------------------------

    def _on_signal(self, signum, frame):
        self._signals += 1
        if self._signals == 1:
            print(f'changeflow: {signal.Signals(signum).name}: stopping after this cycle '
                  f'(again to stop now)', file=self._out, flush=True)
        elif self._running:
            print(f'changeflow: {signal.Signals(signum).name} again: stopped at once, during a '
                  f'cycle: its input is read again at the next start', file=self._out, flush=True)
            os._exit(self._stop_now_status)

    def _wait(self, seconds: float):
        """Sleeps, waking early when a stop signal comes."""
        end = time.monotonic() + seconds
        while not self._signals and time.monotonic() < end:
            time.sleep(min(0.05, max(0.0, end - time.monotonic())))

    # -- cycles -------------------------------------------------------------

    def _cycle(self) -> Dict[str, int]:
        if self._runner is not None and self._runner.proto is not None:
            result = self._runner.run_via_runner_api(self._runner.proto, self._options)
        else:
            p = beam.Pipeline(runner=self._runner, options=self._options)
            self._build(p, self._config)
            result = p.run()
        result.wait_until_finish()
        if str(result.state) != 'DONE':
            raise RuntimeError(f'the cycle ended {result.state}')
        totals = counter_totals(result)
        for gauge in result.metrics().query()['gauges']:
            metric = gauge.key.metric
            value = gauge.committed or gauge.attempted
            if metric.namespace != self._read or value is None:
                continue
            if metric.name.startswith('millis_behind/'):
                self.lag[metric.name.partition('/')[2]] = value.value
            elif metric.name == 'files_left':  # an archive read in slices
                self.files_left = value.value
        return totals

    def run(self) -> FollowResult:
        """Cycles until stopped; installs SIGINT and SIGTERM handlers meanwhile."""
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        cycles = 0
        last_status = time.monotonic()
        events_since, cycles_since = 0, 0
        try:
            while not self._signals and (self._max_cycles is None or cycles < self._max_cycles):
                started = time.monotonic()
                self._running = True
                try:
                    totals = self._cycle()
                except Exception as error:  # pylint: disable=broad-except
                    return FollowResult(FAILED, cycles, self.totals, error)
                finally:
                    self._running = False
                cycles += 1
                for name, value in totals.items():
                    self.totals[name] = self.totals.get(name, 0) + value
                if totals.get(f'{self._read}.checkpoints_committed'):
                    self.last_checkpoint = time.time()
                self.carried_open = totals.get('changeflow.transactions.carried_open', 0)
                events_since += (totals.get('changeflow.parse_audit.events_parsed', 0)
                                 + totals.get('changeflow.dynamodb.stream_records', 0))
                cycles_since += 1
                now = time.monotonic()
                if now - last_status >= self._status_every:
                    self._status(cycles, events_since, cycles_since, now - last_status)
                    last_status, events_since, cycles_since = now, 0, 0
                if totals.get('changeflow.write_database.batches_unreachable'):
                    return FollowResult(SINK_UNAVAILABLE, cycles, self.totals)
                if self._until is not None and self._until(totals):
                    return FollowResult(FINISHED, cycles, self.totals)
                if not totals.get(f'{self._read}.records'):
                    self._wait(started + self._poll - time.monotonic())
            return FollowResult(STOPPED, cycles, self.totals)
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)

    def status_line(self, cycles: int, events: int, cycles_since: int, seconds: float) -> str:
        """events/s since the last line, lag per shard, last checkpoint, carried
        open writes, dead letters so far."""
        lag = ', '.join(f'{shard} {ms:,} ms' for shard, ms in sorted(self.lag.items())) or 'none'
        checkpoint = 'none yet' if self.last_checkpoint is None else time.strftime(
            '%H:%M:%S UTC', time.gmtime(self.last_checkpoint))
        dead = self.totals.get('changeflow.write_dead_letters.written', 0)
        if self._until is not None:  # an archive read in slices
            left = '' if self.files_left is None else f' ({self.files_left:,} files left)'
            return (f'changeflow: reading {self._config.source.name}: slice {cycles:,}{left}, '
                    f'{events:,} events in {seconds:.1f} s '
                    f'({events / max(seconds, 1e-9):,.0f}/s); checkpoint {checkpoint}; '
                    f'{self.carried_open:,} open writes carried; {dead:,} dead letters')
        return (f'changeflow: following {self._config.source.name}: cycle {cycles:,}, '
                f'{events:,} events in {seconds:.1f} s ({events / max(seconds, 1e-9):,.0f}/s, '
                f'{cycles_since:,} cycles); lag {lag}; checkpoint {checkpoint}; '
                f'{self.carried_open:,} open writes carried; {dead:,} dead letters')

    def _status(self, *args):
        print(self.status_line(*args), file=self._out, flush=True)
