"""The recorded audit fixture as parsed events and the table specs that replicate it."""

import os

from changeflow.config import TableSpec
from changeflow.transforms.audit_log import parse_audit_line

AUDIT = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'data', 'audit')

SHOP_TABLES = (
    TableSpec('shop.orders', ('tenant_id', 'order_id'), 'orders', (
        ('tenant_id', 'integer'), ('order_id', 'integer'), ('note', 'text'),
        ('status', 'string'), ('qty', 'integer'), ('amount', 'decimal(10,2)'),
        ('ordered_on', 'date'))),
    TableSpec('shop.customers', ('id',), 'customers', (
        ('id', 'integer'), ('name', 'string'), ('email', 'string'), ('visits', 'integer'),
        ('tier', 'string')), redact=('email',)),
    TableSpec('shop.notes', ('id',), 'notes', (('id', 'integer'), ('body', 'text'))),
    TableSpec('shop.events', ('id',), 'events', (
        ('id', 'integer'), ('kind', 'string'), ('at', 'datetime'))),
)


def audit_lines():
    with open(os.path.join(AUDIT, 'server_audit.log'), encoding='utf-8') as f:
        return f.read().splitlines()


def audit_events():
    """Every recorded line as an AuditEvent, positions as file:line."""
    return [parse_audit_line(line, f'server_audit.log:{n}')
            for n, line in enumerate(audit_lines(), 1)
            if 'VALUES (100, ' not in line]  # the statement cut at the log limit


def query_event(sql_fragment):
    """The recorded QUERY event whose SQL contains ``sql_fragment`` (exactly one)."""
    found = [e for e in audit_events() if e.operation == 'QUERY' and sql_fragment in e.object]
    if len(found) > 1:  # e.g. a PREPARE quoting the statement it prepares
        found = [e for e in found if e.object.startswith(sql_fragment)]
    assert len(found) == 1, (sql_fragment, len(found))
    return found[0]
