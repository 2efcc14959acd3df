"""Readiness probes for ``set_start_cmd(..., readiness=...)`` (spec §1.5)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict
from urllib.parse import urlsplit

_LOCAL_HOSTS = ("localhost", "127.0.0.1", "0.0.0.0")


@dataclass(frozen=True)
class Readiness:
    """A readiness probe as the API serializes it (``kind`` plus its parameters)."""

    kind: str
    params: Dict[str, Any] = field(default_factory=dict)

    def to_api(self) -> Dict[str, Any]:
        """The API's readiness object."""
        return {"kind": self.kind, **self.params}


def wait_for_port(port: int) -> Readiness:
    """Ready once something listens on TCP ``port`` inside the guest."""
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise ValueError(f"wait_for_port: {port!r} is not a TCP port (1-65535)")
    return Readiness("tcp", {"port": port})


def wait_for_url(url: str) -> Readiness:
    """Ready once an HTTP GET of ``url`` inside the guest succeeds.

    Only ``http://`` URLs on ``localhost``, ``127.0.0.1`` or ``0.0.0.0`` with an explicit port
    are accepted; query strings, fragments and embedded credentials are rejected.
    """
    parts = urlsplit(url)
    if parts.scheme != "http":
        raise ValueError(f"wait_for_url: {url!r}: only http:// URLs are accepted")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise ValueError(f"wait_for_url: {url!r}: embedded credentials are not allowed")
    if parts.hostname not in _LOCAL_HOSTS:
        raise ValueError(
            f"wait_for_url: {url!r}: the host must be localhost, 127.0.0.1 or 0.0.0.0"
        )
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"wait_for_url: {url!r}: the port is invalid") from None
    if port is None:
        raise ValueError(f"wait_for_url: {url!r}: the port must be explicit")
    if parts.query or "?" in url:
        raise ValueError(f"wait_for_url: {url!r}: query strings are not allowed")
    if parts.fragment or "#" in url:
        raise ValueError(f"wait_for_url: {url!r}: fragments are not allowed")
    return Readiness("http", {"url": url})


def wait_for_file(path: str) -> Readiness:
    """Ready once ``path`` exists inside the guest."""
    if not isinstance(path, str) or not path.startswith("/"):
        raise ValueError(f"wait_for_file: {path!r} must be an absolute path")
    return Readiness("file", {"path": path})


def wait_for_process(name: str) -> Readiness:
    """Ready once a process named ``name`` runs inside the guest."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError("wait_for_process: a process name is required")
    return Readiness("process", {"name": name})


def wait_for_timeout(ms: int) -> Readiness:
    """Ready after ``ms`` milliseconds."""
    if isinstance(ms, bool) or not isinstance(ms, int) or ms < 0:
        raise ValueError(f"wait_for_timeout: {ms!r} must be a non-negative number of milliseconds")
    return Readiness("timeout", {"timeout_ms": ms})
