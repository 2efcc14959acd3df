//! A build request body checked against the rules that span its fields, into a
//! [`BuildDefinition`] and its [`RequestSecrets`].

use std::collections::BTreeMap;

use nullspace_api::request::{BaseKind, BaseSpec, ReadinessKind, ReadinessSpec};
use nullspace_api::{BuildBackend, BuildRequestBody, ContextManifest, RequestError, Step};

use crate::declarative::copy_sources;
use crate::dockerfile::{valid_context_name, BuildkitPolicy};
use crate::request::{check_disk_mb, parse_readiness, validate_name, validate_tag, BaseSelector};

use super::buildkit::{checked, request_error};
use super::secrets::{base_image_credentials, build_secret_values, registry_credentials};
use super::{Base, BuildDefinition, RequestLimits, RequestSecrets};

/// Checks `body` and splits it into the definition (stored, replayed by retries) and the
/// request-time secrets (never stored). `policy` is what Dockerfiles may do.
pub fn definition_from_body(
    body: BuildRequestBody,
    limits: &RequestLimits,
    policy: &BuildkitPolicy,
) -> Result<(BuildDefinition, RequestSecrets), RequestError> {
    // Empty strings, lists and objects count as absent, as they always have.
    let body = without_empty_fields(body);
    let name = match (body.name.clone(), body.alias.clone()) {
        (Some(name), _) | (None, Some(name)) => name,
        (None, None) => generated_name(),
    };
    validate_name(&name).map_err(request_error)?;
    let tags = checked_tags(body.tags.clone(), "tags")?;
    let base = base_of(&body)?;
    if let Some(disk) = body.disk_mb {
        check_disk_mb(disk).map_err(request_error)?;
    }
    use crate::build_vm::{MAX_CPU_COUNT, MEMORY_MB_RANGE};
    if let Some(cpus) = body.cpu_count.filter(|c| !(1..=MAX_CPU_COUNT).contains(c)) {
        return Err(RequestError::invalid(
            "cpu_count",
            format!("{cpus} is out of range 1..={MAX_CPU_COUNT}"),
        ));
    }
    if let Some(memory) = body.memory_mb.filter(|m| !MEMORY_MB_RANGE.contains(m)) {
        return Err(RequestError::invalid(
            "memory_mb",
            format!(
                "{memory} is out of range {}..={} MiB",
                MEMORY_MB_RANGE.start(),
                MEMORY_MB_RANGE.end()
            ),
        ));
    }
    let steps = declared_steps(&body);
    let requested_backend = body.build_backend;
    if !steps.is_empty() {
        let field = [
            ("steps", body.steps.is_some()),
            ("build_envs", body.build_envs.is_some()),
            ("runtime_envs", body.runtime_envs.is_some()),
            ("workdir", body.workdir.is_some()),
            ("user", body.user.is_some()),
        ]
        .into_iter()
        .find_map(|(field, given)| given.then_some(field))
        .unwrap_or("steps");
        if matches!(base, Base::Dockerfile { .. }) {
            return Err(RequestError::invalid(
                field,
                "a Dockerfile build takes no declarative steps or defaults; write them in the Dockerfile (ENV, USER, WORKDIR, RUN)",
            ));
        }
        if requested_backend == Some(BuildBackend::Native) {
            return Err(RequestError::invalid(
                "build_backend",
                "declarative steps are built with BuildKit by this server; omit build_backend or use \"buildkit\"",
            ));
        }
    }
    if requested_backend == Some(BuildBackend::Buildkit)
        && matches!(base, Base::Template { .. })
        && steps.is_empty()
    {
        return Err(RequestError::invalid(
            "build_backend",
            "a template base without steps reuses the parent's rootfs; BuildKit runs only steps on it",
        ));
    }
    let buildkit = match &base {
        // `native` is kept so that the Dockerfile checks reject it with their message.
        Base::Dockerfile { .. } => requested_backend != Some(BuildBackend::Native),
        _ => !steps.is_empty() || requested_backend == Some(BuildBackend::Buildkit),
    };
    let build_secrets = build_secret_values(body.build_secrets.as_ref())?;
    let registry_auth = registry_credentials(body.registry_auth.as_deref())?;
    if !buildkit && !matches!(base, Base::Dockerfile { .. }) {
        if !build_secrets.is_empty() {
            return Err(RequestError::invalid(
                "build_secrets",
                "native builds reject build secrets; they are for BuildKit builds (dockerfile or steps, RUN --mount=type=secret)",
            ));
        }
        if !registry_auth.is_empty() {
            return Err(RequestError::invalid(
                "registry_auth",
                "registry_auth is for BuildKit builds (dockerfile or steps); use base_image_auth for image imports",
            ));
        }
    }
    let build_context = checked_build_context(body.build_context, &base, &steps, limits)?;
    let named_contexts = checked_named_contexts(body.build_contexts, &base, limits)?;
    if body.no_start_cmd == Some(true)
        && (body.start_cmd.is_some() || body.ready_cmd.is_some() || body.readiness.is_some())
    {
        return Err(RequestError::invalid(
            "no_start_cmd",
            "cannot be combined with start_cmd, ready_cmd or readiness (nothing would run to become ready)",
        ));
    }
    if let Some(cmd) = &body.start_cmd {
        if cmd.trim().is_empty() || cmd.contains('\0') {
            return Err(RequestError::invalid(
                "start_cmd",
                "must be a non-empty command",
            ));
        }
    }
    let readiness = match (body.ready_cmd, body.readiness) {
        (Some(_), Some(_)) => {
            return Err(RequestError::invalid(
                "ready_cmd",
                "send either ready_cmd or readiness, not both",
            ))
        }
        (Some(command), None) => {
            let mut spec = ReadinessSpec::new(ReadinessKind::Command);
            spec.command = Some(command);
            Some(parse_readiness(&spec, "ready_cmd").map_err(request_error)?)
        }
        (None, Some(spec)) => Some(parse_readiness(&spec, "readiness").map_err(request_error)?),
        (None, None) => None,
    };
    let auth = body
        .base_image_auth
        .as_ref()
        .map(base_image_credentials)
        .transpose()?;
    if auth.is_some() && matches!(base, Base::Template { .. }) {
        return Err(RequestError::invalid(
            "base_image_auth",
            "a template base needs no registry credentials",
        ));
    }
    let definition = BuildDefinition {
        name,
        tags,
        base,
        disk_mb: body.disk_mb,
        cpu_count: body.cpu_count,
        memory_mb: body.memory_mb,
        internet_access: body.internet_access.unwrap_or(true),
        skip_cache: body.skip_cache.unwrap_or(false),
        build_backend: if buildkit {
            BuildBackend::Buildkit
        } else {
            BuildBackend::Native
        },
        base_image_auth_kind: auth.as_ref().map(|a| a.kind().to_string()),
        steps,
        build_secret_ids: build_secrets.keys().cloned().collect(),
        registry_auth_hosts: registry_auth.iter().map(|a| a.registry.clone()).collect(),
        context_summary: build_context.as_ref().map(|c| (c.digest(), c.file_count())),
        build_context,
        named_contexts,
        start_cmd: body.start_cmd,
        no_start_cmd: body.no_start_cmd.unwrap_or(false),
        readiness,
    };
    let secrets = RequestSecrets {
        base_image_auth: auth,
        build_secrets,
        registry_auth,
    };
    checked(definition, secrets, policy)
}

/// Tags checked and de-duplicated; absent means `["default"]`, an empty list is an error.
pub(super) fn checked_tags(
    tags: Option<Vec<String>>,
    field: &str,
) -> Result<Vec<String>, RequestError> {
    let Some(given) = tags else {
        return Ok(vec!["default".to_string()]);
    };
    if given.is_empty() {
        return Err(RequestError::invalid(
            field,
            "must not be empty (leave it out for [\"default\"])",
        ));
    }
    let mut tags = Vec::new();
    for tag in given {
        validate_tag(&tag).map_err(|e| match request_error(e) {
            RequestError::Invalid(mut e) => {
                e.field = field.to_string();
                RequestError::Invalid(e)
            }
            other => other,
        })?;
        if !tags.contains(&tag) {
            tags.push(tag);
        }
    }
    Ok(tags)
}

/// The body with empty strings, lists and maps dropped (they mean "not given").
fn without_empty_fields(mut body: BuildRequestBody) -> BuildRequestBody {
    fn text(value: &mut Option<String>) {
        if value.as_deref() == Some("") {
            *value = None;
        }
    }
    text(&mut body.dockerfile);
    text(&mut body.base_image);
    text(&mut body.user);
    text(&mut body.workdir);
    text(&mut body.start_cmd);
    text(&mut body.ready_cmd);
    if body.steps.as_ref().is_some_and(Vec::is_empty) {
        body.steps = None;
    }
    for envs in [&mut body.build_envs, &mut body.runtime_envs] {
        if envs.as_ref().is_some_and(BTreeMap::is_empty) {
            *envs = None;
        }
    }
    if body.build_contexts.as_ref().is_some_and(BTreeMap::is_empty) {
        body.build_contexts = None;
    }
    if body.build_secrets.as_ref().is_some_and(|s| s.0.is_empty()) {
        body.build_secrets = None;
    }
    if body.registry_auth.as_ref().is_some_and(Vec::is_empty) {
        body.registry_auth = None;
    }
    body
}

/// The one base: `dockerfile`, `base_image` or `base`.
fn base_of(body: &BuildRequestBody) -> Result<Base, RequestError> {
    if let Some(content) = &body.dockerfile {
        if let Some(field) = [
            ("base_image", body.base_image.is_some()),
            ("base", body.base.is_some()),
        ]
        .into_iter()
        .find_map(|(field, given)| given.then_some(field))
        {
            return Err(RequestError::invalid(
                field,
                "a Dockerfile names its base in FROM; send either dockerfile or a base",
            ));
        }
        return Ok(Base::Dockerfile {
            content: content.clone(),
        });
    }
    let base = match (&body.base_image, &body.base) {
        (Some(reference), None) => {
            if reference.trim().is_empty() {
                return Err(RequestError::invalid("base_image", "must not be empty"));
            }
            Base::Image {
                selector: BaseSelector::Image(reference.clone()),
            }
        }
        (None, Some(spec)) => base_of_spec(spec)?,
        (Some(_), Some(_)) => {
            return Err(RequestError::invalid(
                "base",
                "choose one base: base_image or base, not both",
            ))
        }
        (None, None) => {
            return Err(RequestError::invalid(
                "base_image",
                "a base is required: base_image (an OCI ref) or base {kind, value}",
            ))
        }
    };
    if let Base::Image { selector } = &base {
        let reference = selector.image_reference().map_err(request_error)?;
        nullspace_oci::Reference::parse(&reference)
            .map_err(|e| RequestError::invalid("base_image", e.to_string()))?;
    }
    Ok(base)
}

/// A `base` selector object.
fn base_of_spec(spec: &BaseSpec) -> Result<Base, RequestError> {
    let value = spec.value.clone();
    let kind = serde_json::to_value(spec.kind)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    let required = |what: &str| {
        value
            .clone()
            .ok_or_else(|| RequestError::invalid("base.value", format!("{kind} needs {what}")))
    };
    let selector = match spec.kind {
        BaseKind::UbuntuImage => BaseSelector::UbuntuImage(required("a version")?),
        BaseKind::DebianImage => BaseSelector::DebianImage(value.clone()),
        BaseKind::PythonImage => BaseSelector::PythonImage(required("a version")?),
        BaseKind::NodeImage => BaseSelector::NodeImage(required("a version")?),
        BaseKind::BunImage => BaseSelector::BunImage(required("a version (e.g. \"1.2\")")?),
        BaseKind::Image => BaseSelector::Image(required("an image reference")?),
        BaseKind::BaseImage => BaseSelector::BaseImage(required("an image reference")?),
        BaseKind::Template => {
            let reference = required("a template ref")?;
            if reference.trim().is_empty() {
                return Err(RequestError::invalid(
                    "base.value",
                    "a template ref is required",
                ));
            }
            return Ok(Base::Template { reference });
        }
        BaseKind::Dockerfile => {
            return Err(RequestError::invalid(
                "base.kind",
                "send the Dockerfile's text in the dockerfile field",
            ))
        }
    };
    Ok(Base::Image { selector })
}

/// Declarative steps, with the top-level `build_envs` first and the runtime defaults last.
fn declared_steps(body: &BuildRequestBody) -> Vec<Step> {
    let mut steps = Vec::new();
    if let Some(envs) = &body.build_envs {
        steps.push(Step::SetBuildEnvs { envs: envs.clone() });
    }
    steps.extend(body.steps.iter().flatten().cloned());
    if let Some(envs) = &body.runtime_envs {
        steps.push(Step::SetRuntimeEnvs { envs: envs.clone() });
    }
    if let Some(path) = &body.workdir {
        steps.push(Step::SetWorkdir { path: path.clone() });
    }
    if let Some(user) = &body.user {
        steps.push(Step::SetUser { user: user.clone() });
    }
    steps
}

/// Refuses contexts holding more than the limit of file content.
fn check_context_size(
    field: &str,
    manifests: &[&ContextManifest],
    limits: &RequestLimits,
) -> Result<(), RequestError> {
    let total = manifests
        .iter()
        .map(|m| m.total_bytes())
        .fold(0u64, u64::saturating_add);
    let limit = limits.max_context_bytes;
    if total > limit {
        return Err(RequestError::TooLarge(nullspace_api::FieldError::new(
            field,
            format!("the build context holds {total} bytes; at most {limit} are accepted"),
        )));
    }
    Ok(())
}

/// `build_contexts`, which only Dockerfile builds read.
fn checked_named_contexts(
    contexts: Option<BTreeMap<String, ContextManifest>>,
    base: &Base,
    limits: &RequestLimits,
) -> Result<BTreeMap<String, ContextManifest>, RequestError> {
    let Some(contexts) = contexts else {
        return Ok(BTreeMap::new());
    };
    if !matches!(base, Base::Dockerfile { .. }) {
        return Err(RequestError::invalid(
            "build_contexts",
            "named contexts are for Dockerfile builds (FROM name, COPY --from=name)",
        ));
    }
    for (name, manifest) in &contexts {
        let field = format!("build_contexts.{name}");
        if !valid_context_name(name) {
            return Err(RequestError::invalid(
                field,
                "use lower-case letters, digits, '.', '_', '-' or '/'",
            ));
        }
        manifest.validate().map_err(|mut e| {
            e.field = e.field.replacen("build_context", &field, 1);
            RequestError::Invalid(e)
        })?;
    }
    check_context_size(
        "build_contexts",
        &contexts.values().collect::<Vec<_>>(),
        limits,
    )?;
    Ok(contexts)
}

/// `build_context`, checked against what reads it: every `copy` source must be in it, and
/// only copies or a Dockerfile may use one. Whether its blobs were uploaded is checked
/// against the owner's store later.
fn checked_build_context(
    manifest: Option<ContextManifest>,
    base: &Base,
    steps: &[Step],
    limits: &RequestLimits,
) -> Result<Option<ContextManifest>, RequestError> {
    let sources = copy_sources(steps);
    let Some(manifest) = manifest else {
        if let Some((field, _)) = sources.first() {
            return Err(RequestError::invalid(
                field.clone(),
                "copy reads the build context, and the request has none: upload the files and send build_context (the SDK does both)",
            ));
        }
        return Ok(None);
    };
    manifest.validate()?;
    check_context_size("build_context", &[&manifest], limits)?;
    if sources.is_empty() && !matches!(base, Base::Dockerfile { .. }) {
        return Err(RequestError::invalid(
            "build_context",
            "only copy steps and Dockerfile builds read a build context; this request has neither",
        ));
    }
    for (field, source) in &sources {
        if !manifest.covers(source) {
            return Err(RequestError::invalid(
                field.clone(),
                format!("{source:?} is not in the uploaded build context"),
            ));
        }
    }
    Ok(Some(manifest))
}

/// A name for a request that has neither `name` nor `alias`.
fn generated_name() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut rng = rand::thread_rng();
    let suffix: String = (0..8)
        .map(|_| char::from(ALPHABET[rng.gen_range(0..ALPHABET.len())]))
        .collect();
    format!("template-{suffix}")
}
#[cfg(test)]
mod tests {
    use super::*;
    use nullspace_api::SourceKind;
    use serde_json::{json, Value};

    /// A failed parse as `field: message` (the envelope's message).
    #[derive(Debug)]
    struct Failure {
        message: String,
    }

    impl std::fmt::Display for Failure {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(&self.message)
        }
    }

    fn parse_build_request(body: &Value) -> Result<(BuildDefinition, RequestSecrets), Failure> {
        let body: BuildRequestBody = nullspace_api::from_json(body.to_string().as_bytes())
            .map_err(|e| Failure {
                message: e.to_string(),
            })?;
        definition_from_body(body, &RequestLimits::default(), &BuildkitPolicy::local()).map_err(
            |e| Failure {
                message: e.to_string(),
            },
        )
    }

    #[test]
    fn a_shared_server_refuses_host_network_builds_unless_its_operator_allows_them() {
        let body = |internet: Option<bool>| {
            let mut body = json!({"name": "demo", "dockerfile": "FROM debian\nRUN true\n"});
            if let Some(internet) = internet {
                body["internet_access"] = json!(internet);
            }
            nullspace_api::from_json::<BuildRequestBody>(body.to_string().as_bytes())
        };
        let server = BuildkitPolicy::default();
        for internet in [None, Some(true)] {
            let Ok(parsed) = body(internet) else {
                panic!("body did not parse")
            };
            let error = definition_from_body(parsed, &RequestLimits::default(), &server)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(
                error.contains("internet_access") && error.contains("NULLSPACE_BUILD_HOST_NETWORK"),
                "{error}"
            );
        }
        let Ok(offline) = body(Some(false)) else {
            panic!("body did not parse")
        };
        assert!(definition_from_body(offline, &RequestLimits::default(), &server).is_ok());
        // An import runs no build steps: internet_access does not matter there.
        let import = nullspace_api::from_json::<BuildRequestBody>(
            json!({"name": "demo", "base_image": "debian"})
                .to_string()
                .as_bytes(),
        );
        let Ok(import) = import else {
            panic!("body did not parse")
        };
        assert!(definition_from_body(import, &RequestLimits::default(), &server).is_ok());
    }

    #[test]
    fn defaults_and_base_image() {
        let (d, secrets) =
            parse_build_request(&json!({"name": "demo", "base_image": "debian:bookworm"})).unwrap();
        assert_eq!(d.tags, vec!["default"]);
        assert!(d.internet_access);
        assert!(secrets.is_empty());
        assert_eq!(d.build_backend, BuildBackend::Native);
    }

    #[test]
    fn unknown_and_unsupported_fields_are_named() {
        let e =
            parse_build_request(&json!({"name": "d", "base_image": "x", "bogus": 1})).unwrap_err();
        assert!(e.message.contains("bogus"), "{e}");
        let (d, _) = parse_build_request(&json!({
            "name": "d", "base_image": "x", "start_cmd": "sleep 1",
            "readiness": {"kind": "tcp", "port": 8080, "interval_ms": 250},
        }))
        .unwrap();
        assert_eq!(d.start_cmd.as_deref(), Some("sleep 1"));
        let readiness = d.readiness.unwrap();
        assert_eq!(
            (readiness.kind.as_str(), readiness.port),
            ("tcp", Some(8080))
        );
        assert_eq!(readiness.interval_ms, 250);
        for (bad, needle) in [
            (
                json!({"kind": "http", "url": "https://localhost:8080/"}),
                "only http://",
            ),
            (
                json!({"kind": "http", "url": "http://example.com:80/"}),
                "the host must be",
            ),
            (
                json!({"kind": "http", "url": "http://localhost/"}),
                "explicit",
            ),
            (
                json!({"kind": "http", "url": "http://localhost:80/?a=1"}),
                "query",
            ),
            (json!({"kind": "tcp", "port": 0}), "readiness.port"),
            (json!({"kind": "file", "path": "rel"}), "absolute"),
            (json!({"kind": "dns"}), "readiness.kind: unknown variant"),
            (
                json!({"kind": "tcp", "port": 1, "bogus": 1}),
                "readiness.bogus",
            ),
        ] {
            let e = parse_build_request(&json!({"name": "d", "base_image": "x", "readiness": bad}))
                .unwrap_err();
            assert!(e.message.contains(needle), "{e}");
        }
        let e = parse_build_request(&json!({
            "name": "d", "base_image": "x", "ready_cmd": "true",
            "readiness": {"kind": "tcp", "port": 1},
        }))
        .unwrap_err();
        assert!(e.message.starts_with("ready_cmd"), "{e}");
        let e = parse_build_request(
            &json!({"name": "d", "base_image": "x", "steps": [{"type": "run"}]}),
        )
        .unwrap_err();
        assert!(e.message.starts_with("steps[0]"), "{e}");
        let (d, _) =
            parse_build_request(&json!({"name": "d", "base_image": "x", "steps": []})).unwrap();
        assert_eq!(d.build_backend, BuildBackend::Native);
    }

    #[test]
    fn empty_tags_are_invalid() {
        let e =
            parse_build_request(&json!({"name": "d", "base_image": "x", "tags": []})).unwrap_err();
        assert!(e.message.starts_with("tags:"));
    }

    #[test]
    fn auth_is_kept_out_of_the_definition() {
        let (d, auth) = parse_build_request(&json!({
            "name": "d", "base_image": "x",
            "base_image_auth": {"username": "u", "password": "hunter2"}
        }))
        .unwrap();
        assert_eq!(d.base_image_auth_kind.as_deref(), Some("basic"));
        assert!(!serde_json::to_string(&d).unwrap().contains("hunter2"));
        assert!(!format!("{auth:?}").contains("hunter2"));
    }

    #[test]
    fn dockerfile_and_steps() {
        let (d, secrets) = parse_build_request(&json!({
            "name": "d",
            "dockerfile": "FROM debian:bookworm\nRUN --mount=type=secret,id=tok cat /run/secrets/tok\n",
            "build_secrets": [{"id": "tok", "value": "hunter2"}],
        }))
        .unwrap();
        assert_eq!(d.build_backend, BuildBackend::Buildkit);
        assert_eq!(d.source_kind(), SourceKind::Dockerfile);
        assert_eq!(d.build_secret_ids, vec!["tok"]);
        assert!(!serde_json::to_string(&d).unwrap().contains("hunter2"));
        assert!(!format!("{secrets:?}").contains("hunter2"));
        let e = parse_build_request(&json!({
            "name": "d",
            "dockerfile": "FROM debian:bookworm\nRUN --mount=type=secret,id=tok cat /run/secrets/tok\n",
        }))
        .unwrap_err();
        assert!(e.message.contains("tok"), "{e}");
        let e = parse_build_request(&json!({
            "name": "d", "dockerfile": "FROM debian:bookworm\n", "build_backend": "native",
        }))
        .unwrap_err();
        assert!(e.message.starts_with("build_backend"), "{e}");
        let e = parse_build_request(&json!({
            "name": "d", "base_image": "debian:bookworm", "build_secrets": {"a": "b"},
        }))
        .unwrap_err();
        assert!(e.message.starts_with("build_secrets"), "{e}");
        let e = parse_build_request(&json!({
            "name": "d", "base_image": "debian:bookworm",
            "steps": [{"type": "copy", "src": "a", "dst": "/a"}],
        }))
        .unwrap_err();
        assert!(
            e.message
                .starts_with("steps[0].src: copy reads the build context"),
            "{e}"
        );
        let digest = format!("sha256:{}", "a".repeat(64));
        let context = json!({"entries": [
            {"type": "file", "path": "dir/app.py", "digest": digest, "size": 3, "mode": 420},
        ]});
        let e = parse_build_request(&json!({
            "name": "d", "base_image": "debian:bookworm",
            "steps": [{"type": "copy", "src": "./other", "dst": "/a"}],
            "build_context": context,
        }))
        .unwrap_err();
        assert!(
            e.message.contains("not in the uploaded build context"),
            "{e}"
        );
        let (d, _) = parse_build_request(&json!({
            "name": "d", "base_image": "debian:bookworm",
            "steps": [{"type": "copy", "src": "./dir", "dst": "/a"}],
            "build_context": context,
        }))
        .unwrap();
        assert_eq!(d.build_context.map(|c| c.file_count()), Some(1));
        let e = parse_build_request(&json!({
            "name": "d", "base_image": "debian:bookworm", "build_context": context,
        }))
        .unwrap_err();
        assert!(e.message.starts_with("build_context:"), "{e}");
        let (d, _) = parse_build_request(&json!({
            "name": "d", "base": {"kind": "debian_image"},
            "steps": [{"type": "run_cmd", "cmd": "echo hi > /hello"}],
            "workdir": "/srv", "runtime_envs": {"A": "1"},
        }))
        .unwrap();
        assert_eq!(d.build_backend, BuildBackend::Buildkit);
        assert_eq!(d.source_kind(), SourceKind::Declarative);
        assert_eq!(d.steps.len(), 3);
    }

    /// `BUILDKIT_SYNTAX` as a build arg would make BuildKit pull and run a frontend image of
    /// the tenant's choosing, around every check on the rendered Dockerfile.
    #[test]
    fn buildkit_build_args_are_refused() {
        for key in [
            "BUILDKIT_SYNTAX",
            "buildkit_cache_mount_ns",
            "BuildKit_Inline_Cache",
        ] {
            let e = parse_build_request(&json!({
                "name": "d", "base": {"kind": "debian_image"},
                "build_envs": {key: "docker.io/evil/frontend"},
            }))
            .unwrap_err();
            assert!(
                e.message.contains(key) && e.message.contains("BUILDKIT_"),
                "{e}"
            );
        }
        // An empty base_image beside a Dockerfile is absent, as it always was.
        let (d, _) = parse_build_request(&json!({
            "name": "d", "dockerfile": "FROM debian:bookworm\n", "base_image": "",
        }))
        .unwrap();
        assert_eq!(d.source_kind(), SourceKind::Dockerfile);
    }

    #[test]
    fn selectors_parse() {
        let (d, _) = parse_build_request(
            &json!({"name": "d", "base": {"kind": "bun_image", "value": "1.2"}}),
        )
        .unwrap();
        assert_eq!(d.base_description(), "oven/bun:1.2");
        let e =
            parse_build_request(&json!({"name": "d", "base": {"kind": "bun_image"}})).unwrap_err();
        assert!(e.message.contains("base.value"));
    }
}
