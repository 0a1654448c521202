"""MySQL literals in logged statements: masking them out of a statement's
shape, and their values.

A statement is reduced to its *shape* (each literal replaced by
:data:`MARKER`, comments by a space) so that statements differing only in
their values share one compiled plan; the literals' values come back in
order.
"""

import decimal
import re
from typing import Any, List, Tuple

from changeflow.sql.errors import SqlChangeError

__all__ = ['MARKER', 'HexLiteral', 'mask_literals', 'unescape_mysql_string', 'number_literal',
           'numbered_shape']

# One match per literal or comment: a possessive run skips everything that
# cannot start one (words, `identifiers`, punctuation), then the literal is
# captured. The match always ends at a literal, a comment, the end of the
# statement or one raw token, so the scan never restarts inside a word
# (which would mask the 2 of `note2`) and is linear in the statement.
# ``split`` returns, per match: the text before it (always empty), the
# skipped run, then one group per literal kind.
_TOKEN = re.compile(r"""
    ((?:[A-Za-z_$\x80-\U0010ffff][\w$\x80-\U0010ffff]*+(?!['"])  # a word not directly before a quote
     | `(?:[^`]++|``)*+`
     | [^\w$'"`\#/\-.\x80-\U0010ffff]++
     | -(?!-(?:[\x00-\x20]|\Z))
     | /(?!\*)
     | \.(?!\d)
    )*+)
    (?:
      '((?:[^'\\]++|\\.|'')*+)'
    | (\d++)(?![\w$.])
    | ((?:\d++(?:\.\d*+)?|(?<![\w$`])\.\d++)(?:[eE][-+]?\d++)?)(?![\w$])
    | (/\*.*?\*/|--(?:[\x00-\x20][^\n]*+|\Z)|\#[^\n]*+)
    | ([xX]'[0-9a-fA-F]*+'|0x[0-9a-fA-F]++(?![\w$])|[bB]'[01]*+'|"(?:[^"\\]++|\\.|"")*+")
    | (\.?[\w$\x80-\U0010ffff]++|.)   # a raw token, kept as it is: 2fa, t.1e3
    | \Z
    )
""", re.S | re.X)
_GROUPS = 8  # split() pieces per match: before, skipped, str, int, number, comment, other, raw
MARKER = '\0'  # stands for a literal in a shape; NUL cannot occur in SQL outside a literal

_ESCAPES = {'0': '\0', "'": "'", '"': '"', 'b': '\b', 'n': '\n', 'r': '\r',
            't': '\t', 'Z': '\x1a', '\\': '\\', '%': '\\%', '_': '\\_'}
_ESCAPE = re.compile(r"\\(.)|''|\"\"", re.S)
_UNTERMINATED = {"'": 'string literal', '"': 'string literal', '`': 'quoted identifier',
                 '/': 'comment'}


def unescape_mysql_string(body: str, quote: str = "'") -> str:
    """The value of a MySQL string literal's body (between the quotes)."""
    if '\\' not in body and quote * 2 not in body:
        return body

    def replace(match):
        char = match.group(1)
        if char is None:
            return match.group(0)[0]
        return _ESCAPES.get(char, char)
    return _ESCAPE.sub(replace, body)


def number_literal(text: str):
    if 'e' in text or 'E' in text:
        return float(text)
    if '.' in text:
        return decimal.Decimal(text)
    return int(text)


class HexLiteral(bytes):
    """A hexadecimal literal (``x'41'``, ``0x41``): a binary string that is an
    unsigned integer in numeric context (``x'41' + 0`` is 65), unlike a quoted
    string of the same bytes."""
    __slots__ = ()


def _other_literal(text: str):
    if text[0] == '"':
        return unescape_mysql_string(text[1:-1], '"')
    if text[0] == '0':
        return HexLiteral(bytes.fromhex(text[2:]))
    if text[0] in 'xX':
        return HexLiteral(bytes.fromhex(text[2:-1]))
    return int(text[2:-1] or '0', 2)


def mask_literals(sql: str) -> Tuple[str, List[Any]]:
    """(shape, literal values): the statement with each literal replaced by
    :data:`MARKER` and comments by a space, and the literals' values in order.

    Raises SqlChangeError ('unparseable-sql') for a string, quoted identifier
    or comment that is not closed.
    """
    pieces = iter(_TOKEN.split(sql))
    next(pieces)  # the text before the first match: empty, matches are contiguous
    shape: List[str] = []
    params: List[Any] = []
    add, param = shape.append, params.append
    for skipped, text, integer, number, comment, other, raw, _ in zip(*[pieces] * _GROUPS):
        add(skipped)
        if text is not None:
            param(text if '\\' not in text and "''" not in text else unescape_mysql_string(text))
        elif integer is not None:
            param(int(integer))
        elif number is not None:
            param(number_literal(number))
        elif comment is not None:
            add(' ')
            continue
        elif other is not None:
            param(_other_literal(other))
        elif raw is not None:
            if raw in _UNTERMINATED:  # a quote, or the `/` of `/*`, that nothing closes
                raise SqlChangeError('unparseable-sql', f'unterminated {_UNTERMINATED[raw]}')
            add(raw)
            continue
        else:
            continue  # the end of the statement
        add(MARKER)
    return ''.join(shape), params


def numbered_shape(shape: str) -> str:
    """The shape as sqlglot parses it: markers become :p0, :p1, ..."""
    parts = shape.split(MARKER)
    return ''.join(part + (f':p{i}' if i < len(parts) - 1 else '') for i, part in enumerate(parts))
