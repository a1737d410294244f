"""Where the live Together service departs from what the SDKs' types promise, as switches.

Each switch defaults to what the live service does, where the public record shows it (see
docs/reliability.md, "The live service's quirks"); the others default to the documented form.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Quirks:
    """How the emulator answers at the points where the live service surprises clients.

    Attributes:
        cancel_seconds: a cancelled job answers ``CANCELING`` for this long, then ``CANCELLED``
            (the live service; SDK 2.x/3.x do not list ``CANCELING``). 0: ``CANCELLED`` at once.
        null_empty_list: ``GET /batches`` answers the literal ``null`` when there is no batch
            (the live service), instead of ``[]``.
        string_batch_errors: the batch endpoints' own errors use the string form
            ``{"error": "<message>"}`` (the live service); the files endpoints and the API-key
            check always use the object form ``{"error": {"message", "type", ...}}``.
        honour_range: ``GET /files/{id}/content`` honours ``Range`` (``206``, ``Accept-Ranges``).
            False answers every request with the whole file and ``200``, without
            ``Accept-Ranges``; no public source shows the live service honouring it.
        unbatched_models: models that batch does not serve: a create whose ``model_id`` (or
            whose first request's ``body.model``) is one of them answers
            ``{"job": null, "warning": "..."}`` and creates nothing.
        validate_uploads: ``POST /files/{id}/preprocess`` checks a ``batch-api`` file (JSON
            lines with a ``custom_id`` and a ``body``) and answers ``processing_status:
            "INVALID_FORMAT"`` with a failing ``validation_report`` for a bad one.
    """

    cancel_seconds: float = 0.5
    null_empty_list: bool = True
    string_batch_errors: bool = True
    honour_range: bool = True
    unbatched_models: frozenset[str] = field(default_factory=frozenset)
    validate_uploads: bool = False
