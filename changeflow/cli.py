"""The ``changeflow`` command.

    changeflow run CONFIG.yaml [Beam pipeline flags]
    changeflow inspect FILE|- [--config CONFIG.yaml]
"""

import argparse
import logging
import sys

__all__ = ['main']


def _summary(result) -> str:
    """The job's counters, one per line, grouped by component."""
    from changeflow.metrics import counter_totals
    totals = counter_totals(result)
    width = max(map(len, totals), default=0)
    return '\n'.join(f'  {name:<{width}}  {value:>10,}' for name, value in sorted(totals.items()))


def _outputs(config) -> str:
    lines = []
    if config.database_url:
        lines.append(f'  replica       {config.database_url}')
    if config.parquet_path:
        lines.append(f'  parquet       {config.parquet_path}')
    for rule in config.notify:
        lines.append(f'  notify        {rule.to}')
    lines.append(f'  dead letters  {config.dead_letter_path}')
    return '\n'.join(lines)


def _run(args, beam_args) -> int:
    from changeflow.config import ConfigError, load_config
    from changeflow.pipelines import audit_sync
    try:
        config = load_config(args.config)
    except (ConfigError, OSError) as error:
        print(f'changeflow: bad configuration: {error}', file=sys.stderr)
        return 2
    result = audit_sync.run(['--config', args.config, *beam_args])
    print(f'changeflow: job {result.state}. Outputs:')
    print(_outputs(config))
    print('Counters:')
    print(_summary(result))
    return 0


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
    inspect = commands.add_parser(
        'inspect', help='decode a Kinesis record (raw, base64 or get-records JSON) and show '
                        'the CloudWatch envelope, audit events and row changes')
    inspect.add_argument('file', help="a file, or '-' for standard input")
    inspect.add_argument('--config', help='YAML job configuration, to key row changes by its tables')
    inspect.add_argument('--query-log-limit', type=int, default=1024,
                         help='server_audit_query_log_limit of the source (default 1024)')
    args, rest = parser.parse_known_args(argv)
    if args.command == 'inspect' and rest:
        parser.error(f'unrecognized arguments: {" ".join(rest)}')
    logging.basicConfig(level=logging.WARNING)
    sys.exit(_run(args, rest) if args.command == 'run' else _inspect(args))
