"""The schema timeline: which tables are replicated at each log position, and
how a change logged before later DDL lands in the replica the log leaves."""

from changeflow.config import resolve_tables
from changeflow.model import Change, OpKind, RowOp
from changeflow.schema.readers import read_schema_text
from changeflow.schema.timeline import SchemaTimeline

SCHEMA = """
CREATE TABLE people (id INT NOT NULL PRIMARY KEY, name VARCHAR(100), age INT,
                     secret VARCHAR(20));
CREATE TABLE pets (id INT NOT NULL PRIMARY KEY, name VARCHAR(50));
CREATE TABLE scratch (id INT NOT NULL PRIMARY KEY);
"""


def timeline(ddl, tables=('app.people', 'app.pets'), redact=None):
    """A timeline from SCHEMA, ``tables:`` as a mapping and DDL at (t, t)."""
    schema = read_schema_text(SCHEMA, 'app')
    raw = {name: ({'redact': redact} if redact and name == 'app.people' else {})
           for name in tables}
    return SchemaTimeline(schema, raw, resolve_tables(raw, schema),
                          [((t, t), 'app', sql) for t, sql in ddl])


def insert(table, values, version='v'):
    return Change(table, (1,), (RowOp(OpKind.INSERT, version, tuple(values)),), 0)


def lineage(line, table, position):
    return line.epoch_at(position)[1].lineages[table]


def test_a_change_before_a_column_rename_drop_and_add_lands_in_the_last_columns():
    line = timeline([(10, "ALTER TABLE people ADD COLUMN city VARCHAR(20) NOT NULL DEFAULT 'x'"),
                     (20, 'ALTER TABLE people DROP COLUMN age'),
                     (30, 'ALTER TABLE people RENAME COLUMN name TO full_name')])
    change = insert('app.people', [('id', 1), ('name', 'Ann'), ('age', 3), ('secret', 's')])
    moved, lost = line.forward(lineage(line, 'app.people', (5, 5)), (5, 5), change)
    assert lost == []
    assert dict(moved.ops[0].values) == {'id': 1, 'full_name': 'Ann', 'secret': 's', 'city': 'x'}
    # After the ADD the statement names the column itself: no fill; after all, nothing moves.
    later = insert('app.people', [('id', 1), ('name', 'Bo'), ('city', 'y')])
    moved, _ = line.forward(lineage(line, 'app.people', (15, 15)), (15, 15), later)
    assert dict(moved.ops[0].values) == {'id': 1, 'full_name': 'Bo', 'city': 'y'}
    last = insert('app.people', [('id', 1), ('full_name', 'Cy')])
    assert line.forward(lineage(line, 'app.people', (35, 35)), (35, 35), last) == (last, [])


def test_assignments_and_conditions_follow_a_renamed_column():
    line = timeline([(30, 'ALTER TABLE people CHANGE name full_name VARCHAR(100)')])
    update = Change('app.people', (1,), (RowOp(
        OpKind.UPDATE, 'v', (), (('name', ('fn', 'CONCAT', (('col', 'NAME'), ('lit', '!')))),),
        condition=('fn', '=', (('col', 'name'), ('lit', 'Ann')))),), 0)
    moved, lost = line.forward(lineage(line, 'app.people', (1, 1)), (1, 1), update)
    op = moved.ops[0]
    assert lost == []
    assert op.assignments == (('full_name', ('fn', 'CONCAT', (('col', 'full_name'),
                                                              ('lit', '!')))),)
    assert op.condition == ('fn', '=', (('col', 'full_name'), ('lit', 'Ann')))


def test_an_op_reading_a_column_dropped_later_is_reported_lost():
    line = timeline([(20, 'ALTER TABLE people DROP COLUMN age')])
    update = Change('app.people', (1,), (RowOp(
        OpKind.UPDATE, 'v', (), (('name', ('col', 'age')), ('age', ('lit', 4)))),), 0)
    moved, lost = line.forward(lineage(line, 'app.people', (1, 1)), (1, 1), update)
    assert lost == ['age']
    assert moved.ops[0].assignments == (('name', ('col', 'age')),)


def test_a_renamed_table_keeps_its_lineage_and_its_replica_follows_the_name():
    line = timeline([(40, 'RENAME TABLE pets TO animals')])
    change = insert('app.pets', [('id', 1), ('name', 'Rex')])
    moved, _ = line.forward(lineage(line, 'app.pets', (1, 1)), (1, 1), change)
    assert moved.table == 'app.animals'
    assert [s.source for s in line.final_specs] == ['app.people', 'app.animals']
    assert [(s.action, s.target, s.new_name) for s in line.steps] == [
        ('rename', 'pets', 'animals')]
    assert line.ddl_outcome((40, 40)).marks == ()


def test_a_configured_target_is_kept_across_a_rename():
    schema = read_schema_text(SCHEMA, 'app')
    raw = {'app.pets': {'target': 'pet_replica'}}
    line = SchemaTimeline(schema, raw, resolve_tables(raw, schema),
                          [((40, 40), 'app', 'RENAME TABLE pets TO animals')])
    assert [(s.source, s.target) for s in line.final_specs] == [('app.animals', 'pet_replica')]
    assert line.steps == []


def test_drop_ends_a_lineage_and_a_recreated_table_starts_a_new_one():
    line = timeline([(50, 'DROP TABLE pets'),
                     (60, 'CREATE TABLE pets (id INT NOT NULL PRIMARY KEY, kind TEXT)')])
    first = lineage(line, 'app.pets', (1, 1))
    second = lineage(line, 'app.pets', (70, 70))
    assert first != second
    assert line.ddl_outcome((50, 50)).dropped == (first,)
    assert [(s.action, s.target) for s in line.steps] == [('drop', 'pets'), ('create', 'pets')]
    assert line.dropped_sources == ()
    assert dict(line.final_specs[1].columns) == {'id': 'int', 'kind': 'text(65535)'}
    gone = timeline([(50, 'DROP TABLE pets')])
    assert gone.dropped_sources == ('app.pets',)


def test_a_pattern_replicates_a_table_created_later_and_a_named_one_stays_out():
    line = timeline([(10, 'CREATE TABLE orders (id INT PRIMARY KEY, total DECIMAL(9,2))')],
                    tables=('app.p*', 'app.o*'))
    assert [s.source for s in line.final_specs] == ['app.people', 'app.pets', 'app.orders']
    assert line.ddl_outcome((10, 10)).marks == ()
    assert line.epoch_at((5, 5))[1].specs == line.initial_specs
    named = timeline([(10, 'CREATE TABLE orders (id INT PRIMARY KEY)')])
    assert [s.source for s in named.final_specs] == ['app.people', 'app.pets']


def test_a_table_renamed_in_from_an_unreplicated_one_needs_a_resync():
    # An online schema change: the replicated name now holds another table's rows.
    line = timeline([(10, 'RENAME TABLE pets TO pets_old, scratch TO pets')])
    reasons = [(line.final_source(number), reason)
               for number, reason, _ in line.ddl_outcome((10, 10)).marks]
    assert reasons == [('app.pets', 'needs-resync')]
    assert {s.source for s in line.final_specs} == {'app.people', 'app.pets_old', 'app.pets'}


def test_ddl_that_loses_data_or_changes_the_key_needs_a_resync():
    line = timeline([(10, 'ALTER TABLE people MODIFY age TINYINT'),
                     (20, 'ALTER TABLE pets DROP PRIMARY KEY, ADD PRIMARY KEY (name)')])
    assert [r for _, r, _ in line.ddl_outcome((10, 10)).marks] == ['needs-resync']
    assert [r for _, r, _ in line.ddl_outcome((20, 20)).marks] == ['needs-resync']


def test_redaction_follows_a_renamed_table():
    line = timeline([(10, 'RENAME TABLE people TO persons')], redact=['secret'])
    assert {s.source: s.redact for s in line.all_specs}['app.persons'] == ('secret',)


def test_replayed_ddl_is_applied_once():
    ddl = [(10, 'ALTER TABLE people ADD COLUMN city TEXT')]
    once, twice = timeline(ddl), timeline(ddl + ddl)
    assert once.steps == twice.steps and len(once.steps) == 1
