"""Record real application traffic from real clients into audit-log fixtures.

Run on a machine with MariaDB on 127.0.0.1:3306 (root, empty password), the
``mariadb`` and ``mariadb-dump`` clients, and PyMySQL and SQLAlchemy installed:

    python tests/data/make_app_fixtures.py [FIXTURE ...]

Each fixture runs its traffic against its own database ``cf_app_<fixture>``
as its own user ``cf_app_<fixture>`` while the ``server_audit`` plugin logs
CONNECT, QUERY and TABLE events. Other clients may use the server at the same
time: the fixture keeps only the lines of its own user, and switches logging
off when done. Everything is deterministic except what the server decides
(connection and query ids, times, AUTO_INCREMENT values, NOW()).

Outputs, under tests/data/app/<fixture>/:
  server_audit.log   the plugin's lines of this fixture, as written
  schema.sql         ``mariadb-dump --no-data --triggers`` before the traffic
  final.json         every table after the traffic (see ``typed``)
  job.yaml           a changeflow job for the log, tables generated from
                     information_schema as of before the traffic
  README             one line: what the traffic exercises
  script.sql         (cli only) the script piped into the ``mariadb`` client
"""

import base64
import datetime
import decimal
import json
import os
import random
import subprocess
import sys
import time

import pymysql
import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, 'app')
HOST, PORT = '127.0.0.1', 3306
PASSWORD = 'cf-app-secret'
RAISED_LOG_LIMIT = 65536
DEFAULT_LOG_LIMIT = 1024   # server_audit_query_log_limit's default


def root_connection(database=None):
    return pymysql.connect(host=HOST, port=PORT, user='root', password='', database=database,
                           autocommit=True, charset='utf8mb4')


def app_connection(name, **kw):
    kw.setdefault('autocommit', True)
    return pymysql.connect(host=HOST, port=PORT, user=f'cf_app_{name}', password=PASSWORD,
                           database=f'cf_app_{name}', charset='utf8mb4', **kw)


def app_url(name):
    return (f'mysql+pymysql://cf_app_{name}:{PASSWORD}@{HOST}:{PORT}/cf_app_{name}'
            '?charset=utf8mb4')


# ---------------------------------------------------------------------------
# pymysql: parameters, executemany, awkward values, transactions.

PYMYSQL_SCHEMA = [
    'CREATE TABLE customers (id INT NOT NULL PRIMARY KEY, name VARCHAR(100) NOT NULL,'
    ' email VARCHAR(200), balance DECIMAL(12,2) NOT NULL DEFAULT 0.00, born DATE,'
    ' created_at DATETIME, note TEXT, visits INT NOT NULL DEFAULT 0)',
    'CREATE TABLE files (id INT NOT NULL PRIMARY KEY, customer_id INT, name VARCHAR(200),'
    ' digest VARBINARY(32), content BLOB)',
    'CREATE TABLE ledger (customer_id INT NOT NULL, seq INT NOT NULL, amount DECIMAL(12,2),'
    ' memo VARCHAR(255), PRIMARY KEY (customer_id, seq))',
]

AWKWARD = [
    "it's", 'say "hi", ok', 'back\\slash', 'C:\\temp\\new', 'tab\there', 'line\nbreak',
    'cr\r\nlf', 'percent % and %s', 'semi; colon', '日本語のメモ', 'Zoë Ünïcode', 'emoji 🎉',
    "O'Brien, Pat", "two '' quotes", '\\\'', 'trailing space ', '', '-- not a comment',
    '/* not a comment */', 'NULL', "x' OR '1'='1",
]


def pymysql_traffic(rng):
    a = app_connection('pymysql')
    b = app_connection('pymysql', autocommit=False)
    ca, cb = a.cursor(), b.cursor()
    names = {}
    ledger_seq = {}

    def awkward():
        return rng.choice(AWKWARD) + (' ' + str(rng.randint(0, 99)) if rng.random() < .5 else '')

    def money():
        return decimal.Decimal(rng.randint(-10000, 1000000)) / 100

    def customer_row(i):
        return (i, awkward() or f'customer {i}',
                None if rng.random() < .3 else f'c{i}@example.com', money(),
                None if rng.random() < .3 else datetime.date(1950 + rng.randint(0, 60),
                                                             rng.randint(1, 12), rng.randint(1, 28)),
                datetime.datetime(2026, 11, rng.randint(1, 30), rng.randint(0, 23),
                                  rng.randint(0, 59), rng.randint(0, 59), rng.randint(0, 999999)),
                None if rng.random() < .4 else awkward())

    insert_customer = ('INSERT INTO customers (id, name, email, balance, born, created_at, note)'
                       ' VALUES (%s, %s, %s, %s, %s, %s, %s)')
    ids = list(range(1, 61))
    for start in range(0, 60, 15):  # executemany: one multi-row INSERT each
        rows = [customer_row(i) for i in ids[start:start + 15]]
        ca.executemany(insert_customer, rows)
        names.update((r[0], r[1]) for r in rows)
    ca.execute(insert_customer, customer_row(61))
    ca.execute('INSERT INTO customers (id, name) VALUES (%(id)s, %(name)s)',
               {'id': 62, 'name': 'dict params'})
    alive = set(range(1, 63))
    files = []
    for i in range(1, 31):
        digest = bytes(rng.randrange(256) for _ in range(rng.choice((16, 20, 32))))
        content = None if i % 7 == 0 else bytes(rng.randrange(256) for _ in range(rng.randint(0, 40)))
        files.append((i, rng.choice(sorted(alive)), f'file-{i}.bin', digest, content))
    files[0] = (1, 1, 'zeros.bin', b'\x00' * 16, b"\x00'\\\"\n\r\t\x1a%")
    ca.executemany('INSERT INTO files (id, customer_id, name, digest, content)'
                   ' VALUES (%s, %s, %s, %s, %s)', files[:20])
    for row in files[20:]:
        ca.execute('INSERT INTO files (id, customer_id, name, digest, content)'
                   ' VALUES (%s, %s, %s, %s, %s)', row)
    for step in range(260):
        choice = rng.random()
        cid = rng.choice(sorted(alive))
        if choice < .25:
            ca.execute('UPDATE customers SET balance = balance + %s, visits = visits + 1'
                       ' WHERE id = %s', (money(), cid))
        elif choice < .4:
            ca.execute('UPDATE customers SET name = %s, note = %s WHERE id = %s',
                       (awkward() or 'renamed', None if rng.random() < .3 else awkward(), cid))
        elif choice < .45:
            ca.execute('UPDATE customers SET email = NULL, born = %s WHERE id = %s',
                       (datetime.date(2000, 1, 1 + step % 28), cid))
        elif choice < .5:
            other = rng.choice(sorted(alive))
            ca.execute('UPDATE customers SET visits = visits * 2 WHERE id IN (%s, %s)', (cid, other))
        elif choice < .55:
            fid = rng.randint(1, 30)
            ca.execute('UPDATE files SET content = %s, digest = %s WHERE id = %s',
                       (bytes(rng.randrange(256) for _ in range(8)),
                        bytes(rng.randrange(256) for _ in range(16)), fid))
        elif choice < .6 and len(alive) > 30:
            ca.execute('DELETE FROM customers WHERE id = %s', (cid,))
            alive.discard(cid)
        elif choice < .8:
            # A transaction on the non-autocommit connection: ledger lines and
            # the balance they move, committed or rolled back.
            lines = []
            for _ in range(rng.randint(1, 3)):
                seq = ledger_seq[cid] = ledger_seq.get(cid, 0) + 1
                lines.append((cid, seq, money(), awkward()))
            cb.executemany('INSERT INTO ledger (customer_id, seq, amount, memo)'
                           ' VALUES (%s, %s, %s, %s)', lines)
            cb.execute('UPDATE customers SET balance = balance - %s WHERE id = %s',
                       (sum(line[2] for line in lines), cid))
            if rng.random() < .7:
                b.commit()
            else:
                b.rollback()
                ledger_seq[cid] -= len(lines)
        elif choice < .85:
            try:  # a duplicate key: error 1062, nothing changes
                ca.execute(insert_customer, customer_row(cid))
            except pymysql.err.IntegrityError:
                pass
        elif choice < .9:
            ca.execute('SELECT id, name, balance FROM customers WHERE id = %s', (cid,))
            ca.fetchall()
        else:
            new = max(alive) + 1
            ca.execute(insert_customer, customer_row(new))
            alive.add(new)
    cb.execute('DELETE FROM ledger WHERE customer_id = %s AND seq = %s', (1, 1))
    b.commit()
    a.close()
    b.close()


# ---------------------------------------------------------------------------
# orm: SQLAlchemy ORM sessions.

ORM_SCHEMA = []  # created by the models themselves (metadata.create_all), see orm_models


def orm_models():
    import sqlalchemy as sa
    from sqlalchemy import orm

    class Base(orm.DeclarativeBase):
        pass

    class Project(Base):
        __tablename__ = 'projects'
        id = sa.Column(sa.String(36), primary_key=True)
        name = sa.Column(sa.String(100), nullable=False)
        status = sa.Column(sa.String(20), nullable=False, server_default='active')
        budget = sa.Column(sa.Numeric(10, 2), server_default=sa.text('0.00'))
        created_at = sa.Column(sa.DateTime, server_default=sa.func.now())
        updated_at = sa.Column(sa.DateTime, onupdate=sa.func.now())
        version = sa.Column(sa.Integer, nullable=False)
        tasks = orm.relationship('Task', back_populates='project', cascade='all, delete-orphan',
                                 order_by='Task.number')
        __mapper_args__ = {'version_id_col': version}

    class Task(Base):
        __tablename__ = 'tasks'
        project_id = sa.Column(sa.String(36), sa.ForeignKey('projects.id'), primary_key=True)
        number = sa.Column(sa.Integer, primary_key=True, autoincrement=False)
        title = sa.Column(sa.String(200), nullable=False)
        done = sa.Column(sa.Boolean, nullable=False, server_default=sa.false())
        priority = sa.Column(sa.Integer, nullable=False, server_default='3')
        estimate = sa.Column(sa.Numeric(6, 1))
        version = sa.Column(sa.Integer, nullable=False)
        project = orm.relationship('Project', back_populates='tasks')
        comments = orm.relationship('Comment', cascade='all, delete-orphan')
        __mapper_args__ = {'version_id_col': version}

    class Comment(Base):  # AUTO_INCREMENT key, as most ORM models have
        __tablename__ = 'comments'
        id = sa.Column(sa.Integer, primary_key=True)
        project_id = sa.Column(sa.String(36), nullable=False)
        task_number = sa.Column(sa.Integer, nullable=False)
        body = sa.Column(sa.Text)
        created_at = sa.Column(sa.DateTime, server_default=sa.func.now())
        __table_args__ = (sa.ForeignKeyConstraint(['project_id', 'task_number'],
                                                  ['tasks.project_id', 'tasks.number']),)

    return Base, Project, Task, Comment


def orm_setup():
    import sqlalchemy as sa
    Base = orm_models()[0]
    engine = sa.create_engine(
        f'mysql+pymysql://root:@{HOST}:{PORT}/cf_app_orm?charset=utf8mb4')
    Base.metadata.create_all(engine)
    engine.dispose()


def orm_traffic(rng):
    import sqlalchemy as sa
    from sqlalchemy import orm
    Base, Project, Task, Comment = orm_models()
    engine = sa.create_engine(app_url('orm'))
    Session = orm.sessionmaker(engine)

    def uid():
        return '%08x-%04x-4%03x-a%03x-%012x' % (rng.getrandbits(32), rng.getrandbits(16),
                                               rng.getrandbits(12), rng.getrandbits(12),
                                               rng.getrandbits(48))

    project_ids = []
    for i in range(12):
        with Session() as session:
            project = Project(id=uid(), name=f'project {i} “{rng.choice(AWKWARD)}”')
            if i % 3:
                project.budget = decimal.Decimal(rng.randint(0, 999999)) / 100
            for n in range(1, rng.randint(2, 6)):
                task = Task(number=n, title=f'task {n} of {i}',
                            estimate=decimal.Decimal(rng.randint(1, 99)) / 10 if n % 2 else None)
                if n == 1:
                    task.comments.append(Comment(body=f'first comment on {i}'))
                project.tasks.append(task)
            session.add(project)
            session.commit()
            project_ids.append(project.id)
    for step in range(70):
        pid = rng.choice(project_ids)
        with Session() as session:
            project = session.get(Project, pid)
            choice = rng.random()
            if choice < .3 and project.tasks:  # optimistic-locked updates of loaded rows
                task = rng.choice(project.tasks)
                task.title = f'{task.title} (edited {step})'
                task.done = rng.random() < .5
                if rng.random() < .5:
                    task.estimate = decimal.Decimal(rng.randint(1, 99)) / 10
                session.commit()
            elif choice < .45:
                project.name = f'renamed {step}: {rng.choice(AWKWARD)}'
                project.status = rng.choice(['active', 'paused', 'done'])
                session.commit()
            elif choice < .6 and project.tasks:  # delete-orphan
                project.tasks.remove(rng.choice(project.tasks))
                session.commit()
            elif choice < .7:
                number = max([t.number for t in project.tasks], default=0) + 1
                project.tasks.append(Task(number=number, title=f'added in step {step}'))
                session.commit()
            elif choice < .8:
                project.name = 'never saved'
                if project.tasks:
                    project.tasks[0].title = 'never saved either'
                session.flush()
                session.rollback()
            elif choice < .85 and len(project_ids) > 6:  # cascade deletes every task
                session.delete(project)
                session.commit()
                project_ids.remove(pid)
            else:
                if project.tasks:
                    project.tasks[0].comments.append(Comment(body=f'comment {step}'))
                    session.commit()
        if step % 10 == 5:  # bulk updates and deletes on non-key predicates
            with Session() as session:
                session.query(Task).filter(Task.done == sa.true()).update(
                    {Task.priority: Task.priority + 1}, synchronize_session=False)
                session.query(Project).filter(Project.status == 'paused').update(
                    {Project.budget: Project.budget * 2}, synchronize_session=False)
                session.commit()
        if step % 25 == 20:
            with Session() as session:
                session.query(Comment).filter(Comment.body.like('comment 1%')).delete(
                    synchronize_session=False)
                session.commit()
    # A stale write: two sessions load one project, the second update matches 0 rows.
    pid = project_ids[0]
    with Session() as first, Session() as second:
        one, two = first.get(Project, pid), second.get(Project, pid)
        one.name = 'first writer wins'
        first.commit()
        two.name = 'second writer loses'
        try:
            second.commit()
        except orm.exc.StaleDataError:
            second.rollback()
    engine.dispose()


# ---------------------------------------------------------------------------
# core: SQLAlchemy Core expressions, upserts, IN lists.

CORE_SCHEMA = [
    'CREATE TABLE stock (sku VARCHAR(20) NOT NULL PRIMARY KEY, qty INT NOT NULL DEFAULT 0,'
    ' price DECIMAL(10,2), label VARCHAR(200), state VARCHAR(20))',
    'CREATE TABLE counters (name VARCHAR(50) NOT NULL PRIMARY KEY, hits INT NOT NULL,'
    ' last_seen VARCHAR(50))',
]


def core_traffic(rng):
    import sqlalchemy as sa
    from sqlalchemy.dialects import mysql
    engine = sa.create_engine(app_url('core'))
    meta = sa.MetaData()
    stock = sa.Table('stock', meta, autoload_with=engine)
    counters = sa.Table('counters', meta, autoload_with=engine)
    skus = [f'SKU-{i:03d}' for i in range(1, 81)]
    with engine.begin() as conn:
        conn.execute(stock.insert(), [
            {'sku': s, 'qty': rng.randint(0, 30), 'price': decimal.Decimal(rng.randint(100, 99999)) / 100,
             'label': rng.choice(AWKWARD)} for s in skus[:60]])
    live = set(skus[:60])
    for step in range(220):
        choice = rng.random()
        sku = rng.choice(sorted(live))
        with engine.begin() as conn:
            if choice < .2:
                conn.execute(stock.update().where(stock.c.sku == sku).values(qty=stock.c.qty + 1))
            elif choice < .3:
                conn.execute(stock.update().where(stock.c.sku == sku).values(
                    qty=stock.c.qty - rng.randint(1, 5), price=stock.c.price * decimal.Decimal('1.10')))
            elif choice < .4:
                picked = rng.sample(sorted(live), rng.randint(2, 6))
                conn.execute(stock.update().where(stock.c.sku.in_(picked)).values(
                    state=sa.case((stock.c.qty > 10, 'plenty'), (stock.c.qty > 0, 'low'),
                                  else_='out')))
            elif choice < .5:
                conn.execute(stock.update().where(stock.c.sku == sku).values(
                    label=sa.func.concat(sa.func.coalesce(stock.c.label, ''), '-', stock.c.sku)))
            elif choice < .6:
                name = f'page-{rng.randint(1, 15)}'
                insert = mysql.insert(counters).values(name=name, hits=1, last_seen=f'step {step}')
                conn.execute(insert.on_duplicate_key_update(
                    hits=counters.c.hits + insert.inserted.hits,
                    last_seen=insert.inserted.last_seen))
            elif choice < .7:
                new = rng.choice(skus)
                insert = mysql.insert(stock).values(sku=new, qty=rng.randint(1, 9),
                                                    price=decimal.Decimal('9.99'), label='upserted')
                conn.execute(insert.on_duplicate_key_update(qty=stock.c.qty + insert.inserted.qty))
                live.add(new)
            elif choice < .75 and len(live) > 20:
                picked = rng.sample(sorted(live), 3)
                conn.execute(stock.delete().where(stock.c.sku.in_(picked)))
                live.difference_update(picked)
            elif choice < .8:
                conn.execute(stock.update().where(stock.c.qty < 0).values(qty=0, state='fixed'))
            elif choice < .85:
                conn.execute(stock.delete().where(stock.c.qty == 0).where(stock.c.state == 'fixed'))
                live = {r.sku for r in conn.execute(sa.select(stock.c.sku))}
            elif choice < .9:
                conn.execute(stock.update().where(stock.c.sku == sku).values(
                    label=stock.c.label + ' (on sale)',
                    price=sa.func.round(stock.c.price / 2, 2)))
            elif choice < .95:
                trans = conn.begin_nested()
                conn.execute(stock.update().where(stock.c.sku == sku).values(qty=999))
                trans.rollback()
            else:
                conn.execute(sa.select(stock).where(stock.c.sku.in_(rng.sample(sorted(live), 3))))
        if step % 40 == 39:  # an explicit rollback of a whole transaction
            conn = engine.connect()
            conn.execute(stock.update().where(stock.c.sku == sku).values(label='rolled back'))
            conn.rollback()
            conn.close()
    engine.dispose()


# ---------------------------------------------------------------------------
# cli: a SQL script through the mariadb command-line client.

CLI_SCHEMA = [
    'CREATE TABLE items (id INT NOT NULL PRIMARY KEY, name VARCHAR(100), data VARBINARY(64),'
    ' price DECIMAL(10,2), flags INT, made DATE)',
    'CREATE TABLE events (id INT NOT NULL PRIMARY KEY, at TIMESTAMP NULL DEFAULT NULL,'
    ' local_at DATETIME, label VARCHAR(100))',
    'CREATE TABLE notes (id INT NOT NULL PRIMARY KEY, body TEXT)',
]


def cli_script(rng):
    lines = ['-- changeflow cli fixture: a script as an operator would pipe it in',
             '/*!40101 SET @OLD_CHARACTER_SET_CLIENT=@@CHARACTER_SET_CLIENT */;',
             '/*!40101 SET NAMES utf8mb4 */;',
             "/*!40103 SET TIME_ZONE='+00:00' */;",
             '/*!40101 SET @OLD_SQL_MODE=@@SQL_MODE, SQL_MODE=\'NO_AUTO_VALUE_ON_ZERO\' */;',
             "INSERT INTO items VALUES (1,'plain',NULL,1.50,0,'2026-01-01'),"
             "(2,'two',x'00ff',2.00,1,'2026-01-02');",
             "INSERT INTO items (id, name, data) VALUES (3, _utf8mb4'café', X'DEADBEEF');",
             "INSERT INTO items (id, name, data) VALUES (4, N'national ünï', 0x414243);",
             "INSERT INTO items (id, name, flags) VALUES (5, 'bits', b'1010');",
             "INSERT INTO items (id, name) VALUES (6, 'adjacent' ' strings' \" mixed\");",
             "INSERT INTO items (id, name, made) VALUES (7, 'date literal', DATE '2026-03-04');",
             "INSERT INTO items (id, name, price) VALUES (8, 'point five', .5);",
             "INSERT INTO items (id, name, flags) VALUES (9, 'hex number', 0x10 + 1);",
             "INSERT INTO items (id, name) VALUES (10, _latin1'latin1 text');",
             "INSERT INTO items (id, name, data) VALUES (11, 'binary intro', _binary'ab\\0c');",
             "INSERT INTO notes VALUES (1,'backslash \\\\ escaped'); "
             "INSERT INTO notes VALUES (2,'it''s quoted');",
             "UPDATE items SET flags = flags + 1 WHERE id = 1; UPDATE items SET flags = 7 WHERE id = 2;"]
    for i in range(12, 80):
        lines.append(f"INSERT INTO items (id, name, price, flags, made) VALUES ({i}, "
                     f"'item {i} {rng.choice(['a', 'b', 'c'])}', {rng.randint(1, 9999) / 100}, "
                     f"{rng.randint(0, 3)}, '2026-0{rng.randint(1, 9)}-1{rng.randint(0, 9)}');")
    lines += ["SET SESSION sql_mode = CONCAT(@@sql_mode, ',NO_BACKSLASH_ESCAPES');",
              "INSERT INTO notes VALUES (3, 'C:\\new\\table no escapes');",
              "UPDATE items SET name = 'path C:\\temp' WHERE id = 12;",
              "SET SESSION sql_mode = 'ANSI_QUOTES';",
              'INSERT INTO "notes" ("id", "body") VALUES (4, \'ansi quoted identifiers\');',
              'UPDATE "items" SET "name" = \'ansi\' WHERE "id" = 13;',
              "SET SESSION sql_mode = DEFAULT;",
              "SET time_zone = '+05:30';"]
    for i in range(1, 30):
        stamp = f'2026-11-{i:02d} {rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:00'
        lines.append(f"INSERT INTO events (id, at, local_at, label) VALUES "
                     f"({i}, '{stamp}', '{stamp}', 'ist {i}');")
    lines += ["SET time_zone = '-08:00';",
              "UPDATE events SET at = '2026-12-01 09:00:00' WHERE id = 1;",
              "INSERT INTO events (id, at, label) VALUES (40, TIMESTAMP '2026-12-24 18:00:00', 'pst');",
              "SET time_zone = '+00:00';",
              "SET NAMES latin1;",
              "INSERT INTO notes VALUES (5, 'latin1 session: plain ascii');",
              "SET NAMES utf8mb4;",
              "INSERT INTO notes VALUES (6, 'utf8mb4 again: 🎉');"]
    for step in range(150):
        i = rng.randint(12, 79)
        choice = rng.random()
        if choice < .3:
            lines.append(f'UPDATE items SET flags = flags + {rng.randint(1, 3)} WHERE id = {i};')
        elif choice < .5:
            lines.append(f"UPDATE items SET name = CONCAT(name, '+'), price = price * 2 WHERE id = {i};")
        elif choice < .6:
            j = rng.randint(12, 79)
            lines.append(f'UPDATE items SET made = DATE \'2026-12-{1 + step % 28:02d}\' '
                         f'WHERE id = {i}; UPDATE items SET flags = 0 WHERE id = {j};')
        elif choice < .7:
            lines.append(f"INSERT INTO notes (id, body) VALUES ({100 + step}, 'step {step}')"
                         f" ON DUPLICATE KEY UPDATE body = 'dup';")
        elif choice < .75:
            lines.append(f'DELETE FROM items WHERE id = {i};')
        elif choice < .85:
            lines.append(f'/*!50001 UPDATE items SET flags = {step} WHERE id = {i} */;')
        elif choice < .9:
            lines.append(f"BEGIN; UPDATE items SET name = 'in txn {step}' WHERE id = {i}; COMMIT;")
        elif choice < .95:
            lines.append(f"START TRANSACTION; UPDATE items SET name = 'rolled back' WHERE id = {i};"
                         f" ROLLBACK;")
        else:
            lines.append(f'SELECT * FROM items WHERE id = {i};')
    lines += ['/*!40101 SET SQL_MODE=@OLD_SQL_MODE */;',
              '/*!40101 SET CHARACTER_SET_CLIENT=@OLD_CHARACTER_SET_CLIENT */;', '']
    return '\n'.join(lines)


def cli_traffic(rng):
    script = cli_script(rng)
    with open(os.path.join(OUT, 'cli', 'script.sql'), 'w', encoding='utf-8') as f:
        f.write(script)
    subprocess.run(['mariadb', '-h', HOST, '-P', str(PORT), '-u', 'cf_app_cli',
                    f'--password={PASSWORD}', '--default-character-set=utf8mb4', 'cf_app_cli'],
                   input=script.encode('utf-8'), stdout=subprocess.DEVNULL, check=True)


# ---------------------------------------------------------------------------
# schema_features: what the log does not say about the schema.

SCHEMA_FEATURES_SCHEMA = [
    "CREATE TABLE accounts (id INT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,"
    " email VARCHAR(100) NOT NULL, name VARCHAR(100),"
    " kind ENUM('free','pro','team') NOT NULL DEFAULT 'free',"
    " perms SET('read','write','admin') NOT NULL DEFAULT 'read', since YEAR, code CHAR(6),"
    " active TINYINT(1) NOT NULL DEFAULT 1, bits BIT(8) DEFAULT b'0', big BIGINT UNSIGNED,"
    " logins INT UNSIGNED NOT NULL DEFAULT 0,"
    " updated_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP ON UPDATE CURRENT_TIMESTAMP,"
    " UNIQUE KEY uq_email (email))",
    'CREATE TABLE account_audit (id INT NOT NULL AUTO_INCREMENT PRIMARY KEY,'
    ' account_id INT UNSIGNED, action VARCHAR(20), at DATETIME)',
    'CREATE TABLE tags (name VARCHAR(50) COLLATE utf8mb4_general_ci NOT NULL PRIMARY KEY,'
    ' uses INT NOT NULL DEFAULT 0, label VARCHAR(50))',
    'CREATE TABLE orders (id INT NOT NULL PRIMARY KEY, account_id INT UNSIGNED,'
    ' total DECIMAL(10,2), slug VARCHAR(60), status VARCHAR(10) NOT NULL DEFAULT \'new\','
    ' FOREIGN KEY (account_id) REFERENCES accounts (id) ON DELETE CASCADE)',
    'CREATE TABLE order_lines (order_id INT NOT NULL, line INT NOT NULL, sku VARCHAR(20),'
    ' qty INT, PRIMARY KEY (order_id, line),'
    ' FOREIGN KEY (order_id) REFERENCES orders (id) ON DELETE CASCADE)',
    'CREATE TABLE referrals (id INT NOT NULL PRIMARY KEY, account_id INT UNSIGNED NULL,'
    ' note VARCHAR(50), FOREIGN KEY (account_id) REFERENCES accounts (id) ON DELETE SET NULL)',
    "CREATE TRIGGER orders_slug BEFORE INSERT ON orders FOR EACH ROW"
    " SET NEW.slug = LOWER(CONCAT('O-', NEW.id, '-', IFNULL(NEW.account_id, 0)))",
    "CREATE TRIGGER orders_big BEFORE UPDATE ON orders FOR EACH ROW"
    " SET NEW.status = IF(NEW.total > 100, 'big', NEW.status)",
    "CREATE TRIGGER accounts_ins AFTER INSERT ON accounts FOR EACH ROW"
    " INSERT INTO account_audit (account_id, action, at) VALUES (NEW.id, 'insert', NOW())",
    "CREATE TRIGGER accounts_del AFTER DELETE ON accounts FOR EACH ROW"
    " INSERT INTO account_audit (account_id, action, at) VALUES (OLD.id, 'delete', NOW())",
]


def schema_features_traffic(rng):
    a = app_connection('schema_features')
    c = a.cursor()
    accounts = []
    for i in range(1, 26):  # AUTO_INCREMENT: no key in the statement
        c.execute('INSERT INTO accounts (email, name, kind, perms, since, code, active, bits, big)'
                  ' VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)',
                  (f'user{i}@example.com', f'User {i}', rng.choice(['free', 'pro', 'team']),
                   rng.choice(['read', 'read,write', 'admin,read']), 2000 + i, f'C{i:02d}',
                   1, i, i * 1000))
        accounts.append(c.lastrowid)
    c.execute("INSERT INTO accounts (id, email, name, kind, perms, since, code, active, bits, big)"
              " VALUES (100, 'explicit@example.com', 'Explicit', 2, 'write,read', '26', 'ab  ', 5,"
              " b'101', 18446744073709551615)")
    c.execute("INSERT INTO accounts (id, email, kind, perms, since, code) VALUES"
              " (101, 'Case@Example.com', 'PRO', 'ADMIN', 69, 'x'),"
              " (102, 'enum3@example.com', 3, '', 70, 'yz ')")
    for i in range(1, 31):
        c.execute('INSERT INTO tags (name, uses, label) VALUES (%s, %s, %s)',
                  (f'Tag{i}', 0, f'label {i}'))
    order_id = 0
    for step in range(240):
        choice = rng.random()
        acc = rng.choice(accounts)
        if choice < .15:
            c.execute('UPDATE accounts SET logins = logins + 1 WHERE id = %s', (acc,))
        elif choice < .22:
            # ON DUPLICATE KEY UPDATE hitting the UNIQUE email of another id.
            other = rng.choice(accounts)
            c.execute('INSERT INTO accounts (id, email, name) VALUES (%s, %s, %s)'
                      ' ON DUPLICATE KEY UPDATE name = VALUES(name), logins = logins + 10',
                      (1000 + step, f'user{accounts.index(other) + 1}@example.com',
                       f'upserted {step}'))
        elif choice < .26:
            c.execute('INSERT IGNORE INTO accounts (id, email, name) VALUES (%s, %s, %s)',
                      (2000 + step, f'user{rng.randint(1, 25)}@example.com', 'ignored?'))
        elif choice < .45:
            order_id += 1
            c.execute('INSERT INTO orders (id, account_id, total) VALUES (%s, %s, %s)',
                      (order_id, acc, decimal.Decimal(rng.randint(100, 20000)) / 100))
            c.executemany('INSERT INTO order_lines (order_id, line, sku, qty) VALUES (%s, %s, %s, %s)',
                          [(order_id, n, f'sku{rng.randint(1, 50)}', rng.randint(1, 5))
                           for n in range(1, rng.randint(2, 4))])
        elif choice < .55 and order_id:
            c.execute('UPDATE orders SET total = total + %s WHERE id = %s',
                      (decimal.Decimal(rng.randint(1, 9000)) / 100, rng.randint(1, order_id)))
        elif choice < .62:
            tag = f'tag{rng.randint(1, 35)}'
            c.execute('UPDATE tags SET uses = uses + 1 WHERE name = %s',
                      (tag.upper() if step % 2 else tag,))
        elif choice < .68:
            c.execute('INSERT INTO tags (name, uses, label) VALUES (%s, 1, %s)'
                      ' ON DUPLICATE KEY UPDATE uses = uses + 1, label = VALUES(label)',
                      (rng.choice(['TAG', 'tag', 'Tag']) + str(rng.randint(1, 40)), f'step {step}'))
        elif choice < .72:
            c.execute('REPLACE INTO tags (name, uses, label) VALUES (%s, 0, %s)',
                      (f'TAG{rng.randint(1, 40)}', f'replaced {step}'))
        elif choice < .76:
            c.execute('INSERT INTO referrals (id, account_id, note) VALUES (%s, %s, %s)'
                      ' ON DUPLICATE KEY UPDATE note = VALUES(note)',
                      (rng.randint(1, 30), acc, f'ref {step}'))
        elif choice < .8:
            c.execute("UPDATE accounts SET kind = %s, perms = %s, active = %s, code = %s"
                      " WHERE id = %s", (rng.choice([1, 2, 3, 'Team', 'FREE']),
                                         rng.choice(['write', 'read,admin', 'ADMIN,write', 3]),
                                         rng.choice([0, 1, 2]), rng.choice(['q ', 'zz', 'p q ']),
                                         acc))
        elif choice < .83:
            c.execute('UPDATE accounts SET since = %s, bits = bits | 128 WHERE id = %s',
                      (rng.choice([5, 69, 70, 99, '01', 2027]), acc))
        elif choice < .87 and len(accounts) > 12:
            # FKs: orders and their lines cascade away, referrals are set NULL.
            c.execute('DELETE FROM accounts WHERE id = %s', (acc,))
            accounts.remove(acc)
        elif choice < .9:
            c.execute('REPLACE INTO accounts (id, email, name) VALUES (%s, %s, %s)',
                      (3000 + step, f'user{rng.randint(1, 25)}@example.com', f'replaced {step}'))
            accounts = [row[0] for row in _fetch(c, 'SELECT id FROM accounts ORDER BY id')]
        else:
            c.execute("INSERT INTO accounts (email, name) VALUES (%s, 'late')",
                      (f'late{step}@example.com',))
            accounts.append(c.lastrowid)
    a.close()


def _fetch(cursor, sql):
    cursor.execute(sql)
    return cursor.fetchall()


# ---------------------------------------------------------------------------
# ddl: the schema changes in the middle of the traffic.

DDL_SCHEMA = [
    'CREATE TABLE people (id INT NOT NULL PRIMARY KEY, name VARCHAR(100), age INT)',
    'CREATE TABLE pets (id INT NOT NULL PRIMARY KEY, owner_id INT, name VARCHAR(50))',
    'CREATE TABLE logs (id INT NOT NULL PRIMARY KEY, msg VARCHAR(200))',
]


def ddl_traffic(rng):
    a = app_connection('ddl')
    c = a.cursor()

    def some_people(n, start, columns):
        for i in range(start, start + n):
            if columns == 'start':
                c.execute('INSERT INTO people (id, name, age) VALUES (%s, %s, %s)',
                          (i, f'person {i}', rng.randint(1, 90)))
            elif columns == 'city':
                c.execute('INSERT INTO people (id, name, age, city) VALUES (%s, %s, %s, %s)',
                          (i, f'person {i}', rng.randint(1, 90), rng.choice(['Oslo', 'Lima'])))
            else:
                c.execute('INSERT INTO people (id, full_name, city) VALUES (%s, %s, %s)',
                          (i, f'person {i}', rng.choice(['Oslo', 'Lima', 'Pune'])))

    some_people(30, 1, 'start')
    c.executemany('INSERT INTO pets (id, owner_id, name) VALUES (%s, %s, %s)',
                  [(i, rng.randint(1, 30), f'pet {i}') for i in range(1, 21)])
    c.executemany('INSERT INTO logs (id, msg) VALUES (%s, %s)',
                  [(i, f'log {i}') for i in range(1, 21)])
    for i in range(1, 31, 3):
        c.execute('UPDATE people SET age = age + 1 WHERE id = %s', (i,))
    c.execute("ALTER TABLE people ADD COLUMN city VARCHAR(50) NOT NULL DEFAULT 'unknown'")
    some_people(20, 31, 'city')
    for i in range(1, 51, 4):
        c.execute('UPDATE people SET city = %s WHERE id = %s', (rng.choice(['Rome', 'Kyiv']), i))
    c.execute('ALTER TABLE people DROP COLUMN age')
    c.execute('ALTER TABLE people RENAME COLUMN name TO full_name')
    some_people(20, 51, 'renamed')
    for i in range(1, 71, 5):
        c.execute('UPDATE people SET full_name = CONCAT(full_name, %s) WHERE id = %s', (' jr', i))
    c.execute('RENAME TABLE pets TO animals')
    c.executemany('INSERT INTO animals (id, owner_id, name) VALUES (%s, %s, %s)',
                  [(i, rng.randint(1, 70), f'animal {i}') for i in range(21, 41)])
    for i in range(1, 41, 3):
        c.execute('UPDATE animals SET name = %s WHERE id = %s', (f'renamed {i}', i))
    c.execute('DELETE FROM animals WHERE id = 2')
    c.execute('DROP TABLE logs')
    c.execute('CREATE TABLE logs (id INT NOT NULL PRIMARY KEY, msg TEXT, level VARCHAR(10)'
              " NOT NULL DEFAULT 'info')")
    c.executemany('INSERT INTO logs (id, msg, level) VALUES (%s, %s, %s)',
                  [(i, f'new log {i}', rng.choice(['info', 'warn'])) for i in range(1, 16)])
    for i in range(1, 16, 2):
        c.execute("UPDATE logs SET msg = CONCAT(msg, ' (seen)') WHERE id = %s", (i,))
    c.execute('ALTER TABLE animals ADD COLUMN species VARCHAR(20)')
    c.execute("UPDATE animals SET species = 'cat' WHERE id = 21")
    for i in range(60, 71):
        c.execute('DELETE FROM people WHERE id = %s', (i,))
    a.close()


# ---------------------------------------------------------------------------
# truncation: statements longer than server_audit_query_log_limit's default.

TRUNCATION_SCHEMA = [
    'CREATE TABLE docs (id INT NOT NULL PRIMARY KEY, title VARCHAR(100), body TEXT,'
    ' revision INT NOT NULL DEFAULT 1)',
]


def truncation_traffic(rng):
    a = app_connection('truncation')
    c = a.cursor()
    words = ['alpha', 'beta', 'gamma', 'delta', "o'neil", 'back\\slash', 'ünï']

    def body(n):
        return ' '.join(rng.choice(words) for _ in range(n))

    for i in range(1, 121):
        c.execute('INSERT INTO docs (id, title, body) VALUES (%s, %s, %s)',
                  (i, f'doc {i}', body(rng.randint(2, 20))))
    long_ids = set()
    for step in range(160):
        i = rng.randint(1, 120)
        choice = rng.random()
        if step in (10, 60, 110):  # a long body: cut in the log
            c.execute('UPDATE docs SET body = %s, revision = revision + 1 WHERE id = %s',
                      (body(250), i))
            long_ids.add(i)
        elif step == 80:  # a batch whose statement is longer than the limit
            c.executemany('INSERT INTO docs (id, title, body) VALUES (%s, %s, %s)',
                          [(200 + n, f'batch {n}', body(12)) for n in range(20)])
        elif step == 130:  # a long IN list
            c.execute('UPDATE docs SET revision = revision + 1 WHERE id IN %s',
                      (tuple(range(1, 121)) + tuple(range(1000, 1200)),))
        elif choice < .6:
            c.execute('UPDATE docs SET revision = revision + 1, title = %s WHERE id = %s',
                      (f'doc {i} rev {step}', i))
        elif choice < .8:
            c.execute('UPDATE docs SET body = %s WHERE id = %s', (body(5), i))
        elif choice < .9:
            c.execute('DELETE FROM docs WHERE id = %s', (i,))
        else:
            c.execute('INSERT INTO docs (id, title, body) VALUES (%s, %s, %s)'
                      ' ON DUPLICATE KEY UPDATE title = VALUES(title)',
                      (i, f'upserted {step}', body(3)))
    a.close()


# interleaved: keyed writes of several connections between whole-table writes.
INTERLEAVED_SCHEMA = [
    "CREATE TABLE items (id INT NOT NULL PRIMARY KEY, qty INT NOT NULL DEFAULT 0,"
    " status VARCHAR(10) NOT NULL DEFAULT 'new', note VARCHAR(40), version INT NOT NULL DEFAULT 1)",
    'CREATE TABLE tags (item_id INT NOT NULL, tag VARCHAR(10) NOT NULL,'
    ' weight INT NOT NULL DEFAULT 0, PRIMARY KEY (item_id, tag))',
]
_RANGE = 40  # each connection's transactions write ids of its own range only


def interleaved_traffic(rng):
    """Three connections. Autocommit writes by key, conditional and optimistic
    (a SELECT, then UPDATE ... WHERE id AND version) updates, upserts, REPLACE
    and executemany, each connection on any row; whole-table UPDATEs and DELETEs
    (WHERE not naming the key) between them; transactions of a connection on
    its own range of ids, left open while the other connections write other
    rows, committed or rolled back. A whole-table write waits for no open
    transaction: it runs only when none is open (one thread drives all three)."""
    # READ COMMITTED: no gap locks, so a transaction's misses by key (an UPDATE of a
    # deleted row) do not lock out the other connections' inserts next to its range.
    connections = [app_connection('interleaved', init_command='SET SESSION TRANSACTION '
                                  'ISOLATION LEVEL READ COMMITTED') for _ in range(3)]
    cursors = [c.cursor() for c in connections]
    open_tx = {}  # connection index -> statements left in its transaction
    tags = ('red', 'blue', 'green', "o'k")

    def any_id():
        return rng.randint(1, 3 * _RANGE)

    def own_id(n):
        return n * _RANGE + rng.randint(1, _RANGE)

    def keyed(c, i):
        choice = rng.random()
        if choice < .25:
            c.execute('INSERT INTO items (id, qty, status, note) VALUES (%s, %s, %s, %s)'
                      ' ON DUPLICATE KEY UPDATE qty = qty + VALUES(qty), version = version + 1',
                      (i, rng.randint(0, 20), rng.choice(('new', 'hot', 'cold')),
                       rng.choice((None, 'note', "it's", 'ünï'))))
        elif choice < .45:
            c.execute('UPDATE items SET qty = qty + %s, version = version + 1 WHERE id = %s',
                      (rng.randint(-5, 9), i))
        elif choice < .55:
            c.execute('UPDATE items SET status = %s WHERE id = %s AND qty > %s',
                      (rng.choice(('hot', 'cold', 'done')), i, rng.randint(0, 15)))
        elif choice < .65:
            c.execute('SELECT version FROM items WHERE id = %s', (i,))
            row = c.fetchone()
            c.execute('UPDATE items SET note = %s, version = version + 1'
                      ' WHERE id = %s AND version = %s',
                      (f'seen {rng.randint(1, 99)}', i, row[0] if row else 1))
        elif choice < .72:
            c.execute('DELETE FROM items WHERE id = %s', (i,))
        elif choice < .78:
            c.execute('REPLACE INTO items (id, qty, status) VALUES (%s, %s, %s)',
                      (i, rng.randint(0, 20), 'replaced'))
        elif choice < .85:
            c.executemany('INSERT INTO tags (item_id, tag, weight) VALUES (%s, %s, %s)'
                          ' ON DUPLICATE KEY UPDATE weight = weight + VALUES(weight)',
                          [(i, tag, rng.randint(1, 3)) for tag in rng.sample(tags, 2)])
        elif choice < .92:
            c.execute('UPDATE tags SET weight = weight * 2 WHERE item_id = %s AND tag = %s',
                      (i, rng.choice(tags)))
        else:
            c.execute('DELETE FROM tags WHERE item_id = %s AND tag = %s', (i, rng.choice(tags)))

    def whole_table(c):
        choice = rng.random()
        if choice < .3:
            c.execute("UPDATE items SET status = 'hot', version = version + 1 WHERE qty > %s",
                      (rng.randint(10, 30),))
        elif choice < .55:
            c.execute("UPDATE items SET qty = qty - 1 WHERE status = 'hot'")
        elif choice < .7:
            c.execute('DELETE FROM items WHERE qty < %s', (rng.randint(-3, 1),))
        elif choice < .85:
            c.execute("UPDATE items SET note = 'bulk' WHERE status = 'cold' AND version > %s",
                      (rng.randint(1, 4),))
        else:
            c.execute('DELETE FROM tags WHERE weight > %s', (rng.randint(4, 8),))

    for step in range(900):
        n = rng.randrange(3)
        c = cursors[n]
        if n in open_tx:
            if open_tx[n]:
                open_tx[n] -= 1
                keyed(c, own_id(n))
            else:
                del open_tx[n]
                (connections[n].commit if rng.random() < .8 else connections[n].rollback)()
        elif not open_tx and rng.random() < .12:
            whole_table(c)
        elif rng.random() < .1:
            connections[n].begin()
            open_tx[n] = rng.randint(1, 5)
        else:  # autocommit: any row no open transaction holds
            i = any_id()
            while any(own_id_range == (i - 1) // _RANGE for own_id_range in open_tx):
                i = any_id()
            keyed(c, i)
    for n in list(open_tx):
        connections[n].commit()
    for connection in connections:
        connection.close()


_BULK_RANGE = 10  # ids per connection's range: 30 rows in all


def bulk_traffic(rng, name='bulk'):
    """interleaved's three connections on fewer rows, with whole-table writes
    twice as often and of more kinds: TRUNCATE TABLE, IN lists, CASE,
    UPDATE/DELETE naming part of a two-column key, INSERT IGNORE, SAVEPOINTs
    rolled back or released inside transactions."""
    connections = [app_connection(name, init_command='SET SESSION TRANSACTION '
                                  'ISOLATION LEVEL READ COMMITTED') for _ in range(3)]
    cursors = [c.cursor() for c in connections]
    open_tx = {}  # connection index -> statements left in its transaction
    tags = ('red', 'blue', 'green')

    def own_id(n):
        return n * _BULK_RANGE + rng.randint(1, _BULK_RANGE)

    def free_id():
        """An id neither it nor the next is in an open transaction's range."""
        while True:
            i = rng.randint(1, 3 * _BULK_RANGE)
            if (i - 1) // _BULK_RANGE not in open_tx and i // _BULK_RANGE not in open_tx:
                return i

    def keyed(c, i, in_transaction=False):
        choice = rng.random()
        if choice < .2:
            c.execute('INSERT INTO items (id, qty, status, note) VALUES (%s, %s, %s, %s)'
                      ' ON DUPLICATE KEY UPDATE qty = qty + VALUES(qty), version = version + 1',
                      (i, rng.randint(0, 20), rng.choice(('new', 'hot', 'cold')),
                       rng.choice((None, 'n'))))
        elif choice < .3:
            c.execute('INSERT IGNORE INTO items (id, qty) VALUES (%s, %s)', (i, rng.randint(0, 9)))
        elif choice < .45:
            c.execute('UPDATE items SET qty = qty + %s, version = version + 1 WHERE id = %s',
                      (rng.randint(-5, 9), i))
        elif choice < .5:
            c.execute('UPDATE items SET qty = qty * 2 WHERE id IN %s',
                      ((i,) if in_transaction else (i, i + 1),))
        elif choice < .58:
            c.execute("UPDATE items SET status = CASE WHEN qty > 10 THEN 'hot' ELSE 'cold' END"
                      ' WHERE id = %s', (i,))
        elif choice < .64:
            c.execute('UPDATE items SET status = %s WHERE id = %s AND qty > %s',
                      (rng.choice(('hot', 'cold', 'done')), i, rng.randint(0, 15)))
        elif choice < .72:
            c.execute('DELETE FROM items WHERE id = %s', (i,))
        elif choice < .78:
            c.execute('REPLACE INTO items (id, qty, status) VALUES (%s, %s, %s)',
                      (i, rng.randint(0, 20), 'replaced'))
        elif choice < .86:
            c.executemany('INSERT INTO tags (item_id, tag, weight) VALUES (%s, %s, %s)'
                          ' ON DUPLICATE KEY UPDATE weight = weight + VALUES(weight)',
                          [(i, tag, rng.randint(1, 3)) for tag in rng.sample(tags, 2)])
        elif choice < .93:
            c.execute('UPDATE tags SET weight = weight + 1 WHERE item_id = %s', (i,))
        else:
            c.execute('DELETE FROM tags WHERE item_id = %s AND weight > 2', (i,))

    def whole_table(c):
        choice = rng.random()
        if choice < .25:
            c.execute("UPDATE items SET status = 'hot', version = version + 1 WHERE qty > %s",
                      (rng.randint(5, 25),))
        elif choice < .45:
            c.execute("UPDATE items SET qty = qty - 1 WHERE status = 'hot'")
        elif choice < .6:
            c.execute('DELETE FROM items WHERE qty < %s', (rng.randint(-3, 2),))
        elif choice < .7:
            c.execute("UPDATE items SET note = 'bulk' WHERE status IN ('cold', 'replaced')"
                      ' AND version > %s', (rng.randint(1, 4),))
        elif choice < .8:
            c.execute('DELETE FROM tags WHERE weight > %s', (rng.randint(3, 6),))
        elif choice < .87:
            c.execute('UPDATE tags SET weight = 0 WHERE tag = %s', (rng.choice(tags),))
        elif choice < .92:
            c.execute('TRUNCATE TABLE tags')
        else:
            c.execute('UPDATE items SET qty = qty + 1 WHERE note IS NULL')

    for _ in range(900):
        n = rng.randrange(3)
        c = cursors[n]
        if n in open_tx:
            if not open_tx[n]:
                del open_tx[n]
                (connections[n].commit if rng.random() < .75 else connections[n].rollback)()
                continue
            open_tx[n] -= 1
            if rng.random() < .15:
                c.execute('SAVEPOINT sp')
                keyed(c, own_id(n), in_transaction=True)
                c.execute('ROLLBACK TO SAVEPOINT sp' if rng.random() < .5 else
                          'RELEASE SAVEPOINT sp')
            else:
                keyed(c, own_id(n), in_transaction=True)
        elif not open_tx and rng.random() < .2:
            whole_table(c)
        elif rng.random() < .12:
            connections[n].begin()
            open_tx[n] = rng.randint(1, 5)
        else:
            keyed(c, free_id())
    for n in list(open_tx):
        connections[n].commit()
    for connection in connections:
        connection.close()


def bulk_ddl_traffic(rng):
    """bulk's traffic in three parts, ALTER TABLEs between them (no transaction
    open): columns added with defaults, updated by whole-table writes, one
    modified and one dropped again, while TRUNCATE TABLE keeps emptying tags."""
    ddl = app_connection('bulk_ddl')
    c = ddl.cursor()
    bulk_traffic(rng, 'bulk_ddl')
    c.execute('ALTER TABLE items ADD COLUMN extra INT NOT NULL DEFAULT 7')
    c.execute('UPDATE items SET extra = qty * 2 WHERE qty > 5')
    c.execute("ALTER TABLE tags ADD COLUMN label VARCHAR(10) DEFAULT 'x'")
    c.execute('UPDATE tags SET label = tag WHERE weight > 1')
    bulk_traffic(rng, 'bulk_ddl')
    c.execute('ALTER TABLE items MODIFY COLUMN note VARCHAR(60)')
    c.execute('UPDATE items SET extra = extra + 1 WHERE status = %s', ('hot',))
    bulk_traffic(rng, 'bulk_ddl')
    c.execute('ALTER TABLE items DROP COLUMN extra')
    c.execute("UPDATE items SET qty = qty + 1 WHERE status = 'hot'")
    ddl.close()


# ---------------------------------------------------------------------------

FIXTURES = {
    # name: (schema statements or setup function, traffic, server_audit_query_log_limit, README)
    'pymysql': (PYMYSQL_SCHEMA, pymysql_traffic, RAISED_LOG_LIMIT,
                'PyMySQL with %s parameters and executemany (one multi-row INSERT): quotes, '
                'backslashes, unicode, VARBINARY/BLOB bytes, NULLs, decimals, dates, updates and '
                'deletes by key, a duplicate-key error, transactions committed and rolled back.'),
    'orm': (orm_setup, orm_traffic, RAISED_LOG_LIMIT,
            'SQLAlchemy ORM: version_id_col (UPDATE ... WHERE key AND version = ?), '
            "cascade='all, delete-orphan', server defaults (literal and now()), onupdate=now(), "
            'an AUTO_INCREMENT model, bulk query().filter().update()/.delete(), flush+rollback, '
            'a stale write (StaleDataError).'),
    'core': (CORE_SCHEMA, core_traffic, RAISED_LOG_LIMIT,
             'SQLAlchemy Core: qty = qty + 1, CASE, CONCAT, ROUND, insert().on_duplicate_key_update, '
             'IN lists, non-key WHERE, SAVEPOINT rollbacks and transaction rollbacks.'),
    'cli': (CLI_SCHEMA, cli_traffic, RAISED_LOG_LIMIT,
            'script.sql through the mariadb client: version comments, SET NAMES, sql_mode '
            'NO_BACKSLASH_ESCAPES and ANSI_QUOTES, time_zone with a TIMESTAMP column, literal '
            "forms (_utf8mb4'', N'', x'', 0x, b'', adjacent strings, DATE '', .5), several "
            'statements per line.'),
    'schema_features': (SCHEMA_FEATURES_SCHEMA, schema_features_traffic, RAISED_LOG_LIMIT,
                        'Triggers (BEFORE setting NEW, AFTER writing account_audit), FKs ON DELETE '
                        'CASCADE / SET NULL, a UNIQUE email hit by ON DUPLICATE KEY UPDATE, REPLACE '
                        'and INSERT IGNORE, ENUM/SET/YEAR/CHAR/TINYINT(1)/BIT/unsigned, ON UPDATE '
                        'CURRENT_TIMESTAMP, AUTO_INCREMENT, a _ci varchar key in another case.'),
    'ddl': (DDL_SCHEMA, ddl_traffic, RAISED_LOG_LIMIT,
            'ADD/DROP/RENAME COLUMN, RENAME TABLE, DROP and re-CREATE TABLE in the middle of '
            'traffic. schema.sql and job.yaml describe the schema at the START of the log: '
            'job.yaml cannot describe the later schema today.'),
    'interleaved': (INTERLEAVED_SCHEMA, interleaved_traffic, RAISED_LOG_LIMIT,
                    'Three PyMySQL connections: keyed writes (upserts, qty = qty + n, '
                    'conditional and optimistic updates, REPLACE, executemany) between '
                    'whole-table UPDATEs and DELETEs, transactions left open while the other '
                    'connections write, committed or rolled back.'),
    'bulk': (INTERLEAVED_SCHEMA, bulk_traffic, RAISED_LOG_LIMIT,
             "interleaved's traffic on 30 rows with more whole-table writes: TRUNCATE TABLE, "
             'IN lists, CASE, UPDATE and DELETE naming part of a two-column key, INSERT IGNORE, '
             'SAVEPOINTs rolled back and released.'),
    'bulk_ddl': (INTERLEAVED_SCHEMA, bulk_ddl_traffic, RAISED_LOG_LIMIT,
                 "bulk's traffic in three parts with ALTER TABLE between them: ADD COLUMN "
                 'with defaults, MODIFY and DROP COLUMN, whole-table UPDATEs of the new '
                 'columns, TRUNCATE TABLE of a table whose schema changed.'),
    'truncation': (TRUNCATION_SCHEMA, truncation_traffic, DEFAULT_LOG_LIMIT,
                   'server_audit_query_log_limit at its default (1024): a few statements longer '
                   'than that (a long body, a long executemany, a long IN list) among short ones.'),
}


def typed(value):
    """A column value as exact, typed JSON: numbers and strings as they are,
    {"decimal": "1.50"}, {"float": "0.1"}, {"base64": ...}, {"date": ISO},
    {"datetime": ISO}, {"time": "HH:MM:SS"}."""
    if value is None or isinstance(value, (int, str)) and not isinstance(value, bool):
        return value
    if isinstance(value, decimal.Decimal):
        return {'decimal': str(value)}
    if isinstance(value, float):
        return {'float': repr(value)}
    if isinstance(value, (bytes, bytearray)):
        return {'base64': base64.b64encode(bytes(value)).decode('ascii')}
    if isinstance(value, datetime.datetime):
        return {'datetime': value.isoformat()}
    if isinstance(value, datetime.date):
        return {'date': value.isoformat()}
    if isinstance(value, datetime.timedelta):
        return {'time': str(value)}
    raise TypeError(f'no typed JSON form for {type(value).__name__}: {value!r}')


def table_info(root, database):
    """{table: {'columns': [(name, info row)], 'key': [...], 'json': {col}}} from information_schema."""
    with root.cursor(pymysql.cursors.DictCursor) as cur:
        cur.execute("SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s"
                    " AND TABLE_TYPE = 'BASE TABLE' ORDER BY TABLE_NAME", (database,))
        tables = [r['TABLE_NAME'] for r in cur.fetchall()]
        info = {}
        for table in tables:
            cur.execute('SELECT * FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = %s'
                        ' AND TABLE_NAME = %s ORDER BY ORDINAL_POSITION', (database, table))
            columns = cur.fetchall()
            cur.execute("SELECT COLUMN_NAME FROM information_schema.KEY_COLUMN_USAGE"
                        " WHERE TABLE_SCHEMA = %s AND TABLE_NAME = %s AND CONSTRAINT_NAME = 'PRIMARY'"
                        ' ORDER BY ORDINAL_POSITION', (database, table))
            key = [r['COLUMN_NAME'] for r in cur.fetchall()]
            cur.execute('SELECT CHECK_CLAUSE FROM information_schema.CHECK_CONSTRAINTS'
                        ' WHERE CONSTRAINT_SCHEMA = %s AND TABLE_NAME = %s', (database, table))
            json_columns = {r['CHECK_CLAUSE'][len('json_valid(`'):-2] for r in cur.fetchall()
                            if r['CHECK_CLAUSE'].startswith('json_valid(`')}
            info[table] = {'columns': columns, 'key': key, 'json': json_columns}
    return info


def changeflow_type(column, json_columns):
    """The config type (changeflow.config.COLUMN_TYPES) holding a MySQL column's values."""
    data_type = column['DATA_TYPE'].lower()
    if column['COLUMN_NAME'] in json_columns:
        return 'json'
    if data_type == 'bigint':
        return 'bigint'
    if data_type in ('tinyint', 'smallint', 'mediumint', 'int', 'year', 'bit'):
        return 'integer'
    if data_type == 'decimal':
        return f"decimal({column['NUMERIC_PRECISION']},{column['NUMERIC_SCALE']})"
    if data_type in ('float', 'double'):
        return 'float'
    if data_type in ('char', 'varchar', 'enum', 'set', 'time'):
        # The sink's string is VARCHAR(255) and checks that length.
        length = column['CHARACTER_MAXIMUM_LENGTH'] or 0
        return 'string' if data_type != 'varchar' or length <= 255 else 'text'
    if data_type in ('tinytext', 'text', 'mediumtext', 'longtext'):
        return 'text'
    if data_type in ('binary', 'varbinary', 'tinyblob', 'blob', 'mediumblob', 'longblob'):
        return 'binary'
    if data_type == 'date':
        return 'date'
    if data_type in ('datetime', 'timestamp'):
        return 'datetime'
    raise ValueError(f'no changeflow type for {column["COLUMN_TYPE"]}')


def literal_default(column):
    """A column's DEFAULT when it is a literal (information_schema quotes
    strings), else None: NULL, expressions and clocks are not literals."""
    default = column['COLUMN_DEFAULT']
    if default is None or default == 'NULL':
        return None
    if default.startswith("'") and default.endswith("'"):
        return default[1:-1].replace("''", "'")
    if default.startswith("b'") and default.endswith("'"):  # BIT: declared as its integer
        return str(int(default[2:-1] or '0', 2))
    try:
        decimal.Decimal(default)
    except decimal.InvalidOperation:
        return None  # current_timestamp(), other expressions
    return default


def job_yaml(name, database, info):
    tables = {}
    skipped = []
    for table, t in info.items():
        if not t['key']:
            skipped.append(table)
            continue
        columns = {}
        for column in t['columns']:
            kind = changeflow_type(column, t['json'])
            default = literal_default(column)
            columns[column['COLUMN_NAME']] = (kind if default is None
                                              else {'type': kind, 'default': default})
        tables[f'{database}.{table}'] = {
            'key': t['key'][0] if len(t['key']) == 1 else t['key'], 'columns': columns}
    job = {
        'source': {'type': 'archive', 'format': 'server-audit', 'path': 'server_audit.log'},
        'tables': tables,
        'sinks': {'database': {'url': 'sqlite:///out/replica.db'}},
        'dead_letter': {'path': 'out/dead-letter'},
        'audit': {'query_log_limit': FIXTURES[name][2]},
    }
    header = (f'# Generated by tests/data/make_app_fixtures.py from information_schema of '
              f'{database} before the traffic.\n')
    if skipped:
        header += f'# Tables without a primary key, not replicated: {", ".join(skipped)}\n'
    return header + yaml.safe_dump(job, sort_keys=False, allow_unicode=True, width=100)


def snapshot(root, database):
    """Every table's rows after the traffic, ordered by primary key."""
    info = table_info(root, database)
    tables = {}
    with root.cursor() as cur:
        cur.execute("SET time_zone = '+00:00'")
        for table, t in info.items():
            order = ', '.join(f'`{c}`' for c in (t['key'] or [c['COLUMN_NAME'] for c in t['columns']]))
            cur.execute(f'SELECT * FROM `{database}`.`{table}` ORDER BY {order}')
            tables[f'{database}.{table}'] = {
                'key': t['key'],
                'columns': [[c['COLUMN_NAME'], c['COLUMN_TYPE']] for c in t['columns']],
                'rows': [[typed(v) for v in row] for row in cur.fetchall()],
            }
    return tables


def write_final(path, database, tables):
    """final.json with one row per line, so diffs stay readable."""
    out = ['{', f'  "database": {json.dumps(database)},', '  "tables": {']
    for t, (table, data) in enumerate(tables.items()):
        out.append(f'    {json.dumps(table)}: {{')
        out.append(f'      "key": {json.dumps(data["key"])},')
        out.append(f'      "columns": {json.dumps(data["columns"], ensure_ascii=False)},')
        rows = [f'        {json.dumps(row, ensure_ascii=False)}' for row in data['rows']]
        out.append('      "rows": [' + ('\n' + ',\n'.join(rows) + '\n      ]' if rows else ']'))
        out.append('    }' + (',' if t < len(tables) - 1 else ''))
    out += ['  }', '}', '']
    with open(path, 'w', encoding='utf-8') as f:
        f.write('\n'.join(out))


def ensure_plugin(root):
    with root.cursor() as cur:
        cur.execute("SELECT COUNT(*) FROM information_schema.PLUGINS WHERE PLUGIN_NAME = 'SERVER_AUDIT'")
        if not cur.fetchone()[0]:
            try:
                cur.execute("INSTALL SONAME 'server_audit'")
            except pymysql.err.MySQLError as error:  # installed meanwhile by another client
                print('INSTALL SONAME:', error, file=sys.stderr)


def global_variable(root, name):
    with root.cursor() as cur:
        cur.execute('SHOW GLOBAL VARIABLES LIKE %s', (name,))
        row = cur.fetchone()
    return row[1] if row else None


def record(name):
    setup, traffic, log_limit, readme = FIXTURES[name]
    database = user = f'cf_app_{name}'
    folder = os.path.join(OUT, name)
    os.makedirs(folder, exist_ok=True)
    root = root_connection()
    ensure_plugin(root)
    with root.cursor() as cur:
        cur.execute(f'DROP DATABASE IF EXISTS `{database}`')
        cur.execute(f'CREATE DATABASE `{database}` CHARACTER SET utf8mb4 COLLATE utf8mb4_general_ci')
        cur.execute(f"CREATE USER IF NOT EXISTS '{user}'@'%%' IDENTIFIED BY %s", (PASSWORD,))
        cur.execute(f"GRANT ALL ON `{database}`.* TO '{user}'@'%'")
        cur.execute(f'USE `{database}`')
        if callable(setup):
            setup()
        else:
            for statement in setup:
                cur.execute(statement)
    schema = subprocess.run(
        ['mariadb-dump', '-h', HOST, '-P', str(PORT), '-u', 'root', '--no-data', '--triggers',
         '--skip-dump-date', '--databases', database],
        check=True, capture_output=True).stdout
    with open(os.path.join(folder, 'schema.sql'), 'wb') as f:
        f.write(schema)
    with open(os.path.join(folder, 'job.yaml'), 'w', encoding='utf-8') as f:
        f.write(job_yaml(name, database, table_info(root, database)))
    with open(os.path.join(folder, 'README'), 'w', encoding='utf-8') as f:
        f.write(readme + '\n')

    log_path = f'/var/lib/mysql/{database}.audit.log'
    if os.path.exists(log_path):
        os.remove(log_path)
    with root.cursor() as cur:
        cur.execute('SET GLOBAL server_audit_logging = OFF')
        cur.execute('SET GLOBAL server_audit_file_path = %s', (log_path,))
        cur.execute("SET GLOBAL server_audit_events = 'CONNECT,QUERY,TABLE'")
        cur.execute('SET GLOBAL server_audit_query_log_limit = %s', (log_limit,))
        cur.execute('SET GLOBAL server_audit_logging = ON')
    try:
        traffic(random.Random(f'changeflow-{name}'))
        time.sleep(0.5)  # the plugin writes DISCONNECT lines after the client is gone
    finally:
        settings = (global_variable(root, 'server_audit_file_path'),
                    global_variable(root, 'server_audit_query_log_limit'),
                    global_variable(root, 'server_audit_logging'))
        with root.cursor() as cur:
            cur.execute('SET GLOBAL server_audit_logging = OFF')
    if settings != (log_path, str(log_limit), 'ON'):
        raise RuntimeError(f'{name}: another client changed server_audit settings during the '
                           f'traffic ({settings}); record again')
    with open(log_path, 'rb') as f:
        lines = f.read().split(b'\n')
    os.remove(log_path)
    mine = [line for line in lines if line.split(b',', 3)[2:3] == [user.encode()]]
    with open(os.path.join(folder, 'server_audit.log'), 'wb') as f:
        f.write(b''.join(line + b'\n' for line in mine))
    write_final(os.path.join(folder, 'final.json'), database, snapshot(root, database))
    root.close()
    print(f'{name}: {len(mine)} audit lines, '
          f'{sum(1 for line in mine if b",QUERY," in line)} statements -> {folder}')


def main(argv):
    for name in argv or FIXTURES:
        record(name)


if __name__ == '__main__':
    main(sys.argv[1:])
