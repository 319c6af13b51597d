"""The Spark DDL column-list parser used to check `source.schema` and
`source.schema_hints` without Spark."""

from __future__ import annotations

import pytest

from fanout_dagster.core.ddl import Column, DdlError, columns_and_types, parse_ddl, to_ddl


def test_the_documented_example():
    assert columns_and_types("order_id INT, amount DECIMAL(10,2), ordered_at TIMESTAMP") == [
        ("order_id", "int"),
        ("amount", "decimal(10,2)"),
        ("ordered_at", "timestamp"),
    ]


# (as written in a config, as Spark spells it)
TYPES = [
    ("string", "string"),
    ("STRING", "string"),
    ("string collate UTF8_LCASE", "string collate UTF8_LCASE"),
    ("variant", "variant"),
    ("interval day", "interval day"),
    ("INTERVAL year TO month", "interval year to month"),
    ("interval day to second", "interval day to second"),
    ("boolean", "boolean"),
    ("tinyint", "tinyint"),
    ("byte", "tinyint"),
    ("smallint", "smallint"),
    ("short", "smallint"),
    ("int", "int"),
    ("Integer", "int"),
    ("bigint", "bigint"),
    ("long", "bigint"),
    ("float", "float"),
    ("real", "float"),
    ("double", "double"),
    ("decimal", "decimal(10,0)"),
    ("decimal(5)", "decimal(5,0)"),
    ("dec(10, 2)", "decimal(10,2)"),
    ("NUMERIC(38,38)", "decimal(38,38)"),
    ("date", "date"),
    ("timestamp", "timestamp"),
    ("timestamp_ntz", "timestamp_ntz"),
    ("binary", "binary"),
    ("array<int>", "array<int>"),
    ("ARRAY< LONG >", "array<bigint>"),
    ("map<string, array<double>>", "map<string,array<double>>"),
    ("struct<a:int, b string>", "struct<a:int,b:string>"),
    ("struct<>", "struct<>"),
    ("struct<a: struct<b: map<string,int>>>", "struct<a:struct<b:map<string,int>>>"),
    ("struct<a:int NOT NULL COMMENT 'x'>", "struct<a:int not null comment 'x'>"),
]


@pytest.mark.parametrize("written, spelled", TYPES)
def test_types_come_back_in_spark_spelling(written, spelled):
    assert columns_and_types(f"c {written}") == [("c", spelled)]


def test_every_type_this_parser_accepts_is_one_a_spark_reader_accepts(spark, tmp_path):
    # Spark's own parser judges: each column as a file reader's schema, spelled
    # as Spark spells it (struct fields compared without NOT NULL / COMMENT,
    # which a reader's schema drops).
    empty = tmp_path / "empty.json"
    empty.write_text("")
    schema = ", ".join(f"c{i} {written}" for i, (written, _) in enumerate(TYPES))
    dtypes = spark.read.schema(schema).json(str(empty)).dtypes
    expected = [(f"c{i}", spelled) for i, (_, spelled) in enumerate(TYPES)]
    assert [(n, t.replace(" not null", "").replace(" comment 'x'", "")) for n, t in dtypes] == [
        (n, t.replace(" not null", "").replace(" comment 'x'", "")) for n, t in expected
    ]
    assert [c.type for c in parse_ddl(schema)] == [spelled for _, spelled in TYPES]


def test_not_null_comments_and_backticked_names():
    columns = parse_ddl(
        "id BIGINT NOT NULL COMMENT 'the key', `order date` date comment \"it's\",\n  `a``b` string"
    )
    assert columns == [
        Column("id", "bigint", False, "the key"),
        Column("order date", "date", True, "it's"),
        Column("a`b", "string"),
    ]


def test_to_ddl_is_canonical_and_parses_back():
    written = "ID long not null COMMENT 'it\\'s', `x y` Map<String , Array<Dec(4,1)>>"
    columns = parse_ddl(written)
    canonical = to_ddl(columns)
    assert canonical == "ID bigint NOT NULL COMMENT 'it\\'s', `x y` map<string,array<decimal(4,1)>>"
    assert parse_ddl(canonical) == columns
    # Formatting and aliases do not change the canonical text.
    assert (
        to_ddl(
            parse_ddl("ID BIGINT  NOT NULL COMMENT 'it\\'s',`x y` map<string,array<decimal(4,1)>>")
        )
        == canonical
    )


@pytest.mark.parametrize(
    "text, words",
    [
        ("name strng", "unknown type 'strng' for column 'name'"),
        ("a struct<b: strng>", "unknown type 'strng' for column 'a.b'"),
        ("", "is empty"),
        ("   ", "is empty"),
        ("a", "expected a type for column 'a', got the end"),
        ("a int,", "expected a column after the ','"),
        ("a int,, b int", "expected a column name, got ','"),
        ("a int b int", "expected ',' or the end after column 'a', got 'b'"),
        ("a int, a string", "duplicate column 'a'"),
        ("a int, A string", "duplicate column 'A' (same as 'a': names are case-insensitive)"),
        ("s struct<x int, x int>", "duplicate field 'x' in the struct of 's'"),
        ("a decimal(39,2)", "decimal precision must be 1 to 38, got 39"),
        ("a decimal(0)", "decimal precision must be 1 to 38, got 0"),
        ("a decimal(5,6)", "decimal scale 6 is larger than its precision 5"),
        ("a decimal(x)", "expected a number as the precision"),
        ("a varchar(20)", "Spark reads no VARCHAR(n) column from files"),
        ("a char(3)", "char in column 'a': Spark reads no CHAR(n) column from files"),
        ("a struct<b: varchar(2)>", "varchar in column 'a.b'"),
        ("a interval day to year", "interval day to year is not a Spark interval"),
        ("a interval month to second", "not a Spark interval"),
        ("a interval week", "expected an interval unit"),
        ("a string collate", "expected a collation name after COLLATE"),
        ("a array<int", "expected '>' to close array<...> in column 'a', got the end"),
        ("a map<int>", "expected ',' between the key and value types of map"),
        ("a int not nul", "expected NULL after NOT"),
        ("a int comment x", "expected a quoted comment after COMMENT"),
        ("a int comment 'x", "unterminated string"),
        ("`a int", "unterminated backtick name"),
        ("1a int", "expected a column name, got '1a' (quote other names in backticks"),
        ("`` int", "empty `` name"),
        ("a int; drop table x", "unexpected character ';'"),
        ("a int -- comment", "unexpected character '-'"),
        ("a string(10)", "expected ',' or the end after column 'a', got '('"),
    ],
)
def test_malformed_text_says_what_is_wrong(text, words):
    with pytest.raises(DdlError) as excinfo:
        parse_ddl(text)
    assert words in str(excinfo.value)


def test_a_trailing_newline_from_a_yaml_block_scalar_is_whitespace():
    assert columns_and_types("a int,\n b string\n") == [("a", "int"), ("b", "string")]
