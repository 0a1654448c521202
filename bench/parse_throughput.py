"""Parse-stage throughput: Kinesis record -> audit events -> row changes, per core.

    python bench/parse_throughput.py [--events 200000] [--per-record 100]

Generates CloudWatch Logs payloads (gzip JSON, ``--per-record`` audit lines
each, as the subscription filter batches them) holding DML statements of a
few dozen shapes with varying literals, then times, on one core and without
Beam: decode (gunzip + JSON), audit-line parse, transaction classification and
SQL -> row change with the shape cache; and, for comparison, a naive
``sqlglot.parse_one`` per statement. Two mixes: every event a DML QUERY line
(the worst case), and the lines as server_audit writes them with TABLE events
on (each DML QUERY after its WRITE table event). Prints events/s, what each
step costs per event (the best of three passes over the DML-only mix, each
step alone) and peak RSS.
"""

import argparse
import gzip
import json
import random
import resource
import time

import sqlglot

from changeflow.config import TableSpec
from changeflow.model import SourceRecord
from changeflow.transforms.audit_log import parse_audit_line
from changeflow.transforms.decode import decode_record
from changeflow.sql.literals import mask_literals
from changeflow.sql.plans import StatementTranslator
from changeflow.transforms.transactions import classify_statement

TABLES = (
    TableSpec('shop.orders', ('tenant_id', 'order_id'), 'orders', (
        ('tenant_id', 'integer'), ('order_id', 'integer'), ('note', 'text'),
        ('status', 'string'), ('qty', 'integer'), ('amount', 'decimal(10,2)'))),
    TableSpec('shop.customers', ('id',), 'customers', (
        ('id', 'integer'), ('name', 'string'), ('visits', 'integer'))),
)

NOTES = ["it's here", 'plain note', 'comma, separated', 'line\nbreak', '日本語のメモ',
         'back\\slash', 'tab\there', 'x' * 80]


def _quote(text):
    """A SQL literal as PyMySQL writes it, then escaped as server_audit logs it."""
    sql = "'" + text.replace('\\', '\\\\').replace("'", "\\'").replace('\n', '\\n') + "'"
    return sql


def _statement(rng):
    t, o = rng.randrange(1, 50), rng.randrange(1, 100_000)
    kind = rng.randrange(6)
    if kind == 0:
        return (f'INSERT INTO orders (tenant_id, order_id, note, status, qty, amount) VALUES '
                f"({t}, {o}, {_quote(rng.choice(NOTES))}, 'new', {rng.randrange(9)}, "
                f"'{rng.randrange(10000) / 100:.2f}')")
    if kind == 1:
        return f'UPDATE orders SET qty = qty + {rng.randrange(1, 5)} WHERE tenant_id = {t} AND order_id = {o}'
    if kind == 2:
        return (f"UPDATE orders SET status = 'paid', note = {_quote(rng.choice(NOTES))} "
                f'WHERE tenant_id = {t} AND order_id = {o}')
    if kind == 3:
        return f'DELETE FROM orders WHERE tenant_id = {t} AND order_id = {o}'
    if kind == 4:
        return (f"INSERT INTO customers (id, name, visits) VALUES ({o}, {_quote(rng.choice(NOTES))}, 1)"
                ' ON DUPLICATE KEY UPDATE visits = visits + 1')
    return f'UPDATE customers SET visits = visits + 1 WHERE id IN ({o}, {o + 1}, {o + 2})'


def _audit_line(qid, sql):
    logged = sql.replace('\\', '\\\\').replace("'", "\\'").replace('\n', '\\n')
    return f"20261124 10:{qid // 60000 % 60:02d}:{qid // 1000 % 60:02d},db-1,app,10.0.0.7,{qid % 97},{qid},QUERY,shop,'{logged}',0"


def _table_line(qid, sql):
    """The TABLE event server_audit logs before a write (events CONNECT,QUERY,TABLE)."""
    table = 'customers' if 'customers' in sql[:30] else 'orders'
    return f"20261124 10:{qid // 60000 % 60:02d}:{qid // 1000 % 60:02d},db-1,app,10.0.0.7,{qid % 97},{qid},WRITE,shop,{table},"


def make_records(events, per_record, seed=7, table_events=False):
    """(records, statements): ``events`` audit lines, all DML QUERY lines, or with
    ``table_events`` each QUERY preceded by its WRITE table event."""
    rng = random.Random(seed)
    statements = [_statement(rng) for _ in range(events // 2 if table_events else events)]
    lines = []
    for qid, sql in enumerate(statements, 1):
        if table_events:
            lines.append(_table_line(qid, sql))
        lines.append(_audit_line(qid, sql))
    records = []
    for start in range(0, len(lines), per_record):
        batch = lines[start:start + per_record]
        payload = {'messageType': 'DATA_MESSAGE', 'owner': '123456789012',
                   'logGroup': '/aws/rds/instance/db-1/audit', 'logStream': 'db-1.audit.log',
                   'subscriptionFilters': ['to-kinesis'],
                   'logEvents': [{'id': str(start + i).zfill(56), 'timestamp': 1795000000000 + start + i,
                                  'message': line}
                                 for i, line in enumerate(batch)]}
        records.append(SourceRecord(gzip.compress(json.dumps(payload).encode()), 'bench',
                                    'shardId-000000000000', str(start), 0))
    return records, statements


def parse_stage(records, translator):
    events = changes = 0
    for record in records:
        for log_event in decode_record(record):
            audit = parse_audit_line(log_event.message, log_event.position)
            events += 1
            if audit.operation != 'QUERY':
                continue
            classify_statement(audit.object)
            changes += len(translator.translate(audit.object, audit.database).changes)
    return events, changes


def _step_costs(records, translator):
    """(step, µs per event) of each step alone, over the same events; and what the
    general literal scan costs, which known shapes stand in for."""
    def best(step, items):
        def run():
            started = time.perf_counter()
            for item in items:
                step(item)
            return time.perf_counter() - started
        return min(run() for _ in range(3)) * 1e6 / len(items)
    events = [event for record in records for event in decode_record(record)]
    audits = [parse_audit_line(event.message, event.position) for event in events]
    return [
        ('decode (gunzip + JSON)', best(decode_record, records) * len(records) / len(events)),
        ('parse_audit_line', best(lambda e: parse_audit_line(e.message, e.position), events)),
        ('classify_statement', best(lambda a: classify_statement(a.object), audits)),
        ('translate (known shapes)', best(lambda a: translator.translate(a.object, a.database),
                                          audits)),
        ('(general scan: mask_literals)', best(lambda a: mask_literals(a.object), audits)),
    ]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--events', type=int, default=200_000)
    parser.add_argument('--per-record', type=int, default=100)
    parser.add_argument('--naive-sample', type=int, default=2_000)
    args = parser.parse_args()

    records, statements = make_records(args.events, args.per_record)
    translator = StatementTranslator(TABLES)
    parse_stage(records[:2], translator)  # warm the shape cache, as a running job has

    started = time.perf_counter()
    events, changes = parse_stage(records, translator)
    elapsed = time.perf_counter() - started

    mixed, _ = make_records(args.events, args.per_record, table_events=True)
    started = time.perf_counter()
    mixed_events, _ = parse_stage(mixed, translator)
    mixed_rate = mixed_events / (time.perf_counter() - started)

    started = time.perf_counter()
    for sql in statements[:args.naive_sample]:
        sqlglot.parse_one(sql, read='mysql')
    naive = args.naive_sample / (time.perf_counter() - started)

    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f'events                       {events:>12,}  ({len(records):,} Kinesis records, '
          f'{args.per_record} events each)')
    print(f'row changes                  {changes:>12,}')
    print(f'statement shapes compiled    {translator.shapes_compiled:>12,}')
    print('parse stage (decode + parse + SQL -> changes), one core')
    print(f'  changeflow, DML only       {events / elapsed:>12,.0f} events/s  '
          f'({elapsed * 1e6 / events:.2f} us/event)')
    print(f'  changeflow, as logged      {mixed_rate:>12,.0f} events/s  '
          f'(each DML after its WRITE table event)')
    print(f'  naive sqlglot.parse_one    {naive:>12,.0f} statements/s '
          f'(parse only, {args.naive_sample:,} statements)')
    print(f'  speed-up                   {events / elapsed / naive:>12,.1f} x')
    print('per event, each step alone (DML only)')
    for step, micros in _step_costs(records, translator):
        print(f'  {step:<31}{micros:>6.2f} us')
    print(f'peak RSS                     {peak_mb:>12,.0f} MiB')


if __name__ == '__main__':
    main()
