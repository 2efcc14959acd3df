"""The Python `.dockerignore` matcher against the shared cases of testdata/dockerignore_cases.json
(what Docker decides; the Rust matcher is held to the same file), its syntax errors, and its cost
on patterns that make backtracking matchers blow up. No server: these tests use no fixture of
conftest.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List

import pytest

from nullspace import FileUploadError
from nullspace.context import DockerIgnore, Glob

CASES_FILE = Path(__file__).resolve().parent / "../../../testdata/dockerignore_cases.json"


def load_cases() -> List[Dict[str, Any]]:
    with open(CASES_FILE, encoding="utf-8") as f:
        cases: List[Dict[str, Any]] = json.load(f)["cases"]
    return cases


CASES = load_cases()


def test_cases_file_is_well_formed() -> None:
    names = [case["name"] for case in CASES]
    assert len(names) == len(set(names)), "case names must be unique"
    for case in CASES:
        assert set(case) == {"name", "dockerignore", "path", "excluded"}, case
        assert isinstance(case["dockerignore"], str) and isinstance(case["path"], str), case
        assert isinstance(case["excluded"], bool), case


@pytest.mark.parametrize("case", CASES, ids=[case["name"] for case in CASES])
def test_case(case: Dict[str, Any]) -> None:
    ignore = DockerIgnore(case["dockerignore"].splitlines())
    assert ignore.excluded(case["path"]) is case["excluded"]


def test_load_reads_bom_and_crlf(tmp_path: Path) -> None:
    text = b"\xef\xbb\xbfsecret.txt\r\n# comment\r\n*.log\r\n!keep.log\r\n"
    (tmp_path / ".dockerignore").write_bytes(text)
    ignore = DockerIgnore.load(str(tmp_path))
    assert ignore.excluded("secret.txt")
    assert ignore.excluded("app.log")
    assert not ignore.excluded("keep.log")
    assert not ignore.excluded("# comment")
    assert ignore.has_exceptions


def test_load_without_a_file(tmp_path: Path) -> None:
    ignore = DockerIgnore.load(str(tmp_path))
    assert ignore.rules == [] and not ignore.excluded("anything")


@pytest.mark.parametrize(
    "line",
    ["[abc", "file[]", "[a-]", "[-a]", "[z-a]", "trailing\\", "!", "! ", "/!"],
)
def test_invalid_patterns_are_rejected(line: str) -> None:
    # Docker fails the build on these (Go's filepath.Match syntax, a reversed range that Go's
    # regexp rejects, and an exception without a pattern: "/!" is cleaned to "!").
    with pytest.raises(FileUploadError) as raised:
        DockerIgnore([line])
    assert raised.value.code == "file_upload_error"
    assert "is invalid" in raised.value.message


PATHOLOGICAL = [case for case in CASES if case["name"].startswith("pathological-")]


@pytest.mark.parametrize("case", PATHOLOGICAL, ids=[case["name"] for case in PATHOLOGICAL])
def test_pathological_patterns_take_linear_steps(case: Dict[str, Any]) -> None:
    """The work grows linearly with the path and stays within the documented bound of
    4 * (tokens + 1) * (path length + 1) NFA state visits (a backtracking matcher needs
    exponentially many steps on these)."""
    (pattern,) = [line for line in case["dockerignore"].splitlines() if line]
    glob = Glob(pattern)
    unit = "a/" if "/" in case["path"] else "a"
    steps = {}
    for repeat in (500, 1000, 2000):
        path = (unit * repeat).rstrip("/")
        assert not glob.matches_or_parent_matches(path)
        steps[repeat] = glob.steps(path)
        assert steps[repeat] <= 4 * (len(glob.tokens) + 1) * (len(path) + 1)
    # Doubling the path at most (about) doubles the work.
    assert steps[2000] <= 2.1 * steps[1000] and steps[1000] <= 2.1 * steps[500]


def test_pathological_rules_on_a_long_path() -> None:
    """The whole DockerIgnore on 2,000-character paths (an exponential matcher never finishes)."""
    ignore = DockerIgnore(
        ["a*a*a*a*a*a*a*a*a*a*a*b", "**/a/**/a/**/a/**/a/**/b", "!**/a*a*a*a*a*a*a*a*a*a*c"]
    )
    assert not ignore.excluded("a" * 2000)
    assert not ignore.excluded("/".join(["a"] * 1000))
    assert ignore.excluded("a" * 2000 + "b")
    assert ignore.excluded("/".join(["a"] * 1000) + "/b")
