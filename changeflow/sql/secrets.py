"""Masking passwords out of text kept for people (dead letters, logs).

Statements that set or check a password (``CREATE USER ... IDENTIFIED BY
'...'``, ``IDENTIFIED WITH plugin AS '...'``, ``GRANT ... IDENTIFIED BY``,
``SET PASSWORD = ...``, ``PASSWORD('...')``, ``authentication_string``,
``MASTER_PASSWORD``) are never replicated, so nothing is lost by masking: from
the first such keyword on, every quoted literal becomes ``'*****'`` (the
server's own ``server_audit`` masks ``IDENTIFIED BY`` the same way). It works
on a bare statement and on a logged line, whose literals the plugin escapes
as ``\\'...\\'``; an unterminated literal (a statement cut at the log limit)
is masked to the end.

Secrets a job needs at run time (a webhook's ``Authorization`` header) are
not written in its config: values there name environment variables,
``${SLACK_TOKEN}`` (:func:`expand_env`), resolved where the job sends, and
every resolved value is masked out of error text (:func:`mask_values`).
"""

import os
import re
from typing import Iterable, List, Mapping, Optional

__all__ = ['MASK', 'mask_secrets', 'mask_url_passwords', 'env_names', 'expand_env',
           'mask_values']

MASK = '*****'

_SECRET = re.compile(
    r'\b(?:IDENTIFIED|SET\s+PASSWORD|(?:OLD_)?PASSWORD\s*\(|authentication_string|MASTER_PASSWORD)',
    re.I)
_QUOTED = re.compile(r"""
    (?P<tail>',\d*+(?:,[^,\n]*+){0,2}+\Z)      # the end of a logged line: kept
  | \\'.*?(?:\\'|\Z)                          # a literal as the plugin escapes it
  | '(?:[^'\\]|\\.|'')*+(?:'|\Z)
  | "(?:[^"\\]|\\.|"")*+(?:"|\Z)
""", re.S | re.X)


# scheme://user:PASSWORD@ (SQLAlchemy also takes an unencoded '/' or ':' in it)
_URL_PASSWORD = re.compile(r'(?P<head>\b[A-Za-z][A-Za-z0-9+.-]*://[^\s:/@]*:)[^\s@]*@')


def _masked(match) -> str:
    text = match.group(0)
    if match.group('tail') is not None:
        return text
    if text.startswith('\\'):
        return f"\\'{MASK}\\'"
    return f'{text[0]}{MASK}{text[0]}'


def mask_secrets(text: str) -> str:
    """``text`` with the literals after a password keyword masked; unchanged
    (the same object) when it has none. Literals are paired from each keyword
    on, the last first, so a keyword inside a literal (a quote out of place,
    a mutated statement) still has the literals after it masked."""
    starts = [match.start() for match in _SECRET.finditer(text)]
    for start in reversed(starts):
        text = text[:start] + _QUOTED.sub(_masked, text[start:])
    return text


def mask_url_passwords(text: str) -> str:
    """``text`` with the password of every ``scheme://user:password@host``
    in it shown as ``***``, as SQLAlchemy's ``hide_password`` renders it."""
    return _URL_PASSWORD.sub(r'\g<head>***@', text)


_ENV = re.compile(r'\$\{([A-Za-z_][A-Za-z0-9_]*)\}')


def env_names(text: str) -> List[str]:
    """The environment variables ``text`` names as ``${NAME}``."""
    return _ENV.findall(text)


def expand_env(text: str, environ: Optional[Mapping[str, str]] = None) -> str:
    """``text`` with each ``${NAME}`` replaced by that environment variable;
    KeyError naming (only naming) the first one that is not set."""
    environ = os.environ if environ is None else environ

    def value(match):
        name = match.group(1)
        if name not in environ:
            raise KeyError(f'environment variable {name} is not set')
        return environ[name]
    return _ENV.sub(value, text)


def mask_values(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every occurrence of each secret (the longest first) as ``***``."""
    for secret in sorted((s for s in secrets if s), key=len, reverse=True):
        text = text.replace(secret, '***')
    return text
