"""API errors raised by the emulator's state and turned into HTTP answers by the handler."""

from __future__ import annotations

from typing import Any

_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    403: "forbidden",
    404: "invalid_request_error",
    409: "conflict",
    416: "invalid_request_error",
    429: "rate_limit_error",
}


class ApiError(Exception):
    """An error answer: HTTP ``status`` with the object-form body Together sends.

    ``string_form=True`` answers ``{"error": "<message>"}`` instead: the form the batch
    endpoints of the live service use.
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        extra: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        string_form: bool = False,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.extra = extra or {}
        self.headers = headers or {}
        self.string_form = string_form

    def body(self) -> dict[str, Any]:
        """The JSON body: ``{"error": {"message", "type", "param", "code"}}`` plus any extras,
        or ``{"error": "<message>"}`` in the string form."""
        if self.string_form:
            return {**self.extra, "error": self.message}
        return {
            **self.extra,
            "error": error_object(self.status, self.message, code=self.code, param=self.param),
        }


def error_object(
    status: int, message: str, *, code: str | None = None, param: str | None = None
) -> dict[str, Any]:
    """The inner ``error`` object of Together's object-form error body."""
    kind = _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {"message": message, "type": kind, "param": param, "code": code}


def not_found(what: str, ident: str) -> ApiError:
    """404 for an unknown file or batch id."""
    return ApiError(404, f"{what} {ident} not found", code="not_found")


def bad_request(message: str, param: str | None = None) -> ApiError:
    """400 for a malformed request."""
    return ApiError(400, message, code="invalid_request_error", param=param)
