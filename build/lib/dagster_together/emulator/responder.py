"""The deterministic "model" behind the emulator: one request body in, one JSONL line out.

Answers depend only on the prompt, so a test can predict them and a benchmark is repeatable.

Beyond plain text: a chat request with a ``response_format`` carrying a schema (``json_schema``
or ``json_object`` + ``schema``) gets JSON shaped by it (:mod:`.structured`), unless its last
user message holds ``EMULATE_INVALID_JSON`` (a truncated object) or ``EMULATE_SCHEMA_MISMATCH``
(a JSON array); a request with ``tools`` gets a call to the first tool (``tool_calls``,
``finish_reason: "tool_calls"``); ``EMULATE_REASONING`` adds ``message.reasoning``. Audio
requests need ``file`` (the audio's URL) and get ``{"text"}``, or with ``response_format:
"verbose_json"`` ``{"task", "language", "duration", "text", "segments"}``.
Lines are built from string templates rather than ``json.dumps`` of nested dicts: generation
has to run at hundreds of thousands of requests per batch, and the templates are 3-4x faster.
"""

from __future__ import annotations

import re
import zlib
from json.encoder import encode_basestring_ascii as _quote  # C-accelerated JSON string escape
from typing import Any

from dagster_together.emulator.structured import sample_json, schema_of

CHAT_ENDPOINT = "/v1/chat/completions"
COMPLETIONS_ENDPOINT = "/v1/completions"
AUDIO_ENDPOINTS = ("/v1/audio/transcriptions", "/v1/audio/translations")
SUPPORTED_ENDPOINTS = (CHAT_ENDPOINT, COMPLETIONS_ENDPOINT, *AUDIO_ENDPOINTS)

#: A last user message containing this text fails into the error file. ``EMULATE_ERROR:code``
#: chooses the error code; ``EMULATE_ERROR_ONCE:code`` fails only the first time a request (its
#: custom_id and prompt) is seen, as a transient failure would.
ERROR_MARKER = "EMULATE_ERROR"
_ERROR_REQUEST = re.compile(r"EMULATE_ERROR(_ONCE)?(?::([a-z_]+))?")
#: A last user message containing this text gets an answer that is not JSON (with a schema).
INVALID_JSON_MARKER = "EMULATE_INVALID_JSON"
#: ... an answer that is JSON but does not match the request's schema.
SCHEMA_MISMATCH_MARKER = "EMULATE_SCHEMA_MISMATCH"
#: ... an answer with the model's reasoning beside the content (``message.reasoning``).
REASONING_MARKER = "EMULATE_REASONING"

_WORD = re.compile(r"[a-z']+")
# Label words ("positive", "negative", "neutral") are left out on purpose: prompts often list
# them as the allowed answers, and they must not sway the verdict.
_POSITIVE = frozenset(
    "love loved loves great good excellent amazing awesome wonderful fantastic happy best "
    "like liked enjoy enjoyed perfect nice superb delightful pleased recommend brilliant "
    "fast helpful beautiful exceeded worth gift".split()
)
_NEGATIVE = frozenset(
    "hate hated hates bad terrible awful worst poor horrible disappointing disappointed "
    "broken slow boring sad angry useless waste annoying refund never ugly rude "
    "dislike problem regret cheap crashing overheated scratched missing returned "
    "don't not mediocre".split()
)
_OPENERS = (
    "In short:",
    "Briefly:",
    "Here is a concise answer.",
    "Good question.",
    "To summarize:",
    "The short version:",
    "Answer:",
    "Put simply:",
)
_CLOSERS = (
    "The key point is to start from the facts and keep it simple.",
    "It depends on the context, but the usual answer is the straightforward one.",
    "Most sources agree on this, with a few caveats.",
    "That covers the essentials; details vary by case.",
    "A careful reading suggests the common interpretation is right.",
    "This is the standard explanation.",
)


class RequestFailure(Exception):
    """One request fails; it goes to the error file with this message and code."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


def _text_of(content: Any) -> str:
    """Text of a message ``content``: a string, or a list of parts with ``text``."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            part.get("text", "")
            for part in content
            if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
    return ""


def _word_count(text: str) -> int:
    return len(text.split())


def _cut_to_max_tokens(content: str, body: dict[str, Any]) -> tuple[str, str]:
    """``(content, finish_reason)``: the first ``max_tokens`` tokens (words, here) and
    ``"length"`` when the answer is longer, else the whole answer and ``"stop"``."""
    limit = body.get("max_tokens")
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
        return content, "stop"
    words = content.split()
    if len(words) <= limit:
        return content, "stop"
    lead = " " if content.startswith(" ") else ""  # a completion's text keeps its leading space
    return lead + " ".join(words[:limit]), "length"


def sentiment(text: str) -> str:
    """``positive``/``negative``/``neutral`` from a tiny word lexicon (deterministic)."""
    words = _WORD.findall(text.lower())
    score = sum(map(_POSITIVE.__contains__, words)) - sum(map(_NEGATIVE.__contains__, words))
    if score > 0:
        return "positive"
    if score < 0:
        return "negative"
    return "neutral"


def answer(prompt: str, instructions: str = "") -> str:
    """The assistant's reply to ``prompt``; ``instructions`` are the other messages' text.

    A sentiment classification request gets a bare label, anything else a short answer whose
    wording depends on a hash of the prompt.
    """
    if "sentiment" in prompt.lower() or "sentiment" in instructions.lower():
        return sentiment(prompt)
    h = zlib.crc32(prompt.encode("utf-8", "replace"))
    words = prompt.split()
    snippet = " ".join(words[:8]).strip(" .?!:;,\"'")
    if len(words) > 8:
        snippet += "..."
    return f'{_OPENERS[h % len(_OPENERS)]} On "{snippet}": {_CLOSERS[(h >> 8) % len(_CLOSERS)]}'


class Responder:
    """Builds output and error lines for one request of a batch.

    ``fail_pattern`` is a regex searched in each ``custom_id``; matches fail into the error file.
    """

    def __init__(self, fail_pattern: str | None = None) -> None:
        self._fail = re.compile(fail_pattern) if fail_pattern else None
        self._failed_once: set[str] = set()

    def line(
        self,
        *,
        endpoint: str,
        custom_id: str,
        body: dict[str, Any],
        default_model: str | None,
        created: int,
        line_id: str,
        request_id: str,
    ) -> tuple[bool, str]:
        """Return ``(succeeded, jsonl_line)``: an output line or an error line, ``\\n``-terminated."""
        cid = _quote(custom_id)
        try:
            body_json = self._body(endpoint, custom_id, body, default_model, created, request_id)
        except RequestFailure as failure:
            return False, (
                f'{{"custom_id": {cid}, "error": {{"message": {_quote(failure.message)}, '
                f'"code": {_quote(failure.code)}}}}}\n'
            )
        return True, (
            f'{{"id": "{line_id}", "custom_id": {cid}, "response": {{"status_code": 200, '
            f'"request_id": "{request_id}", "body": {body_json}}}}}\n'
        )

    def _body(
        self,
        endpoint: str,
        custom_id: str,
        body: dict[str, Any],
        default_model: str | None,
        created: int,
        request_id: str,
    ) -> str:
        model = body.get("model") or default_model
        if not isinstance(model, str) or not model:
            raise RequestFailure("'model' is required in the request body", "invalid_request_error")
        if endpoint == CHAT_ENDPOINT:
            messages = body.get("messages")
            if not isinstance(messages, list) or not messages:
                raise RequestFailure("'messages' must be a non-empty list", "invalid_request_error")
            texts = [_text_of(m.get("content")) if isinstance(m, dict) else "" for m in messages]
            last_user = next(
                (
                    texts[i]
                    for i in range(len(messages) - 1, -1, -1)
                    if isinstance(messages[i], dict) and messages[i].get("role") == "user"
                ),
                texts[-1],
            )
            self._maybe_fail(custom_id, last_user)
            prompt_tokens = sum(map(_word_count, texts)) + 3 * len(texts)
            extra = ""
            tool = _first_tool(body)
            if tool is not None:
                name, parameters = tool
                arguments = sample_json(parameters, last_user, sentiment(last_user))
                call = (
                    f'[{{"id": "call_{request_id}", "type": "function", "function": '
                    f'{{"name": {_quote(name)}, "arguments": {_quote(arguments)}}}}}]'
                )
                content, finish, extra = "", "tool_calls", f', "tool_calls": {call}'
                content_json = "null"
            else:
                content, finish = self._chat_content(body, last_user, " ".join(texts))
                content_json = _quote(content)
            if REASONING_MARKER in last_user or _asks_reasoning(body):
                thought = f"The user asks about {' '.join(last_user.split()[:6])}; answer briefly."
                extra += f', "reasoning": {_quote(thought)}'
            choice = (
                f'{{"index": 0, "message": {{"role": "assistant", "content": {content_json}'
                f'{extra}}}, "finish_reason": "{finish}", "logprobs": null}}'
            )
            kind = "chat.completion"
        elif endpoint == COMPLETIONS_ENDPOINT:
            prompt = body.get("prompt")
            if isinstance(prompt, list):
                prompt = " ".join(p for p in prompt if isinstance(p, str))
            if not isinstance(prompt, str):
                raise RequestFailure("'prompt' must be a string", "invalid_request_error")
            self._maybe_fail(custom_id, prompt)
            prompt_tokens = _word_count(prompt)
            content, finish = _cut_to_max_tokens(" " + answer(prompt), body)
            choice = f'{{"index": 0, "text": {_quote(content)}, "finish_reason": "{finish}", "logprobs": null}}'
            kind = "text_completion"
        else:  # audio: the reply is a transcript; there is no prompt to echo
            return self._audio(endpoint, custom_id, body)
        completion_tokens = _word_count(content)
        return (
            f'{{"id": "{request_id}", "object": "{kind}", "created": {created}, '
            f'"model": {_quote(model)}, "choices": [{choice}], '
            f'"usage": {{"prompt_tokens": {prompt_tokens}, "completion_tokens": {completion_tokens}, '
            f'"total_tokens": {prompt_tokens + completion_tokens}}}}}'
        )

    def _chat_content(self, body: dict[str, Any], prompt: str, context: str) -> tuple[str, str]:
        """The answer's text: schema-shaped JSON when the request has a schema."""
        schema = schema_of(body.get("response_format"))
        if schema is None:
            return _cut_to_max_tokens(answer(prompt, context), body)
        if INVALID_JSON_MARKER in prompt:
            return '{"label": "positive", "score": ', "stop"
        if SCHEMA_MISMATCH_MARKER in prompt:
            return '["not", "the", "schema"]', "stop"
        if not isinstance(schema, dict) or not schema:  # JSON mode without a schema: an object
            schema = {"type": "object", "properties": {"answer": {"type": "string"}}}
        return sample_json(schema, prompt, sentiment(prompt)), "stop"

    def _audio(self, endpoint: str, custom_id: str, body: dict[str, Any]) -> str:
        """A transcription body: ``{"text"}``, or the verbose form with language and duration."""
        source = body.get("file")
        if not isinstance(source, str) or not source:
            raise RequestFailure(
                "'file' must be the audio's URL (a string)", "invalid_request_error"
            )
        self._maybe_fail(custom_id, str(body.get("prompt", "")) + " " + source)
        text = answer(source)
        if body.get("response_format") != "verbose_json":
            return f'{{"text": {_quote(text)}}}'
        language = body.get("language")
        language = language if isinstance(language, str) and language != "auto" else "en"
        if endpoint == AUDIO_ENDPOINTS[1]:
            language = "en" if body.get("language") in (None, "auto") else language
        duration = round(1.5 + zlib.crc32(source.encode("utf-8", "replace")) % 600 / 10, 1)
        task = "translate" if endpoint == AUDIO_ENDPOINTS[1] else "transcribe"
        segment = f'{{"id": 0, "start": 0.0, "end": {duration}, "text": {_quote(text)}}}'
        return (
            f'{{"task": "{task}", "language": {_quote(language)}, "duration": {duration}, '
            f'"text": {_quote(text)}, "segments": [{segment}]}}'
        )

    def _maybe_fail(self, custom_id: str, prompt: str) -> None:
        marker = _ERROR_REQUEST.search(prompt)
        if marker is not None:
            once, code = marker.group(1), marker.group(2) or "emulated_error"
            if once:  # fails the first time this request is seen, answers every later time
                seen = f"{custom_id}\0{prompt}"
                if seen in self._failed_once:
                    return
                self._failed_once.add(seen)
            raise RequestFailure(f"Emulated failure: the prompt asked for an error ({code})", code)
        if self._fail is not None and self._fail.search(custom_id):
            raise RequestFailure(
                "Emulated failure: custom_id matches fail_pattern", "emulated_error"
            )


def _first_tool(body: dict[str, Any]) -> tuple[str, Any] | None:
    """The function to call: the first of ``tools``, unless ``tool_choice`` is ``"none"``."""
    tools = body.get("tools")
    if not isinstance(tools, list) or not tools or body.get("tool_choice") == "none":
        return None
    first = tools[0] if isinstance(tools[0], dict) else {}
    function = first.get("function")
    function = function if isinstance(function, dict) else {}
    name = function.get("name")
    return name if isinstance(name, str) else "tool", function.get("parameters", {})


def _asks_reasoning(body: dict[str, Any]) -> bool:
    """``reasoning: {"enabled": true}`` or a ``reasoning_effort``: the model shows its thinking."""
    reasoning = body.get("reasoning")
    enabled = isinstance(reasoning, dict) and reasoning.get("enabled") is True
    return enabled or isinstance(body.get("reasoning_effort"), str)
