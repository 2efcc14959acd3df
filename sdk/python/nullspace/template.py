"""``Template``: the fluent builder and the build entry points (spec §1.2-§1.6).

Every ``from_*`` selector and step method works both on an instance
(``Template().from_debian_image()``) and on the class (``Template.from_debian_image()``, which
starts a new builder). The builder records a request; the server decides what it can run and
rejects what it cannot (naming the field) instead of ignoring it.
"""

from __future__ import annotations

import functools
import os
from typing import (
    Any,
    Callable,
    Concatenate,
    Dict,
    Generic,
    List,
    Mapping,
    Optional,
    ParamSpec,
    Sequence,
    Tuple,
    TypeVar,
    Union,
)

from ._client import Client
from .context import BuildContext, collect_copies, collect_tree, upload
from .build import BaseImageAuth, TemplateBuild, auth_payload, raise_for_failure
from .errors import FileUploadError
from .models import Build, BuildPlan, LogEntry, ValidationResult
from .readiness import Readiness

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T", bound="Template")


class _dualmethod(Generic[P, R]):
    """A method usable on an instance, or on the class (where it acts on a new instance)."""

    def __init__(self, func: Callable[Concatenate[Any, P], R]) -> None:
        self._func = func
        functools.update_wrapper(self, func)  # type: ignore[arg-type]

    def __get__(self, obj: Optional[object], objtype: Optional[type] = None) -> Callable[P, R]:
        target = obj if obj is not None else (objtype or Template)()
        return functools.partial(self._func, target)


BuildSecret = Union[str, Mapping[str, str]]


class Template:
    """A template builder: one base, then steps and runtime defaults."""

    def __init__(self, file_context_path: Optional[str] = None) -> None:
        """``file_context_path``: the folder ``copy`` sources are relative to (default: the
        current directory); its ``.dockerignore`` applies to them."""
        self._context_root = os.path.abspath(file_context_path or os.getcwd())
        self._dockerfile_context: Optional[str] = None
        self._named_contexts: Dict[str, str] = {}
        self._copies: List[Tuple[str, Optional[str]]] = []
        self._after_cache_boundary = False
        self._base: Optional[Dict[str, Any]] = None
        self._base_method: Optional[str] = None
        self._dockerfile: Optional[str] = None
        self._auth: Optional[Dict[str, str]] = None
        self._steps: List[Dict[str, Any]] = []
        self._runtime_envs: Dict[str, str] = {}
        self._build_envs: Dict[str, str] = {}
        self._user: Optional[str] = None
        self._workdir: Optional[str] = None
        self._start_cmd: Optional[str] = None
        self._readiness: Optional[Readiness] = None
        self._ready_cmd: Optional[str] = None

    def __repr__(self) -> str:
        # Never shows credentials or env values.
        base = self._base_method or "no base"
        auth = f", base_image_auth={self._auth.get('kind', 'basic')}" if self._auth else ""
        return f"Template({base}, steps={len(self._steps)}{auth})"

    # ----- bases -------------------------------------------------------------------------

    def _set_base(self: T, method: str, base: Dict[str, Any]) -> T:
        if self._base_method is not None:
            raise ValueError(
                f"{method}: this template already has a base ({self._base_method}); choose one base"
            )
        self._base_method = method
        self._base = base
        return self

    @_dualmethod
    def from_debian_image(self: T, version: Optional[str] = None) -> T:
        """``debian:<version>`` (default: the server's tested release, bookworm)."""
        return self._set_base("from_debian_image", {"base": {"kind": "debian_image", "value": version}})

    @_dualmethod
    def from_ubuntu_image(self: T, version: str) -> T:
        """``ubuntu:<version>``."""
        return self._set_base("from_ubuntu_image", {"base": {"kind": "ubuntu_image", "value": version}})

    @_dualmethod
    def from_python_image(self: T, version: str) -> T:
        """``python:<version>``."""
        return self._set_base("from_python_image", {"base": {"kind": "python_image", "value": version}})

    @_dualmethod
    def from_node_image(self: T, version: str) -> T:
        """``node:<version>``."""
        return self._set_base("from_node_image", {"base": {"kind": "node_image", "value": version}})

    @_dualmethod
    def from_bun_image(self: T, version: str) -> T:
        """``oven/bun:<version>``; the version is required."""
        if not isinstance(version, str) or not version.strip():
            raise ValueError('from_bun_image: a version is required (e.g. "1.2")')
        return self._set_base("from_bun_image", {"base": {"kind": "bun_image", "value": version}})

    @_dualmethod
    def from_image(
        self: T, ref: str, username: Optional[str] = None, password: Optional[str] = None
    ) -> T:
        """Any OCI image; ``username``/``password`` for a private registry."""
        self._set_base("from_image", {"base_image": ref})
        if username is not None or password is not None:
            self.set_base_image_auth(username=username or "", password=password or "")
        return self

    @_dualmethod
    def from_base_image(self: T, ref: str) -> T:
        """Any OCI image, named as a base (same import as ``from_image``)."""
        return self._set_base("from_base_image", {"base": {"kind": "base_image", "value": ref}})

    @_dualmethod
    def from_template(self: T, ref: str) -> T:
        """An existing template of yours: its rootfs and runtime defaults carry over."""
        return self._set_base("from_template", {"base": {"kind": "template", "value": ref}})

    def _set_named_contexts(self, build_contexts: Optional[Mapping[str, str]]) -> None:
        for name, folder in (build_contexts or {}).items():
            if not os.path.isdir(folder):
                raise FileUploadError(
                    f"build context {name!r}: {folder} is not a directory", code="file_upload_error"
                )
            self._named_contexts[name] = os.path.abspath(folder)

    @_dualmethod
    def from_dockerfile(
        self: T, path_or_content: str, build_contexts: Optional[Mapping[str, str]] = None
    ) -> T:
        """A Dockerfile, by path (when it names an existing file) or as content.

        For a path, the build context is the Dockerfile's folder with its ``.dockerignore``
        applied (dotfiles included): its files are hashed and only the blobs the server lacks
        are uploaded when the build starts. Content alone builds on an empty context.
        ``build_contexts`` maps names to folders for ``FROM name`` / ``COPY --from=name``,
        uploaded the same way."""
        if "\n" not in path_or_content and os.path.isfile(path_or_content):
            try:
                with open(path_or_content, encoding="utf-8") as f:
                    content = f.read()
            except OSError as error:
                raise FileUploadError(
                    f"from_dockerfile: {path_or_content}: {error.strerror}", code="file_upload_error"
                ) from None
            self._dockerfile_context = os.path.dirname(os.path.abspath(path_or_content))
        else:
            content = path_or_content
        self._set_base("from_dockerfile", {})
        self._dockerfile = content
        self._set_named_contexts(build_contexts)
        return self

    @_dualmethod
    def from_dockerfile_content(
        self: T,
        text: str,
        context: Optional[str] = None,
        build_contexts: Optional[Mapping[str, str]] = None,
    ) -> T:
        """An inline Dockerfile, built with BuildKit on ``context`` (a folder, uploaded like
        ``from_dockerfile``'s) or on an empty context; ``build_contexts`` as for
        ``from_dockerfile``."""
        self._set_base("from_dockerfile_content", {})
        self._dockerfile = text
        self._set_named_contexts(build_contexts)
        if context is not None:
            if not os.path.isdir(context):
                raise FileUploadError(
                    f"from_dockerfile_content: context {context} is not a directory",
                    code="file_upload_error",
                )
            self._dockerfile_context = os.path.abspath(context)
        return self

    @_dualmethod
    def from_gcp_registry(self: T, ref: str, service_account_json: str) -> T:
        """An image in GCP Artifact Registry; ``service_account_json`` is the key file's path."""
        try:
            with open(service_account_json, encoding="utf-8") as f:
                key = f.read()
        except OSError as error:
            raise FileUploadError(
                f"from_gcp_registry: cannot read {service_account_json}: {error.strerror}",
                code="file_upload_error",
            ) from None
        self._set_base("from_gcp_registry", {"base_image": ref})
        self._auth = {"kind": "gcp", "service_account_json": key}
        return self

    @_dualmethod
    def from_aws_registry(
        self: T, ref: str, access_key_id: str, secret_access_key: str, region: str
    ) -> T:
        """An image in AWS ECR."""
        self._set_base("from_aws_registry", {"base_image": ref})
        self._auth = {
            "kind": "ecr",
            "access_key_id": access_key_id,
            "secret_access_key": secret_access_key,
            "region": region,
        }
        return self

    @_dualmethod
    def set_base_image_auth(self: T, username: str, password: str) -> T:
        """Credentials for the base image's registry, used for this request only."""
        if not username or not password:
            raise ValueError("set_base_image_auth: username and password are required")
        self._auth = {"username": username, "password": password}
        return self

    # ----- steps -------------------------------------------------------------------------

    def _step(self: T, step: Dict[str, Any]) -> T:
        # The server's step shape: ``None`` means "not set" and is left out.
        self._steps.append({k: v for k, v in step.items() if v is not None})
        return self

    @_dualmethod
    def apt_install(self: T, packages: Union[str, Sequence[str]]) -> T:
        """``apt-get install`` packages."""
        return self._step({"type": "apt_install", "packages": _list(packages)})

    @_dualmethod
    def pip_install(self: T, packages: Union[str, Sequence[str]], user: bool = False) -> T:
        """``pip install`` packages (``user=True`` for a user-scope install)."""
        return self._step({"type": "pip_install", "packages": _list(packages), "user": user})

    @_dualmethod
    def npm_install(self: T, packages: Union[str, Sequence[str]], g: bool = False) -> T:
        """``npm install`` packages (``g=True`` installs globally)."""
        return self._step({"type": "npm_install", "packages": _list(packages), "global": g})

    @_dualmethod
    def bun_install(self: T, packages: Union[str, Sequence[str]], g: bool = False) -> T:
        """``bun install`` packages (``g=True`` installs globally)."""
        return self._step({"type": "bun_install", "packages": _list(packages), "global": g})

    def _copy_source(self, src: str, force_upload: bool) -> str:
        """Records a copy source; returns its path inside the build context."""
        reason = (
            "force_upload"
            if force_upload
            else "builder_cache_boundary" if self._after_cache_boundary else None
        )
        self._copies.append((src, reason))
        return BuildContext(self._context_root).relative(src)

    @_dualmethod
    def copy(
        self: T,
        src: str,
        dst: str,
        force_upload: bool = False,
        user: Optional[str] = None,
        mode: Optional[Union[int, str]] = None,
    ) -> T:
        """Copies a local file or directory (relative to the builder's ``file_context_path``,
        dotfiles included, ``.dockerignore`` applied) into the template. Its blobs are
        uploaded when the build starts, only those the server lacks unless
        ``force_upload``."""
        rel = self._copy_source(src, force_upload)
        if isinstance(mode, int):
            mode = format(mode, "o")
        return self._step(
            {
                "type": "copy",
                "src": rel,
                "dst": dst,
                "owner": user,
                "mode": mode,
                "force_upload": force_upload or None,
            }
        )

    @_dualmethod
    def copy_items(self: T, items: Sequence[Mapping[str, Any]]) -> T:
        """Many copies: items of ``{"src", "dst", "force_upload"?, "user"?, "mode"?}``."""
        checked = []
        for item in items:
            if "src" not in item or "dst" not in item:
                raise ValueError("copy_items: every item needs src and dst")
            force = bool(item.get("force_upload", False))
            mode = item.get("mode")
            entry = {
                "src": self._copy_source(str(item["src"]), force),
                "dst": str(item["dst"]),
                "owner": item.get("user"),
                "mode": format(mode, "o") if isinstance(mode, int) else mode,
                "force_upload": force or None,
            }
            checked.append({k: v for k, v in entry.items() if v is not None})
        return self._step({"type": "copy_items", "items": checked})

    @_dualmethod
    def run_cmd(self: T, cmd: str) -> T:
        """Runs a shell command."""
        return self._step({"type": "run_cmd", "cmd": cmd})

    @_dualmethod
    def git_clone(
        self: T, url: str, dst: Optional[str] = None, branch: Optional[str] = None, depth: Optional[int] = None
    ) -> T:
        """Clones a repository."""
        return self._step({"type": "git_clone", "url": url, "dst": dst, "branch": branch, "depth": depth})

    @_dualmethod
    def remove(
        self: T, path: Union[str, Sequence[str]], recursive: bool = False, force: bool = False
    ) -> T:
        """Removes absolute paths (always ``rm -rf``: ``recursive``/``force`` are accepted
        for compatibility)."""
        paths = [path] if isinstance(path, str) else list(path)
        return self._step({"type": "remove", "paths": paths})

    @_dualmethod
    def rename(self: T, src: str, dst: str, force: bool = False) -> T:
        """Renames a path (``mv``; ``force`` is accepted for compatibility)."""
        return self._step({"type": "rename", "src": src, "dst": dst})

    @_dualmethod
    def make_dir(self: T, path: str, mode: Optional[Union[int, str]] = None) -> T:
        """Creates a directory (and its parents); ``mode`` as an int (``0o755``) or an octal
        string (``"755"``)."""
        if isinstance(mode, int):
            mode = format(mode, "o")
        return self._step({"type": "make_dir", "path": path, "mode": mode})

    @_dualmethod
    def make_symlink(self: T, target: str, link: str) -> T:
        """Creates a symlink ``link`` → ``target``."""
        return self._step({"type": "make_symlink", "target": target, "link": link})

    @_dualmethod
    def skip_cache(self: T) -> T:
        """Cache boundary: later steps do not reuse the cache (and later copies upload their
        files again)."""
        self._after_cache_boundary = True
        return self._step({"type": "skip_cache"})

    # ----- runtime defaults --------------------------------------------------------------

    # These are steps too: they apply to the steps after them, in call order.

    @_dualmethod
    def set_workdir(self: T, path: str) -> T:
        """The working directory of later steps and the template's default."""
        self._workdir = path
        return self._step({"type": "set_workdir", "path": path})

    @_dualmethod
    def set_user(self: T, user: str) -> T:
        """The user of later steps and the template's default user."""
        self._user = user
        return self._step({"type": "set_user", "user": user})

    @_dualmethod
    def set_build_envs(self: T, envs: Mapping[str, str]) -> T:
        """Env vars for later build steps only (never persisted)."""
        values = {str(k): str(v) for k, v in envs.items()}
        self._build_envs.update(values)
        return self._step({"type": "set_build_envs", "envs": values})

    @_dualmethod
    def set_runtime_envs(self: T, envs: Mapping[str, str]) -> T:
        """Env for later steps and the template's defaults (the API shows only the keys)."""
        values = {str(k): str(v) for k, v in envs.items()}
        self._runtime_envs.update(values)
        return self._step({"type": "set_runtime_envs", "envs": values})

    @_dualmethod
    def set_start_cmd(self: T, cmd: str, readiness: Optional[Readiness] = None) -> T:
        """The start command, run during the build before the snapshot."""
        self._start_cmd = cmd
        self._readiness = readiness
        return self

    @_dualmethod
    def set_ready_cmd(self: T, cmd: str) -> T:
        """A shell command used as the readiness check."""
        self._ready_cmd = cmd
        return self

    # ----- the request -------------------------------------------------------------------

    def to_request(
        self,
        name: Optional[str] = None,
        *,
        tags: Optional[Sequence[str]] = None,
        cpu_count: Optional[int] = None,
        memory_mb: Optional[int] = None,
        disk_mb: Optional[int] = None,
        skip_cache: Optional[bool] = None,
        internet_access: Optional[bool] = None,
        build_backend: Optional[str] = None,
        build_secrets: Optional[Mapping[str, BuildSecret]] = None,
        include_secrets: bool = True,
        build_context: Optional[Mapping[str, Any]] = None,
        build_contexts: Optional[Mapping[str, Any]] = None,
    ) -> Dict[str, Any]:
        """The API request body. Only fields that are set are sent; with
        ``include_secrets=False`` credentials and secret values are left out."""
        if self._base_method is None:
            raise ValueError("choose one base first (e.g. Template().from_debian_image())")
        body: Dict[str, Any] = {}
        if name is not None:
            body["name"] = name
        if tags is not None:
            body["tags"] = [tags] if isinstance(tags, str) else list(tags)
        if self._dockerfile is not None:
            body["dockerfile"] = self._dockerfile
        elif self._base is not None:
            body.update(self._base)
        if self._steps:
            body["steps"] = list(self._steps)
        optional = {
            "cpu_count": cpu_count,
            "memory_mb": memory_mb,
            "disk_mb": disk_mb,
            "skip_cache": skip_cache,
            "internet_access": internet_access,
            "build_backend": build_backend,
            "start_cmd": self._start_cmd,
            "ready_cmd": self._ready_cmd,
        }
        body.update({k: v for k, v in optional.items() if v is not None})
        if self._readiness is not None:
            body["readiness"] = self._readiness.to_api()
        if self._auth is not None and include_secrets:
            body["base_image_auth"] = dict(self._auth)
        if build_secrets:
            body["build_secrets"] = _resolve_secrets(build_secrets, include_secrets)
        if build_context is not None:
            body["build_context"] = dict(build_context)
        if build_contexts:
            body["build_contexts"] = {k: dict(v) for k, v in build_contexts.items()}
        return body

    def _collect_context(self) -> Optional[BuildContext]:
        """The local build context this builder reads (``None`` when it reads none)."""
        if self._dockerfile is not None:
            return collect_tree(self._dockerfile_context) if self._dockerfile_context else None
        if self._copies:
            return collect_copies(self._context_root, self._copies)
        return None

    # ----- entry points ------------------------------------------------------------------

    @staticmethod
    def build_in_background(
        builder: "Template",
        name: Optional[str] = None,
        *,
        tags: Optional[Sequence[str]] = None,
        cpu_count: Optional[int] = None,
        memory_mb: Optional[int] = None,
        disk_mb: Optional[int] = None,
        skip_cache: Optional[bool] = None,
        internet_access: Optional[bool] = None,
        build_backend: Optional[str] = None,
        build_secrets: Optional[Mapping[str, BuildSecret]] = None,
        api_url: Optional[str] = None,
        api_key: Optional[str] = None,
    ) -> TemplateBuild:
        """Starts a build and returns its handle at once: the build context (if any) is
        hashed, the blobs the server lacks are uploaded, then the build is queued."""
        client = Client(api_url, api_key)
        _, manifest, named = builder._context_manifests(client, bool(skip_cache))
        body = builder.to_request(
            name,
            tags=tags,
            cpu_count=cpu_count,
            memory_mb=memory_mb,
            disk_mb=disk_mb,
            skip_cache=skip_cache,
            internet_access=internet_access,
            build_backend=build_backend,
            build_secrets=build_secrets,
            build_context=manifest,
            build_contexts=named,
        )
        response = client.request("POST", "/v1/templates/builds", json_body=body)
        return TemplateBuild(Build.from_dict(response), client)

    @staticmethod
    def build(
        builder: "Template",
        name: Optional[str] = None,
        *,
        tags: Optional[Sequence[str]] = None,
        cpu_count: Optional[int] = None,
        memory_mb: Optional[int] = None,
        disk_mb: Optional[int] = None,
        skip_cache: Optional[bool] = None,
        internet_access: Optional[bool] = None,
        build_backend: Optional[str] = None,
        build_secrets: Optional[Mapping[str, BuildSecret]] = None,
        on_log_entry: Optional[Callable[[LogEntry], None]] = None,
        api_url: Optional[str] = None,
        api_key: Optional[str] = None,
    ) -> Build:
        """Builds and blocks until the build ends, following its log. Returns the ready build
        (``.status``, ``.name``, ``.canonical_ref``); raises ``BuildError`` otherwise."""
        handle = Template.build_in_background(
            builder,
            name,
            tags=tags,
            cpu_count=cpu_count,
            memory_mb=memory_mb,
            disk_mb=disk_mb,
            skip_cache=skip_cache,
            internet_access=internet_access,
            build_backend=build_backend,
            build_secrets=build_secrets,
            api_url=api_url,
            api_key=api_key,
        )
        snapshot = handle.wait_until_terminal(on_log_entry=on_log_entry or (lambda _entry: None))
        raise_for_failure(snapshot.build)
        return snapshot.build

    @staticmethod
    def validate(
        builder: "Template",
        name: Optional[str] = None,
        *,
        api_url: Optional[str] = None,
        api_key: Optional[str] = None,
        **options: Any,
    ) -> ValidationResult:
        """Server-side validation; nothing is built or uploaded (blobs the server lacks are
        reported as warnings)."""
        body = builder._request_with_context(name, options)
        response = Client(api_url, api_key).request("POST", "/v1/templates/validate", json_body=body)
        return ValidationResult.from_dict(response)

    @staticmethod
    def plan(
        builder: "Template",
        name: Optional[str] = None,
        *,
        api_url: Optional[str] = None,
        api_key: Optional[str] = None,
        **options: Any,
    ) -> BuildPlan:
        """The normalized build plan; nothing is built or uploaded."""
        body = builder._request_with_context(name, options)
        response = Client(api_url, api_key).request("POST", "/v1/templates/plan", json_body=body)
        return BuildPlan.from_dict(response)

    def _context_manifests(
        self, client: Optional[Client] = None, skip_cache: bool = False
    ) -> Tuple[Optional[BuildContext], Optional[Dict[str, Any]], Dict[str, Dict[str, Any]]]:
        """The local build context, its manifest and the named contexts' manifests; with a
        ``client``, their missing blobs are uploaded first."""

        def manifest(context: BuildContext) -> Dict[str, Any]:
            return upload(context, client, skip_cache) if client is not None else context.manifest()

        context = self._collect_context()
        named = {n: manifest(collect_tree(f)) for n, f in self._named_contexts.items()}
        return context, (manifest(context) if context is not None else None), named

    def _request_with_context(self, name: Optional[str], options: Dict[str, Any]) -> Dict[str, Any]:
        _, manifest, named = self._context_manifests()
        return self.to_request(name, build_context=manifest, build_contexts=named, **options)

    @staticmethod
    def inspect_build_context(
        builder: "Template", name: Optional[str] = None, **options: Any
    ) -> Dict[str, Any]:
        """Reports the local build context (files with sizes and digests, directories,
        symlinks, what ``.dockerignore`` excluded, unsupported entries, warnings) and the
        request payload with secrets redacted. Nothing is sent."""
        context, manifest, named = builder._context_manifests()
        report = (context or BuildContext(builder._context_root)).describe()
        report["request"] = builder.to_request(
            name,
            include_secrets=False,
            build_context=manifest,
            build_contexts=named,
            **options,
        )
        return report

    @staticmethod
    def list_builds(
        ref: str,
        *,
        status: Optional[str] = None,
        backend: Optional[str] = None,
        limit: Optional[int] = None,
        api_url: Optional[str] = None,
        api_key: Optional[str] = None,
    ) -> List[Build]:
        """Build history of a template (id or name), newest first, failed attempts included."""
        client = Client(api_url, api_key)
        builds: List[Build] = []
        cursor: Optional[str] = None
        while True:
            response = client.request(
                "GET",
                f"/v1/templates/{ref}/builds",
                params={"status": status, "backend": backend, "cursor": cursor, "limit": limit},
            )
            builds.extend(Build.from_dict(b) for b in response.get("builds") or [])
            cursor = response.get("next_cursor")
            if not cursor or (limit is not None and len(builds) >= limit):
                return builds[:limit] if limit is not None else builds

    @staticmethod
    def get(
        ref: str,
        *,
        fields: Optional[Sequence[str]] = None,
        api_url: Optional[str] = None,
        api_key: Optional[str] = None,
    ) -> Dict[str, Any]:
        """Template details by ref (``name``, ``name:tag``, ``name:tb_...``,
        ``namespace/name:tag``, ``tmpl_...``)."""
        params = {"fields": ",".join(fields)} if fields else None
        result: Dict[str, Any] = Client(api_url, api_key).request(
            "GET", f"/v1/templates/refs/{ref}", params=params
        )
        return result


def _list(packages: Union[str, Sequence[str]]) -> List[str]:
    items = [packages] if isinstance(packages, str) else list(packages)
    if not items or not all(isinstance(p, str) and p.strip() for p in items):
        raise ValueError("a non-empty list of package names is required")
    return items


def _resolve_secrets(
    secrets: Mapping[str, BuildSecret], include_values: bool
) -> List[Dict[str, str]]:
    """Secrets as ``[{id, value}]``; ``{"source": "env", "name": X}`` and
    ``{"source": "file", "path": P}`` are resolved here, before anything is sent."""
    out = []
    for secret_id, spec in secrets.items():
        if isinstance(spec, str):
            value = spec
        elif spec.get("source") == "env":
            env_name = spec.get("env") or spec.get("name") or secret_id
            if env_name not in os.environ:
                raise ValueError(f"build secret {secret_id}: ${env_name} is not set")
            value = os.environ[env_name]
        elif spec.get("source") == "file":
            with open(spec["path"], encoding="utf-8") as f:
                value = f.read()
        else:
            value = spec.get("value", "")
        out.append({"id": secret_id, "value": value if include_values else "<redacted>"})
    return out


__all__ = ["Template"]
