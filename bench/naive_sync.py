"""The baseline: the sync a user would write by hand instead of changeflow.

    python bench/naive_sync.py ARCHIVE [--sqlite PATH]

Reads a Firehose archive (concatenated gzip members of CloudWatch Logs
payloads), splits each audit line on the commas outside quotes (the seed
article's regex), undoes the quote escaping, transpiles each statement from
MySQL to SQLite with sqlglot and executes it, one by one, autocommitting.
No transactions replayed, no ordering, no dead letters: statements SQLite
rejects are counted and skipped. It exists to be timed against changeflow on
the same archive (bench/pipeline_throughput.py --baseline), not to be used.
"""

import argparse
import json
import re
import sqlite3
import time
import zlib

import sqlglot

__all__ = ['naive_sync']

_FIELD = re.compile(",(?=(?:[^']*'[^']*')*[^']*$)")


def _payloads(path):
    with open(path, 'rb') as f:
        data = f.read()
    while data:
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        yield json.loads(inflater.decompress(data))
        data = inflater.unused_data


def naive_sync(archive, sqlite_path, create_sql):
    """(statements executed, statements rejected) syncing ``archive`` into ``sqlite_path``."""
    db = sqlite3.connect(sqlite_path, isolation_level=None)
    for statement in create_sql:
        db.execute(statement)
    executed = rejected = 0
    for payload in _payloads(archive):
        for event in payload['logEvents']:
            fields = _FIELD.split(event['message'])
            if fields[6] != 'QUERY' or fields[-1] != '0':
                continue
            sql = fields[8][1:-1].replace("\\'", "'").replace('\\\\', '\\')
            try:
                for statement in sqlglot.transpile(sql, read='mysql', write='sqlite'):
                    db.execute(statement)
                executed += 1
            except (sqlglot.errors.SqlglotError, sqlite3.Error):
                rejected += 1
    db.close()
    return executed, rejected


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('archive')
    parser.add_argument('--sqlite', default=':memory:')
    args = parser.parse_args()
    started = time.perf_counter()
    executed, rejected = naive_sync(args.archive, args.sqlite, ())
    elapsed = time.perf_counter() - started
    print(f'{executed + rejected:,} statements in {elapsed:.1f} s '
          f'({(executed + rejected) / elapsed:,.0f}/s), {rejected:,} rejected by SQLite')


if __name__ == '__main__':
    main()
