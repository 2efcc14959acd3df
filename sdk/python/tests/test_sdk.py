"""The SDK against a real `nullspace serve`: builds, logs, cancel, retry, promote, history,
validate/plan, errors, isolation between API keys, and secrets that never land anywhere."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import threading
import time
import uuid
from pathlib import Path
from typing import Dict, Iterator, List, Optional

import httpx
import pytest

from nullspace import (
    AuthenticationError,
    BuildError,
    ConflictError,
    FileUploadError,
    InvalidRequestError,
    LogEntry,
    NotFoundError,
    Readiness,
    Template,
    TemplateBuild,
    default_build_logger,
    wait_for_file,
    wait_for_port,
    wait_for_url,
)

from conftest import ALICE_KEY, BOB_KEY, Server

SEEN_RESPONSES: List[str] = []
WRONG_PASSWORD = "definitely-wrong-pw-7781"


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def registry(devenv: Dict[str, str]) -> str:
    return devenv["NULLSPACE_REGISTRY"]


def auth_registry(devenv: Dict[str, str]) -> str:
    return devenv["NULLSPACE_AUTH_REGISTRY"]


def password(devenv: Dict[str, str]) -> str:
    return devenv["NULLSPACE_AUTH_PASSWORD"]


def record(obj: object) -> None:
    SEEN_RESPONSES.append(json.dumps(obj, default=lambda o: getattr(o, "__dict__", str(o))))


def wait_for_status(handle: TemplateBuild, wanted: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if handle.get_status(0).build.status == wanted:
            return
        time.sleep(0.1)
    raise AssertionError(f"{handle.build_id} never reached {wanted}")


# ----- builds ----------------------------------------------------------------------------


def test_blocking_build_from_debian(server: Server) -> None:
    entries: List[LogEntry] = []
    name = unique("deb")
    build = Template.build(Template().from_debian_image(), name, on_log_entry=entries.append)
    record(build.raw)
    assert build.status == "ready"
    assert build.name == name
    assert build.canonical_ref == f"alice/{name}:default"
    assert build.build_id.startswith("tb_") and build.template_id.startswith("tmpl_")
    kinds = [e.kind for e in entries]
    assert kinds[0] == "message" and "start" in kinds and kinds[-1] == "end"
    assert entries[-1].result == "ready"
    assert [e.offset for e in entries] == list(range(len(entries)))
    assert any(e.kind == "cache" and e.cache_kind == "final_artifact" for e in entries)
    assert len(entries) < 200, "byte progress must be throttled"
    defaults = build.runtime_defaults or {}
    assert "PATH" in defaults["default_env_keys"]
    assert "/usr/local/sbin" not in json.dumps(build.raw), "env values must not leave the server"
    assert build.raw["build_config"]["internet_access"] is True
    assert build.raw["source_kind"] == "oci_import"
    details = Template.get(name)
    assert details["canonical_ref"] == f"alice/{name}:default"
    assert details["build_id"] == build.build_id
    # The same request again reuses the finished rootfs and the VM snapshot (no boot).
    again = Template.build(Template().from_debian_image(), name)
    assert again.cache_summary["final_artifact_hits"] == 2, again.cache_summary
    assert again.cache_summary["final_artifact_misses"] == 0


def test_class_style_from_image_and_logger(server: Server, devenv: Dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    name = unique("img")
    builder = Template.from_image(f"{registry(devenv)}/library/debian:bookworm")
    build = Template.build(builder, name, tags=["v1", "stable"], on_log_entry=default_build_logger())
    assert build.status == "ready"
    assert build.tags == ["v1", "stable"]
    assert build.canonical_ref == f"alice/{name}:v1"
    assert "[end]" in capsys.readouterr().err
    assert Template.get(f"{name}:stable")["build_id"] == build.build_id
    assert Template.get(f"alice/{name}:v1")["build_id"] == build.build_id
    assert Template.get(f"{name}:{build.build_id}")["build_id"] == build.build_id
    masked = Template.get(f"{name}:v1", fields=["id", "canonical_ref"])
    assert set(masked) == {"id", "canonical_ref"}


def test_private_registry_with_and_without_auth(server: Server, devenv: Dict[str, str]) -> None:
    ref = f"{auth_registry(devenv)}/library/debian:bookworm"
    name = unique("private")
    builder = Template().from_image(ref, username=devenv["NULLSPACE_AUTH_USER"], password=password(devenv))
    assert password(devenv) not in repr(builder)
    build = Template.build(builder, name, skip_cache=True)
    record(build.raw)
    assert build.status == "ready"
    assert build.raw["base_image_auth_kind"] == "basic"
    assert build.raw["cache_summary"]["final_artifact_bypasses"] == 2, "rootfs and snapshot"

    with pytest.raises(BuildError) as failure:
        Template.build(Template.from_image(ref), unique("noauth"))
    assert failure.value.error_detail is not None
    assert failure.value.error_detail.phase == "base_image_import"
    assert failure.value.build_id

    wrong = Template().from_image(ref).set_base_image_auth(username="nullspace", password=WRONG_PASSWORD)
    with pytest.raises(BuildError) as failure:
        Template.build(wrong, unique("wrongauth"))
    assert WRONG_PASSWORD not in str(failure.value)
    record(TemplateBuild.connect(failure.value.build_id or "").get_status(0).build.raw)


def test_background_build_polling_and_replay(server: Server) -> None:
    name = unique("bg")
    handle = Template.build_in_background(Template.from_debian_image("bookworm"), name=name, tags=["a"])
    assert handle.build.status in ("waiting", "building", "ready")
    polled: List[LogEntry] = []
    offset = 0
    while True:
        snapshot = handle.get_status(offset)
        polled.extend(snapshot.entries)
        assert snapshot.next_offset == offset + len(snapshot.entries)
        offset = snapshot.next_offset
        if snapshot.build.is_terminal and not snapshot.entries:
            break
        time.sleep(0.05)
    assert handle.get_status(0).build.status == "ready"
    assert [e.offset for e in polled] == list(range(len(polled)))
    replay = list(handle.logs(offset=0))
    assert replay == polled
    tail = list(handle.logs(offset=3))
    assert tail == polled[3:]
    assert list(handle.logs(offset=len(polled))) == []
    again = TemplateBuild.connect(handle.build_id)
    final = again.wait_until_terminal()
    assert final.build.status == "ready"
    followed = list(again.logs(offset=len(polled) - 2, follow=True))
    assert followed == polled[-2:]


def test_cancel_running_and_waiting(server: Server, blackhole: str) -> None:
    hanging = Template.from_image(f"{blackhole}/never/answers:1")
    first = Template.build_in_background(hanging, unique("hang"))
    second = Template.build_in_background(hanging, unique("hang"))
    wait_for_status(first, "building")
    wait_for_status(second, "building")
    third = Template.build_in_background(Template.from_debian_image(), unique("queued"))
    time.sleep(0.3)
    assert third.get_status(0).build.status == "waiting", "two workers are busy"
    cancelled = third.cancel(reason="not needed")
    assert cancelled.status == "cancelled"
    assert cancelled.raw["started_at"] is None

    build = first.cancel(reason="test cancel")
    assert build.status == "cancelled"
    entries = first.get_status(0).entries
    assert [e.kind for e in entries][-2:] == ["cancelled", "end"]
    assert "test cancel" in entries[-2].message
    assert first.cancel(reason="again").status == "cancelled", "idempotent"
    assert len(first.get_status(0).entries) == len(entries), "no second cancelled entry"
    staging = server.data_dir / "staging" / first.build_id
    deadline = time.monotonic() + 10
    while staging.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not staging.exists()
    assert second.cancel("x").status == "cancelled"
    with pytest.raises(BuildError) as failure:
        Template.build(Template.from_image(f"{blackhole}/x/y:2"), unique("raced"), on_log_entry=lambda e: (
            e.kind == "start" and threading.Thread(target=lambda: TemplateBuild.connect(e.build_id).cancel("mid-build")).start()))
    assert failure.value.code == "cancelled"
    assert failure.value.error_detail is not None and failure.value.error_detail.phase == "cancelled"
    ready = Template.build(Template.from_debian_image(), unique("after-cancel"))
    assert ready.status == "ready", "workers are free again"


def test_cancel_of_finished_build_is_idempotent(server: Server) -> None:
    build = Template.build(Template.from_debian_image(), unique("done"))
    handle = TemplateBuild.connect(build.build_id)
    before = handle.get_status(0).entries
    assert handle.cancel("late").status == "ready"
    assert handle.get_status(0).entries == before


def test_retry_requires_fresh_credentials(server: Server, devenv: Dict[str, str]) -> None:
    ref = f"{auth_registry(devenv)}/library/debian:bookworm"
    user, pw = devenv["NULLSPACE_AUTH_USER"], password(devenv)
    handle = Template.build_in_background(Template.from_image(ref, username=user, password=pw), unique("retry"))
    assert handle.wait_until_terminal().build.status == "ready"
    with pytest.raises(InvalidRequestError) as failure:
        handle.retry()
    assert "base_image_auth" in failure.value.message
    assert failure.value.code == "invalid_request"
    again = handle.retry(tags=["second"], base_image_auth={"username": user, "password": pw})
    final = again.wait_until_terminal()
    record(final.build.raw)
    assert final.build.status == "ready"
    assert final.build.tags == ["second"]
    assert final.build.raw["retry_of"] == handle.build_id
    assert final.entries[0].kind == "retry"

    plain = Template.build_in_background(Template.from_debian_image(), unique("retry-plain"))
    plain.wait_until_terminal()
    assert plain.retry().wait_until_terminal().build.status == "ready"


def test_promote(server: Server, blackhole: str) -> None:
    name = unique("promo")
    first = Template.build(Template.from_debian_image(), name, tags=["v1"])
    second = Template.build(Template.from_debian_image(), name, tags=["v2"])
    assert Template.get(f"{name}:v1")["build_id"] == first.build_id
    promoted = TemplateBuild.connect(second.build_id).promote("v1")
    assert "v1" in promoted.tags
    assert Template.get(f"{name}:v1")["build_id"] == second.build_id
    assert Template.get(f"{name}:v2")["build_id"] == second.build_id
    failed = Template.build_in_background(Template.from_image(f"{blackhole}/x/y:1"), name)
    failed.cancel("stop")
    with pytest.raises(ConflictError) as conflict:
        failed.promote("v3")
    assert conflict.value.code == "conflict"
    with pytest.raises(InvalidRequestError):
        TemplateBuild.connect(second.build_id).promote("tb_nope")

    # The tags sub-resource: list, assign (a build of this template only), remove.
    auth = {"authorization": f"Bearer {ALICE_KEY}"}
    tags = httpx.get(f"{server.url}/v1/templates/{name}/tags", headers=auth).json()
    assert {t["tag"]: t["build_id"] for t in tags["tags"]} == {"v1": second.build_id, "v2": second.build_id}
    answer = httpx.post(
        f"{server.url}/v1/templates/{name}/tags",
        json={"tag": "old", "build_id": first.build_id},
        headers=auth,
    )
    assert answer.status_code == 200, answer.text
    assert Template.get(f"{name}:old")["build_id"] == first.build_id
    other = Template.build(Template.from_debian_image(), unique("other"))
    answer = httpx.post(
        f"{server.url}/v1/templates/{name}/tags",
        json={"tag": "x", "build_id": other.build_id},
        headers=auth,
    )
    assert answer.status_code == 404 and answer.json()["code"] == "template_build_not_found"
    answer = httpx.delete(f"{server.url}/v1/templates/{name}/tags/old", headers=auth)
    assert answer.status_code == 200 and "old" not in answer.json()["tags"], answer.text
    with pytest.raises(NotFoundError):
        Template.get(f"{name}:old")
    answer = httpx.delete(f"{server.url}/v1/templates/{name}/tags/old", headers=auth)
    assert answer.status_code == 404


def test_history_filters(server: Server, blackhole: str) -> None:
    name = unique("hist")
    ok = Template.build(Template.from_debian_image(), name)
    bad = Template.build_in_background(Template.from_image(f"{blackhole}/x/y:1"), name)
    bad.cancel("history")
    builds = Template.list_builds(name)
    assert [b.build_id for b in builds] == [bad.build_id, ok.build_id], "newest first"
    assert builds[1].raw["artifact_ids"] == [ok.build_id]
    assert [b.build_id for b in Template.list_builds(name, status="cancelled")] == [bad.build_id]
    assert [b.build_id for b in Template.list_builds(name, status="ready")] == [ok.build_id]
    assert len(Template.list_builds(name, backend="native")) == 2
    assert Template.list_builds(name, backend="buildkit") == []
    assert len(Template.list_builds(ok.template_id)) == 2
    assert len(Template.list_builds(name, limit=1)) == 1
    with pytest.raises(InvalidRequestError):
        Template.list_builds(name, status="bogus")
    with pytest.raises(NotFoundError) as missing:
        Template.list_builds(unique("nothing"))
    assert missing.value.code == "template_not_found"


def test_start_cmd_runs_to_readiness_and_the_template_is_a_snapshot(server: Server) -> None:
    name = unique("started")
    builder = Template().from_debian_image().set_start_cmd(
        "echo warming up; sleep 1; touch /run/ready; exec sleep infinity",
        readiness=wait_for_file("/run/ready"),
    )
    build = Template.build(builder, name)
    assert build.status == "ready", build.raw
    defaults = build.runtime_defaults or {}
    assert defaults["start_cmd"].startswith("echo warming up")
    assert defaults["readiness"]["kind"] == "file"
    entries = list(TemplateBuild.connect(build.build_id).logs())
    phases = {e.phase for e in entries}
    assert {"vm_create", "startup", "readiness", "snapshot"} <= phases, phases
    assert any(e.message == "[stdout] warming up" and e.phase == "startup" for e in entries), entries
    document = json.loads((server.data_dir / "templates" / build.build_id / "template.json").read_text())
    assert document["snapshot"]["start"]["state"] == "running", document["snapshot"]
    # A start command that cannot run fails the build in phase startup, naming the exit status.
    with pytest.raises(BuildError) as failed:
        Template.build(
            Template().from_debian_image().set_start_cmd("python3 -m http.server 8080", readiness=wait_for_port(8080)),
            unique("nopython"),
        )
    assert "status 127" in str(failed.value), failed.value
    # A ready_cmd is a command check; the template's start command stays the image's.
    checked = Template.build(Template().from_debian_image().set_ready_cmd("test -e /etc/os-release"), name)
    readiness = (checked.runtime_defaults or {})["readiness"]
    assert readiness["kind"] == "command" and readiness["command"] == "test -e /etc/os-release"
    with pytest.raises(InvalidRequestError) as failure:
        Template.build(
            Template().from_debian_image().set_start_cmd("x", readiness=Readiness("http", {"url": "http://example.com:80/"})),
            name,
        )
    assert "readiness.url" in failure.value.message and "host" in failure.value.message


def test_from_template(server: Server) -> None:
    parent_name = unique("parent")
    parent = Template.build(Template.from_debian_image(), parent_name)
    child = Template.build(Template.from_template(parent_name), unique("child"))
    assert child.status == "ready"
    assert child.raw["source_kind"] == "template_base"
    assert (child.runtime_defaults or {})["default_env_keys"] == (parent.runtime_defaults or {})["default_env_keys"]
    plan = Template.plan(Template.from_template(parent_name), "plan-child")
    assert plan.build_plan["base_template"] == f"alice/{parent_name}:{parent.build_id}"
    with pytest.raises(NotFoundError):
        Template.build_in_background(Template.from_template(unique("missing")), "orphan")
    # Steps on a template run on its image (through BuildKit); its defaults carry over.
    steps = Template.from_template(parent_name).run_cmd("echo on-top > /on-top").set_runtime_envs({"EXTRA": "1"})
    plan = Template.plan(steps, "plan-steps")
    assert plan.build_plan["dockerfile"].startswith("FROM nullspace-template-parent")
    layered = Template.build(steps, unique("layered"))
    assert layered.status == "ready", layered.raw
    assert layered.raw["build_backend"] == "buildkit"
    assert rootfs_file(server, layered.build_id, "/on-top") == b"on-top\n"
    keys = set((layered.runtime_defaults or {})["default_env_keys"])
    assert {"EXTRA", "PATH"} <= keys


def test_validate_and_plan(server: Server, devenv: Dict[str, str]) -> None:
    result = Template.validate(Template.from_debian_image(), "ok-name", cpu_count=2)
    assert result.valid and result.errors == []
    assert not any("cpu_count" in w for w in result.warnings), "cpu_count sizes the build VM"
    assert Template.plan(Template.from_debian_image(), "ok-name", cpu_count=2).build_plan["build_vm"]["cpu_count"] == 2
    steps = Template.from_debian_image().apt_install(["git"]).run_cmd("true")
    result = Template.validate(steps, "with-steps")
    assert result.valid, result.errors
    copying = Template.from_debian_image().copy(__file__, "/app/test.py")
    result = Template.validate(copying, "with-copy")
    assert result.valid, result.errors
    assert any("not uploaded yet" in w for w in result.warnings), result.warnings
    started = Template.from_debian_image().set_start_cmd("python -m http.server 8080", readiness=wait_for_port(8080))
    result = Template.validate(started, "start")
    assert result.valid, result.errors
    planned = Template.plan(started, "start").build_plan
    assert planned["build_vm"] == {
        "runs_when": "start_cmd_or_readiness",
        "cpu_count": 1,
        "memory_mb": 512,
        "disk_mb": 2048,
        "settle_ms_without_readiness": 2000,
    }, planned["build_vm"]
    assert planned["start_cmd"] == "python -m http.server 8080"
    assert planned["readiness"]["kind"] == "tcp" and planned["readiness"]["port"] == 8080

    plan = Template.plan(Template.from_ubuntu_image("22.04"), "planned", tags=["x"], disk_mb=2048)
    assert plan.build_plan["base_image"] == "docker.io/library/ubuntu:22.04"
    assert plan.build_plan["build_config"]["disk_mb"] == 2048
    assert plan.requires_base_image_auth is False
    auth = Template.from_image(f"{auth_registry(devenv)}/library/debian:bookworm", username="u", password="p")
    assert Template.plan(auth, "planned").requires_base_image_auth is True
    bun = Template.plan(Template.from_bun_image("1.2"), "bun")
    assert bun.build_plan["base_image"] == "docker.io/oven/bun:1.2"


def test_error_paths(server: Server) -> None:
    with pytest.raises(InvalidRequestError) as failure:
        Template.build(Template.from_debian_image(), "empty-tags", tags=[])
    assert failure.value.code == "invalid_request" and failure.value.message.startswith("tags")
    assert failure.value.request_id and failure.value.request_id.startswith("req_")
    assert failure.value.error_detail is not None and failure.value.error_detail.phase == "prepare"
    with pytest.raises(InvalidRequestError) as failure:
        Template.build(Template.from_template("x"), "backend", build_backend="buildkit")
    assert "build_backend" in failure.value.message
    with pytest.raises(InvalidRequestError) as failure:
        Template.build(Template.from_debian_image(), "acme/bad")
    assert "single-segment" in failure.value.message
    with pytest.raises(NotFoundError) as missing:
        Template.build(Template.from_template("x").set_runtime_envs({"A": "1"}), "envs")
    assert missing.value.code == "template_not_found"
    with pytest.raises(InvalidRequestError) as failure:
        Template.build(Template.from_debian_image(), "secrets", build_secrets={"token": "s3cret"})
    assert "build_secrets" in failure.value.message and "s3cret" not in failure.value.message
    with pytest.raises(ValueError):
        Template.from_bun_image("")
    with pytest.raises(ValueError):
        Template.from_debian_image().from_ubuntu_image("22.04")
    for bad in ["https://localhost:8080/", "http://localhost/", "http://localhost:80/?q=1",
                "http://user:pw@localhost:80/", "http://localhost:80/#frag", "http://example.com:80/"]:
        with pytest.raises(ValueError):
            wait_for_url(bad)
    assert wait_for_url("http://127.0.0.1:8080/health").to_api() == {"kind": "http", "url": "http://127.0.0.1:8080/health"}

    raw = httpx.post(f"{server.url}/v1/templates/builds", headers={"authorization": f"Bearer {ALICE_KEY}"},
                     json={"name": "x", "base_image": "debian:bookworm", "surprise": 1})
    assert raw.status_code == 400
    body = raw.json()
    assert body["code"] == "invalid_request" and "surprise" in body["error"] and body["request_id"].startswith("req_")
    raw = httpx.post(f"{server.url}/v1/templates/builds", headers={"authorization": f"Bearer {ALICE_KEY}"},
                     content=b"{not json")
    assert raw.status_code == 400 and raw.json()["code"] == "invalid_request"
    with pytest.raises(NotFoundError) as missing:
        TemplateBuild.connect("tb_doesnotexist")
    assert missing.value.code == "template_build_not_found"
    with pytest.raises(NotFoundError) as missing:
        Template.get("no-such-template")
    assert missing.value.code == "template_not_found"
    with pytest.raises(AuthenticationError):
        Template.get("x", api_key="wrong-key-123456")
    raw = httpx.get(f"{server.url}/v1/templates")
    assert raw.status_code == 401 and raw.json()["code"] == "unauthorized"
    served = httpx.get(f"{server.url}/openapi.json").json()
    assert "/v1/templates/builds" in served["paths"]


# ----- BuildKit: Dockerfile content, declarative steps, secrets ------------------------

SECRET_TOKEN = "tok-value-3b9f1c7e2a"


def test_dockerfile_content_build(server: Server) -> None:
    dockerfile = """FROM debian:bookworm
ENV GREETING=hello APP_HOME=/srv/app
RUN <<EOF
mkdir -p /srv/app
echo "$GREETING" > /srv/app/greeting
useradd --create-home app
EOF
WORKDIR /srv/app
USER app
CMD ["sleep", "infinity"]
"""
    name = unique("dockerfile")
    build = Template.build(Template().from_dockerfile_content(dockerfile), name)
    record(build.raw)
    assert build.status == "ready"
    assert build.raw["source_kind"] == "dockerfile"
    assert build.raw["build_backend"] == "buildkit"
    defaults = build.runtime_defaults or {}
    assert {"GREETING", "APP_HOME", "PATH"} <= set(defaults["default_env_keys"])
    assert defaults["default_user"] == "app"
    assert defaults["default_workdir"] == "/srv/app"
    assert "sleep" in (defaults["start_cmd"] or "")
    details = Template.get(name)
    assert details["runtime_defaults"]["default_workdir"] == "/srv/app"
    assert [b.build_id for b in Template.list_builds(name, backend="buildkit")] == [build.build_id]


def rootfs_file(server: Server, build_id: str, path: str) -> Optional[bytes]:
    """A file of a published template's rootfs, read with debugfs (None if absent)."""
    image = server.data_dir / "templates" / build_id / "rootfs.ext4"
    assert image.exists(), image
    out = subprocess.run(
        ["debugfs", "-R", f"cat {path}", str(image)], capture_output=True, check=True
    )
    if b"File not found" in out.stderr:
        return None
    return out.stdout


def context_blob_digests(server: Server) -> List[str]:
    root = server.data_dir / "context-blobs"
    return ["sha256:" + p.name for p in root.rglob("sha256/*") if p.is_file()]


def file_blob_entries(build_id: str) -> List[LogEntry]:
    return [e for e in TemplateBuild.connect(build_id).logs() if e.cache_kind == "file_blob"]


def test_from_dockerfile_path_uploads_its_folder(server: Server, tmp_path: Path) -> None:
    ctx = tmp_path / "ctx"
    (ctx / ".config").mkdir(parents=True)
    (ctx / "app.py").write_text("print('hello from the context')\n")
    (ctx / ".config" / "settings.toml").write_text("debug = false\n")
    (ctx / "secret.txt").write_text("context-secret-5d1f0b\n")
    (ctx / "a.log").write_text("noise\n")
    (ctx / "keep.log").write_text("kept\n")
    (ctx / ".dockerignore").write_text("secret.txt\n*.log\n!keep.log\n")
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "lib.sh").write_text("echo lib\n")
    (ctx / "Dockerfile").write_text(
        "FROM debian:bookworm AS stage\n"
        "RUN <<EOF\necho built-in-stage > /stage.txt\nEOF\n"
        "FROM debian:bookworm\n"
        "COPY --from=stage /stage.txt /stage.txt\n"
        "COPY --from=shared lib.sh /lib.sh\n"
        "COPY . /ctx/\n"
        "RUN cp /ctx/app.py /app-copy.py\n"
    )
    builder = Template().from_dockerfile(str(ctx / "Dockerfile"), build_contexts={"shared": str(shared)})
    report = Template.inspect_build_context(builder, "p")
    paths = [f["path"] for f in report["files"]]
    assert "app.py" in paths and ".config/settings.toml" in paths and "keep.log" in paths
    assert "secret.txt" in report["ignored"] and "a.log" in report["ignored"]
    assert "secret.txt" not in paths
    assert report["request"]["build_context"]["entries"]
    build = Template.build(builder, unique("dfctx"))
    record(build.raw)
    assert build.status == "ready", build.raw
    assert build.raw["context_digest"].startswith("sha256:")
    assert rootfs_file(server, build.build_id, "/app-copy.py") == b"print('hello from the context')\n"
    assert rootfs_file(server, build.build_id, "/ctx/.config/settings.toml") == b"debug = false\n"
    assert rootfs_file(server, build.build_id, "/ctx/keep.log") == b"kept\n"
    assert rootfs_file(server, build.build_id, "/ctx/secret.txt") is None
    assert rootfs_file(server, build.build_id, "/ctx/a.log") is None
    assert rootfs_file(server, build.build_id, "/stage.txt") == b"built-in-stage\n"
    assert rootfs_file(server, build.build_id, "/lib.sh") == b"echo lib\n"
    secret_digest = "sha256:" + hashlib.sha256(b"context-secret-5d1f0b\n").hexdigest()
    assert secret_digest not in context_blob_digests(server)


def test_copy_uploads_only_missing_blobs(server: Server, tmp_path: Path) -> None:
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "main.py").write_text(f"# {uuid.uuid4()}\nprint('main')\n")
    (tmp_path / "app" / ".env.example").write_text(f"A={uuid.uuid4()}\n")
    (tmp_path / "app" / "cache.pyc").write_bytes(b"\0compiled")
    (tmp_path / "notes.txt").write_text(f"notes {uuid.uuid4()}\n")
    (tmp_path / ".dockerignore").write_text("**/*.pyc\n")

    def builder(force: bool = False) -> Template:
        return (
            Template(file_context_path=str(tmp_path))
            .from_debian_image()
            .copy("app", "/srv/app")
            .copy(str(tmp_path / "notes.txt"), "/srv/notes.txt", force_upload=force)
            .run_cmd("ls -A /srv/app > /srv/listing")
        )

    report = Template.inspect_build_context(builder(), "c")
    assert sorted(f["path"] for f in report["files"]) == ["app/.env.example", "app/main.py", "notes.txt"]
    assert report["ignored"] == ["app/cache.pyc"]
    steps = report["request"]["steps"]
    assert steps[0] == {"type": "copy", "src": "app", "dst": "/srv/app"}
    assert steps[1]["src"] == "notes.txt"
    assert Template.validate(builder(), "c").valid
    plan = Template.plan(builder(), "c")
    assert 'COPY ["app","/srv/app"]' in plan.build_plan["dockerfile"]

    name = unique("copy")
    first = Template.build(builder(), name)
    assert first.status == "ready", first.raw
    assert first.cache_summary["file_blob_misses"] == 3
    assert first.cache_summary["file_blob_stores"] == 3
    listing = rootfs_file(server, first.build_id, "/srv/listing") or b""
    assert listing.split() == [b".env.example", b"main.py"]
    assert (rootfs_file(server, first.build_id, "/srv/notes.txt") or b"").startswith(b"notes ")

    # The uploaded context is not part of the artifact, and no scratch dir is left.
    artifact = server.data_dir / "templates" / first.build_id
    assert sorted(p.name for p in artifact.iterdir()) == ["rootfs.ext4", "snapshot", "template.json"]
    assert not list((server.data_dir / "staging").glob("*.scratch"))

    second = Template.build(builder(), name)
    assert second.cache_summary["file_blob_hits"] == 3
    assert second.cache_summary["file_blob_misses"] == 0

    forced = Template.build(builder(force=True), name)
    entries = file_blob_entries(forced.build_id)
    bypass = [e for e in entries if e.cache_status == "bypass"]
    assert [e.cache_reason for e in bypass] == ["force_upload"]
    assert "notes.txt" in (bypass[0].cache_subject or "")
    assert forced.cache_summary["file_blob_hits"] == 2

    # Bob cannot build from Alice's blobs by naming their digests.
    body = builder().to_request(unique("bob"))
    body["build_context"] = report["request"]["build_context"]
    answer = httpx.post(
        f"{server.url}/v1/templates/builds",
        json=body,
        headers={"authorization": f"Bearer {BOB_KEY}"},
    )
    assert answer.status_code == 422, answer.text
    assert answer.json()["code"] == "file_upload_error"
    assert "was not uploaded" in answer.json()["error"]

    # A body that does not hash to its digest is refused and not stored.
    digest = "sha256:" + hashlib.sha256(b"right").hexdigest()
    answer = httpx.put(
        f"{server.url}/v1/templates/build-context/blobs/{digest}",
        content=b"wrong",
        headers={"authorization": f"Bearer {ALICE_KEY}"},
    )
    assert answer.status_code == 409 and answer.json()["code"] == "upload_conflict", answer.text
    assert digest not in context_blob_digests(server)

    # A copy source outside the context is refused before anything is sent.
    with pytest.raises(FileUploadError, match="outside the build context"):
        Template(file_context_path=str(tmp_path / "app")).from_debian_image().copy("../notes.txt", "/n")


def test_declarative_build(server: Server) -> None:
    name = unique("decl")
    builder = (
        Template()
        .from_debian_image()
        .run_cmd("echo hi > /hello")
        .set_workdir("/srv")
        .set_runtime_envs({"A": "1"})
    )
    body = builder.to_request(name)
    assert body["steps"] == [
        {"type": "run_cmd", "cmd": "echo hi > /hello"},
        {"type": "set_workdir", "path": "/srv"},
        {"type": "set_runtime_envs", "envs": {"A": "1"}},
    ]
    plan = Template.plan(builder, name)
    assert plan.build_plan["dockerfile"].startswith("FROM ")
    assert "echo hi > /hello" in plan.build_plan["dockerfile"]
    assert plan.build_plan["default_workdir"] == "/srv"
    build = Template.build(builder, name)
    record(build.raw)
    assert build.status == "ready"
    assert build.raw["source_kind"] == "declarative"
    defaults = build.runtime_defaults or {}
    assert defaults["default_workdir"] == "/srv"
    assert "A" in defaults["default_env_keys"]
    found = Template.list_builds(name, backend="buildkit")
    assert [b.build_id for b in found] == [build.build_id]
    assert Template.list_builds(name, backend="native") == []
    more = (
        Template.from_debian_image()
        .make_dir("/opt/x", mode=0o750)
        .make_symlink("/opt/x", "/opt/y")
        .remove("/opt/y")
        .set_build_envs({"B": "2"})
        .set_user("nobody")
    )
    assert more.to_request("m")["steps"][0] == {"type": "make_dir", "path": "/opt/x", "mode": "750"}
    assert more.to_request("m")["steps"][2] == {"type": "remove", "paths": ["/opt/y"]}
    result = Template.validate(more, "m")
    assert result.valid, result.errors


def test_build_secret(server: Server) -> None:
    dockerfile = "FROM debian:bookworm\nRUN --mount=type=secret,id=tok sha256sum /run/secrets/tok > /tok.sum\n"
    name = unique("secret")
    handle = Template.build_in_background(
        Template().from_dockerfile_content(dockerfile), name, build_secrets={"tok": SECRET_TOKEN}
    )
    final = handle.wait_until_terminal()
    record(final.build.raw)
    record([e.__dict__ for e in final.entries])
    assert final.build.status == "ready", final.build.raw
    plan = Template.plan(Template().from_dockerfile_content(dockerfile), name, build_secrets={"tok": SECRET_TOKEN})
    record(plan.__dict__)
    assert plan.build_plan["build_secret_ids"] == ["tok"]
    with pytest.raises(InvalidRequestError) as failure:
        handle.retry()
    assert "build_secrets" in failure.value.message and "tok" in failure.value.message
    again = handle.retry(build_secrets={"tok": SECRET_TOKEN}).wait_until_terminal()
    record(again.build.raw)
    assert again.build.status == "ready"


def test_buildkit_rejections(server: Server) -> None:
    with pytest.raises(InvalidRequestError) as failure:
        Template.build(
            Template().from_dockerfile_content("FROM debian:bookworm\n"), unique("n"), build_backend="native"
        )
    assert failure.value.code == "invalid_request" and failure.value.message.startswith("build_backend")
    assert "native" in failure.value.message
    with pytest.raises(InvalidRequestError) as failure:
        Template.build(
            Template().from_dockerfile_content(
                "FROM debian:bookworm\nRUN --mount=type=secret,id=tok cat /run/secrets/tok\n"
            ),
            unique("nosecret"),
        )
    assert failure.value.code == "invalid_request"
    assert "tok" in failure.value.message and "line 2" in failure.value.message, failure.value.message
    # A copy without the build context it reads (what a hand-written request may send).
    body = Template.from_debian_image().copy(__file__, "/app/t.py").to_request(unique("copy"))
    answer = httpx.post(
        f"{server.url}/v1/templates/builds", json=body, headers={"authorization": f"Bearer {ALICE_KEY}"}
    )
    assert answer.status_code == 400 and answer.json()["code"] == "invalid_request", answer.text
    assert answer.json()["error"].startswith("steps[0].src: copy reads the build context")
    with pytest.raises(InvalidRequestError) as failure:
        Template.build(Template.from_debian_image(), unique("nativesecret"), build_secrets={"a": SECRET_TOKEN})
    assert failure.value.message.startswith("build_secrets") and SECRET_TOKEN not in failure.value.message


def test_two_api_keys_are_isolated(server: Server) -> None:
    name = unique("mine")
    alice = Template.build(Template.from_debian_image(), name)
    with pytest.raises(NotFoundError):
        TemplateBuild.connect(alice.build_id, api_key=BOB_KEY)
    with pytest.raises(NotFoundError):
        Template.get(name, api_key=BOB_KEY)
    with pytest.raises(NotFoundError):
        Template.get(f"alice/{name}", api_key=BOB_KEY)
    with pytest.raises(NotFoundError):
        Template.list_builds(alice.template_id, api_key=BOB_KEY)
    raw = httpx.post(f"{server.url}/v1/templates/builds/{alice.build_id}/cancel",
                     headers={"authorization": f"Bearer {BOB_KEY}"}, json={})
    assert raw.status_code == 404 and raw.json()["code"] == "template_build_not_found"
    raw = httpx.get(f"{server.url}/v1/templates/builds/{alice.build_id}/logs",
                    headers={"authorization": f"Bearer {BOB_KEY}"})
    assert raw.status_code == 404
    bob = Template.build(Template.from_debian_image(), name, api_key=BOB_KEY)
    assert bob.canonical_ref == f"bob/{name}:default"
    assert bob.template_id != alice.template_id
    listed = httpx.get(f"{server.url}/v1/templates", headers={"authorization": f"Bearer {BOB_KEY}"}).json()
    assert {t["namespace_slug"] for t in listed["templates"]} == {"bob"}
    assert Template.get(name)["build_id"] == alice.build_id


def test_zz_secrets_are_nowhere(server: Server, devenv: Dict[str, str]) -> None:
    """Runs last: after builds with base_image_auth, the passwords are in no file of the data
    dir, no server output and no response."""
    secrets = [password(devenv), WRONG_PASSWORD, SECRET_TOKEN]
    listed = httpx.get(f"{server.url}/v1/templates", headers={"authorization": f"Bearer {ALICE_KEY}"}).json()
    record(listed)
    for template in listed["templates"]:
        for build in Template.list_builds(template["id"]):
            record(build.raw)
            handle = TemplateBuild.connect(build.build_id)
            record([e.__dict__ for e in handle.logs(offset=0)])
            record(handle.get_status(0).build.raw)
    time.sleep(0.5)
    needles = [secret.encode() for secret in secrets]
    for path in Path(server.data_dir).rglob("*"):
        if path.is_file() and not path.is_symlink():
            found = secrets_in_file(path, needles)
            assert not found, f"{found!r} found in {path}"
    for secret in secrets:
        assert secret not in server.log_text()
        for response in SEEN_RESPONSES:
            assert secret not in response


def secrets_in_file(path: Path, needles: List[bytes]) -> List[bytes]:
    """The needles somewhere in the file, reading only its data (rootfs images and VM memory
    files are large and mostly holes) in chunks that overlap by the longest needle."""
    overlap = max(len(n) for n in needles)
    found: List[bytes] = []
    with open(path, "rb") as file:
        fd = file.fileno()
        size = os.fstat(fd).st_size
        offset = 0
        while offset < size:
            try:
                start = os.lseek(fd, offset, os.SEEK_DATA)
            except OSError:
                break  # only a hole is left
            end = os.lseek(fd, start, os.SEEK_HOLE)
            position, tail = start, b""
            while position < end:
                chunk = os.pread(fd, min(8 << 20, end - position), position)
                if not chunk:
                    break
                window = tail + chunk
                found.extend(n for n in needles if n in window and n not in found)
                tail = window[-overlap:]
                position += len(chunk)
            offset = end
    return found
