"""Sandboxes: microVMs started from templates (their snapshot: the start command already runs).

::

    from nullspace import Sandbox

    with Sandbox.create(template="my-app", envs={"MODE": "test"}) as sandbox:
        result = sandbox.commands.run("curl -s localhost:8000/health")
        print(result.exit_code, result.stdout)
        sandbox.files.write("/tmp/data.bin", b"\\x00\\x01")
        print(sandbox.files.read("/tmp/data.bin", format="bytes"))
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Union

from ._client import Client
from .errors import NullspaceError


@dataclass
class SandboxInfo:
    """A sandbox as the API describes it."""

    sandbox_id: str
    template: str
    build_id: str
    state: str
    started_from: str
    start_ms: int
    created_at: str
    end_at: Optional[str] = None
    ended_at: Optional[str] = None
    end_reason: Optional[str] = None
    end_detail: Optional[str] = None
    cpu_count: int = 0
    memory_mb: int = 0
    env_keys: List[str] = field(default_factory=list)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "SandboxInfo":
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass
class CommandResult:
    """A command's end: exit code, output, and how it ended (``exited``, ``killed``,
    ``timed_out``, ``failed``)."""

    command_id: int
    cmd: str
    status: str
    exit_code: Optional[int]
    stdout: str
    stderr: str
    pid: Optional[int] = None
    signal: Optional[int] = None
    error: Optional[str] = None
    output_left_off: int = 0

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "CommandResult":
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})

    def check(self) -> "CommandResult":
        """Itself when it exited 0; raises :class:`CommandExitError` otherwise."""
        if self.status != "exited" or self.exit_code != 0:
            raise CommandExitError(self)
        return self


class CommandExitError(NullspaceError):
    """Raised by :meth:`CommandResult.check`: the command did not exit 0."""

    def __init__(self, result: CommandResult) -> None:
        super().__init__(
            f"command {result.cmd!r} ended {result.status} with exit code {result.exit_code}: "
            f"{result.stderr[-500:] or result.error or ''}",
            code="command_failed",
        )
        self.result = result


@dataclass
class EntryInfo:
    """One directory entry."""

    name: str
    path: str
    type: str
    size: int
    mode: str
    uid: int
    gid: int


OutputCallback = Callable[[str], None]


class CommandHandle:
    """A command started with ``background=True``: wait for it, follow its output, kill it."""

    def __init__(self, sandbox: "Sandbox", command_id: int, pid: Optional[int]) -> None:
        self._sandbox = sandbox
        self.command_id = command_id
        self.pid = pid

    def _path(self) -> str:
        return f"/v1/sandboxes/{self._sandbox.sandbox_id}/commands/{self.command_id}"

    def wait(
        self,
        on_stdout: Optional[OutputCallback] = None,
        on_stderr: Optional[OutputCallback] = None,
    ) -> CommandResult:
        """Follows the output (from its start) until the command ends; returns its result."""
        for _, event, data in self._sandbox._client.sse(self._path() + "/stream", {}):
            payload = json.loads(data)
            if event == "stdout" and on_stdout is not None:
                on_stdout(payload["data"])
            elif event == "stderr" and on_stderr is not None:
                on_stderr(payload["data"])
            elif event == "end":
                return CommandResult.from_dict(payload["command"])
        # The stream closed without an end (the server went away): ask for the state.
        return CommandResult.from_dict(
            self._sandbox._client.request("GET", self._path(), params={"wait": True}, timeout=None)
        )

    def kill(self) -> CommandResult:
        """Kills the command (its whole process group)."""
        return CommandResult.from_dict(self._sandbox._client.request("DELETE", self._path()))

    def result(self) -> CommandResult:
        """Its state now (output so far)."""
        return CommandResult.from_dict(self._sandbox._client.request("GET", self._path()))


class Commands:
    """``sandbox.commands``."""

    def __init__(self, sandbox: "Sandbox") -> None:
        self._sandbox = sandbox

    def run(
        self,
        cmd: Union[str, List[str]],
        *,
        background: bool = False,
        envs: Optional[Mapping[str, str]] = None,
        user: Optional[str] = None,
        cwd: Optional[str] = None,
        timeout: Optional[float] = 60,
        on_stdout: Optional[OutputCallback] = None,
        on_stderr: Optional[OutputCallback] = None,
    ) -> Any:
        """Runs ``cmd`` (a string for ``/bin/sh -c``, or an argv list) as the template's user
        (or ``user``) in the template's workdir (or ``cwd``), with the template's env, the
        sandbox's ``envs`` and these ``envs``. Waits for its end and returns a
        :class:`CommandResult` (whatever the exit code; :meth:`CommandResult` has it), calling
        ``on_stdout``/``on_stderr`` with output as it comes; with ``background=True`` returns a
        :class:`CommandHandle` at once. ``timeout`` seconds (``None`` or 0: no limit) kills it."""
        body: Dict[str, Any] = {
            "envs": dict(envs or {}),
            "background": True,
            "timeout": 0 if not timeout else max(1, int(round(timeout))),
        }
        if isinstance(cmd, str):
            body["cmd"] = cmd
        else:
            body["argv"] = list(cmd)
        if user is not None:
            body["user"] = user
        if cwd is not None:
            body["cwd"] = cwd
        started = self._sandbox._client.request(
            "POST", f"/v1/sandboxes/{self._sandbox.sandbox_id}/commands", json_body=body
        )
        handle = CommandHandle(self._sandbox, int(started["command_id"]), started.get("pid"))
        if background:
            return handle
        return handle.wait(on_stdout=on_stdout, on_stderr=on_stderr)

    def list(self) -> List[CommandResult]:
        """The sandbox's commands (running ones and the last 32 ended)."""
        return [
            CommandResult.from_dict(c)
            for c in self._sandbox._client.request(
                "GET", f"/v1/sandboxes/{self._sandbox.sandbox_id}/commands"
            )
        ]


class Files:
    """``sandbox.files``: bytes in and out of the sandbox, as its user."""

    def __init__(self, sandbox: "Sandbox") -> None:
        self._sandbox = sandbox

    def _path(self) -> str:
        return f"/v1/sandboxes/{self._sandbox.sandbox_id}/files"

    def write(self, path: str, data: Union[str, bytes], *, user: Optional[str] = None) -> int:
        """Writes ``data`` (text is UTF-8) to ``path``, creating parent directories; returns
        the file's size."""
        content = data.encode() if isinstance(data, str) else bytes(data)
        response = self._sandbox._client.request_bytes(
            "PUT", self._path(), params={"path": path, "user": user}, content=content
        )
        return int(response.json()["size"])

    def read(self, path: str, *, format: str = "text", user: Optional[str] = None) -> Any:
        """The file's content: text (``format="text"``, UTF-8) or ``bytes``."""
        response = self._sandbox._client.request_bytes(
            "GET", self._path(), params={"path": path, "user": user}
        )
        if format == "bytes":
            return response.content
        return response.content.decode("utf-8", errors="replace")

    def list(self, path: str, *, user: Optional[str] = None) -> List[EntryInfo]:
        """The entries of directory ``path``, sorted by name."""
        listing = self._sandbox._client.request(
            "GET", self._path() + "/list", params={"path": path, "user": user}
        )
        return [EntryInfo(**entry) for entry in listing["entries"]]


class Sandbox:
    """A running sandbox. Create one with :meth:`Sandbox.create`; use it as a context manager
    to kill it on exit."""

    def __init__(self, info: SandboxInfo, client: Client) -> None:
        self._client = client
        self.info = info
        self.sandbox_id = info.sandbox_id
        self.commands = Commands(self)
        self.files = Files(self)

    def __repr__(self) -> str:
        return f"Sandbox(sandbox_id={self.sandbox_id!r}, template={self.info.template!r})"

    @classmethod
    def create(
        cls,
        template: Optional[str] = None,
        *,
        envs: Optional[Mapping[str, str]] = None,
        timeout: Optional[int] = None,
        api_url: Optional[str] = None,
        api_key: Optional[str] = None,
        request_timeout: float = 900.0,
    ) -> "Sandbox":
        """Starts a sandbox from ``template`` (a ref; ``base`` when ``None``: your own
        ``base`` template or the builtin one, built on first use). ``envs`` apply to its
        commands; ``timeout`` seconds until it is killed (server default 300).
        ``request_timeout`` bounds the call (the first ``base`` sandbox may build it)."""
        client = Client(api_url, api_key)
        body: Dict[str, Any] = {"envs": dict(envs or {})}
        if template is not None:
            body["template"] = template
        if timeout is not None:
            body["timeout"] = int(timeout)
        info = client.request("POST", "/v1/sandboxes", json_body=body, timeout=request_timeout)
        return cls(SandboxInfo.from_dict(info), client)

    @classmethod
    def connect(
        cls, sandbox_id: str, *, api_url: Optional[str] = None, api_key: Optional[str] = None
    ) -> "Sandbox":
        """The running sandbox ``sandbox_id``."""
        client = Client(api_url, api_key)
        return cls(SandboxInfo.from_dict(client.request("GET", f"/v1/sandboxes/{sandbox_id}")), client)

    @staticmethod
    def list(
        *, state: Optional[str] = None, api_url: Optional[str] = None, api_key: Optional[str] = None
    ) -> List[SandboxInfo]:
        """Your sandboxes, newest first (``state``: ``running`` or ``ended``)."""
        client = Client(api_url, api_key)
        answer = client.request("GET", "/v1/sandboxes", params={"state": state})
        return [SandboxInfo.from_dict(s) for s in answer["sandboxes"]]

    def get_info(self) -> SandboxInfo:
        """Its state now."""
        self.info = SandboxInfo.from_dict(self._client.request("GET", f"/v1/sandboxes/{self.sandbox_id}"))
        return self.info

    def is_running(self) -> bool:
        """Whether it still runs."""
        return self.get_info().state == "running"

    def set_timeout(self, timeout: int) -> SandboxInfo:
        """Kills it ``timeout`` seconds from now instead."""
        self.info = SandboxInfo.from_dict(
            self._client.request(
                "POST", f"/v1/sandboxes/{self.sandbox_id}/timeout", json_body={"timeout": int(timeout)}
            )
        )
        return self.info

    def kill(self) -> SandboxInfo:
        """Kills it (its VM ends at once)."""
        self.info = SandboxInfo.from_dict(self._client.request("DELETE", f"/v1/sandboxes/{self.sandbox_id}"))
        return self.info

    def __enter__(self) -> "Sandbox":
        return self

    def __exit__(self, *exc: Any) -> None:
        try:
            self.kill()
        except NullspaceError:
            pass
