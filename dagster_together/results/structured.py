"""Structured answers read by pyarrow: the answers of a bucket parsed as one JSONL block.

:func:`_typed_answers` parses the JSON answers of many rows at once with pyarrow's JSON reader
(the output schema's Arrow types as its explicit schema) and checks the schema's constraints
with Arrow compute. It only *accepts*: a row is taken from this path when the reader parsed it
under the schema's types and every check passed, so its values are those
:meth:`OutputSchema.parse` would give. Every other row (not starting with ``{``, holding a
control character, a value the checks cannot decide, a block the reader refuses, a schema with
a keyword not checked here) is left to ``OutputSchema.parse``, row by row, which gives the
verdict and the error message. So the result never depends on which path a row took.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dagster_together.arrow_values import int64s, strings
from dagster_together.results.arrow import (
    _bool,
    _falses,
    _int,
    _null,
    _range,
    _str,
    _trues,
)

if TYPE_CHECKING:  # pragma: no cover
    import pyarrow as pa

    from dagster_together.output_schema import OutputSchema, SchemaNode

_MIN_PIECE = 64  # a refused block is halved down to this many rows, then left to Python


def _typed_answers(
    contents: pa.Array, schema: OutputSchema, among: pa.Array | None = None
) -> tuple[pa.Array, list[pa.Array]]:
    """``(accepted, values)``: one array per top-level field of the schema (``values``), row
    for row with ``contents`` (the answers, a string array), and a boolean per answer, true
    where this path accepted it: there its values are those :meth:`OutputSchema.parse` gives;
    elsewhere they are whatever the reader made of the text, for the caller to mask. Nulls, and
    rows where ``among`` (a boolean array) is not true, are never accepted."""
    import pyarrow as pa
    import pyarrow.compute as pc

    n = len(contents)
    types = [f.type for f in schema.arrow_fields()]
    if n == 0 or not _supported(schema.root):
        return _falses(n), [pa.nulls(n, t) for t in types]
    # One answer per line: no line breaks (nor other control characters, which Python's
    # decoder refuses inside strings) and an object from the first character.
    candidate = pc.starts_with(contents, "{")
    if among is not None:
        candidate = pc.and_(candidate, among)
    if _has_control_bytes(contents):  # rare: then the rows holding one are found
        candidate = pc.and_(
            candidate, pc.invert(pc.match_substring_regex(contents, "[\\x00-\\x1f]"))
        )
    candidate = pc.fill_null(candidate, _bool(False))
    if not pc.any(candidate).as_py():
        return _falses(n), [pa.nulls(n, t) for t in types]
    # Every row keeps a line (the others read as ``{}``, all null), so no row is moved: the
    # answers are copied once, into the lines the reader parses.
    texts = _only(contents, candidate)
    closed = _all_closed(schema.root)
    table, parsed = _read_pieces(texts, pa.schema(schema.arrow_fields()), closed)
    ok = pc.and_(parsed, _object_ok(schema.root, table, texts, closed, top=True))
    accepted = pc.fill_null(pc.and_(candidate, ok), _bool(False))
    return accepted, [table.column(i).combine_chunks() for i in range(len(types))]


def _only(strings: pa.Array, keep: pa.Array) -> pa.Array:
    """``strings`` made null where ``keep`` (booleans, no nulls, false wherever ``strings`` is
    null) is false: the same buffers under ``keep`` as validity where the offsets allow."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if strings.offset == 0 and keep.offset == 0 and pa.types.is_string(strings.type):
        return pa.Array.from_buffers(
            strings.type, len(strings), [keep.buffers()[1], *strings.buffers()[1:]]
        )
    return pc.if_else(keep, strings, _null(strings.type))


def _has_control_bytes(strings: pa.Array) -> bool:
    """Whether any of the strings holds a byte below 0x20 (the smallest byte of their data)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if len(strings) == 0 or strings.buffers()[2] is None:
        return False
    width = pa.int64() if pa.types.is_large_string(strings.type) else pa.int32()
    offsets = pa.Array.from_buffers(
        width, strings.offset + len(strings) + 1, [None, strings.buffers()[1]]
    )
    start, end = offsets[strings.offset].as_py(), offsets[strings.offset + len(strings)].as_py()
    if end == start:
        return False
    data = pa.Array.from_buffers(pa.uint8(), end - start, [None, strings.buffers()[2].slice(start)])
    return bool(pc.min(data).as_py() < 0x20)


def _read_pieces(
    answers: pa.Array, arrow_schema: pa.Schema, closed: bool
) -> tuple[pa.Table, pa.Array]:
    """Parse ``answers`` as JSONL (a null as ``{}``); a piece the reader refuses is halved,
    and pieces of ``_MIN_PIECE`` rows or fewer it refuses are left out (``parsed`` false,
    values null)."""
    import pyarrow as pa
    import pyarrow.json as pa_json

    options = pa_json.ParseOptions(
        explicit_schema=arrow_schema,
        unexpected_field_behavior="error" if closed else "ignore",
    )
    tables: list[pa.Table] = []
    parsed: list[pa.Array] = []

    def read(piece: pa.Array) -> None:
        lines = _as_jsonl(piece)
        try:
            table = pa_json.read_json(
                pa.BufferReader(lines),
                read_options=pa_json.ReadOptions(
                    use_threads=False, block_size=max(lines.size, 1 << 16)
                ),
                parse_options=options,
            )
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError):
            table = None
        if table is not None and table.num_rows == len(piece):
            tables.append(table)
            parsed.append(_trues(len(piece)))
        elif len(piece) > _MIN_PIECE:
            half = len(piece) // 2
            read(piece.slice(0, half))
            read(piece.slice(half))
        else:
            tables.append(
                pa.Table.from_arrays(
                    [pa.nulls(len(piece), t) for t in arrow_schema.types], schema=arrow_schema
                )
            )
            parsed.append(_falses(len(piece)))

    read(answers)
    return pa.concat_tables(tables), pa.concat_arrays(parsed)


def _as_jsonl(strings: pa.Array) -> pa.Buffer:
    """The strings (``{}`` for a null), each followed by a newline, as one buffer."""
    import pyarrow.compute as pc

    joined = pc.binary_join_element_wise(  # a new array
        strings, _str(""), _str("\n"), null_handling="replace", null_replacement="{}"
    )
    size = pc.sum(pc.binary_length(joined)).as_py() or 0
    return joined.buffers()[2].slice(0, size)


# -- what the checks cover -----------------------------------------------------------------------
def _supported(node: SchemaNode) -> bool:
    """Whether every node of the schema is checked here (else every row goes to Python)."""
    if node.kind == "json" or node.pattern is not None:
        return False
    if node.enum is not None and (
        node.kind not in ("string", "integer", "number", "boolean")
        or any(isinstance(v, bool) != (node.kind == "boolean") for v in node.enum)
        or not all(_same_kind(node.kind, v) for v in node.enum)
    ):
        return False
    if node.kind == "object":
        return all(_supported(sub) for sub in node.properties.values())
    if node.kind == "array":
        return node.items is not None and _supported(node.items)
    return True


def _same_kind(kind: str, value: Any) -> bool:
    if kind == "string":
        return isinstance(value, str)
    if kind == "boolean":
        return isinstance(value, bool)
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _all_closed(node: SchemaNode) -> bool:
    """Every object of the schema refuses extra fields (then the reader refuses them too, and
    a key seen in the text is one of the schema's)."""
    if node.kind == "object":
        return node.closed and all(_all_closed(sub) for sub in node.properties.values())
    if node.kind == "array" and node.items is not None:
        return _all_closed(node.items)
    return True


def _nested_names(node: SchemaNode) -> set[str]:
    """Property names used by the objects below ``node``."""
    names: set[str] = set()
    for sub in [*node.properties.values(), *([node.items] if node.items else [])]:
        names |= set(sub.properties) | _nested_names(sub)
    return names


# -- the checks: True where the value is certainly valid -----------------------------------------
def _object_ok(
    node: SchemaNode, values: Any, texts: pa.Array | None, closed: bool, top: bool = False
) -> pa.Array:
    """Per row of a struct array (or the top table), True where every property passes.

    A null property is a missing key or a JSON null: fine for a nullable optional property;
    for a required nullable one (must be there) or an optional one that may not be null (must
    be absent), decided only where the key can be seen in the text (below).
    """
    import pyarrow.compute as pc

    n = values.num_rows if top else len(values)
    ok = _trues(n)
    # At the top of an all-closed schema, ``"name":`` in the text is that property's key (a
    # nested object or an extra field with the name is ruled out), so a null is told apart
    # from a missing key; elsewhere a null the schema may refuse is left to Python.
    known = top and closed and texts is not None
    nested = _nested_names(node) if known else set()
    for i, (name, sub) in enumerate(node.properties.items()):
        child = values.column(i).combine_chunks() if top else pc.struct_field(values, [i])
        valid = pc.is_valid(child)
        required = name in node.required
        if sub.nullable and not required:
            null_ok = _trues(n)
        elif known and name not in nested and (sub.nullable or not required):
            assert texts is not None
            # Only the rows where the value is null need the answer: the text is searched there.
            missing = pc.invert(valid)
            found = pc.match_substring_regex(texts.filter(missing), f'"{_regex_escape(name)}"\\s*:')
            present = pc.replace_with_mask(_falses(n), missing, found)
            null_ok = present if sub.nullable else pc.invert(present)
        else:
            null_ok = _falses(n)
        value_ok = pc.fill_null(_value_ok(sub, child, closed), _bool(True))
        ok = pc.and_(ok, pc.if_else(valid, value_ok, null_ok))
    return ok


def _value_ok(node: SchemaNode, values: Any, closed: bool) -> pa.Array:
    """Per element (non-null ones; nulls may come back null), True where ``node`` passes."""
    import pyarrow as pa
    import pyarrow.compute as pc

    n = len(values)
    ok = _trues(n)
    kind = node.kind
    if kind == "string":
        if node.min_length is not None or node.max_length is not None:
            length = pc.utf8_length(values)
            if node.min_length is not None:
                ok = pc.and_(ok, pc.greater_equal(length, _int(node.min_length)))
            if node.max_length is not None:
                ok = pc.and_(ok, pc.less_equal(length, _int(node.max_length)))
    elif kind in ("integer", "number"):
        if kind == "number":
            ok = pc.and_(ok, pc.is_finite(values))
        for bound, compare in (
            (node.minimum, pc.greater_equal),
            (node.maximum, pc.less_equal),
            (node.exclusive_minimum, pc.greater),
            (node.exclusive_maximum, pc.less),
        ):
            if bound is not None:
                ok = pc.and_(ok, compare(values, _scalar(bound, values.type)))
    elif kind == "object":
        ok = _object_ok(node, values, None, closed)
    elif kind == "array":
        assert node.items is not None
        length = pc.list_value_length(values)
        if node.min_items is not None:
            ok = pc.and_(ok, pc.greater_equal(length, _int(node.min_items)))
        if node.max_items is not None:
            ok = pc.and_(ok, pc.less_equal(length, _int(node.max_items)))
        flat = pc.list_flatten(values)
        if len(flat):
            item_ok = pc.if_else(
                pc.is_valid(flat),
                pc.fill_null(_value_ok(node.items, flat, closed), _bool(True)),
                _bool(node.items.nullable),
            )
            bad_rows = pc.list_parent_indices(values).filter(pc.invert(item_ok))
            if len(bad_rows):
                has_bad = pc.is_in(_range(0, n), value_set=bad_rows.cast(pa.int64()))
                ok = pc.and_(ok, pc.invert(has_bad))
    if node.enum is not None:
        ok = pc.and_(ok, pc.is_in(values, value_set=_enum_values(node, values.type)))
    return ok


def _enum_values(node: SchemaNode, typ: pa.DataType) -> pa.Array:
    """The enum's values as an array of ``typ`` (built from buffers: no pandas import)."""
    import array

    import pyarrow as pa

    values = list(node.enum or ())
    if node.kind == "string":
        return strings(values)
    if node.kind == "number":
        floats = array.array("d", [float(v) for v in values])
        return pa.Array.from_buffers(pa.float64(), len(floats), [None, pa.py_buffer(floats)])
    if node.kind == "integer":  # a non-integral float in the enum matches no integer
        return int64s(array.array("q", [int(v) for v in values if float(v).is_integer()]))
    return int64s(array.array("q", [int(v) for v in values])).cast(pa.bool_())


def _scalar(bound: float, typ: pa.DataType) -> pa.Scalar:
    """``bound`` as a scalar to compare ``typ`` values with, exactly as Python compares them."""
    import array

    import pyarrow as pa

    if pa.types.is_integer(typ) and float(bound).is_integer():
        return int64s(array.array("q", [int(bound)]))[0]
    floats = array.array("d", [float(bound)])
    return pa.Array.from_buffers(pa.float64(), 1, [None, pa.py_buffer(floats)])[0]


def _regex_escape(name: str) -> str:
    import re

    return re.escape(name)
