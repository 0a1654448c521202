"""The ``changeflow`` command.

    changeflow run CONFIG.yaml [Beam pipeline flags]
    changeflow status CONFIG.yaml
    changeflow inspect FILE|- [--config CONFIG.yaml]

``status`` lists what the replica records as diverged (rows and tables no
longer known to equal the source) and exits with :data:`STATUS_CLEAN` (0)
when nothing is, :data:`STATUS_DIVERGED` (1) when something is, and
:data:`STATUS_ERROR` (2) for a bad configuration, a job without a database
sink, or a replica that cannot be read.
"""

import argparse
import logging
import sys

__all__ = ['main', 'STATUS_CLEAN', 'STATUS_DIVERGED', 'STATUS_ERROR']

STATUS_CLEAN, STATUS_DIVERGED, STATUS_ERROR = 0, 1, 2


def _summary(result) -> str:
    """The job's counters, one per line, grouped by component."""
    from changeflow.metrics import counter_totals
    totals = counter_totals(result)
    width = max(map(len, totals), default=0)
    return '\n'.join(f'  {name:<{width}}  {value:>10,}' for name, value in sorted(totals.items()))


def _shown_url(url: str) -> str:
    """A database URL as printed: never with its password."""
    import sqlalchemy as sa
    try:
        return sa.engine.make_url(url).render_as_string(hide_password=True)
    except (sa.exc.ArgumentError, ValueError):
        return '<unparseable URL>'


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
        return None, f'{type(error).__name__}: {getattr(error, "orig", None) or error}'


def _outputs(config) -> str:
    lines = []
    if config.database_url:
        lines.append(f'  replica       {_shown_url(config.database_url)}')
    if config.parquet_path:
        lines.append(f'  parquet       {config.parquet_path}')
    for rule in config.notify:
        lines.append(f'  notify        {rule.to}')
    lines.append(f'  dead letters  {config.dead_letter_path}')
    return '\n'.join(lines)


def _run(args, beam_args) -> int:
    from changeflow.config import DYNAMODB_ARCHIVE, ConfigError, load_config
    from changeflow.pipelines import audit_sync, dynamodb_sync
    try:
        config = load_config(args.config)
    except (ConfigError, OSError) as error:
        print(f'changeflow: bad configuration: {error}', file=sys.stderr)
        return 2
    job = dynamodb_sync if config.source.type == DYNAMODB_ARCHIVE else audit_sync
    result = job.run(['--config', args.config, *beam_args])
    print(f'changeflow: job {result.state}. Outputs:')
    print(_outputs(config))
    print('Counters:')
    print(_summary(result))
    if config.database_url:
        divergence, error = _read_divergence(config)
        print('Diverged (changeflow status):')
        print(_divergence(divergence) if error is None else f'  cannot read the replica: {error}')
    return 0


def _status(args) -> int:
    from changeflow.config import ConfigError, load_config
    try:
        config = load_config(args.config)
    except (ConfigError, OSError) as error:
        print(f'changeflow: bad configuration: {error}', file=sys.stderr)
        return STATUS_ERROR
    if not config.database_url:
        print('changeflow: the job has no database sink (sinks.database): no replica to check',
              file=sys.stderr)
        return STATUS_ERROR
    divergence, error = _read_divergence(config)
    url = _shown_url(config.database_url)
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
        from changeflow.config import load_config
        tables = load_config(args.config).tables
    ok = inspect_input(data, sys.stdout, tables=tables, query_log_limit=args.query_log_limit)
    return 0 if ok else 1


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog='changeflow',
        description='Database change streams to replicas, Parquet backups and notifications.')
    commands = parser.add_subparsers(dest='command', required=True)
    run = commands.add_parser(
        'run', help='run a job; flags after CONFIG go to Beam (e.g. --runner=DataflowRunner)')
    run.add_argument('config', help='YAML job configuration')
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
    logging.basicConfig(level=logging.WARNING)
    commands = {'run': lambda: _run(args, rest), 'status': lambda: _status(args),
                'inspect': lambda: _inspect(args)}
    sys.exit(commands[args.command]())
