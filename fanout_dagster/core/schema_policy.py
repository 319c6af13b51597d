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
- a type that differs: in `rescue` mode the values that do not parse as the
  table's type go to `_rescued_data`; otherwise a source type that widens
  safely to the table's (int into bigint, say) is cast, and any other change
  fails naming the column with its old and new type. A type change is never
  applied to the table silently.

Pure Spark over DataFrames (no Dagster, no I/O), so it works the same on a
classic session and over Spark Connect.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Literal

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql.types import (
    ArrayType,
    ByteType,
    DataType,
    DoubleType,
    FloatType,
    IntegerType,
    LongType,
    MapType,
    ShortType,
    StringType,
    StructField,
    StructType,
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


@dataclass
class _Differences:
    new: list[str] = field(default_factory=list)  # paths the source has and the table lacks
    changed: dict[str, str] = field(default_factory=dict)  # path -> "old -> new" type

    def described_changes(self) -> str:
        return ", ".join(f"{path} ({change})" for path, change in self.changed.items())

    @staticmethod
    def top_level(paths: Collection[str]) -> set[str]:
        return {p.split(".", 1)[0].split("[", 1)[0].split("{", 1)[0] for p in paths}


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
    added_system = [
        f for f in source_fields if f.name in system_columns and f.name not in table_schema.names
    ]
    data_fields = [f for f in source_fields if f not in added_system]
    diff = _Differences()
    keep_new = mode == "addNewColumns"
    target = _merge(StructType(data_fields), StructType(table_fields), "", diff, keep_new)
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
            f"the source has new column(s) {', '.join(diff.new)} that table {table} does not "
            "have (schema_evolution_mode: failOnNewColumns); the table keeps its previous version"
        )
    columns = [_column(df, f) for f in target.fields] + [F.col(_q(f.name)) for f in added_system]
    if RESCUED_COLUMN in table_schema.names:  # the table was once loaded in rescue mode
        columns.append(F.lit(None).cast(StringType()).alias(RESCUED_COLUMN))
    return df.select(*columns), bool(added_system) or (keep_new and bool(diff.new))


def _merge(
    source: DataType, table: DataType, path: str, diff: _Differences, keep_new: bool
) -> DataType:
    """The type a source value takes in the table; records what differs on the way."""
    if source == table:
        return table
    if isinstance(source, StructType) and isinstance(table, StructType):
        by_name = {f.name: f for f in source.fields}
        fields = [
            StructField(
                f.name,
                _merge(by_name[f.name].dataType, f.dataType, _join(path, f.name), diff, keep_new)
                if f.name in by_name
                else f.dataType,
                True,
            )
            for f in table.fields
        ]
        for f in source.fields:
            if f.name not in table.names:
                diff.new.append(_join(path, f.name))
                if keep_new:
                    fields.append(StructField(f.name, f.dataType, True))
        return StructType(fields)
    if isinstance(source, ArrayType) and isinstance(table, ArrayType):
        element = _merge(source.elementType, table.elementType, path + "[]", diff, keep_new)
        return ArrayType(element, True)
    if (
        isinstance(source, MapType)
        and isinstance(table, MapType)
        and source.keyType == table.keyType
    ):
        value = _merge(source.valueType, table.valueType, path + "{}", diff, keep_new)
        return MapType(table.keyType, value, True)
    if not isinstance(table, _WIDENS_TO.get(type(source), ())):
        diff.changed[path] = f"{table.simpleString()} -> {source.simpleString()}"
    return table


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _column(df: DataFrame, target: StructField, *, lenient: bool = False) -> Column:
    if target.name not in df.columns:
        return F.lit(None).cast(target.dataType).alias(target.name)
    source = df.schema[target.name].dataType
    return _convert(F.col(_q(target.name)), source, target.dataType, lenient).alias(target.name)


def _convert(value: Column, source: DataType, target: DataType, lenient: bool) -> Column:
    """`value` (of type `source`) as `target`: nested fields the target lacks are
    dropped, those the source lacks are null. `lenient`: values that do not parse
    become null (rescue mode) instead of failing."""
    if source == target:
        return value
    if isinstance(source, StructType) and isinstance(target, StructType):
        parts = [
            _convert(value.getField(f.name), source[f.name].dataType, f.dataType, lenient).alias(
                f.name
            )
            if f.name in source.names
            else F.lit(None).cast(f.dataType).alias(f.name)
            for f in target.fields
        ]
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


def _rescue(
    df: DataFrame, target: StructType, diff: _Differences, added_system: list[StructField]
) -> DataFrame:
    """Cast to the table's types; what does not fit goes to `_rescued_data` as JSON:
    new columns, and the original value of a column that has new nested fields
    or values that do not parse as the table's type."""
    differing = diff.top_level(diff.new) | diff.top_level(diff.changed)
    columns: list[Column] = []
    rescued: list[Column] = []  # struct(key, value as text) or null, per candidate
    for f in target.fields:
        columns.append(_column(df, f, lenient=True))
        if f.name in differing and f.name in df.columns:
            original = F.col(_q(f.name))
            converted = _column(df, f, lenient=True)
            primitive = not isinstance(f.dataType, (StructType, ArrayType, MapType))
            # A primitive value is rescued when it did not parse; a nested one
            # whenever it differs (fields the table lacks, values that did not parse).
            lost = original.isNotNull() & (converted.isNull() if primitive else F.lit(True))
            rescued.append(F.when(lost, _entry(f.name, original)))
    rescued += [
        F.when(F.col(_q(c)).isNotNull(), _entry(c, F.col(_q(c))))
        for c in diff.top_level(diff.new)
        if c not in target.names
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
