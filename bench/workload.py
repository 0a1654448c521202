"""The synthetic upsert workload of the throughput issue, as a Firehose archive.

Half ``INSERT ... ON DUPLICATE KEY UPDATE``, 40% updates by key, 10% deletes,
over ``keys`` rows of one table, from ``connections`` client connections,
``per_record`` audit lines per CloudWatch payload; every payload a gzip member
of one file, as Firehose writes them to S3. Seeded: the same arguments write
the same bytes.
"""

import gzip
import json
import os
import random

__all__ = ['TABLE', 'write_firehose_archive']

TABLE = {'shop.items': {'key': ['id'], 'columns': {
    'id': 'integer', 'qty': 'integer', 'price': 'decimal(10,2)', 'note': 'string'}}}

_NOTES = ('restocked', "it's back", 'comma, inside', 'ünïcode', 'plain')


def _statement(rng, keys):
    key = rng.randrange(1, keys + 1)
    roll = rng.random()
    if roll < 0.5:
        note = rng.choice(_NOTES).replace("'", "''")
        return (f"INSERT INTO items (id, qty, price, note) VALUES ({key}, {rng.randrange(100)}, "
                f"'{rng.randrange(100000) / 100:.2f}', '{note}') "
                f"ON DUPLICATE KEY UPDATE qty = qty + VALUES(qty), note = VALUES(note)")
    if roll < 0.9:
        return f'UPDATE items SET qty = qty + {rng.randrange(1, 9)} WHERE id = {key}'
    return f'DELETE FROM items WHERE id = {key}'


def _audit_line(query_id, connection, sql):
    logged = sql.replace('\\', '\\\\').replace("'", "\\'")
    seconds = query_id // 1000
    return (f'20261124 {10 + seconds // 3600 % 10:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d},'
            f"db-1,app,10.0.0.7,{connection},{query_id},QUERY,shop,'{logged}',0")


def write_firehose_archive(path, events, keys=20_000, connections=1, per_record=100, seed=11,
                           files=1):
    """Writes the archive to ``path``; returns the statements, in log order.
    ``files`` > 1: ``path`` is a folder, which gets that many objects named in
    log order (``part-00000.gz``, ...), as Firehose writes a stream over time."""
    rng = random.Random(seed)
    statements = [_statement(rng, keys) for _ in range(events)]
    payloads = range(0, events, per_record)
    if files > 1:
        os.makedirs(path, exist_ok=True)
        per_file = -(-len(payloads) // files)
        for index in range(files):
            _write_payloads(os.path.join(path, f'part-{index:05d}.gz'), statements,
                            payloads[index * per_file:(index + 1) * per_file], per_record,
                            connections)
    else:
        _write_payloads(path, statements, payloads, per_record, connections)
    return statements


def _write_payloads(path, statements, starts, per_record, connections):
    with open(path, 'wb') as out:
        for start in starts:
            batch = statements[start:start + per_record]
            payload = {
                'messageType': 'DATA_MESSAGE', 'owner': '123456789012',
                'logGroup': '/aws/rds/instance/db-1/audit', 'logStream': 'db-1.audit.log',
                'subscriptionFilters': ['to-kinesis'],
                'logEvents': [{'id': str(start + i).zfill(56), 'timestamp': 1795000000000 + start + i,
                               'message': _audit_line(start + i + 1,
                                                      (start + i) % connections + 1, sql)}
                              for i, sql in enumerate(batch)]}
            out.write(gzip.compress(json.dumps(payload).encode()))
