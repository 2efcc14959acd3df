"""Sandboxes through the SDK against a real `nullspace serve` (QEMU, the guest kernel): the
builtin `base` template on first use, commands with streamed output, background commands,
files as bytes, env, owner isolation and kill."""

from __future__ import annotations

from typing import List

import pytest

from nullspace import CommandExitError, NotFoundError, Sandbox

from conftest import BOB_KEY, Server


def test_a_sandbox_from_the_builtin_base_runs_commands_and_moves_files(server: Server) -> None:
    with Sandbox.create(envs={"PROJECT": "nullspace"}, timeout=300) as sandbox:
        assert sandbox.sandbox_id.startswith("sb_")
        assert sandbox.info.template == "base"
        assert sandbox.info.started_from == "snapshot"

        result = sandbox.commands.run("cat /etc/debian_version; echo $PROJECT; id -u")
        assert result.exit_code == 0, result
        release, project, uid = result.stdout.split()
        assert release.startswith("12") and project == "nullspace" and uid == "0"

        lines: List[str] = []
        streamed = sandbox.commands.run(
            "for i in 1 2 3; do echo line-$i; sleep 0.1; done; echo done >&2",
            on_stdout=lines.append,
            envs={"PROJECT": "override"},
        )
        assert "".join(lines) == "line-1\nline-2\nline-3\n"
        assert streamed.stderr == "done\n"

        failed = sandbox.commands.run(["sh", "-c", "exit 7"], user="nobody", cwd="/tmp")
        assert (failed.status, failed.exit_code) == ("exited", 7)
        with pytest.raises(CommandExitError):
            failed.check()

        handle = sandbox.commands.run("sleep 300", background=True)
        assert handle.pid is not None
        assert handle.kill().status == "killed"
        assert sandbox.commands.run("sleep 30", timeout=1).status == "timed_out"

        payload = bytes(range(256)) * 1000
        assert sandbox.files.write("/root/data/payload.bin", payload) == len(payload)
        assert sandbox.files.read("/root/data/payload.bin", format="bytes") == payload
        sandbox.files.write("/tmp/owned", "text", user="nobody")
        names = {entry.name: entry for entry in sandbox.files.list("/tmp")}
        assert names["owned"].type == "file" and names["owned"].uid == 65534
        assert sandbox.files.read("/tmp/owned") == "text"
        with pytest.raises(NotFoundError):
            sandbox.files.read("/no/such/file")

        # Another API key sees nothing of it.
        with pytest.raises(NotFoundError):
            Sandbox.connect(sandbox.sandbox_id, api_key=BOB_KEY)
        assert sandbox.sandbox_id not in [s.sandbox_id for s in Sandbox.list(api_key=BOB_KEY)]
        assert sandbox.is_running()
        assert sandbox.set_timeout(600).end_at is not None
    info = sandbox.get_info()
    assert (info.state, info.end_reason) == ("ended", "killed")
