"""Generated benchmark data, written once and reused: cached by parameters under bench/out/data.

* :func:`join_data`: a batch of ``n`` chat requests (input JSONL), the output JSONL in the exact
  Together format (about 770 bytes a line, a few sentences of content, shuffled order), and the
  error JSONL (a few % of the requests). Two more kinds of the same batch:
  ``structured=True`` sends :data:`REVIEW_SCHEMA` as the requests' ``response_format`` and answers
  with JSON of that schema (about 1% of the answers not JSON or not matching, as models do), and
  ``shape="long"`` is a second data shape (documents of about 0.6-1.1 kB in, answers of about 0.4-0.7 kB out
  with a ``seed`` per choice, ``logprobs: null`` and ``prompt: []``, fields in another order),
  so that no figure holds only for the data it was tuned on.
* :func:`big_file`: a file of exactly ``size`` bytes of output lines, for download figures.
* :func:`upload_file`: a valid batch input file of 50,000 requests and exactly 100,000,000 bytes.

Everything is seeded, so a cache directory always holds the same bytes for the same parameters.
A cache entry is complete only once its ``meta.json`` exists (written last).
"""

from __future__ import annotations

import json
import os
import random
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "DATA_DIR",
    "OUT_DIR",
    "REVIEW_SCHEMA",
    "JoinData",
    "big_file",
    "join_data",
    "upload_file",
]

OUT_DIR = Path(__file__).resolve().parent / "out"
DATA_DIR = OUT_DIR / "data"
VERSION = 1  # bump when the generators change: old cache entries are ignored
MODEL = "meta-llama/Llama-3.3-70B-Instruct-Turbo"
SYSTEM = "You are a concise analyst. Answer in a few sentences, plainly, without lists."
_FLUSH_LINES = 20_000
SHAPES = ("short", "long")

REVIEW_SCHEMA: dict[str, object] = {
    "type": "object",
    "properties": {
        "sentiment": {"type": "string", "enum": ["positive", "neutral", "negative"]},
        "product_issue": {"type": ["string", "null"]},
        "severity": {"type": "integer", "minimum": 1, "maximum": 5},
        "confidence": {"type": "number", "minimum": 0, "maximum": 1},
        "tags": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["sentiment", "product_issue", "severity", "confidence", "tags"],
    "additionalProperties": False,
}
"""The 5-field output schema of the structured batches (typed columns: string, string, int64,
float64, list<string>)."""
_ISSUES = [
    "late delivery",
    "broken on arrival",
    "wrong size",
    "battery drains fast",
    "missing parts",
    "app keeps crashing",
    'the "quick start" guide is wrong',
    "café-grade grinder jams",
]
_TAGS = ["shipping", "quality", "price", "support", "packaging", "durability", "ux", "refund"]

_SUBJECTS = [
    "The report",
    "This approach",
    "Your question",
    "The dataset",
    "A careful reading of the notes",
    "The second option",
    "Our analysis",
    "The customer's feedback",
    "The latest survey",
    "The proposed schedule",
    "The contract's wording",
    "A quick estimate",
    "The café's menu",
    "The historical record",
    "The pilot study",
    "Each of the three regions",
]
_VERBS = [
    "suggests that",
    "shows that",
    "makes it clear that",
    "implies that",
    "indicates that",
    "does not prove that",
    "is consistent with the idea that",
    "leaves open whether",
]
_CLAUSES = [
    "quarterly revenue grew faster than expected",
    "most reviewers preferred the shorter version",
    "the delay came from a supplier rather than the team",
    "prices will stabilise once demand settles",
    "the sample is too small to draw firm conclusions",
    "the naïve baseline performs surprisingly well",
    "shipping costs explain most of the difference",
    "the second half of the year will be quieter",
    "users rarely open the settings page",
    "the warranty covers water damage only in part",
    "a 10% discount would not change the outcome",
    "the new policy applies to contractors as well",
    "energy use dropped after the retrofit",
    "the model's answers drift on longer inputs",
    "the figures for March were revised twice",
    "remote teams reported higher satisfaction",
]
_TAILS = [
    "",
    "",
    "",
    " in most cases",
    ", although the evidence is mixed",
    " \u2014 especially in the northern stores",
    ' (the "summary" table shows this)',
    ", which matches last year's pattern",
    " by a wide margin",
    " at least for now",
]
_QUESTIONS = [
    "Summarise the customer review below in two sentences.",
    "What is the main risk in this plan?",
    "Classify the sentiment of this message and explain why.",
    "Explain the following clause to a non-lawyer.",
    "Which of these two options is cheaper over five years?",
    "Give a short answer: is the claim below supported by the data?",
    "Rewrite this paragraph for a general audience.",
    "List the key facts in this support ticket as one sentence.",
]
_ERRORS = [
    (
        "Input validation error: `inputs` tokens + `max_new_tokens` must be <= 8193. "
        "Given: 7912 `inputs` tokens and 512 `max_new_tokens`",
        "invalid_request_error",
    ),
    ("Request timed out while waiting for the model", "timeout"),
    ("The model produced invalid output and the request was not billed", "server_error"),
]


def _escaped(text: str) -> str:
    """``text`` as the inside of a JSON string (UTF-8 kept, quotes and newlines escaped)."""
    return json.dumps(text, ensure_ascii=False)[1:-1]


def _sentence_pool(rng: random.Random, size: int = 512) -> list[str]:
    """JSON-escaped sentences of about 90 characters."""
    pool = []
    for _ in range(size):
        text = (
            f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_CLAUSES)}"
            f"{rng.choice(_TAILS)}."
        )
        pool.append(_escaped(text))
    return pool


@dataclass(frozen=True)
class JoinData:
    """One generated batch: request, output and error JSONL (paths) and their counts."""

    n: int
    inputs: Path
    outputs: Path
    errors: Path
    n_outputs: int
    n_errors: int
    output_bytes: int
    input_bytes: int

    def to_dict(self) -> dict[str, object]:
        """JSON-able description (paths as strings)."""
        return {k: str(v) if isinstance(v, Path) else v for k, v in self.__dict__.items()}


def _entry(name: str) -> tuple[Path, dict[str, object] | None]:
    """The cache directory of ``name`` and its metadata, None if not complete."""
    path = DATA_DIR / f"{name}-v{VERSION}"
    meta = path / "meta.json"
    if meta.is_file():
        return path, json.loads(meta.read_text())
    return path, None


def _fresh(path: Path) -> Path:
    """An empty temporary sibling of ``path`` to build an entry in (renamed when complete)."""
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def _publish(tmp: Path, path: Path, meta: dict[str, object]) -> None:
    (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)


def _custom_id(i: int) -> str:
    return f"request-{i:07d}"


def _write_lines(path: Path, lines: Iterator[str]) -> int:
    """Write ``lines`` (each ending in a newline) in large chunks; returns the bytes written."""
    size = 0
    with open(path, "w", encoding="utf-8", newline="") as handle:
        chunk: list[str] = []
        for line in lines:
            chunk.append(line)
            if len(chunk) >= _FLUSH_LINES:
                size += handle.write("".join(chunk))
                chunk.clear()
        size += handle.write("".join(chunk))
    return path.stat().st_size


def join_data(
    n: int,
    *,
    error_rate: float = 0.03,
    seed: int = 7,
    shape: str = "short",
    structured: bool = False,
) -> JoinData:
    """A batch of ``n`` requests with its output and error files (generated once, then cached).

    ``shape`` is ``"short"`` (the main figures' data) or ``"long"`` (the second data shape);
    ``structured`` makes the answers JSON of :data:`REVIEW_SCHEMA`.
    """
    if shape not in SHAPES:
        raise ValueError(f"shape must be one of {SHAPES}, not {shape!r}")
    kind = ("" if shape == "short" else f"{shape}-") + ("schema-" if structured else "")
    path, meta = _entry(f"join-{kind}{n}-{error_rate}-{seed}")
    if meta is None:
        tmp = _fresh(path)
        meta = _generate_join(tmp, n, error_rate, seed, shape, structured)
        _publish(tmp, path, meta)
    return JoinData(
        n=n,
        inputs=path / "inputs.jsonl",
        outputs=path / "output.jsonl",
        errors=path / "errors.jsonl",
        n_outputs=int(meta["n_outputs"]),  # type: ignore[call-overload]
        n_errors=int(meta["n_errors"]),  # type: ignore[call-overload]
        output_bytes=int(meta["output_bytes"]),  # type: ignore[call-overload]
        input_bytes=int(meta["input_bytes"]),  # type: ignore[call-overload]
    )


def _review_answer(rng: random.Random) -> str:
    """A JSON answer of :data:`REVIEW_SCHEMA`, escaped as the inside of a JSON string; about 1%
    are not JSON or do not match (models do that)."""
    roll = rng.random()
    if roll < 0.005:
        return _escaped("I'm sorry, I can't classify this review.")
    answer = {
        "sentiment": rng.choice(("positive", "neutral", "negative")),
        "product_issue": rng.choice(_ISSUES) if rng.random() < 0.8 else None,
        "severity": rng.randint(1, 5) if roll >= 0.01 else 7,  # 7: out of the schema's range
        "confidence": round(rng.random(), 3),
        "tags": rng.sample(_TAGS, rng.randint(0, 3)),
    }
    return _escaped(json.dumps(answer, ensure_ascii=False))


def _generate_join(
    directory: Path, n: int, error_rate: float, seed: int, shape: str, structured: bool
) -> dict[str, object]:
    rng = random.Random(seed)
    pool = _sentence_pool(rng)
    questions = [_escaped(q) for q in _QUESTIONS]
    system = _escaped(SYSTEM)
    long = shape == "long"
    response_format = (
        ', "response_format": '
        + json.dumps(
            {"type": "json_schema", "json_schema": {"name": "review", "schema": REVIEW_SCHEMA}}
        )
        if structured
        else ""
    )

    def requests() -> Iterator[str]:
        for i in range(n):
            k = rng.randint(7, 12) if long else rng.randint(1, 3)
            context = " ".join(rng.choices(pool, k=k))
            yield (
                f'{{"custom_id": "{_custom_id(i)}", "body": {{"model": "{MODEL}", '
                f'"messages": [{{"role": "system", "content": "{system}"}}, '
                f'{{"role": "user", "content": "{rng.choice(questions)} {context}"}}], '
                f'"max_tokens": 512, "temperature": 0.7{response_format}}}}}\n'
            )

    input_bytes = _write_lines(directory / "inputs.jsonl", requests())
    failed = [i for i in range(n) if rng.random() < error_rate]
    failed_set = set(failed)
    succeeded = [i for i in range(n) if i not in failed_set]
    rng.shuffle(succeeded)
    rng.shuffle(failed)
    created = 1_735_689_600

    def content() -> str:
        if structured:
            return _review_answer(rng)
        k = rng.randint(4, 8) if long else rng.choice((1, 2, 2, 3, 3, 3, 4, 4))
        sentences = rng.choices(pool, k=k)
        if k > 3 and rng.random() < 0.3:
            sentences[2] = "\\n\\n" + sentences[2]
        return " ".join(sentences)

    def outputs() -> Iterator[str]:
        for i in succeeded:
            text = content()
            prompt_tokens = rng.randint(300, 900) if long else rng.randint(40, 420)
            completion_tokens = len(text) // 4
            usage = (
                f'"usage": {{"prompt_tokens": {prompt_tokens}, '
                f'"completion_tokens": {completion_tokens}, '
                f'"total_tokens": {prompt_tokens + completion_tokens}}}'
            )
            ids = (
                f'"id": "br_{rng.getrandbits(96):024x}", "custom_id": "{_custom_id(i)}", '
                f'"response": {{"status_code": 200, "request_id": "{rng.getrandbits(128):032x}", '
            )
            if long:  # another order, a seed per choice, an empty prompt list, no system one
                yield (
                    f"{{{ids}"
                    f'"body": {{"id": "{rng.getrandbits(64):016x}", "object": "chat.completion", '
                    f'"created": {created + i // 50}, "model": "{MODEL}", "prompt": [], {usage}, '
                    f'"choices": [{{"index": 0, "seed": {rng.getrandbits(63)}, '
                    f'"logprobs": null, "finish_reason": "stop", "message": '
                    f'{{"role": "assistant", "content": "{text}", "tool_calls": []}}}}]}}}}}}\n'
                )
                continue
            yield (
                f"{{{ids}"
                f'"body": {{"id": "{rng.getrandbits(64):016x}-{rng.getrandbits(32):08x}", '
                f'"object": "chat.completion", "created": {created + i // 50}, '
                f'"model": "{MODEL}", "choices": [{{"index": 0, "message": '
                f'{{"role": "assistant", "content": "{text}"}}, "finish_reason": "stop", '
                f'"logprobs": null}}], {usage}}}}}}}\n'
            )

    def errors() -> Iterator[str]:
        for i in failed:
            message, code = rng.choice(_ERRORS)
            yield (
                f'{{"custom_id": "{_custom_id(i)}", "error": {{"message": "{_escaped(message)}", '
                f'"code": "{code}"}}}}\n'
            )

    output_bytes = _write_lines(directory / "output.jsonl", outputs())
    error_bytes = _write_lines(directory / "errors.jsonl", errors())
    return {
        "n": n,
        "seed": seed,
        "error_rate": error_rate,
        "shape": shape,
        "structured": structured,
        "n_outputs": len(succeeded),
        "n_errors": len(failed),
        "input_bytes": input_bytes,
        "output_bytes": output_bytes,
        "error_bytes": error_bytes,
    }


def big_file(size: int, *, source_n: int = 300_000) -> Path:
    """A file of exactly ``size`` bytes: output lines of :func:`join_data` repeated."""
    path, meta = _entry(f"big-{size}")
    if meta is None:
        source = join_data(source_n).outputs
        tmp = _fresh(path)
        with open(tmp / "content.jsonl", "wb") as out:
            remaining = size
            while remaining:
                with open(source, "rb") as src:
                    while remaining:
                        block = src.read(min(64 * 1024 * 1024, remaining))
                        if not block:
                            break
                        out.write(block)
                        remaining -= len(block)
        _publish(tmp, path, {"size": size, "source": str(source)})
    return path / "content.jsonl"


def upload_file(size: int = 100_000_000, lines: int = 50_000, *, seed: int = 11) -> Path:
    """A valid batch input file of ``lines`` requests and exactly ``size`` bytes."""
    path, meta = _entry(f"upload-{size}-{lines}-{seed}")
    if meta is None:
        if size % lines:
            raise ValueError("size must be a multiple of lines (every line has the same length)")
        per_line = size // lines
        rng = random.Random(seed)
        pool = _sentence_pool(rng)

        def requests() -> Iterator[str]:
            for i in range(lines):
                head = (
                    f'{{"custom_id": "{_custom_id(i)}", "body": {{"model": "{MODEL}", '
                    f'"messages": [{{"role": "user", "content": "Summarise this document: '
                )
                tail = '"}], "max_tokens": 256}}\n'
                room = per_line - len(head.encode()) - len(tail)
                text = ""
                while len(text.encode()) < room:
                    text += rng.choice(pool) + " "
                raw = text.encode()[:room]
                # Never cut inside an escape or a UTF-8 sequence: pad with spaces instead.
                while True:
                    try:
                        piece = raw.decode()
                        json.loads(f'"{piece}"')
                        break
                    except ValueError:
                        raw = raw[:-1]
                piece = piece + " " * (room - len(raw))
                yield head + piece + tail

        tmp = _fresh(path)
        written = _write_lines(tmp / "requests.jsonl", requests())
        if written != size:
            raise AssertionError(f"upload file is {written} bytes, expected {size}")
        _publish(tmp, path, {"size": size, "lines": lines, "seed": seed})
    return path / "requests.jsonl"
