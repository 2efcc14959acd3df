"""The HTTP client: base URL and API key from the environment, the error envelope, SSE."""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any, BinaryIO, Dict, Iterator, List, Mapping, Optional, Tuple

import httpx

from .errors import ApiError, NullspaceError, error_from_response

DEFAULT_API_URL = "http://127.0.0.1:8080"


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
    ) -> None:
        self.api_url = (api_url or os.environ.get("NULLSPACE_API_URL") or DEFAULT_API_URL).rstrip("/")
        self._api_key = api_key if api_key is not None else os.environ.get("NULLSPACE_API_KEY")
        self._timeout = timeout

    def __repr__(self) -> str:
        return f"Client(api_url={self.api_url!r})"

    def _headers(self) -> Dict[str, str]:
        headers = {"accept": "application/json", "user-agent": "nullspace-python/0.1.0"}
        if self._api_key:
            headers["authorization"] = f"Bearer {self._api_key}"
        return headers

    def request(
        self,
        method: str,
        path: str,
        *,
        json_body: Optional[Mapping[str, Any]] = None,
        params: Optional[Mapping[str, Any]] = None,
    ) -> Any:
        """Sends a request and returns the decoded JSON, raising the matching error."""
        try:
            response = httpx.request(
                method,
                self.api_url + path,
                json=json_body,
                params=_params(params),
                headers=self._headers(),
                timeout=self._timeout,
            )
        except httpx.HTTPError as error:
            raise ApiError(f"cannot reach {self.api_url}: {error}", code="connection_error") from None
        return _decode(response)

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
                    raise ApiError(f"cannot reach {self.api_url}: {error}", code="connection_error") from None
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

    def sse(self, path: str, params: Mapping[str, Any]) -> Iterator[Tuple[Optional[str], str, str]]:
        """Yields ``(id, event, data)`` of a server-sent event stream until it closes."""
        timeout = httpx.Timeout(self._timeout, read=None)
        headers = dict(self._headers(), accept="text/event-stream")
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
