"""The local build context: what ``copy`` steps and ``from_dockerfile`` read, hashed,
filtered by ``.dockerignore``, and uploaded blob by blob (only the blobs the server lacks).

The server keeps uploaded file blobs per API key owner, by sha256. A build request carries
the context as a manifest (``build_context.entries``: paths, digests, modes), and the server
rebuilds the directory from its blobs for BuildKit.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Optional, Pattern, Tuple

from ._client import Client
from .errors import FileUploadError

_CHUNK = 1 << 20


class DockerIgnore:
    """``.dockerignore`` rules as Docker applies them: patterns in order, the last matching
    one wins, ``!`` re-includes, ``*``/``?``/``[...]`` stay within one path segment, ``**``
    spans segments, and a pattern that matches a directory excludes everything beneath it."""

    def __init__(self, lines: Iterable[str]) -> None:
        self.rules: List[Tuple[Pattern[str], bool, str]] = []
        for raw in lines:
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            negated = line.startswith("!")
            if negated:
                line = line[1:].strip()
            line = os.path.normpath(line).lstrip("/") if line else line
            if line in ("", "."):
                continue
            try:
                self.rules.append((_compile(line), negated, raw.strip()))
            except re.error as error:
                raise FileUploadError(
                    f".dockerignore: pattern {raw.strip()!r} is invalid: {error}",
                    code="file_upload_error",
                ) from None

    @classmethod
    def load(cls, root: str) -> "DockerIgnore":
        """The rules of ``root/.dockerignore`` (none if it does not exist)."""
        path = os.path.join(root, ".dockerignore")
        try:
            with open(path, encoding="utf-8") as f:
                return cls(f.read().splitlines())
        except FileNotFoundError:
            return cls([])
        except OSError as error:
            raise FileUploadError(f"{path}: {error.strerror}", code="file_upload_error") from None

    @property
    def has_exceptions(self) -> bool:
        """Whether any rule re-includes (then an excluded directory must still be walked)."""
        return any(negated for _, negated, _ in self.rules)

    def excluded(self, path: str) -> bool:
        """Whether the context-relative ``path`` (``a/b.txt``) is excluded."""
        parents = _parents(path)
        result = False
        for pattern, negated, _ in self.rules:
            if any(pattern.match(p) for p in parents):
                result = not negated
        return result


def _parents(path: str) -> List[str]:
    parts = path.split("/")
    return ["/".join(parts[: i + 1]) for i in range(len(parts))]


def _compile(pattern: str) -> Pattern[str]:
    out = ""
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "*":
            if pattern.startswith("**", i):
                i += 2
                if pattern.startswith("/", i):
                    i += 1
                    out += "(?:.*/)?"
                else:
                    out += ".*"
                continue
            out += "[^/]*"
        elif c == "?":
            out += "[^/]"
        elif c == "[":
            end = pattern.find("]", i + 1)
            if end == -1:
                out += re.escape(c)
            else:
                body = pattern[i + 1 : end]
                if body.startswith(("!", "^")):
                    body = "^" + body[1:]
                out += "[" + body.replace("\\", "\\\\") + "]"
                i = end
        elif c == "\\" and i + 1 < len(pattern):
            i += 1
            out += re.escape(pattern[i])
        else:
            out += re.escape(c)
        i += 1
    return re.compile("^" + out + "$")


@dataclass
class ContextFile:
    """A file of the context and how its blob reaches the server."""

    path: str
    local_path: str
    digest: str
    size: int
    mode: int
    upload: str = "reused"
    reason: Optional[str] = None

    def entry(self) -> Dict[str, Any]:
        """The manifest entry."""
        entry: Dict[str, Any] = {
            "type": "file",
            "path": self.path,
            "digest": self.digest,
            "size": self.size,
            "mode": self.mode,
            "upload": self.upload,
        }
        if self.reason:
            entry["reason"] = self.reason
        return entry


@dataclass
class BuildContext:
    """A collected context: files, directories and symlinks by context path, plus what was
    left out and why."""

    root: str
    files: Dict[str, ContextFile] = field(default_factory=dict)
    dirs: Dict[str, int] = field(default_factory=dict)
    symlinks: Dict[str, str] = field(default_factory=dict)
    ignored: List[str] = field(default_factory=list)
    unsupported: List[str] = field(default_factory=list)
    warnings: List[str] = field(default_factory=list)
    forced: Dict[str, str] = field(default_factory=dict)

    def manifest(self) -> Dict[str, Any]:
        """``build_context`` of the request."""
        entries: List[Dict[str, Any]] = [{"type": "dir", "path": p, "mode": m} for p, m in self.dirs.items()]
        entries += [{"type": "symlink", "path": p, "target": t} for p, t in self.symlinks.items()]
        entries += [f.entry() for f in self.files.values()]
        entries.sort(key=lambda e: e["path"])
        return {"entries": entries}

    @property
    def total_bytes(self) -> int:
        """Bytes of file content."""
        return sum(f.size for f in self.files.values())

    def describe(self) -> Dict[str, Any]:
        """What ``Template.inspect_build_context`` reports."""
        return {
            "context_root": self.root,
            "file_count": len(self.files),
            "total_bytes": self.total_bytes,
            "files": [
                {"path": f.path, "size": f.size, "digest": f.digest, "mode": oct(f.mode)}
                for f in sorted(self.files.values(), key=lambda f: f.path)
            ],
            "directories": sorted(self.dirs),
            "symlinks": dict(sorted(self.symlinks.items())),
            "ignored": sorted(self.ignored),
            "unsupported": sorted(self.unsupported),
            "warnings": list(self.warnings),
            "forced_uploads": dict(sorted(self.forced.items())),
        }

    # ----- collecting --------------------------------------------------------------------

    def relative(self, src: str) -> str:
        """The context path of a local ``src`` (relative to the root, or absolute inside it)."""
        local = os.path.normpath(os.path.join(self.root, src))
        rel = os.path.relpath(local, self.root)
        if rel == ".":
            return "."  # the whole context
        if rel.startswith(".." + os.sep) or rel == ".." or os.path.isabs(rel):
            raise FileUploadError(
                f"copy source {src!r} is outside the build context {self.root}",
                code="file_upload_error",
            )
        return rel.replace(os.sep, "/")

    def add(self, rel: str, ignore: DockerIgnore, force_reason: Optional[str]) -> None:
        """Adds the context path ``rel`` (a file, a symlink, or a directory walked with its
        dotfiles), skipping what ``ignore`` excludes."""
        if rel == ".":
            self.add_tree(ignore)
            return
        local = os.path.join(self.root, rel)
        try:
            info = os.lstat(local)
        except FileNotFoundError:
            raise FileUploadError(
                f"copy source {rel!r} does not exist in {self.root}", code="file_upload_error"
            ) from None
        if ignore.excluded(rel):
            raise FileUploadError(
                f"copy source {rel!r} is excluded by {os.path.join(self.root, '.dockerignore')}",
                code="file_upload_error",
            )
        self._add_parents(rel)
        self._add_entry(rel, local, info, ignore, force_reason)

    def add_tree(self, ignore: DockerIgnore) -> None:
        """Adds everything under the root (a Dockerfile's context)."""
        for name in sorted(os.listdir(self.root)):
            local = os.path.join(self.root, name)
            if ignore.excluded(name):
                self.ignored.append(name)
                if not (ignore.has_exceptions and os.path.isdir(local)):
                    continue
            self._add_entry(name, local, os.lstat(local), ignore, None)

    def _add_parents(self, rel: str) -> None:
        parts = rel.split("/")[:-1]
        for i in range(len(parts)):
            parent = "/".join(parts[: i + 1])
            if parent not in self.dirs:
                self.dirs[parent] = stat.S_IMODE(os.stat(os.path.join(self.root, parent)).st_mode)

    def _add_entry(
        self,
        rel: str,
        local: str,
        info: os.stat_result,
        ignore: DockerIgnore,
        force_reason: Optional[str],
    ) -> None:
        mode = stat.S_IMODE(info.st_mode) & 0o777
        if stat.S_ISLNK(info.st_mode):
            if not ignore.excluded(rel):
                self.symlinks[rel] = os.readlink(local)
        elif stat.S_ISREG(info.st_mode):
            if ignore.excluded(rel):
                self.ignored.append(rel)
                return
            self._add_file(rel, local, info, mode, force_reason)
        elif stat.S_ISDIR(info.st_mode):
            walked_excluded = ignore.excluded(rel)
            if not walked_excluded:
                self.dirs[rel] = mode
            for name in sorted(os.listdir(local)):
                child = f"{rel}/{name}"
                child_local = os.path.join(local, name)
                child_info = os.lstat(child_local)
                if ignore.excluded(child):
                    self.ignored.append(child)
                    if not (ignore.has_exceptions and stat.S_ISDIR(child_info.st_mode)):
                        continue
                self._add_entry(child, child_local, child_info, ignore, force_reason)
        else:
            self.unsupported.append(rel)
            self.warnings.append(f"{rel}: sockets, pipes and devices are not uploaded")

    def _add_file(
        self, rel: str, local: str, info: os.stat_result, mode: int, force_reason: Optional[str]
    ) -> None:
        existing = self.files.get(rel)
        if existing is None:
            digest = hashlib.sha256()
            size = 0  # what was hashed, not what lstat said (the file may change meanwhile)
            try:
                with open(local, "rb") as f:
                    for chunk in iter(lambda: f.read(_CHUNK), b""):
                        digest.update(chunk)
                        size += len(chunk)
            except OSError as error:
                raise FileUploadError(f"{local}: {error.strerror}", code="file_upload_error") from None
            existing = ContextFile(rel, local, "sha256:" + digest.hexdigest(), size, mode)
            self.files[rel] = existing
        if force_reason and existing.reason is None:
            existing.reason = force_reason
            self.forced[rel] = force_reason


def collect_copies(root: str, copies: List[Tuple[str, Optional[str]]]) -> BuildContext:
    """The context of declarative copies: each ``(src, force_reason)`` under ``root``."""
    context = BuildContext(root=os.path.abspath(root))
    ignore = DockerIgnore.load(context.root)
    for src, force_reason in copies:
        context.add(context.relative(src), ignore, force_reason)
    return context


def collect_tree(root: str) -> BuildContext:
    """The whole directory ``root`` (a Dockerfile's folder), ``.dockerignore`` applied."""
    context = BuildContext(root=os.path.abspath(root))
    if not os.path.isdir(context.root):
        raise FileUploadError(f"build context {root} is not a directory", code="file_upload_error")
    context.add_tree(DockerIgnore.load(context.root))
    return context


def upload(context: BuildContext, client: Client, skip_cache: bool = False) -> Dict[str, Any]:
    """Asks the server which blobs it lacks and uploads those, plus every forced one; returns
    the request's ``build_context`` with each file's upload status."""
    by_digest: Dict[str, ContextFile] = {}
    for f in context.files.values():
        by_digest.setdefault(f.digest, f)
    missing: set = set()
    digests = list(by_digest)
    for start in range(0, len(digests), 50_000):
        answer = client.request(
            "POST",
            "/v1/templates/build-context/blobs/missing",
            json_body={"digests": digests[start : start + 50_000]},
        )
        missing.update(answer.get("missing") or [])
    to_send: Dict[str, ContextFile] = {}
    for f in context.files.values():
        reason = "whole_build_skip_cache" if skip_cache else f.reason
        if reason is not None:
            f.upload, f.reason = "forced", reason
            to_send.setdefault(f.digest, f)
        elif f.digest in missing:
            f.upload = "uploaded"
            to_send.setdefault(f.digest, f)
        else:
            f.upload = "reused"
    try:
        client.upload_files(
            [(f"/v1/templates/build-context/blobs/{f.digest}", f.local_path) for f in to_send.values()]
        )
    except OSError as error:
        raise FileUploadError(
            f"{error.filename}: {error.strerror}", code="file_upload_error"
        ) from None
    except FileUploadError:
        raise
    except Exception as error:  # the API's errors, re-raised as upload errors
        raise FileUploadError(
            f"uploading the build context of {context.root}: {getattr(error, 'message', error)}",
            code=getattr(error, "code", "file_upload_error"),
            status_code=getattr(error, "status_code", None),
            request_id=getattr(error, "request_id", None),
        ) from None
    return context.manifest()


__all__ = ["BuildContext", "DockerIgnore", "collect_copies", "collect_tree", "upload"]
