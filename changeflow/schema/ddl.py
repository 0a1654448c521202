"""MySQL DDL text: statements split out of dump files, CREATE TABLE and
CREATE TRIGGER parsed into schema records, and the normal forms (types,
defaults) both schema readers share.

sqlglot's MySQL tokenizer does the lexing (quotes, escapes, backticks) and
sqlglot parses expressions (defaults, generated columns) into one canonical
text; the definitions themselves are parsed here, over tokens, because
sqlglot's CREATE TABLE rewrites types (``REAL`` becomes ``FLOAT``, ``SIGNED``
is dropped) and rejects some MariaDB forms (``PERSISTENT``, ``INET6``).
Anything this module does not understand raises :class:`DdlError`; it never
guesses.
"""

import re
from typing import List, NamedTuple, Optional, Tuple

import sqlglot
from sqlglot import exp
from sqlglot.dialects.mysql import MySQL
from sqlglot.tokens import Token, TokenType

from changeflow.schema.model import Column, ForeignKey, Index, TableSchema, Trigger

__all__ = ['DdlError', 'ParsedCreate', 'unwrap_comments', 'split_statements', 'tokenize',
           'parse_create_table', 'parse_column', 'parse_create_trigger', 'normalize_type',
           'classify_default', 'is_clock', 'trigger_writes', 'leading_words', 'Tokens',
           'default_collation', 'charset_of', 'CHARACTER_TYPES', 'parse_definition',
           'build_table', 'canonical_expression', 'type_base', 'check_type',
           'parse_database_options', 'with_foreign_key']


class DdlError(ValueError):
    """DDL text this module cannot read exactly."""


# --- comments and statements ------------------------------------------------

_VERSIONED = re.compile(r'/\*(M?)!(\d*)')


def unwrap_comments(sql: str) -> str:
    """``sql`` with comments removed and executable comments (``/*!50003 ...*/``,
    ``/*M!100100 ...*/``) replaced by their content, as the server runs them.
    The dump's sandbox marker ``/*M!999999\\- ...*/`` is a client command and is
    dropped. Quoted text is kept as it is."""
    out, i, n = [], 0, len(sql)
    depth = 0  # inside an executable comment: its closing */ is dropped
    while i < n:
        c = sql[i]
        if c in '\'"`':
            j = i + 1
            while j < n:
                if sql[j] == '\\' and c != '`':
                    j += 2
                    continue
                if sql[j] == c:
                    if j + 1 < n and sql[j + 1] == c:
                        j += 2
                        continue
                    break
                j += 1
            out.append(sql[i:j + 1])
            i = j + 1
        elif sql.startswith('/*', i):
            match = _VERSIONED.match(sql, i)
            if match and not sql.startswith('\\-', match.end()):
                out.append(' ')
                depth += 1
                i = match.end()
                continue
            end = sql.find('*/', i + 2)
            i = n if end < 0 else end + 2
            out.append(' ')
        elif depth and sql.startswith('*/', i):
            depth -= 1
            out.append(' ')
            i += 2
        elif c == '#' or (sql.startswith('--', i) and (i + 2 >= n or sql[i + 2] in ' \t\r\n')):
            end = sql.find('\n', i)
            i = n if end < 0 else end
        else:
            out.append(c)
            i += 1
    return ''.join(out)


_DELIMITER = re.compile(r'[ \t]*DELIMITER[ \t]+(\S+)[ \t]*(?:\r?\n|$)', re.I)
_WORD = re.compile(r'[A-Za-z_$][\w$]*')
# Compound-statement words that open a block closed by a bare END.
_OPENERS = {'BEGIN', 'CASE'}
_NOT_BLOCK_END = {'IF', 'LOOP', 'WHILE', 'REPEAT', 'FOR'}


def split_statements(text: str) -> List[str]:
    """Splits a SQL script (a dump, SHOW CREATE output) into statements.

    Honours ``DELIMITER`` lines as the mysql client does, quotes and comments,
    and, with the ``;`` delimiter, ``BEGIN ... END`` blocks of CREATE
    TRIGGER/PROCEDURE/FUNCTION/EVENT bodies. Statements are returned with
    their comments (executable comments are code: see :func:`unwrap_comments`)
    and without the delimiter; blank ones are dropped.
    """
    statements, start, i, n = [], 0, 0, len(text)
    delimiter, depth, last_word, line_start, first_word = ';', 0, '', True, None
    while i < n:
        if line_start:
            match = _DELIMITER.match(text, i)
            if match and not text[start:i].strip():
                delimiter = match.group(1)
                i = start = match.end()
                continue
        c = text[i]
        line_start = c == '\n'
        if c in '\'"`':
            j = i + 1
            while j < n and text[j] != c:
                j += 2 if text[j] == '\\' and c != '`' else 1
            i = j + 1
        elif text.startswith('/*', i) and not _VERSIONED.match(text, i):
            end = text.find('*/', i + 2)
            i = n if end < 0 else end + 2
        elif c == '#' or (text.startswith('--', i) and (i + 2 >= n or text[i + 2] in ' \t\r\n')):
            end = text.find('\n', i)
            i = n if end < 0 else end
        elif text.startswith(delimiter, i) and (delimiter != ';' or depth <= 0):
            if text[start:i].strip():
                statements.append(text[start:i].strip())
            i = start = i + len(delimiter)
            depth, last_word, first_word = 0, '', None
        elif delimiter == ';' and (match := _WORD.match(text, i)) and (
                i == 0 or not (text[i - 1].isalnum() or text[i - 1] in '_$')):
            word = match.group().upper()
            if first_word is None:
                first_word = word
            if first_word == 'CREATE':
                if word == 'END':
                    depth -= 1
                elif last_word == 'END' and word in _NOT_BLOCK_END:
                    depth += 1  # END IF / END LOOP closed no BEGIN or CASE
                elif word in _OPENERS and last_word != 'END':
                    depth += 1
            last_word = word
            i = match.end()
        elif c.isalnum() or c in '_$':
            i += 1
            while i < n and (text[i].isalnum() or text[i] in '_$'):
                i += 1
        else:
            i += 1
    if text[start:].strip():
        statements.append(text[start:].strip())
    return statements


# --- tokens -----------------------------------------------------------------

class _Tokenizer(MySQL.Tokenizer):
    """MySQL's tokenizer without "commands" (RENAME, REPLACE, ...), whose rest
    sqlglot would keep as one string."""
    COMMANDS = set()


_DIALECT = MySQL()
_NAME_TYPES = {TokenType.VAR, TokenType.IDENTIFIER}


def tokenize(sql: str):
    """sqlglot MySQL tokens of ``sql`` (comments must be unwrapped first),
    with its multi-word keywords (``PRIMARY KEY``, ``ORDER BY``) split into
    one token per word."""
    try:
        tokens = _Tokenizer(dialect=_DIALECT).tokenize(sql)
    except Exception as error:  # sqlglot raises TokenError and, on odd input, others
        raise DdlError(f'cannot tokenize: {error}') from None
    out = []
    for token in tokens:
        if token.token_type in (TokenType.STRING, TokenType.IDENTIFIER) or not re.search(
                r'\s', token.text):
            out.append(token)
            continue
        raw = sql[token.start:token.end + 1]
        for match in _WORD.finditer(raw):
            start = token.start + match.start()
            out.append(Token(TokenType.VAR, match.group(), token.line, token.col, start,
                             start + len(match.group()) - 1))
    return out


class Tokens:
    """A cursor over tokens, with the raw text they came from."""

    def __init__(self, sql: str, tokens=None):
        self.sql = sql
        self.tokens = list(tokenize(sql) if tokens is None else tokens)
        self.i = 0

    def peek(self, ahead: int = 0):
        j = self.i + ahead
        return self.tokens[j] if j < len(self.tokens) else None

    def word(self, ahead: int = 0) -> Optional[str]:
        """The upper-case word at the cursor, or None (quoted names are not words)."""
        token = self.peek(ahead)
        if token is None or token.token_type in (TokenType.IDENTIFIER, TokenType.STRING):
            return None
        return token.text.upper() if _WORD.fullmatch(token.text) else None

    def at(self, *words: str) -> bool:
        return all(self.word(k) == w for k, w in enumerate(words))

    def accept(self, *words: str) -> bool:
        if self.at(*words):
            self.i += len(words)
            return True
        return False

    def expect(self, *words: str):
        if not self.accept(*words):
            raise DdlError(f'expected {" ".join(words)} at {self.rest()[:60]!r}')

    def punct(self, text: str) -> bool:
        token = self.peek()
        return token is not None and token.text == text and token.token_type not in (
            TokenType.STRING, TokenType.IDENTIFIER)

    def accept_punct(self, text: str) -> bool:
        if self.punct(text):
            self.i += 1
            return True
        return False

    def done(self) -> bool:
        return self.i >= len(self.tokens)

    def rest(self) -> str:
        token = self.peek()
        return '' if token is None else self.sql[token.start:]

    def name(self) -> str:
        """An identifier: quoted, or any word (MySQL allows most keywords as names)."""
        token = self.peek()
        if token is None or token.token_type == TokenType.STRING or not (
                token.token_type == TokenType.IDENTIFIER or _WORD.fullmatch(token.text)):
            raise DdlError(f'expected a name at {self.rest()[:60]!r}')
        self.i += 1
        return token.text

    def qualified(self, database: Optional[str]) -> Tuple[str, str]:
        """``[db.]name`` as (database, name); the database defaults to ``database``."""
        first = self.name()
        if self.accept_punct('.'):
            return first, self.name()
        if not database:
            raise DdlError(f'table {first!r} is not qualified and no database is selected')
        return database, first

    def group(self) -> Tuple[str, 'Tokens']:
        """A parenthesized group at the cursor: its inner raw text and tokens."""
        if not self.punct('('):
            raise DdlError(f'expected ( at {self.rest()[:60]!r}')
        open_token, depth = self.peek(), 0
        for j in range(self.i, len(self.tokens)):
            token = self.tokens[j]
            if token.token_type == TokenType.L_PAREN:
                depth += 1
            elif token.token_type == TokenType.R_PAREN:
                depth -= 1
                if depth == 0:
                    inner = self.tokens[self.i + 1:j]
                    self.i = j + 1
                    text = self.sql[open_token.end + 1:token.start]
                    return text, Tokens(self.sql, inner)
        raise DdlError('unbalanced parentheses')

    def split(self) -> List['Tokens']:
        """The remaining tokens split at top-level commas."""
        parts, depth, begin = [], 0, self.i
        for j in range(self.i, len(self.tokens)):
            token = self.tokens[j]
            if token.token_type == TokenType.L_PAREN:
                depth += 1
            elif token.token_type == TokenType.R_PAREN:
                depth -= 1
            elif token.token_type == TokenType.COMMA and depth == 0:
                parts.append(Tokens(self.sql, self.tokens[begin:j]))
                begin = j + 1
        parts.append(Tokens(self.sql, self.tokens[begin:]))
        self.i = len(self.tokens)
        return [part for part in parts if part.tokens]

    def text_until(self, stop) -> str:
        """Raw text of the tokens from the cursor up to (not including) the
        first top-level token for which ``stop(self)`` holds."""
        if self.done():
            return ''
        first, depth, last = self.peek(), 0, None
        while not self.done():
            token = self.peek()
            if depth == 0 and stop(self):
                break
            if token.token_type == TokenType.L_PAREN:
                depth += 1
            elif token.token_type == TokenType.R_PAREN:
                depth -= 1
            last = token
            self.i += 1
        return '' if last is None else self.sql[first.start:last.end + 1]

    def raw(self) -> str:
        """Raw text of all remaining tokens."""
        if self.done():
            return ''
        text = self.sql[self.peek().start:self.tokens[-1].end + 1]
        self.i = len(self.tokens)
        return text


def leading_words(sql: str, count: int = 4) -> Tuple[str, ...]:
    """The first words of a statement, upper case (comments unwrapped)."""
    return tuple(w.upper() for w in _WORD.findall(unwrap_comments(sql[:2000])[:600])[:count])


# --- types ------------------------------------------------------------------

_INTEGERS = ('tinyint', 'smallint', 'mediumint', 'int', 'bigint')
_ALIASES = {'integer': 'int', 'int1': 'tinyint', 'int2': 'smallint', 'int3': 'mediumint',
            'int4': 'int', 'int8': 'bigint', 'middleint': 'mediumint', 'dec': 'decimal',
            'numeric': 'decimal', 'fixed': 'decimal', 'real': 'double',
            'double precision': 'double', 'float4': 'float', 'float8': 'double',
            'character varying': 'varchar', 'character': 'char', 'national char': 'char',
            'national varchar': 'varchar', 'nchar': 'char', 'nvarchar': 'varchar',
            'long varchar': 'mediumtext', 'long': 'mediumtext', 'long varbinary': 'mediumblob'}
CHARACTER_TYPES = ('char', 'varchar', 'tinytext', 'text', 'mediumtext', 'longtext', 'enum', 'set')
_TYPE = re.compile(r"^([a-z][a-z0-9 ]*?)\s*(\((?:[^()']|'(?:[^']|'')*')*\))?\s*((?:\s*\b(?:unsigned|signed|zerofill)\b)*)$")


def normalize_type(text: str) -> str:
    """MySQL type text in the schema's normal form: lower case, no display
    widths on integers (but ``tinyint(1)`` and zerofill widths), aliases
    resolved (INTEGER, BOOL, DEC, REAL, SERIAL, ...), ``decimal`` with its
    precision and scale. Quoted ENUM/SET values keep their case."""
    parts = re.split(r"('(?:[^'\\]|''|\\.)*')", text.strip())
    lowered = ''.join(p if i % 2 else re.sub(r'\s+', ' ', p.lower()) for i, p in enumerate(parts))
    lowered = re.sub(r"\s*,\s*(?=(?:[^']*'[^']*')*[^']*$)", ',', lowered)
    lowered = re.sub(r'\(\s*', '(', re.sub(r'\s*\)', ')', lowered)) if "'" not in lowered else lowered
    if lowered in ('bool', 'boolean'):
        return 'tinyint(1)'
    if lowered == 'serial':
        return 'bigint unsigned'
    match = _TYPE.match(lowered)
    if not match:
        return lowered
    base, args, modifiers = match.group(1).strip(), match.group(2) or '', match.group(3).split()
    base = _ALIASES.get(base, base)
    zerofill = 'zerofill' in modifiers
    unsigned = 'unsigned' in modifiers or zerofill
    if base in _INTEGERS and args and not zerofill and not (base == 'tinyint' and args == '(1)'):
        args = ''
    if base == 'year' or base in ('datetime', 'time', 'timestamp') and args == '(0)':
        args = ''
    if base in ('char', 'binary', 'bit') and not args:
        args = '(1)'
    if base == 'decimal':
        numbers = args.strip('()').split(',') if args else []
        precision = numbers[0] if numbers and numbers[0] else '10'
        scale = numbers[1] if len(numbers) > 1 else '0'
        args = f'({precision},{scale})'
    words = [base + args]
    if unsigned:
        words.append('unsigned')
    if zerofill:
        words.append('zerofill')
    return ' '.join(words)


def type_base(type_text: str) -> str:
    return re.split(r'[ (]', type_text, 1)[0]


_NUMERIC_ARGS = {'tinyint', 'smallint', 'mediumint', 'int', 'bigint', 'decimal', 'float', 'double',
                 'char', 'varchar', 'binary', 'varbinary', 'bit', 'datetime', 'time', 'timestamp',
                 'year', 'text', 'blob'}
_NEEDS_LENGTH = {'varchar', 'varbinary'}
_VALUE_LIST = re.compile(r"^\('(?:[^'\\]|''|\\.)*'(?:,'(?:[^'\\]|''|\\.)*')*\)$")


def check_type(type_text: str) -> str:
    """``type_text`` (normalized) when its arguments are what the type takes:
    numbers for lengths, precisions and scales, quoted values for ENUM and
    SET; DdlError otherwise."""
    base = type_base(type_text)
    match = re.match(r'^[a-z0-9_ ]+?(\(.*\))?( unsigned)?( zerofill)?$', type_text)
    args = match.group(1) if match else None
    if match is None:
        raise DdlError(f'cannot read the type {type_text!r}')
    if base in _NUMERIC_ARGS and args is not None and not re.fullmatch(r'\(\d+(,\d+)?\)', args):
        raise DdlError(f'{type_text!r}: {base} takes numeric arguments')
    if base in _NEEDS_LENGTH and args is None:
        raise DdlError(f'{type_text!r}: {base} needs a length')
    if base in ('enum', 'set') and (args is None or not _VALUE_LIST.match(args)):
        raise DdlError(f'{type_text!r}: {base} needs a list of quoted values')
    return type_text


# --- defaults ---------------------------------------------------------------

_CLOCK_NAMES = {'CURRENT_TIMESTAMP', 'NOW', 'LOCALTIME', 'LOCALTIMESTAMP'}
_LOCAL_CLOCKS = tuple(getattr(exp, name) for name in ('Localtimestamp', 'Localtime')
                      if hasattr(exp, name))


def _clock_text(node) -> Optional[str]:
    """'current_timestamp' / 'current_timestamp(N)' when ``node`` is the clock."""
    if isinstance(node, exp.CurrentTimestamp):
        precision = node.this
    elif isinstance(node, _LOCAL_CLOCKS):
        precision = node.this
    elif isinstance(node, exp.Anonymous) and node.name.upper() in _CLOCK_NAMES:
        if len(node.expressions) > 1:
            return None
        precision = node.expressions[0] if node.expressions else None
    elif isinstance(node, exp.Column) and not node.table and node.name.upper() in _CLOCK_NAMES:
        precision = None
    else:
        return None
    if precision is None:
        return 'current_timestamp'
    if isinstance(precision, exp.Literal) and not precision.is_string:
        return 'current_timestamp' if int(precision.this) == 0 else (
            f'current_timestamp({int(precision.this)})')
    return None


def _parse_expression(text: str):
    try:
        node = sqlglot.parse_one(text, read='mysql')
    except Exception:  # sqlglot's ParseError, or a recursion on deep input
        return None
    while isinstance(node, exp.Paren):
        node = node.this
    return node


def is_clock(text: str) -> bool:
    """Whether an expression (an ON UPDATE clause) is CURRENT_TIMESTAMP or a synonym."""
    node = _parse_expression(text)
    return node is not None and _clock_text(node) is not None


def classify_default(text: Optional[str]) -> Tuple[str, Optional[str]]:
    """(default_kind, default) of a DEFAULT clause's SQL text (None: no clause).

    The same text in a dump and in MariaDB's ``information_schema.COLUMNS.
    COLUMN_DEFAULT`` (which is SQL text since 10.2.7) gives the same answer."""
    if text is None:
        return 'none', None
    node = _parse_expression(text)
    if node is None:
        return 'expression', text.strip()
    if isinstance(node, exp.Null):
        return 'null', None
    if isinstance(node, exp.Introducer):
        node = node.expression
    if isinstance(node, exp.Literal):
        return 'literal', str(node.this)
    if isinstance(node, exp.Neg) and isinstance(node.this, exp.Literal) and not node.this.is_string:
        return 'literal', '-' + str(node.this.this)
    if isinstance(node, exp.Boolean):
        return 'literal', '1' if node.this else '0'
    if isinstance(node, exp.BitString):
        return 'literal', str(int(node.this or '0', 2))
    if isinstance(node, exp.HexString):
        return 'literal', f"x'{node.this.lower()}'"
    clock = _clock_text(node)
    if clock is not None:
        return 'clock', clock
    return 'expression', node.sql('mysql', identify=True)


def canonical_expression(text: str) -> str:
    """An expression's text as sqlglot renders it for MySQL, identifiers
    quoted (raw text if sqlglot cannot parse it)."""
    node = _parse_expression(text)
    return text.strip() if node is None else node.sql('mysql', identify=True)


# --- character sets ---------------------------------------------------------

_DEFAULT_COLLATIONS = {'utf8mb4': 'utf8mb4_general_ci', 'utf8mb3': 'utf8mb3_general_ci',
                       'latin1': 'latin1_swedish_ci', 'ascii': 'ascii_general_ci',
                       'binary': 'binary', 'ucs2': 'ucs2_general_ci', 'utf16': 'utf16_general_ci',
                       'utf32': 'utf32_general_ci', 'latin2': 'latin2_general_ci',
                       'cp1250': 'cp1250_general_ci', 'cp1251': 'cp1251_general_ci',
                       'greek': 'greek_general_ci', 'hebrew': 'hebrew_general_ci',
                       'sjis': 'sjis_japanese_ci', 'gbk': 'gbk_chinese_ci', 'big5': 'big5_chinese_ci'}


def _charset_name(name: str) -> str:
    name = name.lower()
    return 'utf8mb3' if name == 'utf8' else name


def _collation_name(name: str) -> str:
    name = name.lower()
    return 'utf8mb3' + name[4:] if name.startswith('utf8_') else name


def default_collation(charset: str) -> Optional[str]:
    """The server's default collation of a character set (MariaDB's), when known."""
    return _DEFAULT_COLLATIONS.get(_charset_name(charset))


def charset_of(collation: str) -> str:
    return 'binary' if collation == 'binary' else _collation_name(collation).split('_', 1)[0]


# --- CREATE TABLE -----------------------------------------------------------

class ParsedCreate(NamedTuple):
    """A parsed CREATE TABLE: ``table`` holds the definitions (None for
    ``LIKE``); ``like`` the copied table; ``select`` the text of a CREATE ...
    SELECT's query (the table's rows come from it)."""
    ref: Tuple[str, str]
    table: Optional[TableSchema]
    like: Optional[Tuple[str, str]] = None
    select: Optional[str] = None
    temporary: bool = False
    if_not_exists: bool = False
    or_replace: bool = False


_TYPE_MODIFIERS = {'UNSIGNED', 'SIGNED', 'ZEROFILL'}
_TWO_WORD_TYPES = {('DOUBLE', 'PRECISION'), ('CHARACTER', 'VARYING'), ('CHAR', 'VARYING'),
                   ('NATIONAL', 'CHAR'), ('NATIONAL', 'VARCHAR'), ('NATIONAL', 'CHARACTER'),
                   ('LONG', 'VARCHAR'), ('LONG', 'VARBINARY')}
_FK_ACTIONS = (('SET', 'NULL'), ('SET', 'DEFAULT'), ('NO', 'ACTION'), ('CASCADE',), ('RESTRICT',))


class _ColumnDef(NamedTuple):
    column: Column
    primary: bool
    unique: bool
    reference: Optional[ForeignKey]


def _default_value(cur: Tokens) -> str:
    """The raw text of one DEFAULT / ON UPDATE value at the cursor."""
    token = cur.peek()
    if token is None:
        raise DdlError('DEFAULT without a value')
    start = cur.i
    if cur.punct('('):
        cur.group()
    elif cur.punct('-') or cur.punct('+'):
        cur.i += 1
        _default_value(cur)
        return cur.sql[token.start:cur.tokens[cur.i - 1].end + 1]
    elif token.token_type == TokenType.INTRODUCER:
        cur.i += 1
        while cur.peek() is not None and cur.peek().token_type == TokenType.STRING:
            cur.i += 1
    elif token.token_type == TokenType.STRING:
        while cur.peek() is not None and cur.peek().token_type == TokenType.STRING:
            cur.i += 1
    else:
        cur.i += 1
        if cur.punct('('):
            cur.group()
    return cur.sql[token.start:cur.tokens[cur.i - 1].end + 1] if cur.i > start else ''


def _string_value(cur: Tokens) -> str:
    token = cur.peek()
    if token is None or token.token_type != TokenType.STRING:
        raise DdlError(f'expected a string at {cur.rest()[:60]!r}')
    cur.i += 1
    return token.text


def _option_value(cur: Tokens) -> str:
    cur.accept_punct('=')
    token = cur.peek()
    if token is None:
        raise DdlError('option without a value')
    cur.i += 1
    return token.text


def parse_column(cur: Tokens, table_charset: Optional[str] = None,
                 table_collation: Optional[str] = None, database: Optional[str] = None
                 ) -> _ColumnDef:
    """One column definition at the cursor (name, type, attributes), to the
    end of the tokens or to FIRST/AFTER (left for ALTER TABLE)."""
    name = cur.name()
    first = cur.peek()
    if first is None:
        raise DdlError(f'column {name!r} has no type')
    cur.i += 1
    if (first.text.upper(), cur.word()) in _TWO_WORD_TYPES:
        cur.i += 1
    if cur.punct('('):
        cur.group()
    while cur.word() in _TYPE_MODIFIERS:
        cur.i += 1
    type_text = cur.sql[first.start:cur.tokens[cur.i - 1].end + 1]
    serial = type_text.strip().lower() == 'serial'  # BIGINT UNSIGNED NOT NULL AUTO_INCREMENT UNIQUE
    type_text = check_type(normalize_type(type_text))
    base = type_base(type_text)
    nullable, default, on_update, auto_increment = not serial, None, False, serial
    generated, stored, charset, collation = None, False, None, None
    primary, unique = False, serial
    reference = None
    binary_collation = False
    while not cur.done() and not cur.at('FIRST') and not cur.at('AFTER'):
        if cur.accept('NOT', 'NULL'):
            nullable = False
        elif cur.accept('NULL'):
            nullable = True
        elif cur.accept('DEFAULT'):
            default = _default_value(cur)
        elif cur.accept('ON', 'UPDATE'):
            value = _default_value(cur)
            if not is_clock(value):
                raise DdlError(f'ON UPDATE {value} is not a clock')
            on_update = True
        elif cur.accept('AUTO_INCREMENT'):
            auto_increment = True
        elif cur.accept('PRIMARY', 'KEY') or cur.accept('KEY'):
            primary = True
        elif cur.accept('UNIQUE'):
            cur.accept('KEY') or cur.accept('INDEX')
            unique = True
        elif cur.accept('SERIAL', 'DEFAULT', 'VALUE'):
            nullable, auto_increment, unique = False, True, True
        elif cur.accept('COMMENT'):
            _string_value(cur)
        elif cur.accept('COLLATE'):
            collation = _collation_name(_option_value(cur))
        elif cur.accept('CHARACTER', 'SET') or cur.accept('CHARSET'):
            charset = _charset_name(_option_value(cur))
        elif cur.accept('BINARY'):
            binary_collation = True
        elif cur.accept('ASCII'):
            charset = 'latin1'
        elif cur.accept('UNICODE'):
            charset = 'ucs2'
        elif cur.accept('BYTE'):
            charset = 'binary'
        elif cur.at('GENERATED') or cur.at('AS'):
            if cur.accept('GENERATED'):
                cur.expect('ALWAYS')
            cur.expect('AS')
            text, _ = cur.group()
            generated = canonical_expression(text)
            if cur.accept('STORED') or cur.accept('PERSISTENT'):
                stored = True
            else:
                cur.accept('VIRTUAL')
        elif cur.accept('INVISIBLE') or cur.accept('VISIBLE'):
            pass
        elif cur.accept('CONSTRAINT'):
            if not cur.at('CHECK'):
                cur.name()
        elif cur.accept('CHECK'):
            cur.group()
        elif cur.accept('REFERENCES'):
            reference = _references(cur, None, (name,), database)
        elif cur.word() in ('COLUMN_FORMAT', 'STORAGE'):
            cur.i += 2
        elif cur.word() in ('SRID', 'REF_SYSTEM_ID', 'ENGINE_ATTRIBUTE',
                            'SECONDARY_ENGINE_ATTRIBUTE'):
            cur.i += 1
            _option_value(cur)
        elif cur.accept('COMPRESSED'):
            if cur.accept_punct('='):
                cur.i += 1
        elif cur.accept('WITH', 'SYSTEM', 'VERSIONING') or cur.accept('WITHOUT', 'SYSTEM',
                                                                          'VERSIONING'):
            pass
        else:
            raise DdlError(f'column {name!r}: cannot read {cur.rest()[:60]!r}')
    if base in CHARACTER_TYPES:
        charset = charset or (charset_of(collation) if collation else table_charset)
        if collation is None and charset is not None:
            if binary_collation:
                collation = f'{charset}_bin'
            elif charset == table_charset and table_collation:
                collation = table_collation
            else:
                collation = default_collation(charset)
    else:
        charset = collation = None
    kind, value = classify_default(default)
    if primary:
        nullable = False
    if kind == 'none' and nullable and generated is None:
        kind = 'null'
    return _ColumnDef(Column(name, type_text, nullable, value, kind, on_update, auto_increment,
                             generated, stored, collation, charset), primary, unique, reference)


def _action(cur: Tokens) -> str:
    for words in _FK_ACTIONS:
        if cur.accept(*words):
            return ' '.join(words)
    raise DdlError(f'unknown foreign key action at {cur.rest()[:60]!r}')


def _references(cur: Tokens, name: Optional[str], columns, database) -> ForeignKey:
    ref_database, ref_table = cur.qualified(database)
    _, inner = cur.group()
    ref_columns = tuple(_key_part(part) for part in inner.split())
    on_delete = on_update = 'RESTRICT'
    while not cur.done():
        if cur.accept('ON', 'DELETE'):
            on_delete = _action(cur)
        elif cur.accept('ON', 'UPDATE'):
            on_update = _action(cur)
        elif cur.accept('MATCH'):
            cur.name()
        else:
            break
    return ForeignKey(name or '', tuple(columns), ref_database, ref_table, ref_columns,
                      on_delete, on_update)


def _key_part(part: Tokens) -> str:
    """A key part's column (``col``, ``col(10)``, ``col DESC``); a functional
    part keeps its expression in parentheses."""
    if part.punct('('):
        text, _ = part.group()
        return f'({canonical_expression(text)})'
    return part.name()


def _key_columns(cur: Tokens) -> Tuple[str, ...]:
    _, inner = cur.group()
    return tuple(_key_part(part) for part in inner.split())


def _index_options(cur: Tokens):
    while not cur.done():
        if cur.accept('USING'):
            cur.name()
        elif cur.accept('COMMENT'):
            _string_value(cur)
        elif cur.accept('KEY_BLOCK_SIZE') or cur.accept('WITH', 'PARSER'):
            _option_value(cur)
        elif cur.accept('VISIBLE') or cur.accept('INVISIBLE') or cur.accept('IGNORED') or \
                cur.accept('NOT', 'IGNORED') or cur.accept('CLUSTERING', 'YES') or \
                cur.accept('CLUSTERING', 'NO'):
            pass
        else:
            raise DdlError(f'cannot read index option {cur.rest()[:60]!r}')


class _Definition(NamedTuple):
    """One element of a CREATE TABLE body or an ALTER TABLE ADD."""
    kind: str                      # column | primary | index | foreign | check | period
    column: Optional[_ColumnDef] = None
    index: Optional[Index] = None
    primary: Tuple[str, ...] = ()
    foreign: Optional[ForeignKey] = None
    fk_index: Optional[str] = None


def parse_definition(cur: Tokens, database: str, charset=None, collation=None) -> _Definition:
    """A column, key, foreign key or check definition at the cursor."""
    constraint = None
    if cur.accept('CONSTRAINT'):
        if not (cur.at('PRIMARY') or cur.at('UNIQUE') or cur.at('FOREIGN') or cur.at('CHECK')):
            constraint = cur.name()
    if cur.accept('PRIMARY', 'KEY'):
        if cur.accept('USING'):
            cur.name()
        columns = _key_columns(cur)
        _index_options(cur)
        return _Definition('primary', primary=columns)
    if cur.at('UNIQUE') or cur.at('KEY') or cur.at('INDEX') or cur.at('FULLTEXT') or \
            cur.at('SPATIAL'):
        unique = cur.accept('UNIQUE')
        if not unique and not (cur.accept('KEY') or cur.accept('INDEX')):
            cur.i += 1  # FULLTEXT / SPATIAL
        cur.accept('KEY') or cur.accept('INDEX')
        cur.accept('IF', 'NOT', 'EXISTS')
        name = None if cur.punct('(') or cur.at('USING') else cur.name()
        if cur.accept('USING'):
            cur.name()
        columns = _key_columns(cur)
        _index_options(cur)
        return _Definition('index', index=Index(name or constraint or '', columns, unique))
    if cur.accept('FOREIGN', 'KEY'):
        cur.accept('IF', 'NOT', 'EXISTS')
        index_name = None if cur.punct('(') else cur.name()
        columns = _key_columns(cur)
        cur.expect('REFERENCES')
        fk = _references(cur, constraint or index_name, columns, database)
        if not cur.done():
            raise DdlError(f'cannot read foreign key text {cur.rest()[:60]!r}')
        return _Definition('foreign', foreign=fk, fk_index=index_name)
    if cur.accept('CHECK'):
        cur.group()
        cur.accept('NOT', 'ENFORCED') or cur.accept('ENFORCED')
        return _Definition('check')
    if cur.accept('PERIOD', 'FOR'):
        cur.raw()
        return _Definition('period')
    if constraint is not None:
        raise DdlError(f'CONSTRAINT {constraint}: cannot read {cur.rest()[:60]!r}')
    column = parse_column(cur, charset, collation, database)
    if not cur.done():
        raise DdlError(f'cannot read column text {cur.rest()[:60]!r}')
    return _Definition('column', column=column)


def _unique_name(name: str, taken) -> str:
    if name not in taken:
        return name
    n = 2
    while f'{name}_{n}' in taken:
        n += 1
    return f'{name}_{n}'


def build_table(database: str, name: str, definitions: List[_Definition],
                charset: Optional[str] = None, collation: Optional[str] = None) -> TableSchema:
    """A TableSchema from parsed definitions, naming what MySQL names
    implicitly (unnamed indexes after their first column, foreign keys
    ``<table>_ibfk_<n>``) and adding the index InnoDB creates for a foreign key."""
    columns, primary, indexes, foreign = [], (), [], []
    for definition in definitions:
        if definition.kind == 'column':
            columns.append(definition.column.column)
            if definition.column.primary:
                primary = (definition.column.column.name,)
            if definition.column.unique:
                indexes.append(Index('', (definition.column.column.name,), True))
            if definition.column.reference is not None:
                foreign.append((definition.column.reference, None))
        elif definition.kind == 'primary':
            primary = definition.primary
        elif definition.kind == 'index':
            indexes.append(definition.index)
        elif definition.kind == 'foreign':
            foreign.append((definition.foreign, definition.fk_index))
    in_key = {column.lower() for column in primary}
    columns = [c._replace(nullable=False, default_kind='none' if c.default_kind == 'null'
                          else c.default_kind) if c.name.lower() in in_key else c
               for c in columns]
    names = set()
    named = []
    for index in indexes:
        index_name = _unique_name(index.name or index.columns[0].strip('()'), names)
        names.add(index_name)
        named.append(index._replace(name=index_name))
    table = TableSchema(database, name, tuple(columns), tuple(primary), tuple(named), (),
                        (), collation, charset)
    for fk, index_name in foreign:
        table = with_foreign_key(table, fk, index_name)
    return table


def with_foreign_key(table: TableSchema, fk: ForeignKey, index_name: Optional[str] = None
                     ) -> TableSchema:
    """The table with ``fk`` added (named ``<table>_ibfk_<n>`` when unnamed)
    and the index InnoDB adds for it when no key starts with its columns:
    named as the FOREIGN KEY clause names it, else after the constraint, else
    after its first column (as MariaDB does)."""
    index_name = index_name or fk.name or fk.columns[0]
    if not fk.name:
        n = len(table.foreign_keys) + 1
        while any(f.name == f'{table.name}_ibfk_{n}' for f in table.foreign_keys):
            n += 1
        fk = fk._replace(name=f'{table.name}_ibfk_{n}')
    indexes = table.indexes
    lowered = tuple(c.lower() for c in fk.columns)
    covered = [tuple(c.lower() for c in table.primary_key)] + [
        tuple(c.lower() for c in i.columns) for i in indexes]
    if not any(key[:len(lowered)] == lowered for key in covered):
        indexes += (Index(_unique_name(index_name, {i.name for i in indexes}), fk.columns, False),)
    return table._replace(foreign_keys=table.foreign_keys + (fk,), indexes=indexes)


_VALUE_TOKENS = {TokenType.STRING, TokenType.NUMBER, TokenType.IDENTIFIER, TokenType.VAR}


def _table_options(cur: Tokens) -> Tuple[Optional[str], Optional[str], Optional[str]]:
    """(charset, collation, select text) from the table options at the cursor."""
    charset = collation = select = None
    while not cur.done():
        if cur.accept('WITH', 'SYSTEM', 'VERSIONING'):
            continue
        if cur.at('SELECT') or cur.at('WITH') or cur.at('VALUES') or cur.at('TABLE') or \
                cur.punct('('):
            select = cur.raw()
            break
        if cur.accept('AS') or cur.accept('IGNORE') or cur.accept('REPLACE') or \
                cur.accept_punct(','):
            continue
        if cur.accept('PARTITION', 'BY'):
            cur.text_until(lambda c: c.at('SELECT') or c.at('AS') or c.at('WITH'))
            continue
        cur.accept('DEFAULT')
        if cur.accept('CHARACTER', 'SET') or cur.accept('CHARSET'):
            charset = _charset_name(_option_value(cur))
        elif cur.accept('COLLATE'):
            collation = _collation_name(_option_value(cur))
        elif cur.word() is not None:  # ENGINE=InnoDB, COMMENT='..', UNION=(a,b), ...
            cur.i += 1
            cur.accept_punct('=')
            token = cur.peek()
            if cur.punct('('):
                cur.group()
            elif token is not None and not (cur.at('SELECT') or cur.at('AS')):
                if token.token_type not in _VALUE_TOKENS and cur.word() is None:
                    raise DdlError(f'cannot read the table option at {cur.rest()[:60]!r}')
                cur.i += 1
        else:
            raise DdlError(f'cannot read the table options at {cur.rest()[:60]!r}')
    if collation and not charset:
        charset = charset_of(collation)
    if charset and not collation:
        collation = default_collation(charset)
    return charset, collation, select


def parse_create_table(sql: str, database: Optional[str], database_default=None
                       ) -> ParsedCreate:
    """Parses ``CREATE [OR REPLACE] [TEMPORARY] TABLE [IF NOT EXISTS] name``
    with a definition list, ``LIKE other`` or a SELECT (comments unwrapped
    first). Column charsets and collations default to the table's options,
    the table's to ``database_default(database)`` -> (charset, collation)."""
    cur = Tokens(unwrap_comments(sql))
    cur.expect('CREATE')
    or_replace = cur.accept('OR', 'REPLACE')
    temporary = cur.accept('TEMPORARY')
    cur.expect('TABLE')
    if_not_exists = cur.accept('IF', 'NOT', 'EXISTS')
    ref = cur.qualified(database)
    if cur.accept('LIKE'):
        return ParsedCreate(ref, None, cur.qualified(database), None, temporary, if_not_exists,
                           or_replace)
    if cur.punct('(') and cur.word(1) == 'LIKE':
        _, inner = cur.group()
        inner.expect('LIKE')
        return ParsedCreate(ref, None, inner.qualified(database), None, temporary, if_not_exists,
                           or_replace)
    body = None
    if cur.punct('(') and cur.word(1) not in ('SELECT', 'WITH'):
        _, body = cur.group()
    charset, collation, select = _table_options(cur)
    if charset is None and database_default is not None:
        charset, collation = database_default(ref[0])
    definitions = [parse_definition(part, ref[0], charset, collation)
                   for part in body.split()] if body is not None else []
    table = build_table(ref[0], ref[1], definitions, charset, collation)
    return ParsedCreate(ref, table, None, select, temporary, if_not_exists, or_replace)


def parse_database_options(sql: str, database: Optional[str]):
    """``CREATE DATABASE`` / ``ALTER DATABASE``: (name, charset, collation,
    if_not_exists); charset or collation None where the statement sets none."""
    cur = Tokens(unwrap_comments(sql))
    cur.i += 1  # CREATE | ALTER
    if not (cur.accept('DATABASE') or cur.accept('SCHEMA')):
        raise DdlError('expected DATABASE or SCHEMA')
    if_not_exists = cur.accept('IF', 'NOT', 'EXISTS')
    name = database
    if not cur.done() and not (cur.at('DEFAULT') or cur.at('CHARACTER') or cur.at('CHARSET')
                               or cur.at('COLLATE') or cur.at('COMMENT')):
        name = cur.name()
    if not name:
        raise DdlError('no database named')
    charset = collation = None
    while not cur.done():
        cur.accept('DEFAULT')
        if cur.accept('CHARACTER', 'SET') or cur.accept('CHARSET'):
            charset = _charset_name(_option_value(cur))
        elif cur.accept('COLLATE'):
            collation = _collation_name(_option_value(cur))
        elif cur.accept('COMMENT') or cur.accept('ENCRYPTION') or cur.accept('READ', 'ONLY'):
            _option_value(cur)
        else:
            raise DdlError(f'cannot read the database option at {cur.rest()[:60]!r}')
    if collation and not charset:
        charset = charset_of(collation)
    if charset and not collation:
        collation = default_collation(charset)
    return name, charset, collation, if_not_exists


# --- CREATE TRIGGER ---------------------------------------------------------

def parse_create_trigger(sql: str, database: Optional[str]):
    """Parses CREATE TRIGGER; returns ((database, table), Trigger, or_replace,
    if_not_exists). The body keeps its text as written."""
    cur = Tokens(unwrap_comments(sql))
    cur.expect('CREATE')
    or_replace = cur.accept('OR', 'REPLACE')
    if cur.accept('DEFINER'):
        cur.accept_punct('=')
        cur.text_until(lambda c: c.at('TRIGGER') or c.at('IF'))
    cur.expect('TRIGGER')
    if_not_exists = cur.accept('IF', 'NOT', 'EXISTS')
    trigger_db, name = (None, cur.name())
    if cur.accept_punct('.'):
        trigger_db, name = name, cur.name()
    timing = cur.word()
    if timing not in ('BEFORE', 'AFTER'):
        raise DdlError(f'trigger {name}: expected BEFORE or AFTER')
    cur.i += 1
    event = cur.word()
    if event not in ('INSERT', 'UPDATE', 'DELETE'):
        raise DdlError(f'trigger {name}: expected INSERT, UPDATE or DELETE')
    cur.i += 1
    cur.expect('ON')
    table = cur.qualified(trigger_db or database)
    cur.expect('FOR', 'EACH', 'ROW')
    if cur.accept('FOLLOWS') or cur.accept('PRECEDES'):
        cur.name()
    body = cur.raw().strip().rstrip(';').strip()
    if not body:
        raise DdlError(f'trigger {name} has no body')
    writes, calls = trigger_writes(body, table[0])
    return table, Trigger(name, timing, event, body, writes, calls), or_replace, if_not_exists


_WRITE_SKIP = {'LOW_PRIORITY', 'DELAYED', 'HIGH_PRIORITY', 'IGNORE', 'INTO', 'QUICK'}
_REF_ENDS = {'SET', 'WHERE', 'ORDER', 'LIMIT', 'VALUES', 'VALUE', 'SELECT', 'ON', 'USING',
             'PARTITION', 'RETURNING'}


def trigger_writes(body: str, database: str):
    """The tables a trigger body writes ((database, name) pairs, in order of
    appearance) and the procedures it calls. Conservative: a name that may be
    an alias in a multi-table UPDATE/DELETE is listed too."""
    try:
        cur = Tokens(unwrap_comments(body))
    except DdlError:
        return (), ()
    writes, calls = [], []

    def add(ref):
        if ref not in writes:
            writes.append(ref)

    def name_list(stop_at_from=False):
        while not cur.done():
            word = cur.word()
            if word in _REF_ENDS or (stop_at_from and word == 'FROM') or cur.punct(';') \
                    or cur.punct('('):
                return
            if word in ('JOIN', 'INNER', 'LEFT', 'RIGHT', 'CROSS', 'STRAIGHT_JOIN', 'OUTER',
                        'NATURAL', 'AS') or cur.punct(','):
                cur.i += 1
                continue
            try:
                add(cur.qualified(database))
            except DdlError:
                cur.i += 1
                continue
            if cur.word() not in _REF_ENDS and cur.word() not in ('JOIN', 'FROM') and \
                    not cur.punct(',') and not cur.punct(';') and not cur.done():
                cur.accept('AS')
                if cur.word() not in _REF_ENDS:
                    cur.i += 1  # an alias

    while not cur.done():
        word = cur.word()
        previous = cur.word(-1) if cur.i else None
        cur.i += 1
        if word in ('INSERT', 'REPLACE') and not cur.punct('('):
            while cur.word() in _WRITE_SKIP:
                cur.i += 1
            try:
                add(cur.qualified(database))
            except DdlError:
                pass
        elif word == 'UPDATE' and previous not in ('KEY', 'ON', 'FOR'):
            while cur.word() in _WRITE_SKIP:
                cur.i += 1
            name_list()
        elif word == 'DELETE':
            while cur.word() in _WRITE_SKIP:
                cur.i += 1
            if not cur.at('FROM'):
                name_list(stop_at_from=True)
            if cur.accept('FROM'):
                name_list()
        elif word == 'CALL':
            try:
                calls.append('.'.join(cur.qualified(database)))
            except DdlError:
                pass
    return tuple(writes), tuple(calls)
