"""How one row of a user's table becomes a request body: :class:`RequestTemplate` (chat and
completions, with placeholders, images and an output schema) and :class:`AudioTemplate`
(transcriptions and translations).

Placeholders are ``{column}`` in a message's text, as in :meth:`str.format`: ``{{`` and ``}}``
are literal braces; a placeholder is a bare column name (no ``!r``, ``:fmt``, ``.attr`` or
``[key]``). Values are written as they are for text, through ``str`` for numbers and as JSON for
lists and structs; a null value is refused (naming the row) when the table is read.
"""

from __future__ import annotations

import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from dagster_together.output_schema import OutputSchema

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
AUDIO = ("/v1/audio/transcriptions", "/v1/audio/translations")
_ROLES = ("system", "user", "assistant")


def _parse(text: str, where: str) -> tuple[tuple[str, str | None], ...]:
    """``text`` as (literal, column) pieces; the column is None after the last literal."""
    pieces: list[tuple[str, str | None]] = []
    try:
        parsed = list(string.Formatter().parse(text))
    except ValueError as exc:
        raise ValueError(
            f"RequestTemplate: {where} is not a valid template ({exc}); write literal braces as "
            "'{{' and '}}'."
        ) from None
    for literal, name, spec, conversion in parsed:
        if name is not None:
            if not name or spec or conversion or any(c in name for c in ".["):
                shown = "{" + name + (f"!{conversion}" if conversion else "")
                shown += (f":{spec}" if spec else "") + "}"
                raise ValueError(
                    f"RequestTemplate: {where} has the placeholder {shown!r}; a placeholder is a "
                    "column name in braces, like '{review}' (write literal braces as '{{' and "
                    "'}}')."
                )
        pieces.append((literal, name))
    return tuple(pieces)


def value_text(value: Any) -> str:
    """A placeholder's text for one value: text as it is, lists and structs as JSON, the rest
    through ``str``."""
    if isinstance(value, str):
        return value
    if isinstance(value, (dict, list)):
        import json

        return json.dumps(value, ensure_ascii=False, default=str)
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


@dataclass(frozen=True)
class RequestTemplate:
    """How to turn one row of a user's table into a chat (or completions) request body.

    Two forms:

    * ``prompt_column`` (and ``system_prompt``): the column's text is the user message, as it
      is (no placeholders), after an optional system message.
    * ``messages``: turns ``{"role": "system"|"user"|"assistant", "content": "..."}`` whose text
      may hold ``{column}`` placeholders, e.g. ``[{"role": "system", "content": "You rate
      {product} reviews."}, {"role": "user", "content": "{review}"}]``.

    Attributes:
        model: the model every request uses.
        prompt_column: the column holding the user message (chat) or prompt (completions).
        system_prompt: an optional system message put before the user message (chat only).
        endpoint: ``/v1/chat/completions`` (``messages``) or ``/v1/completions`` (``prompt``).
        body: extra body fields copied into every request, e.g. ``max_tokens``, ``temperature``,
            ``tools``. They may not set ``model``, ``messages`` or ``prompt`` (nor
            ``response_format`` with ``output_schema``).
        messages: the turns with placeholders (chat only; instead of ``prompt_column``).
        image_column: a column of image locations (a string or a list of strings per row) added
            to the last user message as ``image_url`` content parts, for vision models.
        inline_images: send local paths and fsspec URLs (``s3://``...) of ``image_column`` as
            ``data:`` URLs (base64). ``http(s)://`` and ``data:`` values are sent as they are.
        max_image_bytes: the largest image inlined, in bytes of the file (default: what fits a
            batch input file once base64-encoded).
        output_schema: a JSON Schema dict or a Pydantic model class; sent as ``response_format``
            (see :mod:`dagster_together.output_schema` for the subset supported) and given to
            ``join_results(output_schema=...)`` to get typed columns back.
        schema_name: ``response_format.json_schema.name`` (default: the schema's title).
        strict_schema: ``response_format.json_schema.strict`` when set.
    """

    model: str
    prompt_column: str | None = None
    system_prompt: str | None = None
    endpoint: str = CHAT
    body: Mapping[str, Any] = field(default_factory=dict)
    messages: Sequence[Mapping[str, str]] | None = None
    image_column: str | None = None
    inline_images: bool = False
    max_image_bytes: int | None = None
    output_schema: Any = None
    schema_name: str | None = None
    strict_schema: bool | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.model, str) or not self.model:
            raise ValueError("RequestTemplate.model must be a non-empty model name.")
        if self.endpoint not in (CHAT, COMPLETIONS):
            hint = (
                " Use AudioTemplate(model=..., audio_column=...) for audio batches."
                if self.endpoint in AUDIO
                else ""
            )
            raise ValueError(
                f"RequestTemplate.endpoint {self.endpoint!r} is not supported: templates build "
                "'/v1/chat/completions' or '/v1/completions' bodies. For other endpoints build "
                f"a table with 'custom_id' and 'body' columns.{hint}"
            )
        clash = {"model", "messages", "prompt"} & set(self.body)
        if clash:
            raise ValueError(
                f"RequestTemplate.body may not set {sorted(clash)}: the template builds them "
                "(use model=, messages= or system_prompt= and prompt_column=)."
            )
        if self.system_prompt is not None and self.endpoint == COMPLETIONS:
            raise ValueError(
                "RequestTemplate.system_prompt only applies to /v1/chat/completions; put the "
                "instructions into the prompt column for /v1/completions."
            )
        if (self.prompt_column is None) == (self.messages is None):
            raise ValueError(
                "RequestTemplate needs either prompt_column= (the user message as it is) or "
                "messages= (turns with {column} placeholders), not both."
                if self.prompt_column is not None
                else "RequestTemplate needs prompt_column= or messages=."
            )
        if self.messages is not None:
            if self.endpoint != CHAT or self.system_prompt is not None:
                raise ValueError(
                    "RequestTemplate.messages builds /v1/chat/completions bodies and holds the "
                    "system turn itself; drop system_prompt= (or endpoint=)."
                )
            self._check_messages()
        if (self.image_column is not None or self.output_schema is not None) and (
            self.endpoint != CHAT
        ):
            raise ValueError(
                "RequestTemplate.image_column and output_schema need /v1/chat/completions."
            )
        if self.inline_images and self.image_column is None:
            raise ValueError("RequestTemplate.inline_images needs image_column=.")
        if self.output_schema is not None:
            if "response_format" in self.body:
                raise ValueError(
                    "RequestTemplate: give output_schema= or body['response_format'], not both."
                )
            from dagster_together.output_schema import OutputSchema

            # Compiled now, so that an unsupported schema fails where it is written.
            schema = OutputSchema(
                self.output_schema, name=self.schema_name, strict=self.strict_schema
            )
            object.__setattr__(self, "_schema", schema)
            # One dict shared by every body: the JSON written is the same, and 50,000 copies of
            # a schema would cost more than the rest of the body.
            object.__setattr__(self, "_response_format", schema.response_format())

    def _check_messages(self) -> None:
        messages = self.messages
        assert messages is not None
        if isinstance(messages, (str, Mapping)) or not messages:
            raise ValueError(
                "RequestTemplate.messages must be a non-empty list of "
                '{"role": ..., "content": ...} turns.'
            )
        parsed = []
        for i, message in enumerate(messages, start=1):
            where = f"message {i}"
            if not isinstance(message, Mapping) or set(message) != {"role", "content"}:
                raise ValueError(
                    f"RequestTemplate.messages: {where} must be a mapping with exactly 'role' "
                    "and 'content'."
                )
            role, content = message["role"], message["content"]
            if role not in _ROLES:
                raise ValueError(
                    f"RequestTemplate.messages: {where} has role {role!r}; use one of {_ROLES}."
                )
            if not isinstance(content, str):
                raise ValueError(f"RequestTemplate.messages: {where} content must be text.")
            parsed.append((role, _parse(content, f"the {role} message ({where})")))
        if not any(role == "user" for role, _ in parsed):
            raise ValueError("RequestTemplate.messages needs at least one user message.")
        object.__setattr__(self, "_parsed", tuple(parsed))

    # ----------------------------------------------------------------------------------------
    @property
    def schema(self) -> OutputSchema | None:
        """The compiled :class:`~dagster_together.output_schema.OutputSchema` (give it to
        ``join_results(output_schema=...)``), or None without ``output_schema``."""
        return getattr(self, "_schema", None)

    def placeholders(self) -> dict[str, str]:
        """Every column the template reads, in order, with where it is used (for messages)."""
        used: dict[str, str] = {}
        if self.prompt_column is not None:
            used[self.prompt_column] = "the prompt column"
        for i, (role, pieces) in enumerate(getattr(self, "_parsed", ()), start=1):
            for _, name in pieces:
                if name is not None:
                    used.setdefault(name, f"{{{name}}} in message {i}, {role}")
        if self.image_column is not None:
            used.setdefault(self.image_column, "the image column")
        return used

    def build_body(
        self,
        prompt: str | None = None,
        *,
        values: Mapping[str, Any] | None = None,
        images: Sequence[str] = (),
    ) -> dict[str, Any]:
        """The request body for one row.

        Args:
            prompt: the prompt column's text (the ``prompt_column`` form).
            values: the row's values by column (the ``messages`` form); none may be null.
            images: image URLs (or ``data:`` URLs) for the last user message.
        """
        body: dict[str, Any] = {"model": self.model}
        if self.endpoint == COMPLETIONS:
            body["prompt"] = prompt
        else:
            messages: list[dict[str, Any]] = []
            parsed = getattr(self, "_parsed", None)
            if parsed is None:
                if self.system_prompt is not None:
                    messages.append({"role": "system", "content": self.system_prompt})
                messages.append({"role": "user", "content": prompt})
            else:
                row = values or {}
                for role, pieces in parsed:
                    text = "".join(
                        literal + (value_text(row[name]) if name is not None else "")
                        for literal, name in pieces
                    )
                    messages.append({"role": role, "content": text})
            if images:
                last = max(i for i, m in enumerate(messages) if m["role"] == "user")
                parts: list[dict[str, Any]] = [{"type": "text", "text": messages[last]["content"]}]
                parts.extend({"type": "image_url", "image_url": {"url": url}} for url in images)
                messages[last]["content"] = parts
            body["messages"] = messages
        body.update(self.body)
        response_format = getattr(self, "_response_format", None)
        if response_format is not None:
            body["response_format"] = response_format
        return body


@dataclass(frozen=True)
class AudioTemplate:
    """How to turn one row of a table of audio locations into an audio batch request.

    Each line is ``{"custom_id", "method": "FILE", "body": {"model", "file": <the audio's URL>,
    "language"?, "prompt"?, "response_format"?, ...}}``: the form Together's OpenAPI spec
    documents for audio batches (togethercomputer/openapi PR #277, May 2026: ``"method":
    "FILE"`` makes the worker send each request as multipart/form-data; ``file`` is a public
    HTTP(S) URL, as in ``AudioTranscriptionRequest``). The service fetches the audio itself, so
    the column must hold ``http(s)://`` URLs (e.g. presigned ones), not local paths.

    Attributes:
        model: e.g. ``openai/whisper-large-v3``.
        audio_column: the column of audio URLs.
        endpoint: ``/v1/audio/transcriptions`` or ``/v1/audio/translations``.
        language: ISO 639-1 code for every request (the audio's language for a transcription,
            the target language for a translation); ``"auto"`` detects it.
        language_column: a column giving each row's language instead.
        prompt: text to bias decoding, for every request.
        response_format: ``"json"`` (``{"text"}``) or ``"verbose_json"`` (adds ``language``,
            ``duration``, ``segments``...: the results then get ``language`` and ``duration``).
        body: other body fields (``temperature``, ``timestamp_granularities``, ``diarize``...).
    """

    model: str
    audio_column: str
    endpoint: str = AUDIO[0]
    language: str | None = None
    language_column: str | None = None
    prompt: str | None = None
    response_format: str | None = None
    body: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.model, str) or not self.model:
            raise ValueError("AudioTemplate.model must be a non-empty model name.")
        if self.endpoint not in AUDIO:
            raise ValueError(
                f"AudioTemplate.endpoint {self.endpoint!r} is not supported: use one of "
                f"{', '.join(AUDIO)} (RequestTemplate builds chat requests)."
            )
        clash = {"model", "file"} & set(self.body)
        if clash:
            raise ValueError(
                f"AudioTemplate.body may not set {sorted(clash)}: the template builds them "
                "(use model= and audio_column=)."
            )
        if self.language is not None and self.language_column is not None:
            raise ValueError("AudioTemplate: give language= or language_column=, not both.")
        if self.response_format not in (None, "json", "verbose_json"):
            raise ValueError(
                f"AudioTemplate.response_format {self.response_format!r}: use 'json' or "
                "'verbose_json'."
            )

    def placeholders(self) -> dict[str, str]:
        used = {self.audio_column: "the audio column"}
        if self.language_column is not None:
            used.setdefault(self.language_column, "the language column")
        return used

    def build_body(self, audio_url: str, language: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.model, "file": audio_url}
        language = language if language is not None else self.language
        if language is not None:
            body["language"] = language
        if self.prompt is not None:
            body["prompt"] = self.prompt
        if self.response_format is not None:
            body["response_format"] = self.response_format
        body.update(self.body)
        return body
