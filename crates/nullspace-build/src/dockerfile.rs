//! Dockerfile builds: what the user sends (the Dockerfile, its context, named contexts, build
//! secrets, registry credentials), the server's policy, and the checks that run before BuildKit
//! does.
//!
//! The checks read the Dockerfile with a small parser that knows what we must police: parser
//! directives (`# syntax=`, `# escape=`), line continuations, comments, heredocs, `FROM` images
//! and stage names, and the flags of `RUN` (`--mount`, `--network`, `--security`). Everything
//! else is BuildKit's business.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::BuildError;

/// The build backend a request names (`native` rejects Dockerfiles).
pub use nullspace_api::BuildBackend;

/// Where the Dockerfile text comes from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DockerfileSource {
    /// Inline text (`dockerfile` in the API, `from_dockerfile_content` in the SDK).
    Content(String),
    /// A file on this machine (`--from-dockerfile PATH`).
    Path(PathBuf),
}

/// A secret's bytes: never printed, serialised, logged or hashed into a cache key.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretValue(Vec<u8>);

impl SecretValue {
    /// Wraps bytes.
    pub fn new(bytes: impl Into<Vec<u8>>) -> SecretValue {
        SecretValue(bytes.into())
    }

    /// The bytes, for writing the temporary secret file.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretValue(<redacted>)")
    }
}

impl<'de> Deserialize<'de> for SecretValue {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(SecretValue::new)
    }
}

/// Where a build secret's value comes from; the client resolves it before submitting.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(tag = "source", rename_all = "snake_case")]
pub enum SecretSource {
    /// The value itself.
    Value {
        /// The value.
        value: SecretValue,
    },
    /// An environment variable of the client.
    Env {
        /// The variable's name.
        env: String,
    },
    /// A file on the client.
    File {
        /// The file.
        path: PathBuf,
    },
}

impl SecretSource {
    /// Reads the value (client side). The error names the secret id and the variable or file,
    /// never the value.
    pub fn resolve(&self, id: &str) -> Result<SecretValue, BuildError> {
        let field = format!("build_secrets.{id}");
        match self {
            SecretSource::Value { value } => Ok(value.clone()),
            SecretSource::Env { env } => std::env::var_os(env)
                .map(|v| SecretValue::new(v.into_encoded_bytes()))
                .ok_or_else(|| BuildError::InvalidRequest {
                    field,
                    message: format!("environment variable {env} is not set"),
                }),
            SecretSource::File { path } => {
                std::fs::read(path)
                    .map(SecretValue::new)
                    .map_err(|e| BuildError::InvalidRequest {
                        field,
                        message: format!("reading {}: {e}", path.display()),
                    })
            }
        }
    }
}

/// Credentials for one registry a Dockerfile pulls from (`registry_auth`).
#[derive(Clone, PartialEq, Eq, Deserialize)]
pub struct RegistryAuth {
    /// Registry host (`registry.example.com`, `127.0.0.1:5001`); must match a `FROM` host.
    pub registry: String,
    /// User name.
    pub username: String,
    /// Password or token.
    pub password: SecretValue,
}

impl fmt::Debug for RegistryAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistryAuth")
            .field("registry", &self.registry)
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// What the server allows Dockerfiles to do. Default: no SSH forwarding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BuildkitPolicy {
    /// Whether `RUN --mount=type=ssh` may be used (the client's agent is forwarded).
    pub allow_ssh: bool,
    /// The `--ssh` value passed when allowed (`default` = `$SSH_AUTH_SOCK`).
    pub ssh_forward: String,
}

impl Default for BuildkitPolicy {
    fn default() -> Self {
        BuildkitPolicy {
            allow_ssh: false,
            ssh_forward: "default".into(),
        }
    }
}

/// Whether the build came from a Dockerfile or from declarative steps rendered into one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DockerfileKind {
    /// A user's Dockerfile.
    Dockerfile,
    /// Declarative steps rendered by [`crate::declarative::render`].
    Declarative,
}

impl DockerfileKind {
    /// The template's `source.kind`.
    pub fn as_str(self) -> &'static str {
        match self {
            DockerfileKind::Dockerfile => "dockerfile",
            DockerfileKind::Declarative => "declarative",
        }
    }
}

/// A Dockerfile build, beside the [`crate::BuildRequest`] that names, tags and sizes it.
#[derive(Clone, Debug)]
pub struct DockerfileSpec {
    /// The Dockerfile.
    pub dockerfile: DockerfileSource,
    /// The build context. Default: the Dockerfile's folder for a path, an empty dir for inline
    /// text. BuildKit applies its `.dockerignore`.
    pub context_dir: Option<PathBuf>,
    /// Named contexts (`--build-context NAME=DIR`), usable as `FROM NAME` / `COPY --from=NAME`.
    pub named_contexts: BTreeMap<String, PathBuf>,
    /// Named contexts that are images in an OCI layout (`NAME=oci-layout://DIR@DIGEST`), such
    /// as a template's image for steps on a template base.
    pub image_contexts: BTreeMap<String, String>,
    /// Build secrets by id (values already resolved), for `RUN --mount=type=secret,id=ID`.
    pub build_secrets: BTreeMap<String, SecretValue>,
    /// Credentials per registry; each must match a `FROM` host.
    pub registry_auth: Vec<RegistryAuth>,
    /// Build arguments (`--build-arg`): build envs, not persisted in the image's env.
    pub build_args: BTreeMap<String, String>,
    /// The backend the request named, if any; `native` is rejected.
    pub build_backend: Option<BuildBackend>,
    /// Source kind recorded in `template.json`.
    pub kind: DockerfileKind,
}

impl DockerfileSpec {
    /// A spec for `dockerfile` with everything else empty.
    pub fn new(dockerfile: DockerfileSource) -> DockerfileSpec {
        DockerfileSpec {
            dockerfile,
            context_dir: None,
            named_contexts: BTreeMap::new(),
            image_contexts: BTreeMap::new(),
            build_secrets: BTreeMap::new(),
            registry_auth: Vec::new(),
            build_args: BTreeMap::new(),
            build_backend: None,
            kind: DockerfileKind::Dockerfile,
        }
    }

    /// The Dockerfile's text.
    pub fn text(&self) -> Result<String, BuildError> {
        match &self.dockerfile {
            DockerfileSource::Content(text) => Ok(text.clone()),
            DockerfileSource::Path(path) => {
                std::fs::read_to_string(path).map_err(|e| BuildError::InvalidRequest {
                    field: "dockerfile".into(),
                    message: format!("reading {}: {e}", path.display()),
                })
            }
        }
    }

    /// The context dir: explicit, else the Dockerfile's folder (`None` for inline text with no
    /// context: the build gets an empty one).
    pub fn effective_context(&self) -> Option<PathBuf> {
        self.context_dir.clone().or_else(|| match &self.dockerfile {
            DockerfileSource::Path(p) => Some(
                p.parent()
                    .filter(|d| !d.as_os_str().is_empty())
                    .map_or_else(|| PathBuf::from("."), Path::to_path_buf),
            ),
            DockerfileSource::Content(_) => None,
        })
    }

    /// Every check that can run before BuildKit: backend, context dirs, names, and the
    /// Dockerfile against secrets, policy, credentials and the frontend's features.
    /// `heredocs_supported` is `None` when not yet known (the check is then skipped).
    pub fn validate(
        &self,
        policy: &BuildkitPolicy,
        heredocs_supported: Option<bool>,
    ) -> Result<Dockerfile, BuildError> {
        if self.build_backend == Some(BuildBackend::Native) {
            return Err(invalid(
                "build_backend",
                "Dockerfile builds use BuildKit; \"native\" is rejected (omit build_backend or use \"buildkit\")",
            ));
        }
        if let Some(dir) = self.effective_context() {
            check_dir("build_context", &dir)?;
        }
        for (name, dir) in &self.named_contexts {
            if !valid_context_name(name) {
                return Err(invalid(
                    "build_contexts",
                    format!("{name:?}: use lower-case letters, digits, '.', '_', '-' or '/'"),
                ));
            }
            check_dir(&format!("build_contexts.{name}"), dir)?;
        }
        for name in self.image_contexts.keys() {
            if !valid_context_name(name) || self.named_contexts.contains_key(name) {
                return Err(invalid(
                    "build_contexts",
                    format!("{name:?}: an invalid or duplicate context name"),
                ));
            }
        }
        for id in self.build_secrets.keys() {
            if !valid_secret_id(id) {
                return Err(invalid(
                    "build_secrets",
                    format!("{id:?}: use 1-128 letters, digits, '.', '_' or '-'"),
                ));
            }
        }
        for key in self.build_args.keys() {
            if !valid_env_key(key) {
                return Err(invalid(
                    "build_envs",
                    format!("{key:?} is not a valid variable name"),
                ));
            }
        }
        let text = self.text()?;
        let parsed = Dockerfile::parse(&text)?;
        parsed.check(self, policy, heredocs_supported)?;
        Ok(parsed)
    }
}

fn invalid(field: &str, message: impl Into<String>) -> BuildError {
    BuildError::InvalidRequest {
        field: field.into(),
        message: message.into(),
    }
}

fn check_dir(field: &str, dir: &Path) -> Result<(), BuildError> {
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(invalid(
            field,
            format!("{} is not a directory", dir.display()),
        )),
        Err(e) => Err(invalid(field, format!("{}: {e}", dir.display()))),
    }
}

/// Whether `name` can name a BuildKit build context (`FROM name`, `COPY --from=name`).
pub fn valid_context_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-/".contains(c))
}

fn valid_secret_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
}

/// A shell/Dockerfile variable name: `[A-Za-z_][A-Za-z0-9_]*`.
pub fn valid_env_key(key: &str) -> bool {
    key.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// One instruction of a Dockerfile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Instruction {
    /// 1-based line where it starts.
    pub line: usize,
    /// The keyword, upper-cased (`RUN`).
    pub keyword: String,
    /// Everything after the keyword, continuation lines joined.
    pub args: String,
    /// Heredoc names it opens (`<<EOF` → `EOF`).
    pub heredocs: Vec<String>,
}

/// The parts of a Dockerfile we police.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dockerfile {
    /// Instructions in order.
    pub instructions: Vec<Instruction>,
    /// Line of a `# syntax=` directive, which we drop (it would pull a frontend image).
    pub syntax_directive: Option<usize>,
    /// The text BuildKit gets: the input minus any `# syntax=` directive.
    pub effective_text: String,
}

/// A `FROM` line's image and the stage it names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FromLine {
    /// 1-based line.
    pub line: usize,
    /// The image (or earlier stage, or named context), ARG defaults substituted.
    pub image: String,
    /// `AS name`, lower-cased.
    pub stage: Option<String>,
}

impl Dockerfile {
    /// Splits `text` into instructions. Errors name the line.
    pub fn parse(text: &str) -> Result<Dockerfile, BuildError> {
        let lines: Vec<&str> = text.lines().collect();
        let mut escape = '\\';
        let mut syntax_directive = None;
        let mut index = 0;
        // Parser directives: `# key=value` lines at the very top.
        while let Some(line) = lines.get(index) {
            let Some(rest) = line.trim().strip_prefix('#') else {
                break;
            };
            let Some((key, value)) = rest.split_once('=') else {
                break;
            };
            let key = key.trim().to_ascii_lowercase();
            match key.as_str() {
                "syntax" => syntax_directive = Some(index + 1),
                "escape" => {
                    escape = match value.trim() {
                        "`" => '`',
                        "\\" => '\\',
                        other => {
                            return Err(invalid(
                                "dockerfile",
                                format!("line {}: invalid escape directive {other:?}", index + 1),
                            ))
                        }
                    }
                }
                "check" => {}
                _ => break,
            }
            index += 1;
        }
        let mut instructions = Vec::new();
        while index < lines.len() {
            let start = index;
            let first = lines[index].trim();
            index += 1;
            if first.is_empty() || first.starts_with('#') {
                continue;
            }
            let mut joined = String::new();
            let mut current = first.to_string();
            loop {
                let trimmed = current.trim_end();
                if let Some(body) = trimmed.strip_suffix(escape) {
                    joined.push_str(body);
                    // Continuation: comment and empty lines inside are skipped.
                    let mut next = None;
                    while index < lines.len() {
                        let candidate = lines[index].trim_start();
                        index += 1;
                        if candidate.starts_with('#') || candidate.trim().is_empty() {
                            continue;
                        }
                        next = Some(candidate.to_string());
                        break;
                    }
                    match next {
                        Some(n) => current = n,
                        None => break,
                    }
                } else {
                    joined.push_str(trimmed);
                    break;
                }
            }
            let (keyword, args) = match joined.split_once(char::is_whitespace) {
                Some((k, a)) => (k.to_ascii_uppercase(), a.trim().to_string()),
                None => (joined.to_ascii_uppercase(), String::new()),
            };
            let heredocs = if matches!(keyword.as_str(), "RUN" | "COPY" | "ADD")
                && !args.trim_start().starts_with('[')
            {
                heredoc_names(&args)
            } else {
                Vec::new()
            };
            for name in &heredocs {
                // The body runs to a line equal to the name (leading tabs allowed for `<<-`).
                let mut closed = false;
                while index < lines.len() {
                    let body = lines[index];
                    index += 1;
                    if body.trim_start_matches('\t').trim_end() == name {
                        closed = true;
                        break;
                    }
                }
                if !closed {
                    return Err(invalid(
                        "dockerfile",
                        format!("line {}: heredoc <<{name} is never closed", start + 1),
                    ));
                }
            }
            instructions.push(Instruction {
                line: start + 1,
                keyword,
                args,
                heredocs,
            });
        }
        if !instructions.iter().any(|i| i.keyword == "FROM") {
            return Err(invalid("dockerfile", "no FROM instruction"));
        }
        let effective_text = match syntax_directive {
            Some(line) => text
                .lines()
                .enumerate()
                .map(|(i, l)| if i + 1 == line { "" } else { l })
                .collect::<Vec<_>>()
                .join("\n"),
            None => text.to_string(),
        };
        Ok(Dockerfile {
            instructions,
            syntax_directive,
            effective_text,
        })
    }

    /// `FROM` lines in order, with global `ARG` defaults substituted.
    pub fn from_lines(&self) -> Vec<FromLine> {
        let mut args: BTreeMap<String, String> = BTreeMap::new();
        let mut seen_from = false;
        let mut out = Vec::new();
        for instruction in &self.instructions {
            match instruction.keyword.as_str() {
                "ARG" if !seen_from => {
                    for word in instruction.args.split_whitespace() {
                        if let Some((k, v)) = word.split_once('=') {
                            args.insert(k.to_string(), v.trim_matches('"').to_string());
                        }
                    }
                }
                "FROM" => {
                    seen_from = true;
                    let words: Vec<&str> = instruction
                        .args
                        .split_whitespace()
                        .filter(|w| !w.starts_with("--"))
                        .collect();
                    let image = substitute(words.first().copied().unwrap_or(""), &args);
                    let stage = match words.as_slice() {
                        [_, as_kw, name, ..] if as_kw.eq_ignore_ascii_case("as") => {
                            Some(name.to_ascii_lowercase())
                        }
                        _ => None,
                    };
                    out.push(FromLine {
                        line: instruction.line,
                        image,
                        stage,
                    });
                }
                _ => {}
            }
        }
        out
    }

    /// Registry hosts of the `FROM` images that are neither earlier stages, named contexts nor
    /// `scratch` (unresolvable `$VAR` images are left out).
    pub fn from_hosts(&self, named_contexts: &BTreeMap<String, PathBuf>) -> BTreeSet<String> {
        self.registry_images(named_contexts)
            .into_iter()
            .map(|(_, r)| r.registry)
            .collect()
    }

    /// The registry images `FROM` names, with their lines.
    pub fn registry_images(
        &self,
        named_contexts: &BTreeMap<String, PathBuf>,
    ) -> Vec<(usize, nullspace_oci::Reference)> {
        let mut stages = BTreeSet::new();
        let mut out = Vec::new();
        for from in self.from_lines() {
            let lower = from.image.to_ascii_lowercase();
            if !(stages.contains(&lower)
                || named_contexts.contains_key(&from.image)
                || lower == "scratch"
                || from.image.contains('$'))
            {
                if let Ok(reference) = nullspace_oci::Reference::parse(&from.image) {
                    out.push((from.line, reference));
                }
            }
            if let Some(stage) = from.stage {
                stages.insert(stage);
            }
        }
        out
    }

    /// The image the final stage starts from, following stage names back to a registry image.
    pub fn final_base(&self) -> Option<String> {
        let froms = self.from_lines();
        let mut image = froms.last()?.image.clone();
        for from in froms.iter().rev() {
            if from.stage.as_deref() == Some(image.to_ascii_lowercase().as_str()) {
                image = from.image.clone();
            }
        }
        Some(image)
    }

    /// Checks the instructions against the spec and the policy.
    fn check(
        &self,
        spec: &DockerfileSpec,
        policy: &BuildkitPolicy,
        heredocs_supported: Option<bool>,
    ) -> Result<(), BuildError> {
        let at =
            |line: usize, message: String| invalid("dockerfile", format!("line {line}: {message}"));
        for instruction in &self.instructions {
            if !instruction.heredocs.is_empty() && heredocs_supported == Some(false) {
                return Err(at(
                    instruction.line,
                    format!(
                        "{} uses a heredoc (<<{}), which the configured BuildKit Dockerfile frontend does not support",
                        instruction.keyword, instruction.heredocs[0]
                    ),
                ));
            }
            if instruction.keyword != "RUN" {
                continue;
            }
            for flag in leading_flags(&instruction.args) {
                let (name, value) = flag.split_once('=').unwrap_or((flag.as_str(), ""));
                match name {
                    "--mount" => check_mount(value, spec, policy)
                        .map_err(|m| at(instruction.line, format!("RUN --mount={value}: {m}")))?,
                    "--network" => {
                        if value != "none" && value != "default" {
                            return Err(at(
                                instruction.line,
                                format!("RUN --network={value} is not allowed (the build's network is set by internet_access)"),
                            ));
                        }
                    }
                    "--security" => {
                        if value != "sandbox" {
                            return Err(at(
                                instruction.line,
                                format!("RUN --security={value} is not allowed"),
                            ));
                        }
                    }
                    other => return Err(at(instruction.line, format!("unknown RUN flag {other}"))),
                }
            }
        }
        let mut contexts = spec.named_contexts.clone();
        contexts.extend(
            spec.image_contexts
                .keys()
                .map(|k| (k.clone(), PathBuf::new())),
        );
        let hosts = self.from_hosts(&contexts);
        for auth in &spec.registry_auth {
            let wanted = nullspace_oci::reference::normalize_registry(auth.registry.trim());
            if !hosts.contains(&wanted) {
                return Err(invalid(
                    "registry_auth",
                    format!(
                        "registry {:?} matches no FROM host in the Dockerfile (FROM hosts: {})",
                        auth.registry,
                        if hosts.is_empty() {
                            "none".to_string()
                        } else {
                            hosts.iter().cloned().collect::<Vec<_>>().join(", ")
                        }
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// `<<EOF`, `<<-EOF`, `<<"EOF"`, `<<'EOF'` names in an instruction's arguments, in order.
fn heredoc_names(args: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = args;
    while let Some(pos) = rest.find("<<") {
        let mut after = &rest[pos + 2..];
        after = after.strip_prefix('-').unwrap_or(after);
        let quote = after.chars().next().filter(|c| *c == '"' || *c == '\'');
        let body = match quote {
            Some(q) => after[1..].split(q).next().unwrap_or(""),
            None => after
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .next()
                .unwrap_or(""),
        };
        if !body.is_empty() && body.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_') {
            names.push(body.to_string());
        }
        rest = &rest[pos + 2..];
    }
    names
}

/// The `--flag[=value]` words at the start of an instruction's arguments.
fn leading_flags(args: &str) -> Vec<String> {
    args.split_whitespace()
        .take_while(|w| w.starts_with("--"))
        .map(str::to_string)
        .collect()
}

/// Checks one `--mount=` value; the message is prefixed with the line by the caller.
fn check_mount(value: &str, spec: &DockerfileSpec, policy: &BuildkitPolicy) -> Result<(), String> {
    let mut fields: BTreeMap<String, String> = BTreeMap::new();
    for part in value.split(',') {
        let (k, v) = part.split_once('=').unwrap_or((part, ""));
        fields.insert(
            k.trim().to_ascii_lowercase(),
            v.trim().trim_matches('"').to_string(),
        );
    }
    let kind = fields.get("type").map(String::as_str).unwrap_or("bind");
    match kind {
        "bind" | "cache" | "tmpfs" => Ok(()),
        "secret" => {
            let id = fields
                .get("id")
                .filter(|s| !s.is_empty())
                .cloned()
                .or_else(|| {
                    fields
                        .get("target")
                        .or_else(|| fields.get("dst"))
                        .or_else(|| fields.get("destination"))
                        .and_then(|t| t.rsplit('/').next().map(str::to_string))
                })
                .filter(|s| !s.is_empty())
                .ok_or_else(|| "a secret mount needs id= (or a target)".to_string())?;
            if spec.build_secrets.contains_key(&id) {
                Ok(())
            } else {
                Err(format!(
                    "no build secret {id:?} was supplied (add it to build_secrets, e.g. --build-secret-env {id}=VAR)"
                ))
            }
        }
        "ssh" => {
            if policy.allow_ssh {
                Ok(())
            } else {
                Err("SSH agent forwarding is not allowed by this server's policy".to_string())
            }
        }
        other => Err(format!("unknown mount type {other:?}")),
    }
}

/// Replaces `$NAME` and `${NAME}` with known values (others stay as they are).
fn substitute(word: &str, args: &BTreeMap<String, String>) -> String {
    let mut out = word.to_string();
    for (k, v) in args {
        out = out
            .replace(&format!("${{{k}}}"), v)
            .replace(&format!("${k}"), v);
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn spec(text: &str) -> DockerfileSpec {
        DockerfileSpec::new(DockerfileSource::Content(text.into()))
    }

    fn err(spec: &DockerfileSpec) -> String {
        spec.validate(&BuildkitPolicy::default(), Some(true))
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn parses_continuations_comments_and_heredocs() {
        let text = "# syntax=docker/dockerfile:1\nARG BASE=debian:bookworm\nFROM $BASE AS build\nRUN echo a \\\n# a comment\n  && echo b\nRUN <<EOF\nFROM not-an-instruction\nEOF\nCOPY <<-'X' /f\n\tbody\n\tX\nFROM build\n";
        let d = Dockerfile::parse(text).unwrap();
        let kw: Vec<_> = d
            .instructions
            .iter()
            .map(|i| (i.line, i.keyword.as_str()))
            .collect();
        assert_eq!(
            kw,
            [
                (2, "ARG"),
                (3, "FROM"),
                (4, "RUN"),
                (7, "RUN"),
                (10, "COPY"),
                (13, "FROM")
            ]
        );
        assert_eq!(d.instructions[2].args, "echo a && echo b");
        assert_eq!(d.instructions[3].heredocs, ["EOF"]);
        assert_eq!(d.instructions[4].heredocs, ["X"]);
        assert_eq!(d.syntax_directive, Some(1));
        assert!(!d.effective_text.contains("syntax"));
        assert_eq!(d.final_base().as_deref(), Some("debian:bookworm"));
        let froms = d.from_lines();
        assert_eq!(froms[0].stage.as_deref(), Some("build"));
        assert_eq!(
            d.from_hosts(&BTreeMap::new())
                .into_iter()
                .collect::<Vec<_>>(),
            ["docker.io"]
        );
    }

    #[test]
    fn native_backend_is_rejected() {
        let mut s = spec("FROM debian:bookworm\n");
        s.build_backend = Some(BuildBackend::Native);
        assert!(err(&s).contains("build_backend"));
    }

    #[test]
    fn secret_mounts_need_their_secret() {
        let s =
            spec("FROM debian:bookworm\n\nRUN --mount=type=secret,id=npm cat /run/secrets/npm\n");
        let e = err(&s);
        assert!(e.contains("line 3") && e.contains("\"npm\""), "{e}");
        let mut s = s;
        s.build_secrets.insert("npm".into(), SecretValue::new("x"));
        assert!(s.validate(&BuildkitPolicy::default(), Some(true)).is_ok());
        let t =
            spec("FROM debian:bookworm\nRUN --mount=type=secret,target=/run/secrets/tok true\n");
        assert!(err(&t).contains("\"tok\""));
    }

    #[test]
    fn ssh_mounts_follow_the_policy() {
        let s = spec("FROM debian:bookworm\nRUN --mount=type=ssh ssh-add -l\n");
        assert!(err(&s).contains("line 2"));
        let policy = BuildkitPolicy {
            allow_ssh: true,
            ..BuildkitPolicy::default()
        };
        assert!(s.validate(&policy, Some(true)).is_ok());
    }

    #[test]
    fn other_mounts_are_allowed() {
        let s = spec("FROM debian:bookworm\nRUN --mount=type=cache,target=/c --mount=type=tmpfs,target=/t --mount=target=/b true\n");
        assert!(s.validate(&BuildkitPolicy::default(), Some(true)).is_ok());
        let bad = spec("FROM debian:bookworm\nRUN --network=host true\n");
        assert!(err(&bad).contains("--network=host"));
    }

    #[test]
    fn registry_auth_must_match_a_from_host() {
        let mut s = spec("FROM reg.example:5000/a/b AS x\nFROM x\nFROM debian\n");
        s.registry_auth.push(RegistryAuth {
            registry: "other.example".into(),
            username: "u".into(),
            password: SecretValue::new("hunter2"),
        });
        let e = err(&s);
        assert!(
            e.contains("other.example") && e.contains("reg.example:5000"),
            "{e}"
        );
        assert!(!e.contains("hunter2"));
        s.registry_auth[0].registry = "reg.example:5000".into();
        assert!(s.validate(&BuildkitPolicy::default(), Some(true)).is_ok());
        s.registry_auth[0].registry = "index.docker.io".into();
        assert!(s.validate(&BuildkitPolicy::default(), Some(true)).is_ok());
    }

    #[test]
    fn heredocs_need_frontend_support() {
        let s = spec("FROM debian\nRUN <<EOF\ntrue\nEOF\n");
        let e = s
            .validate(&BuildkitPolicy::default(), Some(false))
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 2") && e.contains("heredoc"), "{e}");
        let open = spec("FROM debian\nRUN <<EOF\ntrue\n");
        assert!(err(&open).contains("never closed"));
    }

    #[test]
    fn secret_debug_is_redacted() {
        let v = SecretValue::new("hunter2");
        assert!(!format!("{v:?}").contains("hunter2"));
    }
}
