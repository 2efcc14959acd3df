"""Typed views of API objects: log entries, builds, status snapshots."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional

from .errors import ErrorDetail

TERMINAL_STATUSES = frozenset({"ready", "error", "cancelled"})


@dataclass(frozen=True)
class LogEntry:
    """One durable build log entry (spec §3.6)."""

    build_id: str
    template_id: str
    offset: int
    timestamp: str
    kind: str
    level: str
    message: str
    phase: Optional[str] = None
    step_index: Optional[int] = None
    total_steps: Optional[int] = None
    attempt: Optional[int] = None
    max_attempts: Optional[int] = None
    cache_kind: Optional[str] = None
    cache_status: Optional[str] = None
    cache_reason: Optional[str] = None
    cache_subject: Optional[str] = None
    error_detail: Optional[ErrorDetail] = None
    result: Optional[str] = None
    result_metadata: Optional[Dict[str, Any]] = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "LogEntry":
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in names}
        values["error_detail"] = ErrorDetail.from_dict(data.get("error_detail"))
        values.setdefault("build_id", "")
        values.setdefault("template_id", "")
        values.setdefault("offset", 0)
        values.setdefault("timestamp", "")
        values.setdefault("kind", "message")
        values.setdefault("level", "info")
        values.setdefault("message", "")
        return cls(**values)


@dataclass(frozen=True)
class Build:
    """A build object (spec §3.4). ``raw`` keeps every field the API sent."""

    build_id: str
    template_id: str
    name: str
    status: str
    tags: List[str]
    canonical_ref: Optional[str]
    namespace_slug: Optional[str]
    created_at: Optional[str]
    finished_at: Optional[str]
    failure_phase: Optional[str]
    error_detail: Optional[ErrorDetail]
    cache_summary: Optional[Dict[str, Any]]
    artifact_availability: Optional[Dict[str, Any]]
    promotability: Optional[Dict[str, Any]]
    retention_expires_at: Optional[str]
    runtime_defaults: Optional[Dict[str, Any]]
    raw: Dict[str, Any] = field(repr=False, default_factory=dict)

    @property
    def id(self) -> str:
        """The build id (``tb_...``)."""
        return self.build_id

    @property
    def is_terminal(self) -> bool:
        """Whether the build has ended (``ready``, ``error`` or ``cancelled``)."""
        return self.status in TERMINAL_STATUSES

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Build":
        return cls(
            build_id=str(data.get("build_id", "")),
            template_id=str(data.get("template_id", "")),
            name=str(data.get("name", "")),
            status=str(data.get("status", "")),
            tags=list(data.get("tags") or []),
            canonical_ref=data.get("canonical_ref"),
            namespace_slug=data.get("namespace_slug"),
            created_at=data.get("created_at"),
            finished_at=data.get("finished_at"),
            failure_phase=data.get("failure_phase"),
            error_detail=ErrorDetail.from_dict(data.get("error_detail")),
            cache_summary=data.get("cache_summary"),
            artifact_availability=data.get("artifact_availability"),
            promotability=data.get("promotability"),
            retention_expires_at=data.get("retention_expires_at"),
            runtime_defaults=data.get("runtime_defaults"),
            raw=dict(data),
        )


@dataclass(frozen=True)
class BuildSnapshot:
    """A status poll: the build, the entries after the requested offset, the next offset."""

    build: Build
    entries: List[LogEntry]
    next_offset: int

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "BuildSnapshot":
        return cls(
            build=Build.from_dict(data.get("build") or {}),
            entries=[LogEntry.from_dict(e) for e in data.get("entries") or []],
            next_offset=int(data.get("next_offset", 0)),
        )


@dataclass(frozen=True)
class ValidationIssue:
    """One validation error."""

    code: str
    message: str
    phase: Optional[str] = None


@dataclass(frozen=True)
class ValidationResult:
    """What ``Template.validate`` returns."""

    valid: bool
    errors: List[ValidationIssue]
    warnings: List[str]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ValidationResult":
        return cls(
            valid=bool(data.get("valid")),
            errors=[
                ValidationIssue(str(e.get("code", "")), str(e.get("message", "")), e.get("phase"))
                for e in data.get("errors") or []
            ],
            warnings=[str(w) for w in data.get("warnings") or []],
        )


@dataclass(frozen=True)
class BuildPlan:
    """What ``Template.plan`` returns (spec §3.8); ``raw`` keeps the whole response."""

    build_plan: Dict[str, Any]
    warnings: List[str]
    requires_base_image_auth: bool
    source_digest: Optional[str]
    raw: Dict[str, Any] = field(repr=False, default_factory=dict)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "BuildPlan":
        return cls(
            build_plan=dict(data.get("build_plan") or {}),
            warnings=[str(w) for w in data.get("warnings") or []],
            requires_base_image_auth=bool(data.get("requires_base_image_auth")),
            source_digest=data.get("source_digest"),
            raw=dict(data),
        )
