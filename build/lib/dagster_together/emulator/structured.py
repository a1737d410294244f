"""Schema-shaped answers: deterministic JSON for a request's ``response_format`` or tool.

Lenient on purpose: the emulator answers any schema the service might accept; keywords it does
not know are ignored. Values depend only on the schema and the prompt:

* ``enum``/``const``: an allowed value (the prompt's sentiment when the enum offers it);
* string: the prompt's sentiment for fields named like a label, else a short text; integer and
  number: within ``minimum``/``maximum``; boolean: from the prompt's hash; array: ``minItems``
  items (at least one); object: every property.
"""

from __future__ import annotations

import json
import math
import zlib
from typing import Any

_LABEL_NAMES = ("sentiment", "label", "category", "class", "verdict")


def schema_of(response_format: Any) -> Any:
    """The JSON Schema in a ``response_format`` (``json_schema`` or ``json_object`` form)."""
    if not isinstance(response_format, dict):
        return None
    kind = response_format.get("type")
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        return spec.get("schema", {}) if isinstance(spec, dict) else {}
    if kind == "json_object":
        return response_format.get("schema", {})
    return None


def sample_json(schema: Any, prompt: str, sentiment: str) -> str:
    return json.dumps(_Sampler(schema, prompt, sentiment).value(schema, "", 0), ensure_ascii=False)


class _Sampler:
    def __init__(self, root: Any, prompt: str, sentiment: str) -> None:
        self.root = root if isinstance(root, dict) else {}
        self.hash = zlib.crc32(prompt.encode("utf-8", "replace"))
        self.prompt = prompt
        self.sentiment = sentiment

    def resolve(self, schema: Any, depth: int) -> Any:
        ref = schema.get("$ref") if isinstance(schema, dict) else None
        if isinstance(ref, str) and ref.startswith("#/") and depth < 8:
            node: Any = self.root
            for part in ref[2:].split("/"):
                node = node.get(part, {}) if isinstance(node, dict) else {}
            return self.resolve({**node, **{k: v for k, v in schema.items() if k != "$ref"}}, depth)
        return schema

    def value(self, schema: Any, name: str, depth: int) -> Any:
        schema = self.resolve(schema, depth)
        if not isinstance(schema, dict) or depth > 8:
            return None
        for key in ("anyOf", "oneOf", "allOf"):
            branches = schema.get(key)
            if isinstance(branches, list) and branches:
                real = [b for b in branches if b != {"type": "null"}] or branches
                merged = {k: v for k, v in schema.items() if k != key}
                return self.value({**merged, **real[0]}, name, depth + 1)
        if "const" in schema:
            return schema["const"]
        enum = schema.get("enum")
        if isinstance(enum, list) and enum:
            if self.sentiment in enum:
                return self.sentiment
            return enum[self.hash % len(enum)]
        kind = schema.get("type")
        if isinstance(kind, list):
            kind = next((k for k in kind if k != "null"), "null")
        if kind is None:
            kind = "object" if "properties" in schema else "string"
        if kind == "object":
            props = schema.get("properties")
            if not isinstance(props, dict):
                return {}
            return {key: self.value(sub, key, depth + 1) for key, sub in props.items()}
        if kind == "array":
            count = max(1, int(schema.get("minItems") or 0))
            return [self.value(schema.get("items", {}), name, depth + 1) for _ in range(count)]
        if kind == "string":
            if any(word in name.lower() for word in _LABEL_NAMES):
                return self.sentiment
            text = f"{name or 'value'} of {' '.join(self.prompt.split()[:4])}".strip()
            low = int(schema.get("minLength") or 0)
            high = schema.get("maxLength")
            text = text.ljust(low, ".")
            return text[:high] if isinstance(high, int) else text
        if kind in ("integer", "number"):
            return self.number(schema, kind == "integer")
        if kind == "boolean":
            return bool(self.hash & 1)
        return None

    def number(self, schema: dict[str, Any], integer: bool) -> float | int:
        """A number within the bounds: inclusive ones kept, exclusive ones avoided."""

        def bound(key: str) -> float | None:
            value = schema.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return float(value)
            return None

        low, high = bound("minimum"), bound("maximum")
        ex_low, ex_high = bound("exclusiveMinimum"), bound("exclusiveMaximum")
        if integer:
            lo = math.ceil(low) if low is not None else 1
            if ex_low is not None:
                lo = max(lo, math.floor(ex_low) + 1)
            hi = math.floor(high) if high is not None else lo + 4
            if ex_high is not None:
                hi = min(hi, math.ceil(ex_high) - 1)
            return lo if hi < lo else lo + self.hash % (hi - lo + 1)
        lo_f = low if low is not None else (ex_low if ex_low is not None else 1.0)
        hi_f = high if high is not None else (ex_high if ex_high is not None else lo_f + 4.0)
        if ex_low is not None or ex_high is not None:
            return (lo_f + hi_f) / 2
        return lo_f + (hi_f - lo_f) * (self.hash % 101) / 100
