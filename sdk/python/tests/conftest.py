"""Starts a real `nullspace serve` for the SDK tests.

The binary is `$NULLSPACE_BIN`, else `${CARGO_TARGET_DIR:-<repo>/target}/debug/nullspace`
(built with `cargo build -p nullspace-cli` when missing). The local test registries come from
`scripts/devenv env` when the environment does not already name them.
"""

from __future__ import annotations

import os
import shlex
import shutil
import socket
import subprocess
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Optional

import pytest

REPO = Path(__file__).resolve().parents[3]
ALICE_KEY = "alice-key-0000000001"
BOB_KEY = "bob-key-00000000002"


def _devenv() -> Dict[str, str]:
    if os.environ.get("NULLSPACE_REGISTRY"):
        return {}
    try:
        out = subprocess.run(
            [str(REPO / "scripts" / "devenv"), "env"], capture_output=True, text=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return {}
    env = {}
    for line in out.splitlines():
        if line.startswith("export ") and "=" in line:
            key, _, value = line[len("export "):].partition("=")
            env[key] = shlex.split(value)[0] if value else ""
    return env


def _binary() -> Path:
    if os.environ.get("NULLSPACE_BIN"):
        return Path(os.environ["NULLSPACE_BIN"])
    target = Path(os.environ.get("CARGO_TARGET_DIR") or REPO / "target")
    binary = target / "debug" / "nullspace"
    if not binary.exists():
        subprocess.run(["cargo", "build", "-p", "nullspace-cli"], cwd=REPO, check=True)
    return binary


@dataclass
class Server:
    """A running `nullspace serve`."""

    process: subprocess.Popen
    url: str
    data_dir: Path
    output: List[str] = field(default_factory=list)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def kill(self) -> None:
        self.process.kill()
        self.process.wait()

    def log_text(self) -> str:
        return "".join(self.output)


def start_server(data_dir: Path, workers: int = 2, extra_env: Optional[Dict[str, str]] = None) -> Server:
    env = dict(os.environ)
    env.update(_devenv())
    env.update(
        {
            "NULLSPACE_DATA_DIR": str(data_dir),
            "NULLSPACE_API_KEYS": f"{ALICE_KEY}:alice,{BOB_KEY}:bob",
            "NULLSPACE_LOG": "info",
        }
    )
    env.pop("NULLSPACE_API_URL", None)
    env.update(extra_env or {})
    process = subprocess.Popen(
        [str(_binary()), "serve", "--listen", "127.0.0.1:0", "--workers", str(workers)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    assert process.stdout is not None
    output: List[str] = []
    url = None
    for line in process.stdout:
        output.append(line)
        if "listening on " in line:
            url = line.strip().rsplit(" ", 1)[-1]
            break
    if url is None:
        process.wait()
        raise RuntimeError("nullspace serve did not start:\n" + "".join(output))
    server = Server(process, url, data_dir, output)

    def drain() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            output.append(line)

    threading.Thread(target=drain, daemon=True).start()
    return server


@pytest.fixture(scope="session")
def devenv() -> Dict[str, str]:
    env = dict(os.environ)
    env.update(_devenv())
    if not env.get("NULLSPACE_REGISTRY"):
        pytest.fail("the local test registries are not configured (run the tests with scripts/test)")
    return env


@pytest.fixture(scope="session")
def blackhole() -> Iterator[str]:
    """A TCP port that accepts connections and never answers: builds pulling from it hang.

    The test server's operator allowlists it (it is on loopback, which tenants may not reach).
    """
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    held: List[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
                held.append(conn)
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"127.0.0.1:{listener.getsockname()[1]}"
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    listener.close()


def allowing(devenv: Dict[str, str], *hosts: str) -> Dict[str, str]:
    """Operator settings that also let the server reach `hosts` (test peers on loopback)."""
    def joined(name: str) -> str:
        return ",".join([h for h in devenv.get(name, "").split(",") if h] + list(hosts))

    return {
        "NULLSPACE_SERVER_ALLOWED_HOSTS": joined("NULLSPACE_SERVER_ALLOWED_HOSTS"),
        "NULLSPACE_INSECURE_REGISTRIES": joined("NULLSPACE_INSECURE_REGISTRIES"),
    }


@pytest.fixture(scope="session")
def server(devenv: Dict[str, str], blackhole: str) -> Iterator[Server]:
    data_dir = Path(tempfile.mkdtemp(prefix="nullspace-sdk-test-"))
    env = allowing(devenv, blackhole)
    # The builtin `base` template comes from the fixtures' Debian bookworm image.
    env["NULLSPACE_BASE_IMAGE"] = devenv["NULLSPACE_FIXTURE_LOCALAPT_REF"]
    srv = start_server(data_dir, extra_env=env)
    os.environ["NULLSPACE_API_URL"] = srv.url
    os.environ["NULLSPACE_API_KEY"] = ALICE_KEY
    yield srv
    srv.stop()
    shutil.rmtree(data_dir, ignore_errors=True)
