"""MySQL literals in logged statements: masking them out of a statement's
shape, and their values.

A statement is reduced to its *shape* (each literal replaced by
:data:`MARKER`, comments by a space) so that statements differing only in
their values share one compiled plan; the literals' values come back in
order.
"""

import datetime
import decimal
import re
from typing import Any, Dict, List, NamedTuple, Optional, Set, Tuple

from changeflow.sql.errors import SqlChangeError

__all__ = ['MARKER', 'DEFAULT_SERVER_VERSION', 'HexLiteral', 'mask_literals', 'KnownShapes',
           'unwrap_executable_comments', 'session_flags', 'unescape_mysql_string',
           'number_literal', 'numbered_shape']

DEFAULT_SERVER_VERSION = 101100  # MariaDB 10.11.0, as /*!NNNNNN ... */ comments number versions
MARIADB_VERSION_FLOOR = 100000  # MariaDB 10.0: versions below are MySQL's

# One match per literal or comment: a possessive run skips everything that
# cannot start one (words, `identifiers`, punctuation), then the literal is
# captured. The match always ends at a literal, a comment, the end of the
# statement or one raw token, so the scan never restarts inside a word
# (which would mask the 2 of `note2`) and is linear in the statement.
# ``split`` returns, per match: the text before it (always empty), the
# skipped run, then one group per literal kind (see _GROUPS).
# Character sets a string may be introduced with (MariaDB 10.11 SHOW CHARACTER SET,
# plus MySQL 8's gb18030 and the utf8 alias); longest names first.
_CHARSETS = sorted((
    'armscii8', 'ascii', 'big5', 'binary', 'cp1250', 'cp1251', 'cp1256', 'cp1257', 'cp850',
    'cp852', 'cp866', 'cp932', 'dec8', 'eucjpms', 'euckr', 'gb18030', 'gb2312', 'gbk', 'geostd8',
    'greek', 'hebrew', 'hp8', 'keybcs2', 'koi8r', 'koi8u', 'latin1', 'latin2', 'latin5', 'latin7',
    'macce', 'macroman', 'sjis', 'swe7', 'tis620', 'ucs2', 'ujis', 'utf16', 'utf16le', 'utf32',
    'utf8', 'utf8mb3', 'utf8mb4'), key=len, reverse=True)
_UTF8 = frozenset(('utf8', 'utf8mb3', 'utf8mb4'))
_WIDE = frozenset(('ucs2', 'utf16', 'utf16le', 'utf32'))  # code units wider than a byte
_TEMPLATE = r"""
    ((?:[A-CE-SU-Za-ce-su-z$\x80-\U0010ffff][\w$\x80-\U0010ffff]*+(?!['"])  # a word not right before a quote
     | [dDtT](?!(?i:ate|ime(?:stamp)?)\s*+')[\w$\x80-\U0010ffff]*+(?!['"])  # nor DATE '...'
     | _[\w$\x80-\U0010ffff]*+(?!\s*+['"])              # nor an introducer: _utf8mb4 'x'
     | `(?:[^`]++|``)*+`
     | [^\w$'"`\#/\-.\x80-\U0010ffff]++
     | -(?!-(?:[\x00-\x20]|\Z))
     | /(?!\*)
     | \.(?!\d)
    )*+)
    (?:
      STRING_ALONE                                      # a string alone: the common case
    | INTEGER
    | ((?:\d++(?:\.\d*+)?|(?<![\w$`])\.\d++)(?:[eE][-+]?\d++)?)(?![\w$])
    | (/\*.*?\*/|--(?=[\x00-\x20]|\Z)[^\n]*+|\#[^\n]*+)
    | (INTRO?STRING(?:(?:\s++|/\*.*?\*/)*+STRING)*+     # introduced or adjacent strings
      |(?i:date|time(?:stamp)?)\s*+'[^'\\]*+'
      |[xX]'[0-9a-fA-F]*+'|0x[0-9a-fA-F]++(?![\w$])|[bB]'[01]*+'|0b[01]++(?![\w$])
      |IDENT)
    | (\.?[\w$\x80-\U0010ffff]++|.)                    # a raw token, kept as it is: 2fa, t.1e3
    | \Z
    )
"""
_GROUPS = 8  # split() pieces per match: before, skipped, then the 6 groups above


# The two commonest literals, shared with the known shapes' regexes (below).
_STRING_ALONE = r"""'(SQ_BODY)'(?!\s*+['"/])"""
_INTEGER = r'(\d++)(?![\w$.])'


def _string_body(no_backslash_escapes: bool) -> str:
    return r"(?:[^']++|'')*+" if no_backslash_escapes else r"(?:[^'\\]++|\\.|'')*+"


def _token_pattern(no_backslash_escapes: bool, ansi_quotes: bool):
    sq = _string_body(no_backslash_escapes)
    dq = sq.replace("'", '"')
    string = f"'{sq}'" if ansi_quotes else f"""(?:'{sq}'|"{dq}")"""
    intro = r"(?:(?i:_(?:%s))(?![\w$])\s*+|[nN](?='))" % '|'.join(_CHARSETS)
    pattern = (_TEMPLATE.replace('STRING_ALONE', _STRING_ALONE).replace('INTEGER', _INTEGER)
               .replace('SQ_BODY', sq).replace('INTRO', intro)
               .replace('STRING', string)
               .replace('IDENT', f'"{dq}"' if ansi_quotes else '(?!)'))
    return re.compile(pattern, re.S | re.X)


_PATTERNS = {(nbe, ansi): _token_pattern(nbe, ansi) for nbe in (False, True) for ansi in (False, True)}
_DEFAULT_PATTERN = _PATTERNS[False, False]
_STRING_PARTS = {nbe: re.compile(r"""\s+|/\*.*?\*/|'(%s)'|"(%s)"|(_\w+|[nN])""" % (
    (r"(?:[^']|'')*", r'(?:[^"]|"")*') if nbe else (r"(?:[^'\\]|\\.|'')*", r'(?:[^"\\]|\\.|"")*')),
    re.S) for nbe in (False, True)}
MARKER = '\0'  # stands for a literal in a shape; NUL cannot occur in SQL outside a literal

_ESCAPES = {'0': '\0', "'": "'", '"': '"', 'b': '\b', 'n': '\n', 'r': '\r',
            't': '\t', 'Z': '\x1a', '\\': '\\', '%': '\\%', '_': '\\_'}
# A doubled quote is an escape only of the literal's own quote ('it''s', "say ""hi"""):
# 'a""b' is a, two double quotes, b (as MariaDB reads it).
_ESCAPE = {"'": re.compile(r"\\(.)|''", re.S), '"': re.compile(r'\\(.)|""', re.S)}
# Escapes str.replace resolves (unescape_mysql_string's fast path): those of _ESCAPES
# whose value holds no backslash, \\ and \' aside.
_COMMON_ESCAPES = tuple(('\\' + char, value) for char, value in _ESCAPES.items()
                        if '\\' not in value and char not in '\\\'')
_UNTERMINATED = {"'": 'string literal', '"': 'string literal', '`': 'quoted identifier',
                 '/': 'comment'}


def unescape_mysql_string(body: str, quote: str = "'", no_backslash_escapes: bool = False) -> str:
    """The value of a MySQL string literal's body (between the quotes); with
    NO_BACKSLASH_ESCAPES a backslash is an ordinary character."""
    if no_backslash_escapes:
        return body.replace(quote * 2, quote)
    if '\\' not in body and quote * 2 not in body:
        return body
    if quote == "'" and "''" not in body and '\1' not in body:
        # The common escapes by str.replace, `\\` first (through a sentinel) so that
        # `\\n` reads as `\` + `n`; anything rarer (\%, \_, \x) takes the regex, and
        # so do doubled quotes.
        text = body.replace('\\\\', '\1').replace("\\'", "'")
        if '\\' in text:
            for pair, char in _COMMON_ESCAPES:
                if pair in text:
                    text = text.replace(pair, char)
            if '\\' in text:
                return _ESCAPE[quote].sub(_unescaped, body)
        return text.replace('\1', '\\') if '\1' in text else text
    return _ESCAPE[quote].sub(_unescaped, body)


def _unescaped(match) -> str:
    char = match.group(1)
    if char is None:
        return match.group(0)[0]
    return _ESCAPES.get(char, char)


def number_literal(text: str):
    if 'e' in text or 'E' in text:
        return float(text)
    if '.' in text:
        return decimal.Decimal(text)
    return int(text)


class HexLiteral(bytes):
    """A hexadecimal (``0x41``) or bit-value (``b'1000001'``, ``0b1000001``)
    literal: a binary string that is an unsigned integer in numeric context
    (``0x41 + 0`` and ``b'1000001' + 0`` are 65), unlike a quoted string of the
    same bytes. MariaDB reads ``x'41'`` as a plain binary string (``x'41' + 0``
    is 0); MySQL reads it as a HexLiteral."""
    __slots__ = ()


def _bits(digits: str) -> bytes:
    """b'...' / 0b...: the bits right-aligned in whole bytes (b'' is empty)."""
    return int(digits, 2).to_bytes((len(digits) + 7) // 8, 'big') if digits else b''


def _hex_or_bits(text: str, server_version: int):
    if text[1] == 'x':
        digits = text[2:]
        return HexLiteral(bytes.fromhex(digits if len(digits) % 2 == 0 else '0' + digits))
    if text[1] == 'b':
        return HexLiteral(_bits(text[2:]))
    if text[0] in 'bB':
        return HexLiteral(_bits(text[2:-1]))
    value = bytes.fromhex(text[2:-1])  # x'..' has an even number of digits, or it failed
    return value if server_version >= MARIADB_VERSION_FLOOR else HexLiteral(value)


def _strings(text: str, no_backslash_escapes: bool):
    """The value of introduced (_binary'..', N'..') or adjacent ('a' 'b') strings."""
    introducer = None
    parts = []
    for match in _STRING_PARTS[no_backslash_escapes].finditer(text):
        single, double, prefix = match.groups()
        if prefix is not None:
            introducer = prefix.lower()
        elif single is not None:
            parts.append(unescape_mysql_string(single, "'", no_backslash_escapes))
        elif double is not None:
            parts.append(unescape_mysql_string(double, '"', no_backslash_escapes))
    value = ''.join(parts)
    if introducer is None or introducer == 'n' or introducer[1:] in _UTF8:
        return value
    charset = introducer[1:]
    if charset == 'binary':
        return value.encode('utf-8', 'surrogateescape')
    if charset in _WIDE and value or not value.isascii():
        # The log holds the statement's bytes as UTF-8 text: bytes of another
        # character set are not known exactly.
        raise SqlChangeError('unsupported-sql', f'a string with the {introducer} introducer '
                             'whose bytes the log does not give exactly')
    return value


_DATE = r'(\d{4}|\d{2})[^\d\s](\d{1,2})[^\d\s](\d{1,2})'
_TIME = r'(\d{1,2})[^\d\s](\d{1,2})(?:[^\d\s](\d{1,2}))?(?:\.(\d{1,6}))?'
_TEMPORAL = {
    'date': re.compile(_DATE),
    'timestamp': re.compile(_DATE + r'(?:(?:T|\s+)' + _TIME + ')?'),
    'time': re.compile(r'(-)?(?:(\d+)\s+)?(\d{1,3}):(\d{1,2})(?::(\d{1,2}))?(?:\.(\d{1,6}))?'),
}
_UNDELIMITED = re.compile(r'(\d{8}|\d{6})((?:\d{6})?)(\.\d{1,6})?')  # YYYYMMDD[HHMMSS[.ffffff]]
_TEMPORAL_HEAD = re.compile(r"(\w+)\s*'(.*)'", re.S)


def _year(text: str) -> int:
    """Two-digit years: 70-99 are 1970-1999, 00-69 are 2000-2069."""
    year = int(text)
    return year if len(text) == 4 else year + (1900 if year >= 70 else 2000)


def _temporal(text: str):
    """DATE '..' -> date, TIMESTAMP '..' -> datetime, TIME '..' -> its text as
    TIME values print ('[-]HH:MM:SS[.ffffff]'), in MySQL's relaxed forms (any
    punctuation as a delimiter, two-digit years, undelimited digits)."""
    kind, body = _TEMPORAL_HEAD.fullmatch(text).groups()
    kind = kind.lower()
    body = body.strip()
    digits = _UNDELIMITED.fullmatch(body) if kind != 'time' else None
    if digits:  # 20240101, 240101, 20240101103000: fixed-width fields
        date, time, fraction = digits.groups()
        body = f'{date[:-4]}-{date[-4:-2]}-{date[-2:]}' + (
            f' {time[:2]}:{time[2:4]}:{time[4:]}{fraction or ""}' if time else '')
    match = _TEMPORAL[kind].fullmatch(body)
    try:
        if match is None:
            raise ValueError(body)
        if kind == 'time':
            sign, days, hours, minutes, seconds, fraction = match.groups()
            hours = int(hours) + 24 * int(days or 0)
            if hours > 838 or int(minutes) > 59 or int(seconds or 0) > 59:
                raise ValueError(body)
            value = f'{sign or ""}{hours:02d}:{int(minutes):02d}:{int(seconds or 0):02d}'
            return value + (f'.{fraction.ljust(6, "0")}' if fraction else '')
        year, month, day = match.groups()[:3]
        date = datetime.date(_year(year), int(month), int(day))
        if kind == 'date':
            return date
        hour, minute, second, fraction = match.groups()[3:]
        return datetime.datetime(date.year, date.month, date.day, int(hour or 0), int(minute or 0),
                                 int(second or 0), int((fraction or '0').ljust(6, '0')))
    except ValueError:
        raise SqlChangeError('unsupported-sql', f'{kind.upper()} literal {body[:40]!r} is not '
                             'read by changeflow') from None


# Executable comments: /*! ... */, /*!NNNNN ... */, /*M! ... */, /*M!NNNNNN ... */.
_SCAN = {nbe: re.compile(r"""
    (/\*(M?)!(\d{5}\d?)?)                   # an executable comment opens
  | (\*/)
  | '%s' | "%s" | `(?:[^`]|``)*`            # quoted: copied as they are
  | /\*.*?\*/ | --(?=[\x00-\x20]|\Z)[^\n]* | \#[^\n]*
  | [^'"`/*\#\-]+ | .
""" % ((r"(?:[^']|'')*", r'(?:[^"]|"")*') if nbe else (r"(?:[^'\\]|\\.|'')*", r'(?:[^"\\]|\\.|"")*')),
    re.S | re.X) for nbe in (False, True)}
# The rest of a comment the server skips, to its */ (one comment may nest in it).
_SKIPPED_COMMENT = re.compile(r'(?:[^/*]++|/(?!\*)|\*(?!/)|/\*.*?\*/)*+\*/', re.S)


def _executes(mariadb_only: bool, version: str, server_version: int) -> bool:
    """Whether the server runs an executable comment's content (MariaDB's
    lexer: it skips MySQL-style comments numbered 50700-99999, MySQL 5.7+
    features; MySQL reads /*M! as an ordinary comment)."""
    mariadb = server_version >= MARIADB_VERSION_FLOOR
    if mariadb_only and not mariadb:
        return False
    if version is None:
        return True
    number = int(version)
    return number <= server_version and (
        mariadb_only or not mariadb or number < 50700 or number > 99999)


def unwrap_executable_comments(sql: str, server_version: int = DEFAULT_SERVER_VERSION,
                               no_backslash_escapes: bool = False) -> str:
    """The statement as the server ran it: the content of each executable
    comment it runs (``/*!40101 SET NAMES utf8 */``) kept, without the
    comment's markers; those it skips (a later version's, ``/*M!`` on
    MySQL) become a space. Ordinary comments and quoted text are kept.

    Raises SqlChangeError ('unparseable-sql') for an executable comment that
    is not closed or holds another (the server refuses both).
    """
    scan = _SCAN[no_backslash_escapes]
    out: List[str] = []
    position, inside, end = 0, False, len(sql)
    while position < end:
        match = scan.match(sql, position)
        position = match.end()
        opener, mariadb_only, version, closer = match.group(1, 2, 3, 4)
        if opener is not None:
            if inside:
                raise SqlChangeError('unparseable-sql', 'an executable comment inside another')
            if _executes(bool(mariadb_only), version, server_version):
                inside = True
            else:
                skipped = _SKIPPED_COMMENT.match(sql, position)
                if skipped is None:
                    raise SqlChangeError('unparseable-sql', 'unterminated comment')
                position = skipped.end()
            out.append(' ')
        elif closer is not None and inside:
            inside = False
            out.append(' ')
        else:
            out.append(match.group())
    if inside:
        raise SqlChangeError('unparseable-sql', 'unterminated executable comment')
    return ''.join(out)


def _other_literal(text: str, no_backslash_escapes: bool, server_version: int):
    """The value of a rarer literal, told by its first characters."""
    if text[0] == '0' or text[0] in 'xXbB' and text[1] == "'":
        return _hex_or_bits(text, server_version)
    if text[0] in 'dDtT':
        return _temporal(text)
    return _strings(text, no_backslash_escapes)  # '..' '..', "..", _charset'..', N'..'


def mask_literals(sql: str, no_backslash_escapes: bool = False, ansi_quotes: bool = False,
                  server_version: int = DEFAULT_SERVER_VERSION) -> Tuple[str, List[Any]]:
    """(shape, literal values): the statement with each literal replaced by
    :data:`MARKER` and comments by a space, and the literals' values in order.

    ``no_backslash_escapes`` and ``ansi_quotes`` are the connection's sql_mode
    flags: a backslash is then an ordinary character in strings, and ``"x"``
    an identifier (it comes back as `` `x` `` in the shape). ``server_version``
    (MariaDB 10.11.0 is 101100, MySQL 8.0.36 is 80036) decides how ``x'41'``
    reads.

    Executable comments (``/*!50003 ... */``, ``/*M! ... */``) are honoured:
    the content of those the server runs is part of the statement (see
    :func:`unwrap_executable_comments`).

    Values: str; int, Decimal (``1.5``, ``.5``) or float (``1e3``); bytes for
    ``_binary'..'`` (and MariaDB's ``x'..'``); :class:`HexLiteral` for
    hexadecimal and bit literals; date / datetime for ``DATE '..'`` /
    ``TIMESTAMP '..'``, the text of ``TIME '..'``. Introduced (``_utf8mb4'..'``,
    ``N'..'``) and adjacent (``'a' 'b'``) strings are one literal.

    Raises SqlChangeError: 'unparseable-sql' for a string, quoted identifier
    or comment that is not closed; 'unsupported-sql' for a literal whose value
    the log does not tell exactly (non-ASCII text introduced with a character
    set other than UTF-8, an invalid date).
    """
    if '/*' in sql and ('/*!' in sql or '/*M!' in sql):
        sql = unwrap_executable_comments(sql, server_version, no_backslash_escapes)
    pattern = _PATTERNS[no_backslash_escapes, ansi_quotes] if (
        no_backslash_escapes or ansi_quotes) else _DEFAULT_PATTERN
    pieces = iter(pattern.split(sql))
    next(pieces)  # the text before the first match: empty, matches are contiguous
    shape: List[str] = []
    params: List[Any] = []
    add, param = shape.append, params.append
    for skipped, text, integer, number, comment, other, raw, _ in zip(*[pieces] * _GROUPS):
        add(skipped)
        if text is not None:
            param(text if '\\' not in text and "''" not in text
                  else unescape_mysql_string(text, "'", no_backslash_escapes))
        elif integer is not None:
            param(int(integer))
        elif number is not None:
            param(number_literal(number))
        elif comment is not None:
            add(' ')
            continue
        elif other is not None:
            if ansi_quotes and other[0] == '"':  # "x" is an identifier
                add('`' + other[1:-1].replace('""', '"').replace('`', '``') + '`')
                continue
            param(_other_literal(other, no_backslash_escapes, server_version))
        elif raw is not None:
            if raw in _UNTERMINATED:  # a quote, or the `/` of `/*`, that nothing closes
                raise SqlChangeError('unparseable-sql', f'unterminated {_UNTERMINATED[raw]}')
            add(raw)
            continue
        else:
            continue  # the end of the statement
        add(MARKER)
    return ''.join(shape), params


_UTF8_CLIENT = frozenset(('', 'utf8', 'utf8mb3', 'utf8mb4'))


def session_flags(session, sql: str) -> Tuple[bool, bool]:
    """(no_backslash_escapes, ansi_quotes) for ``sql`` run in ``session`` (a
    :class:`~changeflow.transforms.transactions.SessionState`).

    Raises SqlChangeError: 'unknown-sql-mode' when the connection's sql_mode
    is not known from the log and the statement holds a backslash or a double
    quote (the two characters whose meaning it changes); 'unsupported-sql-mode'
    for ``||`` under PIPES_AS_CONCAT and for sql_mode ORACLE; 'unsupported-charset' for non-ASCII text
    from a client whose character set is not UTF-8.
    """
    mode = session.sql_mode
    if mode is None:
        if '\\' in sql or '"' in sql:
            raise SqlChangeError('unknown-sql-mode', 'the connection set sql_mode to a value the '
                                 'log does not show, and the statement has a backslash or a "')
        flags = (False, False)
    elif not mode:
        flags = (False, False)
    else:
        flags = ('NO_BACKSLASH_ESCAPES' in mode, 'ANSI_QUOTES' in mode)
        if 'ORACLE' in mode:  # MariaDB then parses Oracle's syntax
            raise SqlChangeError('unsupported-sql-mode', 'sql_mode ORACLE')
        if 'PIPES_AS_CONCAT' in mode and '||' in sql:
            raise SqlChangeError('unsupported-sql-mode', '|| under PIPES_AS_CONCAT')
    if session.charset not in _UTF8_CLIENT and not sql.isascii():
        raise SqlChangeError('unsupported-charset', f'non-ASCII text from a client whose '
                             f'character set is {session.charset}')
    return flags


def numbered_shape(shape: str) -> str:
    """The shape as sqlglot parses it: markers become :p0, :p1, ..."""
    parts = shape.split(MARKER)
    return ''.join(part + (f':p{i}' if i < len(parts) - 1 else '') for i, part in enumerate(parts))


# Known shapes ----------------------------------------------------------------
#
# The general scan above costs ~4.4 µs for the statements of
# bench/parse_throughput.py (94 characters on average); matching one against
# a regex compiled for its shape, values included, ~1.4 µs. A shape's regex
# is its text between literals, escaped, with each literal as the exact
# alternative of the general pattern that read it there: a plain integer or
# a plain single-quoted string.
#
# Why a match gives what mask_literals gives: the statement the regex was
# built from (the model) was scanned with only those two literal kinds, no
# comment and no other literal. A statement the regex matches has the same
# text between its literals and literals of the same kinds; the general scan
# reads the text between literals the same way, because what it reads of a
# neighbouring literal is only its first or last character (a digit, or a
# quote: the same for every literal of one kind) -- except where the text
# before a string ends in a word (``x'41'``, ``N'a'``, ``_utf8'a'``) or in
# DATE/TIME/TIMESTAMP or an ``_introducer`` before spaces (``DATE '2024-01-01'``):
# there the string's body decides what the scan reads, so such models are
# not kept. A model with a comment (an executable one included) is not kept
# either, so a statement matched holds ``/*`` only inside its strings, which
# unwrap_executable_comments leaves as they are. tests/test_literals.py
# compares both on generated statements.

# A literal kind -> the alternative of the general pattern that reads it. An
# integer starts with an ASCII digit: the scan reads other digits (٣) as a word.
_LITERAL_REGEX = {int: '(?=[0-9])' + _INTEGER,
                  str: _STRING_ALONE.replace('SQ_BODY', _string_body(False))}
# Text before a string whose body would decide how the general scan reads it.
_STRING_CONTEXT = re.compile(
    r'(?:[\w$\x80-\U0010ffff]'
    r'|(?<![\w$\x80-\U0010ffff])(?:(?i:date|time|timestamp)|_[\w$\x80-\U0010ffff]*+)\s++)\Z')
# A shape's bucket: the statement up to its first quote, or first digit not
# inside a word (t1, utf8mb4): every statement of a template has the same text
# there, since its first literal (a quote or a digit after no word) follows it.
_BEFORE_LITERAL = re.compile(r"[^'0-9]*+(?:(?<=[\w$\x80-\U0010ffff])[0-9]++[^'0-9]*+)*+")
_MAX_TEMPLATE_LITERALS = 200
_MAX_PER_BUCKET = 8
# Buckets whose text is at least this long are found by the statement's first
# _HEAD characters and a startswith (~0.2 µs), not by _BEFORE_LITERAL (~0.45 µs).
_HEAD = 16


class _Template(NamedTuple):
    fullmatch: Any  # re.Pattern.fullmatch of the statement after its bucket key
    shape: str
    integers: Tuple[int, ...]  # positions of integer literals among the params
    strings: Tuple[int, ...]


def _plain_parts(sql: str) -> Optional[Tuple[List[str], List[type]]]:
    """(texts between literals, literal kinds: int or str) when the general scan reads
    ``sql`` (default sql_mode) with no comment and only plain integers and
    single-quoted strings; None otherwise."""
    pieces = iter(_DEFAULT_PATTERN.split(sql))
    next(pieces)
    texts, kinds, current = [], [], []
    for skipped, text, integer, number, comment, other, raw, _ in zip(*[pieces] * _GROUPS):
        current.append(skipped)
        if text is not None:
            kinds.append(str)
        elif integer is not None:
            kinds.append(int)
        elif raw is not None:
            if raw in _UNTERMINATED:
                return None
            current.append(raw)
            continue
        elif number is not None or comment is not None or other is not None:
            return None
        else:
            continue
        texts.append(''.join(current))
        current = []
    texts.append(''.join(current))
    return texts, kinds


class KnownShapes:
    """Statements of shapes seen before, masked by one regex match instead of
    the general scan (the same result: see above). Default sql_mode only.

    ``match`` returns what :func:`mask_literals` would, or None when no known
    shape matches; ``learn`` keeps the shape of a statement mask_literals
    read. At most ``max_shapes`` kept (then forgotten all at once), and
    :data:`_MAX_PER_BUCKET` per text before the first literal (the rest take
    the general scan: learning one costs ~30 µs, so none is evicted to make
    room, which could repeat that per statement). ~0.5 KB each. Not thread-safe.
    """

    def __init__(self, max_shapes: int):
        self._max_shapes = max_shapes
        self._buckets: Dict[str, List[_Template]] = {}
        # first _HEAD characters -> (text, its length, bucket) of each long bucket's text
        self._by_head: Dict[str, List[Tuple[str, int, List[_Template]]]] = {}
        self._refused: Set[str] = set()  # shapes whose statements had no template
        self._kept = 0

    def match(self, sql: str) -> Optional[Tuple[str, List[Any]]]:
        # A template's match is the statement whichever bucket it is found in (its
        # text, then its regex from there): the statement's bucket text is found
        # by its head when it is a long one, else by _BEFORE_LITERAL.
        found = None
        for text, start, bucket in self._by_head.get(sql[:_HEAD], ()):
            if sql.startswith(text):
                for fullmatch, shape, integers, strings in bucket:
                    found = fullmatch(sql, start)
                    if found is not None:
                        break
                if found is not None:
                    break
        if found is None:
            start = _BEFORE_LITERAL.match(sql).end()
            if start >= _HEAD:  # its bucket, if any, was tried above
                return None
            for fullmatch, shape, integers, strings in self._buckets.get(sql[:start], ()):
                found = fullmatch(sql, start)
                if found is not None:
                    break
            else:
                return None
        if not strings:
            return shape, list(map(int, found.groups()))
        params = list(found.groups())
        for i in integers:
            params[i] = int(params[i])
        if '\\' in sql or "''" in sql:
            for i in strings:
                text = params[i]
                if '\\' in text or "''" in text:
                    params[i] = unescape_mysql_string(text)
        return shape, params

    def learn(self, sql: str, shape: str, params: List[Any]) -> None:
        """Keeps the template of ``sql`` (which mask_literals read as ``shape``,
        ``params`` in the default sql_mode), if it can have one."""
        if shape in self._refused or len(params) > _MAX_TEMPLATE_LITERALS:
            return
        start = _BEFORE_LITERAL.match(sql).end()
        bucket = self._buckets.get(sql[:start], ())
        if len(bucket) >= _MAX_PER_BUCKET:
            return
        template = self._template(sql, shape, start)
        if template is not None:
            if self._kept >= self._max_shapes:
                self._buckets.clear()
                self._by_head.clear()
                self._kept = 0
            bucket = self._buckets.get(sql[:start])
            if bucket is None:
                bucket = self._buckets[sql[:start]] = []
                if start >= _HEAD:
                    self._by_head.setdefault(sql[:_HEAD], []).append((sql[:start], start, bucket))
            bucket.append(template)
            if self.match(sql) == (shape, params):  # the model reads back as mask_literals read it
                self._kept += 1
                return
            bucket.remove(template)
            if not bucket:  # no empty bucket kept per refused shape: they are not counted
                self._forget_bucket(sql[:start], start)
        if len(self._refused) >= self._max_shapes:
            self._refused.clear()
        self._refused.add(shape)

    def _forget_bucket(self, text: str, start: int) -> None:
        del self._buckets[text]
        if start >= _HEAD:
            heads = self._by_head[text[:_HEAD]]
            heads[:] = [entry for entry in heads if entry[0] != text]
            if not heads:
                del self._by_head[text[:_HEAD]]

    @staticmethod
    def _template(sql: str, shape: str, start: int) -> Optional[_Template]:
        parts = _plain_parts(sql)
        if parts is None:
            return None
        texts, kinds = parts
        if any(kind is str and _STRING_CONTEXT.search(before)
               for before, kind in zip(texts, kinds)):
            return None
        pattern = [re.escape(texts[0][start:])]
        for kind, after in zip(kinds, texts[1:]):
            pattern += [_LITERAL_REGEX[kind], re.escape(after)]
        return _Template(re.compile(''.join(pattern), re.S).fullmatch, shape,
                         tuple(i for i, kind in enumerate(kinds) if kind is int),
                         tuple(i for i, kind in enumerate(kinds) if kind is str))
