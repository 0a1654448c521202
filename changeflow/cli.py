"""The ``changeflow`` command.

    changeflow run CONFIG.yaml [--verbose] [--fail-on-dead-letters] [Beam pipeline flags]
    changeflow run CONFIG.yaml --follow [--poll-seconds S] [--status-seconds S] [...]
    changeflow status CONFIG.yaml
    changeflow inspect FILE|- [--config CONFIG.yaml]

``run`` ends with a summary (what was read, what each sink wrote, the dead
letters by step and reason and where they are, the replica's diverged rows;
``--verbose`` adds every counter) and exits with

* :data:`RUN_DONE` (0): the job completed; dead letters are reported, not failures;
* :data:`RUN_FAILED` (1): the job failed (or ended in another state than DONE);
* :data:`STATUS_ERROR` (2): a bad configuration;
* :data:`RUN_SINK_UNAVAILABLE` (3): the job completed, but the replica
  database could not be reached: its changes are in the dead letters;
* :data:`RUN_DEAD_LETTERS` (4): with ``--fail-on-dead-letters``, the job
  completed and wrote dead letters.

``status`` lists what the replica records as diverged (rows and tables no
longer known to equal the source) and exits with :data:`STATUS_CLEAN` (0)
when nothing is, :data:`STATUS_DIVERGED` (1) when something is, and
:data:`STATUS_ERROR` (2) for a bad configuration, a job without a database
sink, or a replica that cannot be read.

Nothing printed holds a password: database URLs are shown with
``config.display_url``, and log records and errors pass through
:func:`changeflow.sql.secrets.mask_url_passwords` and lose the configured
URLs' passwords.
"""

import argparse
import logging
import os
import re
import sys
import time
import traceback

__all__ = ['main', 'STATUS_CLEAN', 'STATUS_DIVERGED', 'STATUS_ERROR', 'RUN_DONE', 'RUN_FAILED',
           'RUN_SINK_UNAVAILABLE', 'RUN_DEAD_LETTERS']

STATUS_CLEAN, STATUS_DIVERGED, STATUS_ERROR = 0, 1, 2
RUN_DONE, RUN_FAILED, RUN_SINK_UNAVAILABLE, RUN_DEAD_LETTERS = 0, 1, 3, 4

# Beam's notices of optional dependencies it imports when present (the GCP
# clients): noise for a job that does not use them.
_OPTIONAL_DEPENDENCY_NOTICES = re.compile(r'apitools not found')


class _Terminal(logging.StreamHandler):
    """Log records to stderr as it is at each record (tests swap it),
    without optional-dependency notices and without passwords."""

    def __init__(self):
        super().__init__()
        self.passwords = set()  # of the job's URLs, masked wherever they appear
        self.setFormatter(logging.Formatter('%(levelname)s %(name)s: %(message)s'))
        self.addFilter(_optional_dependency_notice)
        self.addFilter(self._hide_passwords)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _):
        pass

    def _hide_passwords(self, record: logging.LogRecord) -> bool:
        try:
            record.msg, record.args = self.hidden(record.getMessage()), None
        except Exception:  # pylint: disable=broad-except
            pass  # arguments that do not fit the message: logging reports it on emit
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatter.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.hidden(record.exc_text)
        return True

    def hidden(self, text: str) -> str:
        from changeflow.sql.secrets import mask_url_passwords
        text = mask_url_passwords(text)
        for password in self.passwords:
            text = text.replace(password, '***')
        return text


def _optional_dependency_notice(record: logging.LogRecord) -> bool:
    """False for Beam's warnings that an optional dependency is missing."""
    from_beam = f'{os.sep}apache_beam{os.sep}' in record.pathname
    return not (from_beam and record.levelno <= logging.WARNING
                and _OPTIONAL_DEPENDENCY_NOTICES.search(str(record.msg)))


def _terminal() -> _Terminal:
    """The root logger's _Terminal handler, installed once per process."""
    root = logging.getLogger()
    for handler in root.handlers:
        if isinstance(handler, _Terminal):
            return handler
    handler = _Terminal()
    root.addHandler(handler)
    return handler


def _passwords(config):
    from sqlalchemy.engine import make_url
    for url in (config.database_url, config.source_db_url):
        if url and make_url(url).password:
            yield str(make_url(url).password)


# ---------------------------------------------------------------------------
# The run's summary.

def _n(count: int, one: str, many: str = '') -> str:
    return f'{count:,} {one if count == 1 else (many or one + "s")}'


class _Counts:
    """A finished job's counters by 'namespace.name' (all 0 when the runner has none)."""

    def __init__(self, totals):
        self.totals = totals

    def __call__(self, component: str, name: str) -> int:
        return self.totals.get(f'changeflow.{component}.{name}', 0)

    def by_reason(self):
        """{step: [(reason, count)]} of the dead letters written."""
        from changeflow.io.dead_letter import BY_REASON_NAMESPACE
        steps = {}
        for key, count in sorted(self.totals.items()):
            if key.startswith(BY_REASON_NAMESPACE + '.') and count:
                step, _, reason = key[len(BY_REASON_NAMESPACE) + 1:].partition('/')
                steps.setdefault(step, []).append((reason, count))
        return steps


def _read_line(config, count: _Counts) -> str:
    """records -> events -> statements -> row changes -> rows changed; for a
    DynamoDB job records -> stream records -> changes -> rows changed."""
    from changeflow.config import is_dynamodb_job
    if is_dynamodb_job(config):
        return _dynamodb_read_line(config, count)
    if config.source.type == 'kinesis':
        source = config.source.name
        read = _n(count('read_kinesis', 'records'), 'record')
    else:
        source = _n(count('read_archive', 'files'), 'file')
        if config.source.format == 'server-audit':
            read = _n(count('read_archive', 'lines'), 'line')
        else:
            read = _n(count('read_archive', 'records'), 'record')
    slices = count('read_archive_slices', 'slices')
    per_slice = f' (a row once per slice it changes in, {_n(slices, "slice")})' if slices else ''
    return (f'{source}: {read} -> {_n(count("parse_audit", "events_parsed"), "event")}'
            f' -> {_n(count("sql_changes", "statements_received"), "statement")}'
            f' -> {_n(count("sql_changes", "row_changes"), "row change")}'
            f' -> {_n(count("coalesce", "rows"), "row")} changed{per_slice}')


def _dynamodb_read_line(config, count: _Counts) -> str:
    """Where the records came from, then what they became. A Lambda event
    holds many stream records; no-op MODIFYs and other tables' records
    change nothing; a seed's export items are changes too."""
    source = config.source
    if source.type == 'dynamodb-archive':
        where = f'{_n(count("read_archive", "files"), "file")}: '
        read = count('read_archive', 'records')
    else:
        component = 'read_dynamodb_streams' if source.type == 'dynamodb' else 'read_kinesis'
        where = f'{source.name}: {_n(count(component, "shards_read"), "shard")}: '
        read = count(component, 'records')
    dynamodb = lambda name: count('dynamodb', name)  # noqa: E731
    line = (f'{where}{_n(read, "record")} -> {_n(dynamodb("stream_records"), "stream record")}'
            f' -> {_n(dynamodb("changes"), "change")}')
    if dynamodb('export_items'):
        line += f' (with {_n(dynamodb("export_items"), "export item")})'
    notes = [_n(dynamodb(name), one, many) for name, one, many in (
        ('ttl_deletes', 'TTL delete', ''),
        ('no_op_modifies', 'no-op MODIFY dropped', 'no-op MODIFYs dropped'),
        ('unconfigured_table', 'record of another table dropped',
         'records of other tables dropped')) if dynamodb(name)]
    line += f' -> {_n(count("coalesce", "rows"), "row")} changed'
    return line + (f' ({", ".join(notes)})' if notes else '')


def _sink_unavailable(count: _Counts) -> bool:
    """Whether some replica batch could not reach its database."""
    return count('write_database', 'batches_unreachable') > 0


def _replica_line(config, count: _Counts) -> str:
    from changeflow.config import display_url
    db = lambda name: count('write_database', name)  # noqa: E731
    line = (f'{display_url(config.database_url)}: {_n(db("changes_received"), "change")} -> '
            f'{_n(db("rows_upserted"), "row")} upserted, {db("rows_deleted"):,} deleted, '
            f'{_n(db("ops_skipped_stale"), "op")} already applied; '
            f'{db("changes_dead_lettered"):,} dead-lettered')
    if _sink_unavailable(count):
        line += (f'\n                UNAVAILABLE: {_n(db("batches_unreachable"), "batch", "batches")}'
                 f' could not reach the database')
        if db('batches_not_tried'):
            line += (f', {db("batches_not_tried"):,} more not tried'
                     f' (dead letters: sink-unavailable)')
    return line


def _dead_letter_lines(config, count: _Counts) -> str:
    written = count('write_dead_letters', 'written')
    lines = [f'{written:,} in {_n(count("write_dead_letters", "files_written"), "file")} '
             f'under {config.dead_letter_path}']
    for step, reasons in count.by_reason().items():
        listed = ', '.join(f'{reason} {n:,}' for reason, n in reasons)
        lines.append(f'                {step}: {listed}')
    lost = count('write_dead_letters', 'dead_lettered')
    if lost:
        lines.append(f'                {lost:,} could not be written (see the log above)')
    return '\n'.join(lines)


def _summary(config, count: _Counts) -> str:
    """What a person reads at a glance: input, each sink, dead letters."""
    from changeflow.io.messaging import display_target
    lines = [f'  read          {_read_line(config, count)}']
    if config.database_url:
        lines.append(f'  replica       {_replica_line(config, count)}')
    if config.parquet_path:
        lines.append(f'  parquet       {config.parquet_path}: '
                     f'{_n(count("write_parquet", "written"), "row")} in '
                     f'{_n(count("write_parquet", "files_written"), "file")}')
    if config.notify:
        written = count('write_notify', 'written')
        again = count('write_notify', 'skipped_existing')
        lines.append(f'  notify        {_n(written, "notification")} to '
                     f'{", ".join(display_target(rule.to) for rule in config.notify)}'
                     + (f' ({again:,} already sent)' if again else ''))
    if config.handlers or count('handlers', 'events'):
        handled = lambda name: count('handlers', name)  # noqa: E731
        lines.append(f'  handlers      {_n(handled("delivered"), "event")} delivered, '
                     f'{handled("already_done"):,} already done (ledger), '
                     f'{handled("failed"):,} failed, {handled("blocked"):,} held back')
    lines.append(f'  dead letters  {_dead_letter_lines(config, count)}')
    return '\n'.join(lines)


def _counter_list(totals) -> str:
    """Every counter, one per line, grouped by component."""
    width = max(map(len, totals), default=0)
    return '\n'.join(f'  {name:<{width}}  {value:>10,}' for name, value in sorted(totals.items()))


def _totals(result):
    """The job's counters, or None when the runner reports none."""
    from changeflow.metrics import counter_totals
    try:
        return counter_totals(result)
    except (NotImplementedError, AttributeError):
        return None


# ---------------------------------------------------------------------------
# Divergence (``status`` and the end of ``run``).

def _divergence(divergence) -> str:
    """Diverged tables (whole-table marks) and per table its diverged rows."""
    if not divergence:
        return '  nothing diverged'
    lines = [f'  table {table}: whole table, {reason} at version {version}'
             for table, version, reason in divergence.tables]
    counts = {}
    for table, reason, count in divergence.rows:
        counts.setdefault(table, []).append((reason, count))
    for table, reasons in counts.items():
        total = sum(count for _, count in reasons)
        listed = ', '.join(f'{reason} {count:,}' for reason, count in reasons)
        lines.append(f'  table {table}: {total:,} row(s) diverged ({listed})')
    return '\n'.join(lines)


def _read_divergence(config):
    """(Divergence, None) of the job's replica, or (None, why it cannot be read)."""
    import sqlalchemy as sa
    from changeflow.io.sql import read_divergence
    try:
        return read_divergence(config.database_url), None
    except (sa.exc.SQLAlchemyError, ImportError) as error:
        why = f'{type(error).__name__}: {getattr(error, "orig", None) or error}'
        return None, _terminal().hidden(' '.join(why.split()))  # on one line


# ---------------------------------------------------------------------------
# Commands.

def _load(path):
    """(JobConfig, None), or (None, exit status) after saying what is wrong."""
    from changeflow.config import ConfigError, load_config
    try:
        config = load_config(path)
    except (ConfigError, OSError) as error:
        print(f'changeflow: bad configuration: {_terminal().hidden(str(error))}', file=sys.stderr)
        return None, STATUS_ERROR
    _terminal().passwords.update(_passwords(config))
    return config, None


def _run(args, beam_args) -> int:
    from changeflow.config import is_dynamodb_job, reads_in_slices
    from changeflow.pipelines import audit_sync, dynamodb_sync
    config, status = _load(args.config)
    if config is None:
        return status
    sliced = reads_in_slices(config)
    if args.follow or sliced:
        return _follow(args, beam_args, config, sliced)
    job = dynamodb_sync if is_dynamodb_job(config) else audit_sync
    started = time.monotonic()
    try:
        result = job.run(['--config', args.config, *beam_args])
    except Exception as error:  # pylint: disable=broad-except
        hidden = _terminal().hidden
        if args.verbose:
            print(hidden(traceback.format_exc()), file=sys.stderr, end='')
        first = (str(error).strip().splitlines() or [''])[0]
        print(f'changeflow: job FAILED after {time.monotonic() - started:.1f} s: '
              f'{type(error).__name__}: {hidden(first)}', file=sys.stderr)
        return RUN_FAILED
    state = str(result.state)
    print(f'changeflow: job {state} in {time.monotonic() - started:.1f} s')
    return _finish(args, config, state, _totals(result))


def _finish(args, config, state: str, totals) -> int:
    """The summary of a finished run (``totals`` None: the runner has no
    counters) and its exit status."""
    if totals is None:
        print('  (this runner reports no counters)')
        count = _Counts({})
    else:
        count = _Counts(totals)
        print(_summary(config, count))
        if args.verbose:
            print('Counters:')
            print(_counter_list(totals))
    if config.database_url:
        divergence, error = _read_divergence(config)
        print('Diverged (changeflow status):')
        print(_divergence(divergence) if error is None else f'  cannot read the replica: {error}')
    if state != 'DONE':
        return RUN_FAILED
    if _sink_unavailable(count):
        print('changeflow: the replica database could not be reached: its changes are in the '
              'dead letters (exit status 3)', file=sys.stderr)
        return RUN_SINK_UNAVAILABLE
    if args.fail_on_dead_letters and (count('write_dead_letters', 'received')):
        return RUN_DEAD_LETTERS
    return RUN_DONE


def _follow(args, beam_args, config, sliced: bool = False) -> int:
    """``run --follow``: catch-up cycles until a signal, then the summary of
    all; an archive read in slices (``sliced``): a cycle per slice until its end."""
    from changeflow.config import is_dynamodb_job
    if args.follow and (sliced or config.checkpoints_url is None):
        print(f'changeflow: --follow needs a stream source (source.type: kinesis or dynamodb); '
              f'{args.config} reads an archive, which one run reads to its end'
              f'{" a slice at a time" if sliced else ""}: run it without --follow',
              file=sys.stderr)
        return STATUS_ERROR
    from changeflow.pipelines import audit_sync, dynamodb_sync, follow
    job = dynamodb_sync if is_dynamodb_job(config) else audit_sync
    started = time.monotonic()
    cycles = dict(poll_seconds=args.poll_seconds, status_seconds=args.status_seconds,
                  stop_now_status=RUN_FAILED)
    follower = (audit_sync.slice_follower(config, beam_args, **cycles) if sliced else
                follow.Follower(config, audit_sync.pipeline_options(beam_args),
                                job.build_pipeline, read_namespace=job.read_namespace(config),
                                **cycles))
    print(f'changeflow: {"reading" if sliced else "following"} {config.source.name} '
          f'(job {config.job}{", in slices" if sliced else ""}); '
          f'SIGINT or SIGTERM stops after the current {"slice" if sliced else "cycle"}',
          file=sys.stderr, flush=True)
    ended = follower.run()
    took = f'{ended.cycles:,} {"slices" if sliced else "cycles"} in {time.monotonic() - started:.1f} s'
    if ended.ended == follow.FAILED:
        error = ended.error
        hidden = _terminal().hidden
        if args.verbose:
            print(hidden(''.join(traceback.format_exception(error))), file=sys.stderr, end='')
        first = (str(error).strip().splitlines() or [''])[0]
        print(f'changeflow: {"a slice" if sliced else "a cycle"} FAILED after {took}: '
              f'{type(error).__name__}: '
              f'{hidden(first)}', file=sys.stderr)
    elif sliced:
        more = ('' if ended.ended == follow.FINISHED else
                ': the next run goes on from the last slice written')
        print(f'changeflow: read {config.source.name}: {took}, '
              f'{ended.ended}{more}')
    else:
        print(f'changeflow: followed {config.source.name}: {took}, {ended.ended}')
    state = 'FAILED' if ended.ended == follow.FAILED else 'DONE'
    return _finish(args, config, state, ended.totals)


def _status(args) -> int:
    from changeflow.config import display_url
    config, status = _load(args.config)
    if config is None:
        return status
    if not config.database_url:
        print('changeflow: the job has no database sink (sinks.database): no replica to check',
              file=sys.stderr)
        return STATUS_ERROR
    divergence, error = _read_divergence(config)
    url = display_url(config.database_url)
    if error is not None:
        print(f'changeflow: cannot read the replica {url}: {error}', file=sys.stderr)
        return STATUS_ERROR
    print(f'changeflow: replica {url}')
    print(_divergence(divergence))
    return STATUS_DIVERGED if divergence else STATUS_CLEAN


def _inspect(args) -> int:
    from changeflow.inspect import inspect_input
    data = sys.stdin.buffer.read() if args.file == '-' else open(args.file, 'rb').read()
    tables = ()
    if args.config:
        config, status = _load(args.config)
        if config is None:
            return status
        tables = config.tables
    ok = inspect_input(data, sys.stdout, tables=tables, query_log_limit=args.query_log_limit)
    return 0 if ok else 1


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog='changeflow',
        description='Database change streams to replicas, Parquet backups and notifications.')
    commands = parser.add_subparsers(dest='command', required=True)
    run = commands.add_parser(
        'run', help='run a job; flags after CONFIG go to Beam (e.g. --runner=DataflowRunner)',
        description='Runs a job and prints a summary. Exit status: 0 the job completed '
                    '(dead letters are reported, not failures), 1 it failed, 2 bad '
                    'configuration, 3 it completed but the replica database could not be '
                    'reached, 4 it completed with dead letters and --fail-on-dead-letters.')
    run.add_argument('config', help='YAML job configuration')
    run.add_argument('--verbose', action='store_true',
                     help='print every counter, and the traceback when the job fails')
    run.add_argument('--fail-on-dead-letters', action='store_true',
                     help=f'exit with status {RUN_DEAD_LETTERS} when the job wrote dead letters')
    run.add_argument('--follow', action='store_true',
                     help='stream sources: catch-up cycles one after another until SIGINT or '
                          'SIGTERM (which stop after the current cycle; a second one stops at '
                          'once), with a status line every few seconds; the exit status is the '
                          'whole run\'s (1 when a cycle failed or was stopped part way, 3 when '
                          'the replica database could not be reached: following stops there)')
    run.add_argument('--poll-seconds', type=float, default=1.0, metavar='S',
                     help='with --follow: the least time from one cycle\'s start to the next '
                          'when it read nothing (default 1)')
    run.add_argument('--status-seconds', type=float, default=5.0, metavar='S',
                     help='with --follow: the least time between two status lines (default 5)')
    status = commands.add_parser(
        'status', help='list the replica\'s diverged tables and rows; exit status 0 when '
                       'nothing is diverged, 1 when something is, 2 on errors')
    status.add_argument('config', help='YAML job configuration')
    inspect = commands.add_parser(
        'inspect', help='decode a Kinesis record (raw, base64 or get-records JSON) and show '
                        'the CloudWatch envelope, audit events and row changes')
    inspect.add_argument('file', help="a file, or '-' for standard input")
    inspect.add_argument('--config', help='YAML job configuration, to key row changes by its tables')
    inspect.add_argument('--query-log-limit', type=int, default=1024,
                         help='server_audit_query_log_limit of the source (default 1024)')
    args, rest = parser.parse_known_args(argv)
    if args.command != 'run' and rest:
        parser.error(f'unrecognized arguments: {" ".join(rest)}')
    _terminal()  # before Beam is imported: its import-time notices are filtered too
    commands = {'run': lambda: _run(args, rest), 'status': lambda: _status(args),
                'inspect': lambda: _inspect(args)}
    sys.exit(commands[args.command]())
