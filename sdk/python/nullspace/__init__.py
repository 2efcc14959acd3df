"""Nullspace templates: a thin, typed client of the template build API.

Configure with ``NULLSPACE_API_URL`` and ``NULLSPACE_API_KEY`` (or pass ``api_url=`` /
``api_key=``)::

    from nullspace import Template, default_build_logger

    build = Template.build(Template().from_debian_image(), "base", on_log_entry=default_build_logger())
    print(build.canonical_ref)
"""

from .build import TemplateBuild
from .errors import (
    ApiError,
    AuthenticationError,
    BuildError,
    ConflictError,
    ErrorDetail,
    FileUploadError,
    InvalidRequestError,
    NotFoundError,
    NullspaceError,
)
from .logger import default_build_logger
from .models import Build, BuildPlan, BuildSnapshot, LogEntry, ValidationResult
from .readiness import (
    Readiness,
    wait_for_file,
    wait_for_port,
    wait_for_process,
    wait_for_timeout,
    wait_for_url,
)
from .sandbox import (
    CommandExitError,
    CommandHandle,
    CommandResult,
    EntryInfo,
    Sandbox,
    SandboxInfo,
)
from .template import Template

__all__ = [
    "ApiError",
    "AuthenticationError",
    "Build",
    "BuildError",
    "CommandExitError",
    "CommandHandle",
    "CommandResult",
    "EntryInfo",
    "BuildPlan",
    "BuildSnapshot",
    "ConflictError",
    "ErrorDetail",
    "FileUploadError",
    "InvalidRequestError",
    "LogEntry",
    "NotFoundError",
    "NullspaceError",
    "Readiness",
    "Sandbox",
    "SandboxInfo",
    "Template",
    "TemplateBuild",
    "ValidationResult",
    "default_build_logger",
    "wait_for_file",
    "wait_for_port",
    "wait_for_process",
    "wait_for_timeout",
    "wait_for_url",
]
