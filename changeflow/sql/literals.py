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

__all__ = ['MARKER', 'HexLiteral', 'mask_literals', 'unescape_mysql_string', 'number_literal',
           'numbered_shape']

# One match per literal or comment: a possessive run skips everything that
# cannot start one (words, `identifiers`, punctuation), then the literal is
# captured. A word directly followed by a quote (x'41', b'01', _utf8mb4'a') is
# not skipped, so its literal is seen. ``split`` returns, per match: the text
# before it (empty), the skipped run, then one group per literal kind.
_TOKEN = re.compile(r"""
    ((?:[A-Za-z_$][\w$]*+(?!['"])
     | `(?:[^`]++|``)*+`
     | [^\w$'"`#/\-]++
     | -(?!-[ \t])
     | /(?!\*)
    )*+)
    (?:
      '((?:[^'\\]++|\\.|'')*+)'
    | (\d++)(?![\w$.eE])
    | ((?:\d++(?:\.\d*+)?|\.\d++)(?:[eE][-+]?\d++)?)(?![\w$])
    | (/\*.*?\*/|--[ \t][^\n]*+|\#[^\n]*+)
    | ([xX]'[0-9a-fA-F]*+'|0x[0-9a-fA-F]++|[bB]'[01]*+'|"(?:[^"\\]++|\\.|"")*+")
    )
""", re.S | re.X)
_GROUPS = 7  # split() pieces per match: before, skipped, str, int, number, comment, other
MARKER = '\0'  # stands for a literal in a shape; NUL cannot occur in SQL outside a literal

_ESCAPES = {'0': '\0', "'": "'", '"': '"', 'b': '\b', 'n': '\n', 'r': '\r',
            't': '\t', 'Z': '\x1a', '\\': '\\', '%': '\\%', '_': '\\_'}
_ESCAPE = re.compile(r"\\(.)|''|\"\"", re.S)



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
    :data:`MARKER` and comments by a space, and the literals' values in order."""
    pieces = _TOKEN.split(sql)
    if len(pieces) == 1:
        return sql, []
    shape = []
    params: List[Any] = []
    for i in range(0, len(pieces) - 1, _GROUPS):
        shape.append(pieces[i])
        shape.append(pieces[i + 1])
        text = pieces[i + 2]
        if text is not None:
            params.append(text if '\\' not in text and "''" not in text
                          else unescape_mysql_string(text))
        elif pieces[i + 3] is not None:
            params.append(int(pieces[i + 3]))
        elif pieces[i + 4] is not None:
            params.append(number_literal(pieces[i + 4]))
        elif pieces[i + 5] is not None:
            shape.append(' ')
            continue
        else:
            params.append(_other_literal(pieces[i + 6]))
        shape.append(MARKER)
    shape.append(pieces[-1])
    return ''.join(shape), params


def numbered_shape(shape: str) -> str:
    """The shape as sqlglot parses it: markers become :p0, :p1, ..."""
    parts = shape.split(MARKER)
    return ''.join(part + (f':p{i}' if i < len(parts) - 1 else '') for i, part in enumerate(parts))

