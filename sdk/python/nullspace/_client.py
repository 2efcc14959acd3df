"""The HTTP client: base URL and API key from the environment, the error envelope, SSE, and
the retries of what may go away by itself (:class:`Backoff`)."""

from __future__ import annotations

import json
import os
import random
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, BinaryIO, Callable, Dict, Iterator, List, Mapping, Optional, Tuple, TypeVar

import httpx

from .errors import ApiError, NullspaceError, error_from_response

DEFAULT_API_URL = "http://127.0.0.1:8080"
DEFAULT_RETRY_BUDGET = 30.0
"""Seconds for which a run of transient failures is retried before giving up."""

T = TypeVar("T")

# Answers of a proxy or load balancer while the server behind it is down or restarting.
_TRANSIENT_STATUSES = frozenset({502, 503, 504})


def is_transient(error: BaseException) -> bool:
    """Whether ``error`` may go away by itself: the server unreachable or restarting
    (connection refused or reset, a response cut off, a timeout), or a proxy in front of it
    answering 502, 503 or 504."""
    if isinstance(error, (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)):
        return True
    return isinstance(error, ApiError) and error.status_code in _TRANSIENT_STATUSES


def unreachable(target: str, error: Exception) -> ApiError:
    """The SDK's error for a failed HTTP exchange with ``target``."""
    return ApiError(f"cannot reach {target}: {error}", code="connection_error")


class Backoff:
    """The one retry policy of the SDK, for idempotent requests and stream reconnects.

    After a transient failure (:func:`is_transient`), :meth:`retry` sleeps before the next
    attempt: exponential delays from ``initial`` up to ``maximum`` seconds, each with random
    jitter (between half and all of it, so that clients cut off together do not come back in
    lockstep). A run of failures is retried for at most ``budget`` seconds from its first
    failure, then the last error is raised; :meth:`reset`, called after progress, starts a new
    run. Other errors are raised at once (``httpx`` errors as :class:`ApiError`
    ``connection_error``).
    """

    def __init__(
        self,
        target: str,
        budget: float = DEFAULT_RETRY_BUDGET,
        initial: float = 0.25,
        maximum: float = 4.0,
        *,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self.target = target
        self.budget = budget
        self.initial = initial
        self.maximum = maximum
        self._sleep = sleep
        self._clock = clock
        self._jitter = jitter
        self._attempts = 0
        self._since: Optional[float] = None

    def reset(self) -> None:
        """Forgets the failures so far (after a success or other progress)."""
        self._attempts = 0
        self._since = None

    def retry(self, error: Exception) -> None:
        """Sleeps before retrying after ``error``, or raises it when it is not transient or
        the run of failures has lasted ``budget`` seconds."""
        if not is_transient(error):
            if isinstance(error, httpx.HTTPError):
                raise unreachable(self.target, error) from None
            raise error
        now = self._clock()
        if self._since is None:
            self._since = now
        left = self._since + self.budget - now
        if left <= 0:
            if isinstance(error, NullspaceError):
                error.message = f"{error.message} (still failing after {self.budget:g}s of retries)"
                raise error
            raise ApiError(
                f"cannot reach {self.target}: {error} (still failing after {self.budget:g}s of retries)",
                code="connection_error",
            ) from None
        self._sleep(min(self.delay(), left))

    def pause(self) -> None:
        """Sleeps the next delay without counting a failure (to pace reconnects to a stream
        that closed early without an error)."""
        self._sleep(self.delay())

    def delay(self) -> float:
        """The next delay, with its jitter; each call doubles the next one's ceiling."""
        ceiling = min(self.maximum, self.initial * 2.0 ** min(self._attempts, 30))
        self._attempts += 1
        return ceiling * (0.5 + 0.5 * self._jitter())

    def call(self, attempt: Callable[[], T]) -> T:
        """``attempt()`` until it succeeds, retrying transient failures (then resets)."""
        while True:
            try:
                result = attempt()
            except (httpx.HTTPError, ApiError) as error:
                self.retry(error)
                continue
            self.reset()
            return result


class Client:
    """A thin client of the Nullspace HTTP API.

    ``api_url`` defaults to ``$NULLSPACE_API_URL``, ``api_key`` to ``$NULLSPACE_API_KEY``.
    The key never appears in ``repr``.
    """

    def __init__(
        self,
        api_url: Optional[str] = None,
        api_key: Optional[str] = None,
        *,
        timeout: float = 30.0,
        retry_budget: float = DEFAULT_RETRY_BUDGET,
    ) -> None:
        self.api_url = (api_url or os.environ.get("NULLSPACE_API_URL") or DEFAULT_API_URL).rstrip("/")
        self._api_key = api_key if api_key is not None else os.environ.get("NULLSPACE_API_KEY")
        self._timeout = timeout
        self.retry_budget = retry_budget

    def __repr__(self) -> str:
        return f"Client(api_url={self.api_url!r})"

    def _headers(self) -> Dict[str, str]:
        headers = {"accept": "application/json", "user-agent": "nullspace-python/0.1.0"}
        if self._api_key:
            headers["authorization"] = f"Bearer {self._api_key}"
        return headers

    def backoff(self) -> Backoff:
        """A fresh retry policy for this server (``retry_budget`` seconds per run of failures)."""
        return Backoff(self.api_url, self.retry_budget)

    def request(
        self,
        method: str,
        path: str,
        *,
        json_body: Optional[Mapping[str, Any]] = None,
        params: Optional[Mapping[str, Any]] = None,
        backoff: Optional[Backoff] = None,
        timeout: Optional[float] = None,
    ) -> Any:
        """Sends a request and returns the decoded JSON, raising the matching error. With
        ``backoff`` (for idempotent requests only), transient failures are retried under it.
        ``timeout`` (seconds) overrides the client's for this request."""

        def attempt() -> Any:
            response = httpx.request(
                method,
                self.api_url + path,
                json=json_body,
                params=_params(params),
                headers=self._headers(),
                timeout=self._timeout if timeout is None else timeout,
            )
            return _decode(response)

        if backoff is not None:
            return backoff.call(attempt)
        try:
            return attempt()
        except httpx.HTTPError as error:
            raise unreachable(self.api_url, error) from None

    def request_bytes(
        self,
        method: str,
        path: str,
        *,
        params: Optional[Mapping[str, Any]] = None,
        content: Optional[bytes] = None,
    ) -> httpx.Response:
        """Sends raw bytes (``application/octet-stream``) and returns the response; an error
        answer is raised as the matching error."""
        headers = self._headers()
        if content is not None:
            headers["content-type"] = "application/octet-stream"
        try:
            response = httpx.request(
                method,
                self.api_url + path,
                params=_params(params),
                content=content,
                headers=headers,
                timeout=self._timeout,
            )
        except httpx.HTTPError as error:
            raise unreachable(self.api_url, error) from None
        if response.status_code >= 400:
            _decode(response)
        return response

    def upload_files(
        self, uploads: "List[Tuple[str, str]]", workers: int = 8
    ) -> None:
        """PUTs files, streamed, on one keep-alive connection pool with ``workers`` at once:
        ``uploads`` is ``[(api path, local path)]``. The first failure is raised (an API error,
        or ``OSError`` naming the file)."""
        if not uploads:
            return
        headers = dict(self._headers(), **{"content-type": "application/octet-stream"})
        # No write timeout (a large file streams as long as it takes), but a stalled server
        # still times out on reading the answer after 10 minutes.
        timeout = httpx.Timeout(self._timeout, write=None, read=600.0)
        limits = httpx.Limits(max_connections=workers, max_keepalive_connections=workers)

        def put(session: httpx.Client, path: str, local: str) -> None:
            with open(local, "rb") as body:
                try:
                    response = session.put(self.api_url + path, content=_chunks(body), headers=headers)
                except httpx.HTTPError as error:
                    raise unreachable(self.api_url, error) from None
            try:
                _decode(response)
            except NullspaceError as error:
                error.message = f"{local}: {error.message}"
                raise

        with httpx.Client(timeout=timeout, limits=limits) as session:
            pool = ThreadPoolExecutor(max_workers=workers)
            try:
                futures = [pool.submit(put, session, path, local) for path, local in uploads]
                for future in futures:
                    future.result()
            finally:
                # On the first failure, the uploads not started yet are dropped.
                pool.shutdown(wait=True, cancel_futures=True)

    def sse(
        self, path: str, params: Mapping[str, Any], last_event_id: Optional[str] = None
    ) -> Iterator[Tuple[Optional[str], str, str]]:
        """Yields ``(id, event, data)`` of a server-sent event stream until it closes. A
        reconnect passes the id of the last event it got as ``last_event_id`` (sent as the
        standard ``Last-Event-ID`` header). Network errors are raised as ``httpx`` errors."""
        timeout = httpx.Timeout(self._timeout, read=None)
        headers = dict(self._headers(), accept="text/event-stream")
        if last_event_id is not None:
            headers["last-event-id"] = last_event_id
        with httpx.stream(
            "GET", self.api_url + path, params=_params(params), headers=headers, timeout=timeout
        ) as response:
            if response.status_code >= 400:
                response.read()
                _decode(response)
            event_id: Optional[str] = None
            event = "message"
            data: list[str] = []
            for line in response.iter_lines():
                if line == "":
                    if data:
                        yield event_id, event, "\n".join(data)
                    event, data = "message", []
                    continue
                if line.startswith(":"):
                    continue
                field, _, value = line.partition(":")
                value = value[1:] if value.startswith(" ") else value
                if field == "data":
                    data.append(value)
                elif field == "event":
                    event = value
                elif field == "id":
                    event_id = value
            if data:
                yield event_id, event, "\n".join(data)


def _chunks(body: BinaryIO) -> Iterator[bytes]:
    while True:
        chunk = body.read(1 << 20)
        if not chunk:
            return
        yield chunk


def _params(params: Optional[Mapping[str, Any]]) -> Optional[Dict[str, str]]:
    if params is None:
        return None
    out: Dict[str, str] = {}
    for key, value in params.items():
        if value is None:
            continue
        out[key] = ("true" if value else "false") if isinstance(value, bool) else str(value)
    return out


def _decode(response: httpx.Response) -> Any:
    try:
        body = response.json() if response.content else {}
    except json.JSONDecodeError:
        body = {"error": response.text[:500], "code": "invalid_response"}
    if response.status_code >= 400:
        raise error_from_response(response.status_code, body)
    return body
