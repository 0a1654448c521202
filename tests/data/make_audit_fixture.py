"""Record the audit-log fixture from a real MariaDB with the server_audit plugin.

Run on a machine with MariaDB on 127.0.0.1:3306 (root, empty password) and
`pip install pymysql moto[server] boto3`:

    python tests/data/make_audit_fixture.py

It (1) runs a workload against database ``shop`` through PyMySQL, which
interpolates parameters client-side like most application drivers, while
server_audit logs every statement; (2) records the tables as MariaDB holds them
afterwards; (3) ships the log through CloudWatch Logs -> subscription filter ->
Kinesis on a local moto server and saves the records as ``aws kinesis
get-records`` prints them, plus the same payloads as a Firehose object.

Outputs, under tests/data/audit/:
  server_audit.log        the log exactly as the plugin wrote it
  expected_tables.json    SELECT * of every table after the workload
  kinesis.jsonl           one Kinesis record per line (Data = base64 gzip JSON)
  firehose.gz             the payloads as concatenated gzip members
"""

import base64
import datetime
import decimal
import gzip
import json
import os
import shutil
import time

import pymysql

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, 'audit')
AUDIT_LOG = '/var/lib/mysql/changeflow_fixture_audit.log'
LOG_GROUP = '/aws/rds/instance/shop-db/audit'
LOG_STREAM = 'shop-db.audit.log.0.2026-11-24-00-00.0.0'

SCHEMA = [
    'DROP DATABASE IF EXISTS shop',
    'CREATE DATABASE shop CHARACTER SET utf8mb4',
    'CREATE TABLE shop.orders ('
    ' tenant_id INT NOT NULL, order_id INT NOT NULL, note TEXT,'
    ' status VARCHAR(20) NOT NULL DEFAULT \'new\', qty INT NOT NULL DEFAULT 0,'
    ' amount DECIMAL(10,2), ordered_on DATE,'
    ' PRIMARY KEY (tenant_id, order_id))',
    'CREATE TABLE shop.customers ('
    ' id INT NOT NULL PRIMARY KEY, name VARCHAR(100), email VARCHAR(200),'
    ' visits INT NOT NULL DEFAULT 0)',
    'CREATE TABLE shop.notes (id INT NOT NULL PRIMARY KEY, body TEXT)',
    'CREATE TABLE shop.events (id INT NOT NULL AUTO_INCREMENT PRIMARY KEY,'
    ' kind VARCHAR(2000), at DATETIME)',
]


def connect(user='app', password='app-secret'):
    return pymysql.connect(host='127.0.0.1', port=3306, user=user,
                           password=password, database='shop',
                           autocommit=True, charset='utf8mb4')


def setup_server():
    root = pymysql.connect(host='127.0.0.1', port=3306, user='root', password='',
                           autocommit=True)
    with root.cursor() as cur:
        cur.execute("SELECT COUNT(*) FROM information_schema.PLUGINS"
                    " WHERE PLUGIN_NAME = 'SERVER_AUDIT'")
        if not cur.fetchone()[0]:
            cur.execute("INSTALL SONAME 'server_audit'")
        cur.execute('SET GLOBAL server_audit_logging = OFF')
        for statement in SCHEMA:
            cur.execute(statement)
        cur.execute("CREATE USER IF NOT EXISTS 'app'@'%' IDENTIFIED BY 'app-secret'")
        cur.execute("GRANT ALL ON shop.* TO 'app'@'%'")
        if os.path.exists(AUDIT_LOG):
            os.remove(AUDIT_LOG)
        cur.execute("SET GLOBAL server_audit_file_path = %s", (AUDIT_LOG,))
        cur.execute("SET GLOBAL server_audit_events = 'CONNECT,QUERY,TABLE'")
        cur.execute('SET GLOBAL server_audit_query_log_limit = 1024')
        cur.execute('SET GLOBAL server_audit_logging = ON')
    return root


def workload():
    a = connect()
    b = connect()
    with a.cursor() as ca, b.cursor() as cb:
        # Multi-row insert with every awkward character the plugin escapes or not.
        ca.executemany(
            'INSERT INTO orders (tenant_id, order_id, note, status, qty, amount, ordered_on)'
            ' VALUES (%s, %s, %s, %s, %s, %s, %s)',
            [(1, 1, "it's a \"quoted\", comma'd note", 'new', 1, '10.50', '2026-11-01'),
             (1, 2, 'back\\slash C:\\temp\\new', 'new', 2, '20.00', '2026-11-02'),
             (1, 3, 'line one\nline two\ttabbed\r\nend', 'new', 3, '30.25', '2026-11-03'),
             (2, 1, '日本語のメモ、テスト', 'new', 4, '99.99', '2026-11-04'),
             (2, 2, None, 'new', 5, None, None)])
        ca.execute("INSERT INTO customers (id, name, email) VALUES"
                   " (10, 'O''Brien, Pat', 'pat@example.com'),"
                   " (11, 'Zoë \\\\ Ünïcode', 'zoe@example.com')")
        ca.execute("INSERT INTO orders (tenant_id, order_id, note, qty)"
                   " VALUES (3, 1, 'defaults for status', 7)")
        # Updates pinned by key, including an expression on the current row.
        ca.execute("UPDATE orders SET status = 'paid', note = 'paid, thanks' "
                   "WHERE tenant_id = 1 AND order_id = 1")
        ca.execute('UPDATE orders SET qty = qty + 1 WHERE tenant_id = 1 AND order_id = 2')
        ca.execute('UPDATE orders SET qty = qty + 1 WHERE tenant_id = 1 AND order_id = 2')
        ca.execute("UPDATE orders SET qty = qty * 2, amount = amount + 0.25"
                   " WHERE tenant_id = 1 AND order_id IN (2, 3)")
        ca.execute('UPDATE customers SET visits = visits + 1 WHERE id IN (10, 11)')
        # Delete by key, REPLACE, and ON DUPLICATE KEY UPDATE.
        ca.execute('DELETE FROM orders WHERE tenant_id = 2 AND order_id = 2')
        ca.execute("REPLACE INTO orders (tenant_id, order_id, note, status, qty)"
                   " VALUES (2, 1, 'replaced row', 'replaced', 40)")
        ca.execute("INSERT INTO orders (tenant_id, order_id, note, qty) VALUES (1, 3, 'dup', 1)"
                   " ON DUPLICATE KEY UPDATE qty = qty + VALUES(qty), note = VALUES(note)")
        ca.execute("INSERT INTO orders (tenant_id, order_id, note, qty) VALUES (1, 4, 'fresh', 1)"
                   " ON DUPLICATE KEY UPDATE qty = qty + VALUES(qty)")
        ca.execute("INSERT INTO customers (id, name) VALUES (12, 'Cleo') /* app=checkout */")
        # A committed transaction interleaved with a rolled-back one.
        ca.execute('START TRANSACTION')
        cb.execute('BEGIN')
        ca.execute("UPDATE orders SET status = 'shipped' WHERE tenant_id = 1 AND order_id = 3")
        cb.execute("UPDATE customers SET email = 'rolled@back.example' WHERE id = 10")
        cb.execute("INSERT INTO orders (tenant_id, order_id, note) VALUES (9, 9, 'never')")
        ca.execute('DELETE FROM customers WHERE id = 12')
        cb.execute('ROLLBACK')
        ca.execute('COMMIT')
        # A failing duplicate insert (error 1062) must not reach the replica.
        try:
            ca.execute("INSERT INTO orders (tenant_id, order_id, note) VALUES (1, 1, 'duplicate')")
        except pymysql.err.IntegrityError:
            pass
        # autocommit off: nothing is applied until COMMIT; a later ROLLBACK discards.
        cb.execute('SET autocommit=0')
        cb.execute("UPDATE orders SET note = 'autocommit off, committed' "
                   "WHERE tenant_id = 1 AND order_id = 4")
        cb.execute('COMMIT')
        cb.execute("UPDATE orders SET note = 'autocommit off, rolled back' "
                   "WHERE tenant_id = 1 AND order_id = 4")
        cb.execute('ROLLBACK')
        cb.execute('SET @@session.autocommit = ON')
        # A transaction left open at disconnect is rolled back by the server.
        cb.execute('START TRANSACTION')
        cb.execute("UPDATE orders SET note = 'lost at disconnect' WHERE tenant_id = 3 AND order_id = 1")
        # Reads and DDL are counted and skipped.
        ca.execute('SELECT * FROM orders WHERE tenant_id = 1')
        ca.execute('ALTER TABLE customers ADD COLUMN tier VARCHAR(10) NULL')
        ca.execute("UPDATE customers SET tier = 'gold' WHERE id = 10")
        # Statements a replica cannot key or reproduce (needs-lookup), a statement
        # longer than server_audit_query_log_limit (cut in the log), all on
        # shop.events, which the TRUNCATE at the end empties again.
        ca.execute("INSERT INTO events (kind, at) VALUES ('login', NOW())")
        ca.execute("INSERT INTO events (id, kind) VALUES (7, 'seed')")
        ca.execute("UPDATE events SET kind = UPPER(kind) WHERE kind LIKE 'log%'")
        ca.execute("INSERT INTO events (kind) SELECT name FROM customers WHERE id = 11")
        ca.execute("SET @kind = 'logout'")
        ca.execute("PREPARE relabel FROM 'UPDATE events SET kind = ? WHERE id = 1'")
        ca.execute('EXECUTE relabel USING @kind')
        ca.execute('DEALLOCATE PREPARE relabel')
        ca.execute('INSERT INTO events (id, kind) VALUES (100, %s)', ('x' * 1500,))
        ca.execute("INSERT INTO notes (id, body) VALUES (2, 'short note')")
        ca.execute('TRUNCATE TABLE events')
    b.close()
    a.close()


def snapshot(root):
    def plain(value):
        if isinstance(value, decimal.Decimal):
            return str(value)
        if isinstance(value, (datetime.date, datetime.datetime)):
            return value.isoformat()
        return value

    tables = {}
    with root.cursor(pymysql.cursors.DictCursor) as cur:
        for table in ('orders', 'customers', 'notes', 'events'):
            cur.execute(f'SELECT * FROM shop.{table} ORDER BY 1, 2' if table == 'orders'
                        else f'SELECT * FROM shop.{table} ORDER BY 1')
            tables[f'shop.{table}'] = [{k: plain(v) for k, v in row.items()}
                                       for row in cur.fetchall()]
    return tables


def ship_through_cloudwatch(lines):
    """Send the audit lines through CloudWatch Logs -> Kinesis on moto's server."""
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address='127.0.0.1', port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        kw = dict(endpoint_url=f'http://{host}:{port}', region_name='us-east-1',
                  aws_access_key_id='testing', aws_secret_access_key='testing')
        kinesis = boto3.client('kinesis', **kw)
        logs = boto3.client('logs', **kw)
        kinesis.create_stream(StreamName='audit', ShardCount=1)
        arn = kinesis.describe_stream(StreamName='audit')['StreamDescription']['StreamARN']
        logs.create_log_group(logGroupName=LOG_GROUP)
        logs.create_log_stream(logGroupName=LOG_GROUP, logStreamName=LOG_STREAM)
        logs.put_subscription_filter(
            logGroupName=LOG_GROUP, filterName='to-kinesis', filterPattern='',
            destinationArn=arn, roleArn='arn:aws:iam::123456789012:role/cwl-to-kinesis')
        base_ms = int(time.time() * 1000)
        # The RDS agent ships lines in batches; keep them small so records vary.
        for start in range(0, len(lines), 7):
            batch = lines[start:start + 7]
            logs.put_log_events(
                logGroupName=LOG_GROUP, logStreamName=LOG_STREAM,
                logEvents=[{'timestamp': base_ms + start + i, 'message': line}
                           for i, line in enumerate(batch)])
        shard = kinesis.list_shards(StreamName='audit')['Shards'][0]['ShardId']
        iterator = kinesis.get_shard_iterator(StreamName='audit', ShardId=shard,
                                              ShardIteratorType='TRIM_HORIZON')['ShardIterator']
        records = []
        while iterator:
            response = kinesis.get_records(ShardIterator=iterator, Limit=1000)
            records.extend(response['Records'])
            if not response['Records']:
                break
            iterator = response.get('NextShardIterator')
        return records
    finally:
        server.stop()


def main():
    os.makedirs(OUT, exist_ok=True)
    root = setup_server()
    workload()
    with root.cursor() as cur:
        cur.execute('SET GLOBAL server_audit_logging = OFF')
    tables = snapshot(root)
    root.close()
    log_path = os.path.join(OUT, 'server_audit.log')
    shutil.copyfile(AUDIT_LOG, log_path)
    with open(os.path.join(OUT, 'expected_tables.json'), 'w', encoding='utf-8') as f:
        json.dump(tables, f, ensure_ascii=False, indent=1)
        f.write('\n')

    with open(log_path, encoding='utf-8') as f:
        lines = f.read().splitlines()
    records = ship_through_cloudwatch(lines)
    with open(os.path.join(OUT, 'kinesis.jsonl'), 'w') as f:
        for record in records:
            f.write(json.dumps({
                'SequenceNumber': record['SequenceNumber'],
                'ApproximateArrivalTimestamp':
                    record['ApproximateArrivalTimestamp'].isoformat(),
                'Data': base64.b64encode(record['Data']).decode('ascii'),
                'PartitionKey': record['PartitionKey'],
            }) + '\n')
    with open(os.path.join(OUT, 'firehose.gz'), 'wb') as f:
        for record in records:
            f.write(record['Data'])
    print(f'{len(lines)} audit lines, {len(records)} Kinesis records -> {OUT}')
    for payload in (gzip.decompress(records[0]['Data']),):
        print('first payload:', payload[:300])


if __name__ == '__main__':
    main()
