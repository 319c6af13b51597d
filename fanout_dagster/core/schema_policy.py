"""Schema evolution per object, with the modes and names of Databricks Auto
Loader's `cloudFiles.schemaEvolutionMode`.

A load's columns are compared with the bronze table's before anything is
written, nested fields (structs, arrays and maps of structs) included:

- a column or nested field the table has and the source lacks is filled with
  nulls (a day file without an optional field loads);
- a column or nested field the source has and the table lacks follows the
  mode: `addNewColumns` adds it to the table, `failOnNewColumns` fails the load
  (the table keeps its previous version), `rescue` puts its values in the
  `_rescued_data` JSON column, `none` ignores it;
- a type that differs: in `rescue` mode the values that do not fit the
  table's type exactly (that do not parse, or that the cast would change:
  2.5 into an int, a rounded decimal, a time dropped from a date) go to
  `_rescued_data`; otherwise a source type that widens safely to the table's
  (int into bigint, say) is cast, and any other change fails naming the
  column with its old and new type. A type change is never applied to the
  table silently.

Names are matched as Spark and Delta resolve them: case-insensitively (`ID` is
column `id`; the table's spelling stays), and always as whole names (a column
`price.usd` is that column, never field `usd` of `price`).

Pure Spark over DataFrames (no Dagster, no I/O), so it works the same on a
classic session and over Spark Connect.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from enum import Enum
from typing import Literal

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql.types import (
    ArrayType,
    ByteType,
    DataType,
    DateType,
    DecimalType,
    DoubleType,
    FloatType,
    IntegerType,
    LongType,
    MapType,
    NullType,
    ShortType,
    StringType,
    StructField,
    StructType,
    TimestampType,
)

EvolutionMode = Literal["addNewColumns", "failOnNewColumns", "rescue", "none"]
EVOLUTION_MODES: tuple[EvolutionMode, ...] = ("addNewColumns", "failOnNewColumns", "rescue", "none")
RESCUED_COLUMN = "_rescued_data"

# Source type -> table types it can be cast to without losing anything.
_WIDENS_TO: dict[type[DataType], tuple[type[DataType], ...]] = {
    ByteType: (ShortType, IntegerType, LongType, FloatType, DoubleType),
    ShortType: (IntegerType, LongType, FloatType, DoubleType),
    IntegerType: (LongType, DoubleType),
    FloatType: (DoubleType,),
}


class SchemaChangeRejected(Exception):
    """The load's schema does not fit the table under the object's mode; nothing was written."""


class _Step(Enum):
    """A step into a nested type that is not a field: an array's element, a map's value."""

    ELEMENT = "[]"
    VALUE = "{}"


# Where a difference is: a column name, then nested field names and steps.
# Names are kept whole: `price.usd` is one name, not a path.
_Path = tuple[str | _Step, ...]
_PLAIN_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _shown(path: _Path) -> str:
    """A path as Spark writes it: names that are not plain identifiers in backticks."""
    text = ""
    for step in path:
        if isinstance(step, _Step):
            text += step.value
        else:
            name = step if _PLAIN_NAME.match(step) else _q(step)
            text += f".{name}" if text else name
    return text


@dataclass
class _Differences:
    new: list[_Path] = field(default_factory=list)  # what the source has and the table lacks
    changed: dict[_Path, str] = field(default_factory=dict)  # path -> "old -> new" type

    def described_new(self) -> str:
        return ", ".join(_shown(path) for path in self.new)

    def described_changes(self) -> str:
        return ", ".join(f"{_shown(path)} ({change})" for path, change in self.changed.items())

    def columns_to_rescue(self) -> set[str]:
        """Columns the table has whose source values differ in type or nested fields."""
        nested_new = [path for path in self.new if len(path) > 1]
        return {str(path[0]).lower() for path in [*self.changed, *nested_new]}

    def new_columns(self) -> list[str]:
        """Top-level columns the source has and the table lacks (as the source spells them)."""
        return [str(path[0]) for path in self.new if len(path) == 1]


def _by_name(fields: Iterable[StructField]) -> dict[str, StructField]:
    """Fields by their name as Spark resolves it (case-insensitively); two names that
    differ only by case are one column to Spark and Delta, and are refused."""
    found: dict[str, StructField] = {}
    for f in fields:
        other = found.setdefault(f.name.lower(), f)
        if other is not f:
            raise SchemaChangeRejected(
                f"the source has columns whose names differ only by case: {_shown((other.name,))}, "
                f"{_shown((f.name,))}; Spark and Delta take them for one column"
            )
    return found


def conform(
    df: DataFrame,
    table_schema: StructType | None,
    mode: EvolutionMode,
    *,
    table: str,
    system_columns: Collection[str] = (),
) -> tuple[DataFrame, bool]:
    """The load `df` shaped for the table, and whether the write must add columns.

    `table_schema` None: the table does not exist yet; the load creates it
    (with an empty `_rescued_data` column in rescue mode). `system_columns`
    (the audit columns) are the loader's own: a table written by an older
    version that lacks one gets it added, whatever the mode.
    """
    if table_schema is None:
        if mode == "rescue" and RESCUED_COLUMN not in df.columns:
            df = df.withColumn(RESCUED_COLUMN, F.lit(None).cast(StringType()))
        return df, False

    table_fields = [f for f in table_schema.fields if f.name != RESCUED_COLUMN]
    source_fields = [f for f in df.schema.fields if f.name != RESCUED_COLUMN]
    table_names = {name.lower() for name in table_schema.names}
    added_system = [
        f for f in source_fields if f.name in system_columns and f.name.lower() not in table_names
    ]
    data_fields = [f for f in source_fields if f not in added_system]
    diff = _Differences()
    keep_new = mode == "addNewColumns"
    target = _merge(StructType(data_fields), StructType(table_fields), (), diff, keep_new)
    assert isinstance(target, StructType)

    if mode == "rescue":
        return _rescue(df, target, diff, added_system), (
            RESCUED_COLUMN not in table_schema.names or bool(added_system)
        )
    if diff.changed:
        raise SchemaChangeRejected(
            f"column type changed in table {table}: {diff.described_changes()}; the table keeps "
            "its previous version. Give the column's type in the object's schema or "
            "schema_hints, or load into a new table."
        )
    if diff.new and mode == "failOnNewColumns":
        raise SchemaChangeRejected(
            f"the source has new column(s) {diff.described_new()} that table {table} does not "
            "have (schema_evolution_mode: failOnNewColumns); the table keeps its previous version"
        )
    columns = [_column(df, f) for f in target.fields] + [F.col(_q(f.name)) for f in added_system]
    if RESCUED_COLUMN in table_schema.names:  # the table was once loaded in rescue mode
        columns.append(F.lit(None).cast(StringType()).alias(RESCUED_COLUMN))
    return df.select(*columns), bool(added_system) or (keep_new and bool(diff.new))


def _merge(
    source: DataType, table: DataType, path: _Path, diff: _Differences, keep_new: bool
) -> DataType:
    """The type a source value takes in the table; records what differs on the way."""
    if source == table:
        return table
    if isinstance(source, StructType) and isinstance(table, StructType):
        by_name = _by_name(source.fields)
        fields = [
            StructField(
                f.name,
                _merge(
                    by_name[f.name.lower()].dataType, f.dataType, (*path, f.name), diff, keep_new
                )
                if f.name.lower() in by_name
                else f.dataType,
                True,
            )
            for f in table.fields
        ]
        table_names = {name.lower() for name in table.names}
        for f in source.fields:
            if f.name.lower() not in table_names:
                diff.new.append((*path, f.name))
                if keep_new:
                    fields.append(StructField(f.name, f.dataType, True))
        return StructType(fields)
    if isinstance(source, ArrayType) and isinstance(table, ArrayType):
        element = _merge(
            source.elementType, table.elementType, (*path, _Step.ELEMENT), diff, keep_new
        )
        return ArrayType(element, True)
    if (
        isinstance(source, MapType)
        and isinstance(table, MapType)
        and source.keyType == table.keyType
    ):
        value = _merge(source.valueType, table.valueType, (*path, _Step.VALUE), diff, keep_new)
        return MapType(table.keyType, value, True)
    if not isinstance(table, _WIDENS_TO.get(type(source), ())):
        diff.changed[path] = f"{table.simpleString()} -> {source.simpleString()}"
    return table


def _source_field(schema: StructType, name: str) -> StructField | None:
    """The source's field for the table's column `name`, matched as Spark resolves names."""
    return next((f for f in schema.fields if f.name.lower() == name.lower()), None)


def _column(df: DataFrame, target: StructField, *, lenient: bool = False) -> Column:
    return _converted(df, target, lenient).alias(target.name)


def _converted(df: DataFrame, target: StructField, lenient: bool) -> Column:
    """The source's value for the table's column `target`, in its type (null if the
    source lacks the column)."""
    source = _source_field(df.schema, target.name)
    if source is None:
        return F.lit(None).cast(target.dataType)
    return _convert(F.col(_q(source.name)), source.dataType, target.dataType, lenient)


def _convert(value: Column, source: DataType, target: DataType, lenient: bool) -> Column:
    """`value` (of type `source`) as `target`: nested fields the target lacks are
    dropped, those the source lacks are null. `lenient`: values that do not parse
    become null (rescue mode) instead of failing."""
    if source == target:
        return value
    if isinstance(source, StructType) and isinstance(target, StructType):
        parts = []
        for f in target.fields:
            found = _source_field(source, f.name)
            part = (
                _convert(value.getField(found.name), found.dataType, f.dataType, lenient)
                if found is not None
                else F.lit(None).cast(f.dataType)
            )
            parts.append(part.alias(f.name))
        return F.when(value.isNull(), F.lit(None)).otherwise(F.struct(*parts))
    if isinstance(source, ArrayType) and isinstance(target, ArrayType):
        return F.transform(
            value, lambda e: _convert(e, source.elementType, target.elementType, lenient)
        )
    if isinstance(source, MapType) and isinstance(target, MapType):
        return F.transform_values(
            value, lambda _k, v: _convert(v, source.valueType, target.valueType, lenient)
        )
    return value.try_cast(target) if lenient else value.cast(target)


def _fits_exactly(
    original: Column, converted: Column, source: DataType, target: DataType
) -> Column:
    """Whether a primitive value kept its meaning in the table's type (`converted` is
    `original` cast leniently to `target`, and not null).

    A typed value must come back unchanged when cast back to its own type: 2.5
    into an int (2) does not, nor 1.2345 into DECIMAL(10,2), nor 10:30 into a
    date. Text has many spellings of one value ('1.2' and '1.20'), so text is
    compared by what it means: parsed as a wider type of the same kind.
    """
    if isinstance(source, NullType):
        return F.lit(True)
    if not isinstance(source, StringType):
        return converted.try_cast(source).eqNullSafe(original)
    if isinstance(target, DecimalType):
        wider = original.try_cast(DecimalType(38, max(18, target.scale)))
    elif isinstance(target, DateType):
        wider, converted = original.try_cast(TimestampType()), converted.cast(TimestampType())
    else:
        return F.lit(True)  # a value that parses at all parses exactly (ANSI try_cast)
    return wider.isNull() | (wider == converted)


def _rescue(
    df: DataFrame, target: StructType, diff: _Differences, added_system: list[StructField]
) -> DataFrame:
    """Cast to the table's types; what does not fit goes to `_rescued_data` as JSON:
    new columns, and the original value of a column that has new nested fields
    or values that do not fit the table's type exactly."""
    to_rescue = diff.columns_to_rescue()
    columns: list[Column] = []
    rescued: list[Column] = []  # struct(key, value as text) or null, per candidate
    for f in target.fields:
        converted = _converted(df, f, lenient=True)
        columns.append(converted.alias(f.name))
        source = _source_field(df.schema, f.name)
        if f.name.lower() in to_rescue and source is not None:
            original = F.col(_q(source.name))
            if isinstance(f.dataType, (StructType, ArrayType, MapType)):
                # A nested value is rescued whenever it differs (fields the table
                # lacks, values that did not fit).
                lost = original.isNotNull()
            else:
                exact = _fits_exactly(original, converted, source.dataType, f.dataType)
                lost = original.isNotNull() & (converted.isNull() | ~exact)
            rescued.append(F.when(lost, _entry(source.name, original)))
    rescued += [
        F.when(F.col(_q(name)).isNotNull(), _entry(name, F.col(_q(name))))
        for name in diff.new_columns()
    ]
    columns += [F.col(_q(f.name)) for f in added_system]
    if RESCUED_COLUMN in df.columns:  # a source that carries its own rescued data keeps it
        columns.append(F.col(RESCUED_COLUMN).cast(StringType()).alias(RESCUED_COLUMN))
    elif rescued:
        entries = F.filter(F.array(*rescued), lambda entry: entry.isNotNull())
        json = F.when(F.size(entries) > 0, F.to_json(F.map_from_entries(entries)))
        columns.append(json.cast(StringType()).alias(RESCUED_COLUMN))
    else:
        columns.append(F.lit(None).cast(StringType()).alias(RESCUED_COLUMN))
    return df.select(*columns)


def _entry(name: str, value: Column) -> Column:
    # {"v": <value>} -> the value's own JSON text, so numbers stay numbers and strings strings.
    text = F.get_json_object(F.to_json(F.struct(value.alias("v"))), "$.v")
    return F.struct(F.lit(name).alias("key"), text.alias("value"))


def _q(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"
