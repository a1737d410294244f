"""An httpx transport for large downloads over the standard library's ``http.client``.

httpx's own HTTP/1.1 layer (httpcore over h11) copies every byte of a body several times in user
space and reads it in 64 KiB pieces. A download's body needs none of that: this transport lets
the caller take it in large pieces, each what one read of the socket returned (``http.client``'s
``read1``: the kernel copies into it once, and a read cut by a timeout loses nothing that had
arrived), which takes the user-space CPU of a 1 GB download from about half a second to near
nothing. Everything else stays httpx's: the client builds the request, runs the auth
flow (the key goes to the API only), follows redirects and classifies the answer; the body is
also an ordinary httpx stream for anyone who iterates it.

One connection per request (a download is one long request; nothing to pool). Network errors
are raised as httpx's, so the retry and resume policy cannot tell the difference.
"""

from __future__ import annotations

import http.client
import ssl
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import httpx

__all__ = ["READ1", "DownloadTransport", "env_proxies"]

#: The response extension holding ``read1(size) -> bytes``: at most ``size`` bytes of the body,
#: from one read of the socket; ``b""`` at its end.
READ1 = "dagster_together.read1"
_PIECE = 64 * 1024  # for callers that iterate the body instead


def env_proxies() -> bool:
    """Whether the environment configures a proxy (httpx honours it; this transport does not)."""
    return any(scheme != "no" for scheme in urllib.request.getproxies())  # "no": NO_PROXY


class _Body(httpx.SyncByteStream):
    """The body of one answer, read through ``http.client``; closing it closes the connection."""

    def __init__(self, connection: http.client.HTTPConnection, answer: Any) -> None:
        self._connection = connection
        self._answer = answer

    def read1(self, size: int) -> bytes:
        """At most ``size`` next bytes of the body (one read of the socket); ``b""`` at its end."""
        return bytes(_network(lambda: self._answer.read1(size), reading=True))

    def __iter__(self) -> Iterator[bytes]:
        while piece := _network(lambda: self._answer.read(_PIECE), reading=True):
            yield piece

    def close(self) -> None:
        self._answer.close()
        self._connection.close()


def _network(call: Callable[[], Any], *, reading: bool) -> Any:
    """``call()`` with ``http.client``'s and the socket's errors raised as httpx's."""
    try:
        return call()
    except TimeoutError as exc:
        raise (httpx.ReadTimeout if reading else httpx.ConnectTimeout)(str(exc)) from exc
    except (http.client.HTTPException, ssl.SSLError) as exc:
        if reading:
            raise httpx.RemoteProtocolError(str(exc) or type(exc).__name__) from exc
        raise httpx.ConnectError(str(exc) or type(exc).__name__) from exc
    except OSError as exc:
        raise (httpx.ReadError if reading else httpx.ConnectError)(str(exc)) from exc


class DownloadTransport(httpx.BaseTransport):
    """Sends each request on a new ``http.client`` connection; the answer's body can be read
    with ``response.extensions[READ1]``.

    Args:
        verify: verify the server's TLS certificate (as httpx does: certifi's bundle, or
            ``SSL_CERT_FILE``/``SSL_CERT_DIR``).
        timeout: seconds for the connection and for each read.
    """

    def __init__(self, *, verify: bool = True, timeout: float = 60.0) -> None:
        self._verify = verify
        self._timeout = timeout
        self._tls: ssl.SSLContext | None = None

    def _connect(self, url: httpx.URL) -> http.client.HTTPConnection:
        # The port is always given: http.client would read one out of an IPv6 address.
        if url.scheme == "https":
            if self._tls is None:
                self._tls = httpx.create_ssl_context(verify=self._verify)
            return http.client.HTTPSConnection(
                url.host, url.port or 443, timeout=self._timeout, context=self._tls
            )
        if url.scheme != "http":
            raise httpx.UnsupportedProtocol(f"Cannot download over {url.scheme!r}.")
        return http.client.HTTPConnection(url.host, url.port or 80, timeout=self._timeout)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        connection = self._connect(request.url)
        body = request.read()

        def send() -> None:
            # httpx already set Host, Accept-Encoding and Content-Length; send them as they are.
            connection.putrequest(
                request.method,
                request.url.raw_path.decode("ascii"),
                skip_host=True,
                skip_accept_encoding=True,
            )
            for name, value in request.headers.raw:
                connection.putheader(name.decode("latin-1"), value.decode("latin-1"))
            connection.endheaders(body or None)

        try:
            _network(send, reading=False)
            answer = _network(connection.getresponse, reading=True)  # the request was sent
        except BaseException:
            connection.close()
            raise
        stream = _Body(connection, answer)
        return httpx.Response(
            answer.status,
            headers=answer.getheaders(),
            stream=stream,
            extensions={"http_version": b"HTTP/1.1", READ1: stream.read1},
        )
