"""The client's settings as small typed values, built once and handed to the transport.

``TogetherClient(timeout=..., max_retries=..., verify_tls=...)`` is the simple form;
``TogetherClient(settings=ClientSettings(...), retries=Retries(...))`` the typed one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

DEFAULT_TIMEOUT = 60.0
DEFAULT_MAX_RETRIES = 5


@dataclass(frozen=True)
class Retries:
    """When and how long to wait before sending a failed request again.

    Attributes:
        max_retries: retries after the first attempt, for transient failures only (429, 408,
            5xx, connection errors); also the number of resumes a download may make.
        backoff_base: seconds before the first retry; doubled for each next one, with jitter.
        backoff_max: the cap of that exponential backoff, in seconds.
        retry_after_max: the cap, in seconds, of a server's ``Retry-After`` (which otherwise
            wins over the backoff).
    """

    max_retries: int = DEFAULT_MAX_RETRIES
    backoff_base: float = 0.5
    backoff_max: float = 8.0
    retry_after_max: float = 60.0

    def __post_init__(self) -> None:
        if self.max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {self.max_retries}.")
        for name in ("backoff_base", "backoff_max", "retry_after_max"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0 seconds, got {getattr(self, name)}.")


@dataclass(frozen=True)
class ClientSettings:
    """Everything about how the client talks to the API, except where and as whom.

    Attributes:
        timeout: seconds for connect and for each read/write (not for a whole download).
        retries: the retry policy (:class:`Retries`).
        verify_tls: verify the server's TLS certificate; turn off only for a test server.
    """

    timeout: float = DEFAULT_TIMEOUT
    retries: Retries = field(default_factory=Retries)
    verify_tls: bool = True

    def __post_init__(self) -> None:
        if self.timeout <= 0:
            raise ValueError(f"timeout must be > 0 seconds, got {self.timeout}.")
