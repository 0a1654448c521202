"""Create the schema fixture database on a real MariaDB and dump its schema.

Run on a machine with MariaDB on 127.0.0.1:3306 (root, empty password) and
`mariadb-dump` (or `mysqldump`) on the PATH:

    python tests/data/schema/make_schema_fixture.py

It (1) creates database ``cf_schema_shop`` with every schema feature the
translator must know about (literal, NULL, clock and expression defaults,
ON UPDATE CURRENT_TIMESTAMP, STORED and VIRTUAL generated columns,
AUTO_INCREMENT, a composite primary key, secondary UNIQUE keys, foreign keys
with CASCADE / SET NULL / RESTRICT, BEFORE and AFTER triggers that write other
tables, ENUM/SET/YEAR/CHAR/TINYINT(1)/BIT/unsigned/DECIMAL types, a ``_ci``
collation key column); (2) writes its schema with
``mariadb-dump --no-data --triggers`` to ``shop_dump.sql``, and
``SHOW CREATE TABLE`` / ``SHOW CREATE TRIGGER`` text to ``show_create.sql``.

The database is left in place: tests/test_schema_readers.py compares its
information_schema with the dump (and recreates it with SCHEMA_SQL when it is
missing).
"""

import os
import shutil
import subprocess

import pymysql

HERE = os.path.dirname(os.path.abspath(__file__))
DATABASE = 'cf_schema_shop'

# One statement per item; trigger bodies use BEGIN ... END (no DELIMITER needed
# through the client library).
SCHEMA_SQL = [
    f'DROP DATABASE IF EXISTS {DATABASE}',
    f'CREATE DATABASE {DATABASE} CHARACTER SET utf8mb4 COLLATE utf8mb4_general_ci',
    f'USE {DATABASE}',
    "CREATE TABLE customers ("
    " id INT UNSIGNED NOT NULL AUTO_INCREMENT,"
    " email VARCHAR(200) CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci NOT NULL,"
    " name VARCHAR(100) DEFAULT NULL,"
    " status ENUM('active','closed') NOT NULL DEFAULT 'active',"
    " flags SET('vip','staff') NOT NULL DEFAULT '',"
    " country CHAR(2) NOT NULL DEFAULT 'FR',"
    " born YEAR DEFAULT NULL,"
    " verified TINYINT(1) NOT NULL DEFAULT 0,"
    " perms BIT(8) NOT NULL DEFAULT b'101',"
    " balance DECIMAL(10,2) NOT NULL DEFAULT 0.00,"
    " token CHAR(36) NOT NULL DEFAULT uuid(),"
    " created_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,"
    " updated_at TIMESTAMP NULL DEFAULT NULL ON UPDATE CURRENT_TIMESTAMP,"
    " PRIMARY KEY (id),"
    " UNIQUE KEY uq_customers_email (email))",
    "CREATE TABLE orders ("
    " tenant_id INT NOT NULL,"
    " order_id BIGINT UNSIGNED NOT NULL,"
    " customer_id INT UNSIGNED DEFAULT NULL,"
    " ext_ref VARCHAR(40) DEFAULT NULL,"
    " qty SMALLINT NOT NULL DEFAULT 1,"
    " price DECIMAL(10,2) NOT NULL,"
    " total DECIMAL(12,2) AS (qty * price) STORED,"
    " label VARCHAR(60) AS (concat('order-', order_id)) VIRTUAL,"
    " note TEXT,"
    " ordered_on DATE NOT NULL DEFAULT curdate(),"
    " changed_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6) ON UPDATE CURRENT_TIMESTAMP(6),"
    " PRIMARY KEY (tenant_id, order_id),"
    " UNIQUE KEY uq_orders_ext (tenant_id, ext_ref),"
    " KEY ix_orders_customer (customer_id),"
    " CONSTRAINT fk_orders_customer FOREIGN KEY (customer_id) REFERENCES customers (id)"
    "  ON DELETE SET NULL ON UPDATE CASCADE)",
    "CREATE TABLE order_lines ("
    " tenant_id INT NOT NULL,"
    " order_id BIGINT UNSIGNED NOT NULL,"
    " line_no TINYINT UNSIGNED NOT NULL,"
    " sku VARCHAR(20) NOT NULL,"
    " amount DOUBLE NOT NULL DEFAULT 0,"
    " PRIMARY KEY (tenant_id, order_id, line_no),"
    " CONSTRAINT fk_lines_order FOREIGN KEY (tenant_id, order_id)"
    "  REFERENCES orders (tenant_id, order_id) ON DELETE CASCADE ON UPDATE CASCADE)",
    "CREATE TABLE payments ("
    " id INT NOT NULL,"
    " customer_id INT UNSIGNED NOT NULL,"
    " paid BINARY(16) DEFAULT NULL,"
    " memo VARCHAR(20) DEFAULT 'it''s',"
    " PRIMARY KEY (id),"
    " CONSTRAINT fk_payments_customer FOREIGN KEY (customer_id) REFERENCES customers (id)"
    "  ON DELETE RESTRICT ON UPDATE RESTRICT)",
    "CREATE TABLE audit_trail ("
    " id BIGINT NOT NULL AUTO_INCREMENT,"
    " table_name VARCHAR(64) NOT NULL,"
    " action VARCHAR(10) NOT NULL,"
    " row_ref VARCHAR(100) DEFAULT NULL,"
    " at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),"
    " PRIMARY KEY (id))",
    "CREATE TABLE counters (name VARCHAR(30) NOT NULL PRIMARY KEY,"
    " value BIGINT NOT NULL DEFAULT 0)",
    "CREATE TRIGGER orders_bi BEFORE INSERT ON orders FOR EACH ROW"
    " SET NEW.note = COALESCE(NEW.note, 'none')",
    "CREATE TRIGGER orders_au AFTER UPDATE ON orders FOR EACH ROW"
    " INSERT INTO audit_trail (table_name, action, row_ref)"
    " VALUES ('orders', 'update', CONCAT(NEW.tenant_id, '/', NEW.order_id))",
    "CREATE TRIGGER order_lines_ai AFTER INSERT ON order_lines FOR EACH ROW BEGIN\n"
    "  INSERT INTO audit_trail (table_name, action, row_ref) VALUES ('order_lines', 'insert', NEW.sku);\n"
    "  UPDATE counters SET value = value + 1 WHERE name = 'lines';\n"
    "END",
    "CREATE TRIGGER customers_bd BEFORE DELETE ON customers FOR EACH ROW"
    " INSERT INTO audit_trail (table_name, action, row_ref) VALUES ('customers', 'delete', OLD.email)",
]


def create(conn):
    with conn.cursor() as cur:
        for statement in SCHEMA_SQL:
            cur.execute(statement)


def dump_tool():
    for name in ('mariadb-dump', 'mysqldump'):
        if shutil.which(name):
            return name
    raise SystemExit('neither mariadb-dump nor mysqldump is on the PATH')


def main():
    conn = pymysql.connect(host='127.0.0.1', port=3306, user='root', password='',
                           autocommit=True, charset='utf8mb4')
    create(conn)
    dump = subprocess.run(
        [dump_tool(), '-h127.0.0.1', '-P3306', '-uroot', '--no-data', '--triggers',
         '--skip-dump-date', '--databases', DATABASE],
        check=True, capture_output=True, text=True).stdout
    with open(os.path.join(HERE, 'shop_dump.sql'), 'w', encoding='utf-8') as f:
        f.write(dump)
    parts = []
    with conn.cursor() as cur:
        cur.execute(f'USE {DATABASE}')
        cur.execute('SHOW TABLES')
        for (table,) in sorted(cur.fetchall()):
            cur.execute(f'SHOW CREATE TABLE `{table}`')
            parts.append(cur.fetchone()[1] + ';\n')
        cur.execute('SHOW TRIGGERS')
        for trigger in sorted(row[0] for row in cur.fetchall()):
            cur.execute(f'SHOW CREATE TRIGGER `{trigger}`')
            parts.append(cur.fetchone()[2] + ';\n')
    with open(os.path.join(HERE, 'show_create.sql'), 'w', encoding='utf-8') as f:
        f.write('\n'.join(parts))
    conn.close()
    print(f'wrote shop_dump.sql and show_create.sql under {HERE}')


if __name__ == '__main__':
    main()
