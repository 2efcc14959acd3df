"""``TemplateBuild``: a handle on a background build (spec §1.7)."""

from __future__ import annotations

import time
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Union

import httpx

from ._client import Backoff, Client
from .errors import ApiError, BuildError, ErrorDetail
from .models import Build, BuildSnapshot, LogEntry

BaseImageAuth = Union[Mapping[str, str], Sequence[str]]


def auth_payload(auth: Optional[BaseImageAuth]) -> Optional[Dict[str, str]]:
    """``{username, password}`` (or a kind-tagged object) from a mapping or a pair."""
    if auth is None:
        return None
    if isinstance(auth, Mapping):
        return {str(k): str(v) for k, v in auth.items()}
    username, password = auth
    return {"username": str(username), "password": str(password)}


class TemplateBuild:
    """A build started in the background, reattachable by its ``tb_...`` id."""

    def __init__(self, build: Build, client: Optional[Client] = None) -> None:
        self._client = client or Client()
        self.build = build

    def __repr__(self) -> str:
        return f"TemplateBuild(build_id={self.build_id!r}, status={self.build.status!r})"

    @property
    def build_id(self) -> str:
        """The build id."""
        return self.build.build_id

    @property
    def id(self) -> str:
        """The build id."""
        return self.build.build_id

    @property
    def status(self) -> str:
        """Status as last seen."""
        return self.build.status

    @property
    def name(self) -> str:
        """Template name."""
        return self.build.name

    @property
    def canonical_ref(self) -> Optional[str]:
        """``namespace/name:tag``."""
        return self.build.canonical_ref

    @property
    def cache_summary(self) -> Optional[Dict[str, Any]]:
        """Cache decisions, as last seen."""
        return self.build.cache_summary

    @property
    def artifact_availability(self) -> Optional[Dict[str, Any]]:
        """Whether the artifact is retained, as last seen."""
        return self.build.artifact_availability

    @property
    def promotability(self) -> Optional[Dict[str, Any]]:
        """Whether it can be promoted, as last seen."""
        return self.build.promotability

    @property
    def retention_expires_at(self) -> Optional[str]:
        """When the artifact may go away, as last seen."""
        return self.build.retention_expires_at

    @classmethod
    def connect(
        cls, build_id: str, *, api_url: Optional[str] = None, api_key: Optional[str] = None
    ) -> "TemplateBuild":
        """Reattaches to build ``build_id``."""
        client = Client(api_url, api_key)
        snapshot = BuildSnapshot.from_dict(
            client.request("GET", f"/v1/templates/builds/{build_id}", params={"offset": 1 << 62})
        )
        return cls(snapshot.build, client)

    def get_status(self, offset: int = 0) -> BuildSnapshot:
        """The build and its log entries from ``offset`` on."""
        return self._get_status(offset)

    def _get_status(self, offset: int, backoff: Optional[Backoff] = None) -> BuildSnapshot:
        snapshot = BuildSnapshot.from_dict(
            self._client.request(
                "GET",
                f"/v1/templates/builds/{self.build_id}",
                params={"offset": offset},
                backoff=backoff,
            )
        )
        self.build = snapshot.build
        return snapshot

    def logs(self, offset: int = 0, follow: bool = False) -> Iterator[LogEntry]:
        """Replays the durable log from ``offset``; with ``follow``, continues with live
        entries until the build ends.

        When the stream drops, it reconnects from the next offset (the ``offset`` parameter,
        and the standard ``Last-Event-ID`` header with the last event's id), retrying while the
        server is unreachable, e.g. restarting, for up to the client's ``retry_budget`` seconds
        (30 by default) with backoff and jitter. Each entry is yielded once, in offset order.
        """
        path = f"/v1/templates/builds/{self.build_id}/logs"
        backoff = self._client.backoff()
        next_offset = offset
        last_event_id: Optional[str] = None
        while True:
            progressed = False
            try:
                for event_id, event, data in self._client.sse(
                    path, {"offset": next_offset, "follow": follow}, last_event_id=last_event_id
                ):
                    if event != "log":
                        continue
                    entry = LogEntry.from_dict(_json(data))
                    if entry.offset < next_offset:
                        continue  # already yielded before a reconnect
                    next_offset = entry.offset + 1
                    last_event_id = event_id if event_id is not None else str(entry.offset)
                    progressed = True
                    backoff.reset()
                    yield entry
            except (httpx.HTTPError, ApiError) as error:
                backoff.retry(error)  # raises once it is not worth retrying
                continue
            if not follow:
                return
            # The stream closed cleanly: over if the build has ended and nothing is left.
            snapshot = self._get_status(next_offset, backoff)
            if snapshot.build.is_terminal and not snapshot.entries:
                return
            if not progressed:
                backoff.pause()  # a server that keeps closing the stream at once

    def cancel(self, reason: str = "") -> Build:
        """Cancels the build (idempotent once it has ended)."""
        body = self._client.request(
            "POST", f"/v1/templates/builds/{self.build_id}/cancel", json_body={"reason": reason}
        )
        self.build = Build.from_dict(body.get("build") or {})
        return self.build

    def retry(
        self,
        tags: Optional[Union[str, List[str]]] = None,
        base_image_auth: Optional[BaseImageAuth] = None,
        build_secrets: Optional[Mapping[str, Any]] = None,
        registry_auth: Optional[List[Mapping[str, str]]] = None,
    ) -> "TemplateBuild":
        """Starts a new attempt from the stored definition. Stored credentials and secret
        values are never replayed: private base images need a fresh ``base_image_auth``,
        BuildKit builds that used secrets the same secret ids in ``build_secrets``, and builds
        that used ``registry_auth`` a fresh one."""
        payload: Dict[str, Any] = {}
        if tags is not None:
            payload["tags"] = [tags] if isinstance(tags, str) else list(tags)
        auth = auth_payload(base_image_auth)
        if auth is not None:
            payload["base_image_auth"] = auth
        if build_secrets:
            from .template import _resolve_secrets

            payload["build_secrets"] = _resolve_secrets(build_secrets, True)
        if registry_auth:
            payload["registry_auth"] = [dict(a) for a in registry_auth]
        body = self._client.request(
            "POST", f"/v1/templates/builds/{self.build_id}/retry", json_body=payload
        )
        return TemplateBuild(Build.from_dict(body), self._client)

    def promote(self, tag: str) -> Build:
        """Points ``tag`` at this ready build."""
        body = self._client.request(
            "POST", f"/v1/templates/builds/{self.build_id}/promote", json_body={"tag": tag}
        )
        self.build = Build.from_dict(body.get("build") or {})
        return self.build

    def wait_until_terminal(
        self,
        *,
        on_log_entry: Optional[Callable[[LogEntry], None]] = None,
        poll_interval: float = 0.5,
        timeout: Optional[float] = None,
        offset: int = 0,
    ) -> BuildSnapshot:
        """Blocks until the build ends. With ``on_log_entry`` it follows the SSE log and hands
        every entry to the callback; otherwise it polls by offset. Returns the final snapshot
        (its ``entries`` are the ones seen while waiting)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        seen: List[LogEntry] = []
        backoff = self._client.backoff()  # polls survive a server restart like the stream
        if on_log_entry is not None:
            for entry in self.logs(offset=offset, follow=True):
                seen.append(entry)
                on_log_entry(entry)
                if deadline is not None and time.monotonic() > deadline:
                    raise TimeoutError(f"build {self.build_id} did not end within {timeout}s")
            snapshot = self._get_status(offset + len(seen), backoff)
            return BuildSnapshot(snapshot.build, seen + snapshot.entries, snapshot.next_offset)
        next_offset = offset
        while True:
            snapshot = self._get_status(next_offset, backoff)
            seen.extend(snapshot.entries)
            next_offset = snapshot.next_offset
            if snapshot.build.is_terminal:
                rest = self._get_status(next_offset, backoff)
                seen.extend(rest.entries)
                return BuildSnapshot(rest.build, seen, rest.next_offset)
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"build {self.build_id} did not end within {timeout}s")
            time.sleep(poll_interval)


def raise_for_failure(build: Build) -> None:
    """Raises ``BuildError`` for a failed or cancelled build."""
    if build.status == "ready":
        return
    if build.status == "cancelled":
        message = str(build.raw.get("error") or "build cancelled")
        raise BuildError(
            message,
            code="cancelled",
            build_id=build.build_id,
            error_detail=ErrorDetail(phase="cancelled", message=message),
        )
    detail = build.error_detail
    raise BuildError(
        detail.message if detail else f"build ended {build.status}",
        code="build_error",
        build_id=build.build_id,
        error_detail=detail,
    )


def _json(data: str) -> Mapping[str, Any]:
    import json

    value = json.loads(data)
    return value if isinstance(value, dict) else {}
