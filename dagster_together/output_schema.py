"""Output schemas: what a structured answer must look like, on the way out and on the way back.

A user gives a JSON Schema (a dict) or a Pydantic model class. :class:`OutputSchema` compiles it
once into a small tree of nodes, which

* becomes the request's ``response_format`` (:meth:`OutputSchema.response_format`), in the form
  Together's OpenAPI spec documents as preferred for chat completions
  (``ResponseFormatJsonSchema``: ``{"type": "json_schema", "json_schema": {"name", "schema",
  "strict"?}}``; the older ``{"type": "json_object", "schema": ...}`` JSON mode is also answered
  by the emulator);
* checks each answer's JSON (:meth:`OutputSchema.check`), fast: a hand-written validator of the
  subset below, no per-row library call;
* gives the Arrow type of each top-level field (:meth:`OutputSchema.arrow_fields`), so that the
  fields land as typed Parquet columns.

The supported subset (anything else is refused when the schema is compiled, naming the keyword):

* ``type``: ``string``, ``integer`` (int64), ``number`` (float64), ``boolean``, ``object``,
  ``array``, ``null``; a list of types with ``null`` (``["string", "null"]``); ``nullable: true``;
* ``properties``, ``required``, ``additionalProperties`` (``false`` refuses extra fields;
  otherwise extras are allowed and dropped); ``items``;
* ``enum`` and ``const`` (of one JSON type, maybe with ``null``), ``minimum``, ``maximum``,
  ``exclusiveMinimum``, ``exclusiveMaximum``, ``minLength``, ``maxLength``, ``pattern``,
  ``minItems``, ``maxItems``;
* ``$ref`` to ``#/$defs/...`` or ``#/definitions/...`` (not recursive), ``allOf`` of one schema,
  ``anyOf``/``oneOf`` of one schema and ``{"type": "null"}`` (Pydantic's ``Optional``);
* annotations are ignored: ``title``, ``description``, ``default``, ``examples``, ``format``...

Arrow types: string and enums of strings -> ``string``; integer -> ``int64``; number ->
``float64``; boolean -> ``bool``; object with properties -> ``struct``; array -> ``list``; an
object without properties, a schema without a type, or several types -> ``string`` holding the
value's JSON text. Every column is nullable: a field that is not required may be absent.

This module imports nothing heavy; pyarrow is imported inside :meth:`OutputSchema.arrow_fields`.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import pyarrow as pa

_ANNOTATIONS = frozenset(
    {
        "title",
        "description",
        "default",
        "examples",
        "example",
        "format",
        "$schema",
        "$id",
        "$comment",
        "readOnly",
        "writeOnly",
        "deprecated",
        "propertyOrdering",
        "$defs",
        "definitions",
    }
)
_KEYWORDS = frozenset(
    {
        "type",
        "properties",
        "required",
        "additionalProperties",
        "items",
        "enum",
        "const",
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "exclusiveMaximum",
        "minLength",
        "maxLength",
        "pattern",
        "minItems",
        "maxItems",
        "$ref",
        "allOf",
        "anyOf",
        "oneOf",
        "nullable",
    }
)
_TYPES = ("string", "integer", "number", "boolean", "object", "array", "null")
_INT64 = (-(2**63), 2**63 - 1)
_NAME = re.compile(r"[^A-Za-z0-9_-]+")


class OutputSchemaError(ValueError):
    """An output schema uses what is not supported, or is not a schema at all."""


class AnswerError(ValueError):
    """An answer is not JSON (``code`` ``invalid_json``) or does not match the schema
    (``schema_mismatch``; the message names the path, like ``$.items[2].price``)."""

    code = "schema_mismatch"


def as_json_schema(schema: Any) -> dict[str, Any]:
    """The JSON Schema dict of ``schema``: a dict (copied) or a Pydantic model class."""
    if isinstance(schema, Mapping):
        try:
            return json.loads(json.dumps(dict(schema), allow_nan=False))
        except (TypeError, ValueError) as exc:
            raise OutputSchemaError(f"output_schema is not JSON-serialisable ({exc}).") from None
    to_schema = getattr(schema, "model_json_schema", None)
    if isinstance(schema, type) and callable(to_schema):
        return dict(to_schema())
    raise OutputSchemaError(
        f"output_schema must be a JSON Schema dict or a Pydantic model class, not "
        f"{type(schema).__name__}."
    )


@dataclass
class SchemaNode:
    """One compiled node of an output schema: its JSON type and constraints (what the answers
    are checked against, and what the typed columns are built from)."""

    kind: str  # one of _TYPES but "null", or "json" (kept as JSON text)
    nullable: bool = False
    properties: dict[str, SchemaNode] = field(default_factory=dict)
    required: frozenset[str] = frozenset()
    closed: bool = False  # additionalProperties: false
    items: SchemaNode | None = None
    enum: tuple[Any, ...] | None = None
    types: tuple[str, ...] = ()  # for "json": the JSON types allowed (empty: any)
    minimum: float | None = None
    maximum: float | None = None
    exclusive_minimum: float | None = None
    exclusive_maximum: float | None = None
    min_length: int | None = None
    max_length: int | None = None
    pattern: re.Pattern[str] | None = None
    min_items: int | None = None
    max_items: int | None = None


class OutputSchema:
    """A compiled output schema: see the module's docstring for the subset supported.

    Args:
        schema: a JSON Schema dict (its top level an object with ``properties``) or a Pydantic
            model class.
        name: the ``json_schema.name`` sent to the API (default: the schema's ``title``, else
            ``"output"``), cut to the API's 64 characters of ``[A-Za-z0-9_-]``.
        strict: sent as ``json_schema.strict`` when not None.
    """

    def __init__(self, schema: Any, *, name: str | None = None, strict: bool | None = None):
        self.schema = as_json_schema(schema)
        self._defs: dict[str, Any] = {}
        for key in ("$defs", "definitions"):
            defs = self.schema.get(key)
            if isinstance(defs, dict):
                self._defs.update({f"#/{key}/{k}": v for k, v in defs.items()})
        self.root = self._compile(self.schema, "$", ())
        if self.root.kind != "object" or not self.root.properties:
            raise OutputSchemaError(
                "output_schema must describe a JSON object with 'properties': each property "
                "becomes a column of the results."
            )
        title = self.schema.get("title")
        raw = name or (title if isinstance(title, str) and title else "output")
        self.name = _NAME.sub("_", raw)[:64] or "output"
        self.strict = strict

    # ----------------------------------------------------------------------------------------
    # Compiling
    # ----------------------------------------------------------------------------------------
    def _compile(self, schema: Any, path: str, refs: tuple[str, ...]) -> SchemaNode:
        if schema is True or schema == {}:
            return SchemaNode("json", nullable=True)
        if not isinstance(schema, dict):
            raise OutputSchemaError(f"output_schema at {path}: {schema!r} is not a schema object.")
        unknown = sorted(set(schema) - _KEYWORDS - _ANNOTATIONS)
        if unknown:
            raise OutputSchemaError(
                f"output_schema at {path} uses {', '.join(map(repr, unknown))}, which "
                "dagster-together does not support; supported: " + ", ".join(sorted(_KEYWORDS))
            )
        ref = schema.get("$ref")
        if ref is not None:
            if ref in refs:
                raise OutputSchemaError(
                    f"output_schema at {path}: $ref {ref!r} is recursive; recursive schemas "
                    "cannot become columns."
                )
            if ref not in self._defs:
                raise OutputSchemaError(
                    f"output_schema at {path}: $ref {ref!r} is not found (only '#/$defs/...' "
                    "and '#/definitions/...' references are supported)."
                )
            rest = {k: v for k, v in schema.items() if k != "$ref" and k not in _ANNOTATIONS}
            return self._compile({**self._defs[ref], **rest}, path, (*refs, ref))
        for key in ("anyOf", "oneOf", "allOf"):
            if key in schema:
                branches = schema[key]
                rest = {k: v for k, v in schema.items() if k != key}
                if not isinstance(branches, list) or not branches:
                    raise OutputSchemaError(f"output_schema at {path}: {key} must be a list.")
                if key == "allOf":
                    if len(branches) != 1:
                        raise OutputSchemaError(
                            f"output_schema at {path}: allOf of several schemas is not supported."
                        )
                    return self._compile({**rest, **branches[0]}, path, refs)
                others = [b for b in branches if b != {"type": "null"}]
                if len(others) != 1:
                    raise OutputSchemaError(
                        f"output_schema at {path}: {key} is supported only for one schema or "
                        'one schema and {"type": "null"} (an optional value); a column needs '
                        "one type."
                    )
                node = self._compile({**rest, **others[0]}, path, refs)
                node.nullable = node.nullable or len(others) < len(branches)
                return node
        nullable = schema.get("nullable") is True
        enum = schema.get("enum")
        if "const" in schema:
            enum = [schema["const"]]
        if enum is not None and not isinstance(enum, list):
            raise OutputSchemaError(f"output_schema at {path}: enum must be a list.")
        declared = schema.get("type")
        if isinstance(declared, str):
            types = [declared]
        elif isinstance(declared, list):
            types = list(declared)
        elif declared is None:
            types = sorted({_json_type(v) for v in enum}) if enum is not None else []
        else:
            raise OutputSchemaError(f"output_schema at {path}: type must be a string or a list.")
        bad = [t for t in types if t not in _TYPES]
        if bad:
            raise OutputSchemaError(f"output_schema at {path}: unknown type {bad[0]!r}.")
        if "null" in types:
            nullable = True
            types = [t for t in types if t != "null"]
        if enum is not None and None in enum:
            nullable = True
        if "integer" in types and "number" in types:
            types = [t for t in types if t != "integer"]
        if len(types) != 1:
            node = SchemaNode("json", nullable=nullable or not types, types=tuple(types))
        else:
            node = SchemaNode(types[0], nullable=nullable)
        if enum is not None:
            node.enum = tuple(v for v in enum if v is not None)
        node.minimum = _number(schema, "minimum", path)
        node.maximum = _number(schema, "maximum", path)
        node.exclusive_minimum = _number(schema, "exclusiveMinimum", path)
        node.exclusive_maximum = _number(schema, "exclusiveMaximum", path)
        node.min_length = _count(schema, "minLength", path)
        node.max_length = _count(schema, "maxLength", path)
        node.min_items = _count(schema, "minItems", path)
        node.max_items = _count(schema, "maxItems", path)
        pattern = schema.get("pattern")
        if pattern is not None:
            try:
                node.pattern = re.compile(pattern)
            except (re.error, TypeError) as exc:
                raise OutputSchemaError(
                    f"output_schema at {path}: pattern {pattern!r} is not a regex ({exc})."
                ) from None
        if node.kind == "object":
            props = schema.get("properties") or {}
            if not isinstance(props, dict):
                raise OutputSchemaError(f"output_schema at {path}: properties must be an object.")
            node.properties = {
                name: self._compile(sub, f"{path}.{name}", refs) for name, sub in props.items()
            }
            required = schema.get("required") or []
            if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
                raise OutputSchemaError(
                    f"output_schema at {path}: required must be a list of names."
                )
            node.required = frozenset(required)
            node.closed = schema.get("additionalProperties") is False
            if not node.properties:
                node.kind = "json"  # a free-form object: kept as JSON text
                node.types = ("object",)
        elif node.kind == "array":
            items = schema.get("items", {})
            if isinstance(items, list):
                raise OutputSchemaError(
                    f"output_schema at {path}: tuple-form items are not supported."
                )
            node.items = self._compile(items, f"{path}[]", refs)
        return node

    # ----------------------------------------------------------------------------------------
    # What is sent
    # ----------------------------------------------------------------------------------------
    def response_format(self) -> dict[str, Any]:
        """The request's ``response_format`` (Together's ``ResponseFormatJsonSchema``)."""
        spec: dict[str, Any] = {"name": self.name, "schema": copy.deepcopy(self.schema)}
        if self.strict is not None:
            spec["strict"] = self.strict
        return {"type": "json_schema", "json_schema": spec}

    # ----------------------------------------------------------------------------------------
    # What comes back
    # ----------------------------------------------------------------------------------------
    @property
    def field_names(self) -> tuple[str, ...]:
        return tuple(self.root.properties)

    def arrow_fields(self) -> list[pa.Field]:
        """One nullable Arrow field per top-level property, in the schema's order."""
        import pyarrow as pa

        return [pa.field(n, _arrow_type(node)) for n, node in self.root.properties.items()]

    def parse(self, text: str | None) -> dict[str, Any]:
        """The answer's fields as Python values shaped for :meth:`arrow_fields`.

        Raises:
            AnswerError: not JSON, or not matching the schema (the message names the path).
        """
        if text is None:
            error = AnswerError("the answer has no content")
            error.code = "invalid_json"
            raise error
        body = _strip_fence(text)
        try:
            value = _DECODER.decode(body)
        except ValueError as exc:
            error = AnswerError(f"the answer is not valid JSON ({exc})")
            error.code = "invalid_json"
            raise error from None
        return self.check(value)

    def check(self, value: Any) -> dict[str, Any]:
        """``value`` checked against the schema, shaped for :meth:`arrow_fields`."""
        result = _check(self.root, value, "$")
        assert isinstance(result, dict)
        return result


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _number(schema: dict[str, Any], key: str, path: str) -> float | None:
    value = schema.get(key)
    if value is None or isinstance(value, bool):
        if isinstance(value, bool):  # draft-4 boolean exclusiveMinimum: not supported
            raise OutputSchemaError(f"output_schema at {path}: {key} must be a number.")
        return None
    if not isinstance(value, (int, float)):
        raise OutputSchemaError(f"output_schema at {path}: {key} must be a number.")
    return value


def _count(schema: dict[str, Any], key: str, path: str) -> int | None:
    value = schema.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise OutputSchemaError(f"output_schema at {path}: {key} must be a non-negative integer.")
    return value


def _arrow_type(node: SchemaNode) -> pa.DataType:
    import pyarrow as pa

    if node.kind == "string":
        return pa.string()
    if node.kind == "integer":
        return pa.int64()
    if node.kind == "number":
        return pa.float64()
    if node.kind == "boolean":
        return pa.bool_()
    if node.kind == "object":
        return pa.struct([pa.field(n, _arrow_type(s)) for n, s in node.properties.items()])
    if node.kind == "array":
        assert node.items is not None
        return pa.list_(_arrow_type(node.items))
    return pa.string()  # "json": the value's JSON text


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


_DECODER = json.JSONDecoder(parse_constant=_reject_constant)
_FENCE = re.compile(r"\A\s*```[A-Za-z0-9_-]*\s*\n(.*)\n\s*```\s*\Z", re.S)


def _strip_fence(text: str) -> str:
    """The text inside one Markdown code fence around the whole answer, else the text."""
    if "```" not in text:
        return text
    match = _FENCE.match(text)
    return match.group(1) if match else text


def _short(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 40 else text[:37] + "..."


def _check(node: SchemaNode, value: Any, path: str) -> Any:
    """``value`` checked against ``node`` and shaped for Arrow; raises AnswerError."""
    if value is None:
        if node.nullable:
            return None
        raise AnswerError(f"{path}: is null, expected {_expected(node)}")
    kind = node.kind
    if kind == "string":
        if not isinstance(value, str):
            raise _wrong(node, value, path)
        if node.min_length is not None and len(value) < node.min_length:
            raise AnswerError(f"{path}: is shorter than {node.min_length} characters")
        if node.max_length is not None and len(value) > node.max_length:
            raise AnswerError(f"{path}: is longer than {node.max_length} characters")
        if node.pattern is not None and not node.pattern.search(value):
            raise AnswerError(f"{path}: {_short(value)} does not match {node.pattern.pattern!r}")
    elif kind == "integer":
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise _wrong(node, value, path)
        if not _INT64[0] <= value <= _INT64[1]:
            raise AnswerError(f"{path}: {value} is outside the 64-bit integer range")
        _bounds(node, value, path)
    elif kind == "number":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _wrong(node, value, path)
        value = float(value)
        _bounds(node, value, path)
    elif kind == "boolean":
        if not isinstance(value, bool):
            raise _wrong(node, value, path)
    elif kind == "object":
        if not isinstance(value, dict):
            raise _wrong(node, value, path)
        props = node.properties
        missing = [name for name in node.required if name not in value]
        if missing:
            raise AnswerError(f"{path}: misses the required field {sorted(missing)[0]!r}")
        if node.closed:
            extra = [name for name in value if name not in props]
            if extra:
                raise AnswerError(
                    f"{path}: has the unexpected field {extra[0]!r} (additionalProperties is false)"
                )
        value = {
            name: _check(sub, value[name], f"{path}.{name}") if name in value else None
            for name, sub in props.items()
        }
    elif kind == "array":
        if not isinstance(value, list):
            raise _wrong(node, value, path)
        if node.min_items is not None and len(value) < node.min_items:
            raise AnswerError(f"{path}: has fewer than {node.min_items} items")
        if node.max_items is not None and len(value) > node.max_items:
            raise AnswerError(f"{path}: has more than {node.max_items} items")
        items = node.items
        assert items is not None
        value = [_check(items, v, f"{path}[{i}]") for i, v in enumerate(value)]
    else:  # json
        if (
            node.types
            and _json_type(value) not in node.types
            and not ("number" in node.types and _json_type(value) == "integer")
        ):
            raise _wrong(node, value, path)
        if node.enum is not None and value not in node.enum:
            raise AnswerError(f"{path}: {_short(value)} is not one of {list(node.enum)}")
        return json.dumps(value, ensure_ascii=False)
    if node.enum is not None and value not in node.enum:
        raise AnswerError(f"{path}: {_short(value)} is not one of {list(node.enum)}")
    return value


def _bounds(node: SchemaNode, value: float, path: str) -> None:
    if node.minimum is not None and value < node.minimum:
        raise AnswerError(f"{path}: {value} is below the minimum {node.minimum}")
    if node.maximum is not None and value > node.maximum:
        raise AnswerError(f"{path}: {value} is above the maximum {node.maximum}")
    if node.exclusive_minimum is not None and value <= node.exclusive_minimum:
        raise AnswerError(f"{path}: {value} is not above {node.exclusive_minimum}")
    if node.exclusive_maximum is not None and value >= node.exclusive_maximum:
        raise AnswerError(f"{path}: {value} is not below {node.exclusive_maximum}")


def _expected(node: SchemaNode) -> str:
    if node.kind == "json":
        return " or ".join(node.types) if node.types else "a value"
    return "an " + node.kind if node.kind[0] in "aeiou" else "a " + node.kind


def _wrong(node: SchemaNode, value: Any, path: str) -> AnswerError:
    return AnswerError(
        f"{path}: expected {_expected(node)}, got {_json_type(value)} {_short(value)}"
    )
