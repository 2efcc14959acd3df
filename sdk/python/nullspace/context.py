"""The local build context: what ``copy`` steps and ``from_dockerfile`` read, hashed,
filtered by ``.dockerignore``, and uploaded blob by blob (only the blobs the server lacks).

The server keeps uploaded file blobs per API key owner, by sha256. A build request carries
the context as a manifest (``build_context.entries``: paths, digests, modes), and the server
rebuilds the directory from its blobs for BuildKit.
"""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Optional, Tuple

from ._client import Client
from .errors import FileUploadError

_CHUNK = 1 << 20


# What Go's ``strings.TrimSpace`` strips (Unicode White_Space; Python's ``str.isspace`` also
# counts the separators U+001C..U+001F, which Docker keeps).
_SPACE = (
    "\t\n\v\f\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a"
    "\u2028\u2029\u202f\u205f\u3000"
)
_BOM = "\ufeff"


class DockerIgnore:
    """``.dockerignore`` rules as Docker applies them (moby's ``ignorefile.ReadAll`` and
    ``patternmatcher``).

    Reading: a UTF-8 BOM before the first line is dropped; a line whose very first character is
    ``#`` is a comment (``  # x`` is the pattern ``# x``); lines are trimmed and blank ones
    skipped; ``!`` makes an exception; each pattern is cleaned like Go's ``filepath.Clean``
    (``./a``, ``a//b/``, ``a/../b`` become ``a``, ``a/b``, ``b``) and loses a leading ``/``.

    Matching (see :class:`Glob`): patterns are anchored at the context root, ``*``, ``?`` and
    ``[...]`` stay within a path segment, ``**`` spans segments, a pattern that matches a
    directory matches everything beneath it, and the last rule that matches a path decides.
    """

    def __init__(self, lines: Iterable[str]) -> None:
        self.rules: List[Tuple[Glob, bool, str]] = []
        for number, raw in enumerate(lines):
            if number == 0 and raw.startswith(_BOM):
                raw = raw[len(_BOM) :]
            if raw.startswith("#"):
                continue
            line = raw.strip(_SPACE)
            if not line:
                continue
            try:
                parsed = _parse_line(line)
                if parsed is not None:
                    pattern, negated = parsed
                    self.rules.append((Glob(pattern), negated, line))
            except ValueError as error:
                raise FileUploadError(
                    f".dockerignore: pattern {line!r} is invalid: {error}", code="file_upload_error"
                ) from None

    @classmethod
    def load(cls, root: str) -> "DockerIgnore":
        """The rules of ``root/.dockerignore`` (none if it does not exist)."""
        path = os.path.join(root, ".dockerignore")
        try:
            # Bytes that are not UTF-8 stay as surrogates, as in the names os.listdir returns.
            with open(path, encoding="utf-8", errors="surrogateescape", newline="") as f:
                return cls(f.read().split("\n"))
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
        result = False
        for glob, negated, _ in self.rules:
            # A rule can only change the answer when it goes the other way (as Docker skips it).
            if negated == result and glob.matches_or_parent_matches(path):
                result = not negated
        return result


def _parse_line(line: str) -> Optional[Tuple[str, bool]]:
    """The pattern of a trimmed, non-comment line and whether it is an exception (``None``
    when it matches nothing), in Docker's two passes: ``ignorefile.ReadAll`` keeps a leading
    ``!``, cleans the rest and drops one leading ``/``; ``patternmatcher.New`` trims and cleans
    the result again and only then reads a leading ``!`` (so ``/!x`` is the exception ``x`` and
    ``/ x`` is ``x``, as in Docker)."""
    negated = line.startswith("!")
    pattern = line[1:].strip(_SPACE) if negated else line
    if pattern:
        pattern = _clean(pattern)
        if len(pattern) > 1 and pattern.startswith("/"):
            pattern = pattern[1:]
    pattern = (("!" if negated else "") + pattern).strip(_SPACE)
    if not pattern:
        return None
    pattern = _clean(pattern)
    negated = pattern.startswith("!")
    if negated:
        pattern = pattern[1:]
        if not pattern:
            raise ValueError('an exception needs a pattern after "!"')
    if pattern == ".":
        return None  # only the context root, which Docker never excludes
    return pattern, negated


def _clean(path: str) -> str:
    """Go's ``filepath.Clean`` on Unix: no empty or ``.`` segments, ``..`` resolved lexically
    (kept at the start of a relative path, dropped at the root), ``.`` for nothing."""
    rooted = path.startswith("/")
    parts: List[str] = []
    for part in path.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if parts and parts[-1] != "..":
                parts.pop()
            elif not rooted:
                parts.append("..")
            continue
        parts.append(part)
    cleaned = "/".join(parts)
    if rooted:
        return "/" + cleaned
    return cleaned or "."


# Pattern tokens. The first three consume exactly one character; the last three may consume
# none (so the matcher can step over them without reading).
_LITERAL = 0  # the character itself
_ONE = 1  # ``?``: any character but ``/``
_CLASS = 2  # ``[...]``
_STAR = 3  # ``*``: ``[^/]*``
_ANY = 4  # a trailing ``**``: ``.*``
_DIRS = 5  # any other ``**`` and the ``/`` after it: ``(.*/)?``

_Token = Tuple[int, Any]  # (kind, the character for _LITERAL or the _CharClass for _CLASS)


@dataclass(frozen=True)
class _CharClass:
    """``[...]``: ranges of characters, negated by a leading ``^``. Docker hands classes to
    Go's regexp, so ``!`` is an ordinary member and a negated class also matches ``/``."""

    ranges: Tuple[Tuple[str, str], ...]
    negated: bool

    def matches(self, char: str) -> bool:
        return any(lo <= char <= hi for lo, hi in self.ranges) != self.negated


class Glob:
    """One cleaned ``.dockerignore`` pattern, matched without backtracking.

    The meaning is moby's ``patternmatcher``, which turns a pattern into a Go regular
    expression: ``*`` is ``[^/]*``, ``?`` is ``[^/]``, ``[...]`` is a class (see
    :class:`_CharClass`), ``\\x`` is the character ``x``, ``**`` at the end is ``.*``, and any
    other ``**`` (with the ``/`` right after it) is ``(.*/)?``, i.e. zero or more whole
    directories; except that a leading ``**`` followed by plain characters only (``**.txt``)
    matches every path that ends with them, as Docker's suffix shortcut does. The rest is
    literal. Syntax errors are the ones Go's ``filepath.Match`` reports (an unterminated or
    empty class, a range without an end, a trailing ``\\``) plus reversed ranges, which Go's
    regexp rejects; they raise ``ValueError``.

    Docker passes a few more constructs straight to the regexp engine (``\\d``, ``^`` outside a
    class, ``*`` or ``?`` inside one, ``[[:alpha:]]``); here they are literal characters.

    Matching runs the pattern's NFA over a set of states (token positions, plus "inside a
    ``(.*/)?`` that still owes its ``/``"), reading each path character once, so it costs at
    most ``4 * (len(tokens) + 1) * (len(path) + 1)`` state visits (see :meth:`steps`) whatever
    the pattern.
    """

    def __init__(self, pattern: str) -> None:
        self.pattern = pattern
        self.tokens: List[_Token] = _tokenize(pattern)

    def __repr__(self) -> str:
        return f"Glob({self.pattern!r})"

    def matches(self, path: str) -> bool:
        """Whether the whole ``path`` matches."""
        return self._run(path, parents=False)[0]

    def matches_or_parent_matches(self, path: str) -> bool:
        """Whether ``path`` or one of its parent directories (``a``, ``a/b`` of ``a/b/c``)
        matches: one pass over ``path``, accepting at each ``/`` too."""
        return self._run(path, parents=True)[0]

    def steps(self, path: str) -> int:
        """How many NFA states :meth:`matches_or_parent_matches` visits for ``path``: a
        measure of the work, for checking that it grows linearly with the path."""
        return self._run(path, parents=True)[1]

    def _run(self, path: str, parents: bool) -> Tuple[bool, int]:
        tokens = self.tokens
        accept = 2 * len(tokens)
        # State 2*i: about to match token i; 2*i+1: inside the _DIRS token i, owing a "/".
        # mark[state] == stamp: the state is already in the set of the current step.
        mark = [-1] * (accept + 2)
        steps = 0

        def enter(position: int, stamp: int, into: List[int]) -> int:
            """Adds state 2*position and the states reachable from it without reading."""
            added = 0
            while mark[2 * position] != stamp:
                mark[2 * position] = stamp
                into.append(2 * position)
                added += 1
                if position == len(tokens) or tokens[position][0] < _STAR:
                    break
                position += 1
            return added

        stamp = 0
        current: List[int] = []
        steps += enter(0, stamp, current)
        for index, char in enumerate(path):
            if not current:
                return False, steps
            if parents and char == "/" and index > 0 and mark[accept] == stamp:
                return True, steps  # path[:index] is a matching parent directory
            stamp += 1
            following: List[int] = []
            for state in current:
                steps += 1
                position = state >> 1
                if state & 1:
                    if mark[state] != stamp:
                        mark[state] = stamp
                        following.append(state)
                        steps += 1
                    if char == "/":
                        steps += enter(position + 1, stamp, following)
                    continue
                if position == len(tokens):
                    continue
                kind, value = tokens[position]
                if kind == _LITERAL:
                    if char == value:
                        steps += enter(position + 1, stamp, following)
                elif kind == _ONE:
                    if char != "/":
                        steps += enter(position + 1, stamp, following)
                elif kind == _CLASS:
                    if value.matches(char):
                        steps += enter(position + 1, stamp, following)
                elif kind == _STAR:
                    if char != "/":
                        steps += enter(position, stamp, following)
                elif kind == _ANY:
                    steps += enter(position, stamp, following)
                else:  # _DIRS: start or continue the ".*", which a "/" may end
                    inside = state + 1
                    if mark[inside] != stamp:
                        mark[inside] = stamp
                        following.append(inside)
                        steps += 1
                    if char == "/":
                        steps += enter(position + 1, stamp, following)
            current = following
        return mark[accept] == stamp, steps


def _tokenize(pattern: str) -> List[_Token]:
    tokens: List[_Token] = []
    i = 0
    while i < len(pattern):
        char = pattern[i]
        if pattern.startswith("**", i):
            start, i = i, i + 2
            slash = pattern.startswith("/", i)
            if slash:
                i += 1
            if i == len(pattern):
                tokens.append((_ANY, None))
            elif start == 0 and not slash and not any(c in "*?[]\\" for c in pattern[i:]):
                # Docker's suffix shortcut: "**x" (plain characters after it) is ".*x".
                tokens.append((_ANY, None))
            else:
                tokens.append((_DIRS, None))
            continue
        if char == "*":
            tokens.append((_STAR, None))
        elif char == "?":
            tokens.append((_ONE, None))
        elif char == "[":
            char_class, i = _parse_class(pattern, i + 1)
            tokens.append((_CLASS, char_class))
            continue
        elif char == "\\":
            if i + 1 == len(pattern):
                raise ValueError("a trailing \\ escapes nothing")
            i += 1
            tokens.append((_LITERAL, pattern[i]))
        else:
            tokens.append((_LITERAL, char))
        i += 1
    return tokens


def _parse_class(pattern: str, i: int) -> Tuple[_CharClass, int]:
    """The class whose body starts at ``pattern[i]`` (after ``[``) and the index after its
    ``]``, read as Go's ``filepath.Match`` does."""
    negated = pattern.startswith("^", i)
    if negated:
        i += 1
    ranges: List[Tuple[str, str]] = []
    while True:
        if pattern.startswith("]", i) and ranges:
            return _CharClass(tuple(ranges), negated), i + 1
        lo, i = _class_char(pattern, i)
        hi = lo
        if pattern[i] == "-":
            hi, i = _class_char(pattern, i + 1)
        if hi < lo:
            raise ValueError(f"the range {lo}-{hi} of a [...] class is reversed")
        ranges.append((lo, hi))


def _class_char(pattern: str, i: int) -> Tuple[str, int]:
    """One character of a class (``\\`` escapes) and the index after it; something must follow
    it (at least the closing ``]``)."""
    if i >= len(pattern) or pattern[i] in "-]":
        raise ValueError("a [...] class is empty, unterminated or has a range without an end")
    if pattern[i] == "\\":
        i += 1
        if i == len(pattern):
            raise ValueError("a [...] class is unterminated")
    if i + 1 >= len(pattern):
        raise ValueError("a [...] class is unterminated")
    return pattern[i], i + 1


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
