"""Request lines written straight from a template: the JSON text around the row's values is
encoded once, and each row only escapes its own strings into the gaps.

The text is exactly what :data:`ENCODER` makes of the request dict: ``json.dumps`` escapes a
string character by character, so a message's literal text and the row's value escaped apart and
put side by side are the escaped whole.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any, cast

from dagster_together.answers import key_text
from dagster_together.requests.template import RequestTemplate, value_text

ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)
"""How every request line is encoded (``json.dumps`` with options would build one per call)."""

_ESCAPE = json.encoder.encode_basestring  # what ENCODER uses for strings (quotes included)


class LineFormat:
    """The request line of a :class:`RequestTemplate` for one row, without building its dict.

    Made by :meth:`of`, which returns None for the forms it does not cover (images; body fields
    that are not JSON): those rows are encoded from their dicts.
    """

    def __init__(self, segments: list[str], slots: list[str | None]) -> None:
        self._segments = segments  # the JSON text between the slots (len(slots) + 1 of them)
        self._slots = slots  # per slot: the row's column, or None for the custom_id

    @classmethod
    def of(cls, template: RequestTemplate) -> LineFormat | None:
        """The format of ``template``'s lines, or None when its rows need their dicts."""
        return cls._marked(
            template,
            lambda custom_id, body: ENCODER.encode({"custom_id": custom_id, "body": body}),
            with_id=True,
        )

    @classmethod
    def key_of(cls, template: RequestTemplate, endpoint: str) -> LineFormat | None:
        """The format of the text :func:`~dagster_together.answers.request_key` hashes for
        ``template``'s requests to ``endpoint`` (its ``line`` ignores the custom_id), or None
        when its rows need their dicts."""
        return cls._marked(template, lambda _, body: key_text(endpoint, body), with_id=False)

    @classmethod
    def _marked(
        cls, template: RequestTemplate, encode: Callable[[str, Any], str], *, with_id: bool
    ) -> LineFormat | None:
        """The text ``encode(custom_id, body)`` gives for a row of marks, cut at the marks
        (``with_id``: whether that text holds the custom_id)."""
        if template.image_column is not None:
            return None
        marks: list[tuple[str, str | None]] = []  # (mark, its column; None for the custom_id)

        def mark(column: str | None) -> str:
            text = f"\x00{len(marks)}\x00"
            marks.append((text, column))
            return text

        custom_id = mark(None)
        prompt_column = template.prompt_column
        prompt = mark(prompt_column) if prompt_column is not None else None
        try:
            body = template.build_body(prompt, values=cast(Mapping[str, Any], _MarkedRow(mark)))
            text = encode(custom_id, body)
        except (TypeError, ValueError):
            return None  # a body field that is not JSON: the row's own encoding says so
        found: list[tuple[int, str, str | None]] = []  # (where, escaped mark, column)
        for marked, column in marks:
            escaped = _ESCAPE(marked)[1:-1]
            at = text.find(escaped)
            if column is None and not with_id:
                if at >= 0:
                    return None  # the template's own text holds the mark: no shortcut
                continue
            if at < 0 or text.find(escaped, at + 1) >= 0:
                return None  # likewise
            found.append((at, escaped, column))
        segments: list[str] = []
        slots: list[str | None] = []
        end = 0
        for at, escaped, column in sorted(found):  # sorted keys may reorder the marks
            segments.append(text[end:at])
            slots.append(column)
            end = at + len(escaped)
        segments.append(text[end:])
        return cls(segments, slots)

    def line(self, custom_id: str, row: Mapping[str, Any]) -> str:
        """The request's JSON text (no newline) for ``custom_id`` and the row's values."""
        segments = self._segments
        parts = [segments[0]]
        for k, column in enumerate(self._slots):
            value = custom_id if column is None else value_text(row[column])
            parts.append(_ESCAPE(value)[1:-1])
            parts.append(segments[k + 1])
        return "".join(parts)


class _MarkedRow:
    """A row whose every value is a fresh mark (the template asks by column name)."""

    def __init__(self, mark: Any) -> None:
        self._mark = mark

    def __getitem__(self, column: str) -> str:
        return self._mark(column)
