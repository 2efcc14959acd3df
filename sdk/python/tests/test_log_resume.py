"""Following a build's log across a dropped stream and a server restart.

- The retry policy (`Backoff`) on a fake clock, and `logs(follow=True)` against a stand-in of the
  log endpoints that cuts the stream off and goes down for a moment: no server, no devenv.
- `logs(follow=True)` while a real `nullspace serve` is killed with SIGKILL mid-build and started
  again on the same address and data dir (needs the devenv: the build runs through BuildKit).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Dict, List, Optional, Tuple
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from nullspace import ApiError, Build, LogEntry, NotFoundError, Template, TemplateBuild
from nullspace._client import Backoff, Client

from conftest import ALICE_KEY, Server, _binary

# ----- the retry policy ------------------------------------------------------------------


class FakeTime:
    """A clock that only moves when the code under test sleeps."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: List[float] = []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    def clock(self) -> float:
        return self.now


def fake_backoff(fake: FakeTime, jitter: float, budget: float = 30.0) -> Backoff:
    return Backoff(
        "http://test",
        budget,
        initial=0.25,
        maximum=4.0,
        sleep=fake.sleep,
        clock=fake.clock,
        jitter=lambda: jitter,
    )


def test_backoff_is_exponential_with_jitter_and_bounded_in_time() -> None:
    refused = httpx.ConnectError("[Errno 111] Connection refused")
    for jitter in (0.0, 0.5, 1.0):
        fake = FakeTime()
        backoff = fake_backoff(fake, jitter)
        with pytest.raises(ApiError) as raised:
            while True:
                backoff.retry(refused)
        assert raised.value.code == "connection_error"
        assert "still failing after 30s of retries" in raised.value.message
        assert "Connection refused" in raised.value.message
        # Ceilings 0.25, 0.5, 1, 2, 4, 4, ...; each delay is between half and all of its ceiling.
        ceilings = [min(4.0, 0.25 * 2**n) for n in range(len(fake.sleeps))]
        for delay, ceiling in zip(fake.sleeps[:-1], ceilings):
            assert delay == pytest.approx(ceiling * (0.5 + 0.5 * jitter))
        assert fake.now == pytest.approx(30.0)  # the last sleep is cut to the budget
        assert len(fake.sleeps) >= 8  # not "5 quick attempts"


def test_backoff_reset_starts_a_new_run() -> None:
    fake = FakeTime()
    backoff = fake_backoff(fake, 1.0, budget=10.0)
    refused = httpx.ConnectError("refused")
    for _ in range(4):
        backoff.retry(refused)
    assert fake.sleeps == [0.25, 0.5, 1.0, 2.0]
    backoff.reset()
    fake.now += 100.0  # a long time of progress later
    backoff.retry(refused)
    assert fake.sleeps[-1] == 0.25


def test_backoff_raises_other_errors_at_once() -> None:
    fake = FakeTime()
    backoff = fake_backoff(fake, 1.0)
    missing = NotFoundError("no such build", code="build_not_found", status_code=404)
    with pytest.raises(NotFoundError):
        backoff.retry(missing)
    with pytest.raises(ApiError) as raised:
        backoff.retry(httpx.UnsupportedProtocol("ftp://"))
    assert raised.value.code == "connection_error"
    assert fake.sleeps == []
    unavailable = ApiError("bad gateway", code="bad_gateway", status_code=502)
    backoff.retry(unavailable)  # a proxy in front of a restarting server: retried
    assert len(fake.sleeps) == 1


# ----- logs(follow=True) against a stand-in server -----------------------------------------

TOTAL = 8  # entries in the stand-in's log; the last one ends the build
CUT = 3  # entries of the first stream before it is cut off


class StandIn:
    """The log endpoints of build `tb_standin`. The first stream sends entries 0..CUT-1, then
    the server goes down (its listener closed) and the stream is cut off mid-body; `restart()`
    brings it back on the same port, serving the rest of the log."""

    def __init__(self) -> None:
        self.log_requests: List[Tuple[int, Optional[str]]] = []  # (offset, Last-Event-ID)
        self.went_down = threading.Event()
        self.port = 0
        self.httpd = self._start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _start(self) -> ThreadingHTTPServer:
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                url = urlsplit(self.path)
                offset = int(parse_qs(url.query).get("offset", ["0"])[0])
                if url.path.endswith("/logs"):
                    stand_in.stream(self, offset)
                else:
                    status = "error" if offset >= TOTAL else "building"
                    build = {"build_id": "tb_standin", "status": status}
                    body = json.dumps({"build": build, "entries": [], "next_offset": offset}).encode()
                    self.send_response(200)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)

        httpd = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        httpd.daemon_threads = True
        self.port = httpd.server_address[1]
        threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return httpd

    def stream(self, handler: BaseHTTPRequestHandler, offset: int) -> None:
        self.log_requests.append((offset, handler.headers.get("Last-Event-ID")))
        first = len(self.log_requests) == 1
        handler.send_response(200)
        handler.send_header("content-type", "text/event-stream")
        handler.send_header("transfer-encoding", "chunked")
        handler.end_headers()
        for n in range(offset, CUT if first else TOTAL):
            kind = "end" if n == TOTAL - 1 else "message"
            entry = {"build_id": "tb_standin", "offset": n, "kind": kind, "message": f"entry {n}"}
            event = f"id: {n}\nevent: log\ndata: {json.dumps(entry)}\n\n".encode()
            handler.wfile.write(b"%x\r\n%s\r\n" % (len(event), event))
        handler.wfile.flush()
        if first:
            # Down before the client can reconnect; the unfinished chunked body then closes.
            self.httpd.shutdown()
            self.httpd.server_close()
            self.went_down.set()
            handler.close_connection = True
            return
        handler.wfile.write(b"0\r\n\r\n")

    def restart(self) -> None:
        self.httpd = self._start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def test_follow_reconnects_with_offset_and_last_event_id_through_refused_connections() -> None:
    stand_in = StandIn()
    try:
        handle = TemplateBuild(
            Build.from_dict({"build_id": "tb_standin", "status": "building"}), Client(stand_in.url, "key")
        )
        followed: List[LogEntry] = []
        failures: List[BaseException] = []

        def follow() -> None:
            try:
                followed.extend(handle.logs(follow=True))
            except BaseException as error:  # reported by the assertions below
                failures.append(error)

        thread = threading.Thread(target=follow, daemon=True)
        thread.start()
        assert stand_in.went_down.wait(10)
        with pytest.raises(httpx.ConnectError):
            httpx.get(stand_in.url + "/v1/templates/builds/tb_standin", timeout=5)
        time.sleep(1.5)  # the follower meets refused connections meanwhile
        stand_in.restart()
        thread.join(30)
        assert not thread.is_alive(), "the follower did not end"
        assert not failures, failures
        assert [e.offset for e in followed] == list(range(TOTAL))
        assert followed[-1].kind == "end"
        # One cut-off stream and one resumed stream; refused attempts never reached the server.
        assert stand_in.log_requests == [(0, None), (CUT, str(CUT - 1))]
    finally:
        stand_in.stop()


# ----- a real server killed mid-build ------------------------------------------------------

RESTART_MESSAGE = "the server stopped while this build was running"
# Longer than the SDK used to retry (five attempts over about 11 s), well within its budget.
DOWNTIME = 12.0


def serve(env: Dict[str, str], data_dir: Path, listen: str) -> Server:
    """Starts `nullspace serve` like conftest's `start_server`, on a given address and in a
    session of its own, so that killing its process group takes its children (the BuildKit
    client) down with it, as a crash of the machine or container would."""
    process = subprocess.Popen(
        [str(_binary()), "serve", "--listen", listen, "--workers", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        start_new_session=True,
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

    def drain() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            output.append(line)

    threading.Thread(target=drain, daemon=True).start()
    return Server(process, url, data_dir, output)


def crash(server: Server) -> None:
    """SIGKILL to the server's process group."""
    if server.process.poll() is None:
        os.killpg(server.process.pid, signal.SIGKILL)
        server.process.wait()


def test_follow_survives_a_server_restart(devenv: Dict[str, str], tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    env = dict(devenv)
    env.update(
        {
            "NULLSPACE_DATA_DIR": str(data_dir),
            "NULLSPACE_API_KEYS": f"{ALICE_KEY}:alice",
            "NULLSPACE_LOG": "info",
        }
    )
    env.pop("NULLSPACE_API_URL", None)
    first = serve(env, data_dir, "127.0.0.1:0")
    second: Optional[Server] = None
    try:
        # A fresh RUN (no cache hit) that prints a line every 0.3 s for 6 s.
        dockerfile = (
            "FROM debian:bookworm\n"
            f"RUN echo run {uuid.uuid4().hex}; for i in $(seq 1 20); do echo line $i; sleep 0.3; done\n"
        )
        handle = Template.build_in_background(
            Template().from_dockerfile_content(dockerfile),
            f"restart-{uuid.uuid4().hex[:8]}",
            api_url=first.url,
            api_key=ALICE_KEY,
        )
        follower = TemplateBuild.connect(handle.build_id, api_url=first.url, api_key=ALICE_KEY)
        followed: List[LogEntry] = []
        failures: List[BaseException] = []
        running = threading.Event()

        def follow() -> None:
            try:
                for entry in follower.logs(follow=True):
                    followed.append(entry)
                    if entry.message.rstrip().endswith("line 3"):
                        running.set()
            except BaseException as error:  # reported by the assertions below
                failures.append(error)

        thread = threading.Thread(target=follow, daemon=True)
        thread.start()
        assert running.wait(300), f"no RUN output seen: {[e.message for e in followed]} {failures}"
        seen_before_crash = len(followed)

        crash(first)
        with pytest.raises(httpx.ConnectError):
            httpx.get(first.url + "/v1/templates/builds/" + handle.build_id, timeout=5)
        time.sleep(DOWNTIME)  # the follower meets refused connections meanwhile
        second = serve(env, data_dir, urlsplit(first.url).netloc)
        assert second.url == first.url

        thread.join(120)
        assert not thread.is_alive(), "the follower did not end"
        assert not failures, failures
        offsets = [e.offset for e in followed]
        assert offsets == list(range(len(followed))), offsets
        assert len(followed) > seen_before_crash
        # The restarted server's recovery fails the interrupted build: an error entry, then
        # the terminal one.
        error, end = followed[-2:]
        assert error.kind == "error" and RESTART_MESSAGE in error.message
        assert error.error_detail is not None and error.error_detail.phase == "build"
        assert end.kind == "end" and end.result == "error"
        final = follower.get_status(0)
        assert final.build.status == "error" and final.build.failure_phase == "build"
        assert final.entries == followed  # the follower got the whole durable log, once
    finally:
        crash(first)
        if second is not None:
            second.stop()
