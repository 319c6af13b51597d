"""A small parser for Spark DDL column lists, without Spark.

Object configs give an explicit source schema and Auto Loader schema hints as
Spark DDL (`"id INT, amount DECIMAL(10,2) NOT NULL COMMENT 'EUR'"`). They are
checked where configs are read, the sensor tick, which has no Spark session,
so a typo is reported there with its file and field rather than by the run.

Grammar (case-insensitive keywords and types):

    columns := column (',' column)*
    column  := name type [NOT NULL] [COMMENT 'text']
    name    := identifier | `any text` (a doubled backtick stands for one)
    type    := string [COLLATE name] | boolean
             | tinyint | byte | smallint | short | int | integer | bigint | long
             | float | real | double | decimal[(p[,s])] | dec[...] | numeric[...]
             | date | timestamp | timestamp_ntz | timestamp_ltz | binary | variant
             | interval unit [to unit]
             | array<type> | map<type, type> | struct<field, ...>
    field   := name [':'] type [NOT NULL] [COMMENT 'text']

`char(n)` and `varchar(n)` are refused with the reason: Spark 4.1 refuses them
in a reader's schema (UNSUPPORTED_CHAR_OR_VARCHAR_AS_STRING), so every run would
fail. This parser checks early; Spark's own parser has the last word when the
schema reaches the reader, and a schema it refuses fails that object only,
naming the field (ingest.py).

Types come back in Spark's own spelling (`DataType.simpleString`: `int`,
`bigint`, `decimal(10,2)`, `array<string>`, `struct<a:int,b:string>`), so they
compare with what Spark reports for a DataFrame (`df.dtypes`).
"""

from __future__ import annotations

import re
from typing import NamedTuple

__all__ = ["Column", "DdlError", "columns_and_types", "parse_ddl", "to_ddl"]

MAX_DECIMAL_PRECISION = 38

# Spark's aliases, each mapped to its simpleString.
_PRIMITIVES = {
    "string": "string",
    "boolean": "boolean",
    "tinyint": "tinyint",
    "byte": "tinyint",
    "smallint": "smallint",
    "short": "smallint",
    "int": "int",
    "integer": "int",
    "bigint": "bigint",
    "long": "bigint",
    "float": "float",
    "real": "float",
    "double": "double",
    "date": "date",
    "timestamp": "timestamp",
    "timestamp_ltz": "timestamp",
    "timestamp_ntz": "timestamp_ntz",
    "binary": "binary",
    "variant": "variant",
}
_DECIMALS = ("decimal", "dec", "numeric")
_SIZED = ("varchar", "char")
# Spark's interval fields: day-time (day, hour, minute, second) and year-month.
_INTERVAL_UNITS = ("year", "month", "day", "hour", "minute", "second")
_YEAR_MONTH = ("year", "month")
_COMPLEX = ("array", "map", "struct")

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_TOKEN = re.compile(
    r"""
    (?P<space>\s+)
  | (?P<word>[A-Za-z0-9_]+)
  | (?P<quoted>`(?:[^`]|``)*`)
  | (?P<string>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")
  | (?P<punct>[<>(),:])
  | (?P<bad>.)
    """,
    re.VERBOSE | re.DOTALL,
)
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "0": "\0"}


class DdlError(ValueError):
    """The text is not a valid column list; the message says what is wrong and where."""


class Column(NamedTuple):
    name: str
    type: str  # Spark's simpleString, e.g. "decimal(10,2)"
    nullable: bool = True
    comment: str | None = None


class _Token(NamedTuple):
    kind: str  # word | quoted | string | punct | end
    text: str  # as written (for messages)
    value: str  # the name (backticks removed), the string's content, or the text
    pos: int


def parse_ddl(text: str, *, metadata: bool = True) -> list[Column]:
    """The columns of a DDL column list, in order; DdlError when it is not valid.

    With metadata=False, NOT NULL and COMMENT are left out at every level (struct
    fields too): what remains is the data's shape, names and types.
    """
    return _Parser(text, metadata=metadata).columns()


def columns_and_types(text: str) -> list[tuple[str, str]]:
    """(column, type) pairs of a DDL column list, types in Spark's spelling."""
    return [(column.name, column.type) for column in parse_ddl(text)]


def to_ddl(columns: list[Column]) -> str:
    """The canonical DDL of parsed columns: same columns, same text for the same meaning."""
    return ", ".join(_column_ddl(column, top_level=True) for column in columns)


def _quote_name(name: str) -> str:
    return name if _IDENT.fullmatch(name) else "`" + name.replace("`", "``") + "`"


def _quote_string(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _column_ddl(column: Column, *, top_level: bool) -> str:
    parts = [_quote_name(column.name) + (" " if top_level else ":") + column.type]
    if not column.nullable:
        parts.append("NOT NULL" if top_level else "not null")
    if column.comment is not None:
        parts.append(("COMMENT " if top_level else "comment ") + _quote_string(column.comment))
    return " ".join(parts)


def _tokenize(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    for match in _TOKEN.finditer(text):
        kind = match.lastgroup
        if kind == "space":
            continue
        raw = match.group()
        if kind == "bad":
            pos = match.start()
            if raw in "`'\"":
                what = "backtick name" if raw == "`" else "string"
                raise DdlError(f"unterminated {what} starting at position {pos + 1}")
            raise DdlError(f"unexpected character {raw!r} at position {pos + 1}")
        if kind == "quoted":
            tokens.append(_Token(kind, raw, raw[1:-1].replace("``", "`"), match.start()))
        elif kind == "string":
            tokens.append(_Token(kind, raw, _unescape(raw[1:-1]), match.start()))
        else:
            tokens.append(_Token(kind or "", raw, raw, match.start()))
    tokens.append(_Token("end", "the end", "", len(text)))
    return tokens


def _unescape(body: str) -> str:
    return re.sub(r"\\(.)", lambda m: _ESCAPES.get(m.group(1), m.group(1)), body, flags=re.DOTALL)


class _Parser:
    def __init__(self, text: str, *, metadata: bool = True) -> None:
        if not isinstance(text, str):
            raise DdlError(f"must be a string, got {type(text).__name__}")
        self.tokens = _tokenize(text)
        self.i = 0
        self.metadata = metadata

    # ------------------------------------------------------------------ tokens

    @property
    def token(self) -> _Token:
        return self.tokens[self.i]

    def advance(self) -> _Token:
        token = self.tokens[self.i]
        if token.kind != "end":
            self.i += 1
        return token

    def at_punct(self, char: str) -> bool:
        return self.token.kind == "punct" and self.token.text == char

    def at_keyword(self, word: str) -> bool:
        return self.token.kind == "word" and self.token.text.lower() == word

    def expect_punct(self, char: str, where: str) -> None:
        if not self.at_punct(char):
            raise DdlError(f"expected '{char}' {where}, got {self._shown(self.token)}")
        self.advance()

    @staticmethod
    def _shown(token: _Token) -> str:
        return token.text if token.kind == "end" else repr(token.text)

    # ------------------------------------------------------------------ grammar

    def columns(self) -> list[Column]:
        if self.token.kind == "end":
            raise DdlError("is empty: give columns as 'name TYPE, ...'")
        columns = [self.column(context=None)]
        while self.at_punct(","):
            self.advance()
            if self.token.kind == "end":
                raise DdlError(
                    f"expected a column after the ',' following column {columns[-1].name!r}"
                )
            columns.append(self.column(context=None))
        if self.token.kind != "end":
            raise DdlError(
                f"expected ',' or the end after column {columns[-1].name!r}, "
                f"got {self._shown(self.token)}"
            )
        _reject_duplicates(columns, "column", None)
        return columns

    def column(self, context: str | None) -> Column:
        """One column (context None) or one field of the struct in column `context`."""
        name = self.name(context)
        path = name if context is None else f"{context}.{name}"
        if context is not None and self.at_punct(":"):
            self.advance()
        data_type = self.data_type(path)
        nullable = True
        comment = None
        if self.at_keyword("not"):
            self.advance()
            if not self.at_keyword("null"):
                raise DdlError(
                    f"expected NULL after NOT in column {path!r}, got {self._shown(self.token)}"
                )
            self.advance()
            nullable = False
        if self.at_keyword("comment"):
            self.advance()
            if self.token.kind != "string":
                raise DdlError(
                    f"expected a quoted comment after COMMENT in column {path!r}, "
                    f"got {self._shown(self.token)}"
                )
            comment = self.advance().value
        if not self.metadata:
            return Column(name, data_type)
        return Column(name, data_type, nullable, comment)

    def name(self, context: str | None) -> str:
        token = self.token
        what = "a column name" if context is None else f"a field name in the struct of {context!r}"
        if token.kind == "quoted":
            if not token.value:
                raise DdlError(f"expected {what}, got an empty `` name")
            self.advance()
            return token.value
        if token.kind == "word" and _IDENT.fullmatch(token.text):
            self.advance()
            return token.text
        hint = " (quote other names in backticks: `my col`)" if token.kind == "word" else ""
        raise DdlError(f"expected {what}, got {self._shown(token)}{hint}")

    def data_type(self, path: str) -> str:
        token = self.token
        if token.kind != "word":
            raise DdlError(f"expected a type for column {path!r}, got {self._shown(token)}")
        word = token.text.lower()
        self.advance()
        if word == "string" and self.at_keyword("collate"):
            self.advance()
            collation = self.token
            if collation.kind != "word":
                raise DdlError(
                    f"expected a collation name after COLLATE in column {path!r}, "
                    f"got {self._shown(collation)}"
                )
            self.advance()
            return f"string collate {collation.text}"
        if word in _PRIMITIVES:
            return _PRIMITIVES[word]
        if word == "interval":
            return self.interval(path)
        if word in _DECIMALS:
            return self.decimal(path)
        if word in _SIZED:
            raise DdlError(
                f"{word} in column {path!r}: Spark reads no {word.upper()}(n) column from "
                "files (UNSUPPORTED_CHAR_OR_VARCHAR_AS_STRING); use STRING"
            )
        if word == "array":
            self.expect_punct("<", f"after array in column {path!r}")
            element = self.data_type(path)
            self.expect_punct(">", f"to close array<...> in column {path!r}")
            return f"array<{element}>"
        if word == "map":
            self.expect_punct("<", f"after map in column {path!r}")
            key = self.data_type(path)
            self.expect_punct(",", f"between the key and value types of map in column {path!r}")
            value = self.data_type(path)
            self.expect_punct(">", f"to close map<...> in column {path!r}")
            return f"map<{key},{value}>"
        if word == "struct":
            self.expect_punct("<", f"after struct in column {path!r}")
            fields: list[Column] = []
            if not self.at_punct(">"):
                fields.append(self.column(context=path))
                while self.at_punct(","):
                    self.advance()
                    fields.append(self.column(context=path))
            self.expect_punct(">", f"to close struct<...> in column {path!r}")
            _reject_duplicates(fields, "field", path)
            return "struct<" + ",".join(_column_ddl(f, top_level=False) for f in fields) + ">"
        raise DdlError(f"unknown type {token.text!r} for column {path!r}")

    def interval(self, path: str) -> str:
        units = [self.interval_unit(path)]
        if self.at_keyword("to"):
            self.advance()
            units.append(self.interval_unit(path))
            start, end = (_INTERVAL_UNITS.index(unit) for unit in units)
            if end <= start or (units[0] in _YEAR_MONTH) != (units[1] in _YEAR_MONTH):
                raise DdlError(
                    f"interval {units[0]} to {units[1]} is not a Spark interval in column "
                    f"{path!r} (year to month, or day/hour/minute to a smaller unit)"
                )
        return "interval " + " to ".join(units)

    def interval_unit(self, path: str) -> str:
        token = self.token
        unit = token.text.lower() if token.kind == "word" else ""
        if unit not in _INTERVAL_UNITS:
            raise DdlError(
                f"expected an interval unit ({', '.join(_INTERVAL_UNITS)}) in column {path!r}, "
                f"got {self._shown(token)}"
            )
        self.advance()
        return unit

    def decimal(self, path: str) -> str:
        precision, scale = 10, 0  # Spark's defaults for a bare DECIMAL
        if self.at_punct("("):
            self.advance()
            precision = self.number(f"as the precision of decimal in column {path!r}")
            if self.at_punct(","):
                self.advance()
                scale = self.number(f"as the scale of decimal in column {path!r}")
            self.expect_punct(")", f"to close decimal(...) in column {path!r}")
        if not 1 <= precision <= MAX_DECIMAL_PRECISION:
            raise DdlError(
                f"decimal precision must be 1 to {MAX_DECIMAL_PRECISION}, "
                f"got {precision} in column {path!r}"
            )
        if scale > precision:
            raise DdlError(
                f"decimal scale {scale} is larger than its precision {precision} in column {path!r}"
            )
        return f"decimal({precision},{scale})"

    def number(self, where: str) -> int:
        token = self.token
        if token.kind != "word" or not token.text.isdigit():
            raise DdlError(f"expected a number {where}, got {self._shown(token)}")
        self.advance()
        return int(token.text)


def _reject_duplicates(columns: list[Column], what: str, context: str | None) -> None:
    # Spark resolves column names case-insensitively by default.
    seen: dict[str, str] = {}
    for column in columns:
        folded = column.name.lower()
        if folded in seen:
            same = (
                ""
                if seen[folded] == column.name
                else f" (same as {seen[folded]!r}: names are case-insensitive)"
            )
            where = "" if context is None else f" in the struct of {context!r}"
            raise DdlError(f"duplicate {what} {column.name!r}{same}{where}")
        seen[folded] = column.name
