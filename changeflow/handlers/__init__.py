"""Typed handlers over change events: table models, handler definitions, the
handlers branch (see the README's Handlers section)."""

from changeflow.handlers.events import (
    EVENT_KINDS, INSERT, MODIFY, REMOVE, InsertEvent, ModifyEvent, RemoveEvent, StreamEvent,
    change_id)
from changeflow.handlers.models import ModelMismatch, fit, model_columns, model_key
from changeflow.handlers.registry import (
    MAP, SERIES, Handler, Handlers, RetryPolicy, TransientError, is_transient)

__all__ = ['EVENT_KINDS', 'INSERT', 'MODIFY', 'REMOVE', 'InsertEvent', 'ModifyEvent',
           'RemoveEvent', 'StreamEvent', 'change_id', 'ModelMismatch', 'fit', 'model_columns',
           'model_key', 'MAP', 'SERIES', 'Handler', 'Handlers', 'RetryPolicy', 'TransientError',
           'is_transient']
