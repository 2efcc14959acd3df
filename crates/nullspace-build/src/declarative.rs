//! Declarative builder steps (`apt_install`, `copy`, `run_cmd`, ...) and their rendering into a
//! Dockerfile that BuildKit evaluates.
//!
//! Rendering rules, chosen so that no user string is ever read as Dockerfile syntax:
//! - commands run in JSON exec form, `RUN ["/bin/sh","-c","..."]`: no heredoc or line
//!   continuation is recognised inside them, and each argument is POSIX-quoted;
//! - `COPY` uses the JSON form with `$` and `\` escaped (the Dockerfile expands variables in it);
//! - `WORKDIR` and `ENV` values are double-quoted with `"`, `$` and `\` escaped; newlines are
//!   rejected;
//! - build envs become `ARG NAME` lines whose values travel as `--build-arg`, so they never land
//!   in the image's `Env` (BuildKit may still name them in the image history of the `RUN`s that
//!   saw them; see the module docs of [`crate::engine_dockerfile`]);
//! - runtime envs become `ENV` lines and so the image's (and template's) env defaults.

use std::collections::BTreeMap;

use serde::Serialize;

use nullspace_rootfs::shell::quote;

use crate::dockerfile::{check_build_arg_key, valid_env_key};
use crate::error::BuildError;

pub use nullspace_api::steps::{CopyItem, Step};

/// The build arg behind [`Step::SkipCache`].
pub const CACHE_BOUNDARY_ARG: &str = "NULLSPACE_CACHE_BOUNDARY";

/// A value no earlier build used: nanoseconds since the epoch and the process id.
fn cache_boundary_nonce() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("{nanos:x}-{:x}", std::process::id())
}

/// A rendered declarative build: the Dockerfile and the build args it expects.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RenderedDockerfile {
    /// Dockerfile text (holds build-env names, never their values).
    pub dockerfile: String,
    /// `--build-arg` values for the build envs (not part of plans or logs).
    #[serde(skip)]
    pub build_args: BTreeMap<String, String>,
    /// Names of the build envs, for plans.
    pub build_env_keys: Vec<String>,
    /// Steps rendered.
    pub steps: usize,
}

/// Renders `steps` on top of `base_image` (from the base selector). Errors name the step
/// (`steps[3].dst`) and what is wrong.
pub fn render(base_image: &str, steps: &[Step]) -> Result<RenderedDockerfile, BuildError> {
    if base_image.is_empty()
        || base_image
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(BuildError::InvalidRequest {
            field: "base".into(),
            message: format!("{base_image:?} is not an image reference"),
        });
    }
    let mut out = format!("FROM {base_image}\n");
    let mut build_args = BTreeMap::new();
    let mut user: Option<String> = None;
    for (index, step) in steps.iter().enumerate() {
        let field = |name: &str| format!("steps[{index}].{name}");
        let bad = |name: &str, message: String| BuildError::InvalidRequest {
            field: field(name),
            message,
        };
        match step {
            Step::AptInstall { packages } => {
                let list = packages_list(packages, &field("packages"))?;
                let as_root = user.as_deref().is_some_and(|u| !is_root(u));
                if as_root {
                    out.push_str("USER root\n");
                }
                run(
                    &mut out,
                    &format!(
                        "apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends {list} && rm -rf /var/lib/apt/lists/*"
                    ),
                );
                if let (true, Some(u)) = (as_root, &user) {
                    out.push_str(&format!("USER {u}\n"));
                }
            }
            Step::PipInstall {
                packages,
                user: per_user,
            } => {
                let list = packages_list(packages, &field("packages"))?;
                let flag = if *per_user { " --user" } else { "" };
                run(
                    &mut out,
                    &format!("pip install --no-cache-dir{flag} {list}"),
                );
            }
            Step::NpmInstall { packages, global } => {
                let list = packages_list(packages, &field("packages"))?;
                let flag = if *global { " -g" } else { "" };
                run(&mut out, &format!("npm install{flag} {list}"));
            }
            Step::BunInstall { packages, global } => {
                let list = packages_list(packages, &field("packages"))?;
                let flag = if *global { " -g" } else { "" };
                run(&mut out, &format!("bun add{flag} {list}"));
            }
            Step::SkipCache => {
                if !build_args.contains_key(CACHE_BOUNDARY_ARG) {
                    out.push_str(&format!("ARG {CACHE_BOUNDARY_ARG}\n"));
                    build_args.insert(CACHE_BOUNDARY_ARG.to_string(), cache_boundary_nonce());
                }
            }
            Step::Copy(item) => copy(&mut out, item, &field(""))?,
            Step::CopyItems { items } => {
                if items.is_empty() {
                    return Err(bad("items", "must not be empty".into()));
                }
                for (i, item) in items.iter().enumerate() {
                    copy(&mut out, item, &format!("steps[{index}].items[{i}]."))?;
                }
            }
            Step::RunCmd { cmd } => {
                if cmd.trim().is_empty() {
                    return Err(bad("cmd", "must not be empty".into()));
                }
                run(&mut out, cmd);
            }
            Step::GitClone {
                url,
                dst,
                branch,
                depth,
            } => {
                if url.trim().is_empty() || url.starts_with('-') {
                    return Err(bad("url", format!("{url:?} is not a repository URL")));
                }
                absolute(dst, &field("dst"))?;
                let mut cmd = String::from("git clone");
                if let Some(b) = branch {
                    cmd.push_str(&format!(" --branch {}", quote(b)));
                }
                if let Some(d) = depth {
                    cmd.push_str(&format!(" --depth {d}"));
                }
                cmd.push_str(&format!(" -- {} {}", quote(url), quote(dst)));
                run(&mut out, &cmd);
            }
            Step::Remove { paths } => {
                if paths.is_empty() {
                    return Err(bad("paths", "must not be empty".into()));
                }
                for p in paths {
                    absolute(p, &field("paths"))?;
                }
                let list: Vec<&str> = paths.iter().map(String::as_str).collect();
                run(
                    &mut out,
                    &format!("rm -rf -- {}", nullspace_rootfs::shell::join(list)),
                );
            }
            Step::Rename { src, dst } => {
                absolute(src, &field("src"))?;
                absolute(dst, &field("dst"))?;
                run(&mut out, &format!("mv -- {} {}", quote(src), quote(dst)));
            }
            Step::MakeDir { path, mode } => {
                absolute(path, &field("path"))?;
                let m = match mode {
                    Some(m) => format!(" -m {}", octal(m, &field("mode"))?),
                    None => String::new(),
                };
                run(&mut out, &format!("mkdir -p{m} -- {}", quote(path)));
            }
            Step::MakeSymlink { target, link } => {
                if target.is_empty() {
                    return Err(bad("target", "must not be empty".into()));
                }
                absolute(link, &field("link"))?;
                run(
                    &mut out,
                    &format!("ln -sfn -- {} {}", quote(target), quote(link)),
                );
            }
            Step::SetWorkdir { path } => {
                absolute(path, &field("path"))?;
                out.push_str(&format!("WORKDIR {}\n", double_quoted(path)));
            }
            Step::SetUser { user: u } => {
                let ok = !u.is_empty()
                    && u.len() <= 64
                    && u.chars()
                        .all(|c| c.is_ascii_alphanumeric() || "._-:".contains(c));
                if !ok {
                    return Err(bad("user", format!("{u:?}: use name, uid or user:group")));
                }
                out.push_str(&format!("USER {u}\n"));
                user = Some(u.clone());
            }
            Step::SetBuildEnvs { envs } => {
                for (k, v) in envs {
                    env_pair(k, v, &field("envs"))?;
                    check_build_arg_key(k).map_err(|message| BuildError::InvalidRequest {
                        field: format!("{}.{k}", field("envs")),
                        message,
                    })?;
                    out.push_str(&format!("ARG {k}\n"));
                    build_args.insert(k.clone(), v.clone());
                }
            }
            Step::SetRuntimeEnvs { envs } => {
                for (k, v) in envs {
                    env_pair(k, v, &field("envs"))?;
                    out.push_str(&format!("ENV {k}={}\n", double_quoted(v)));
                }
            }
        }
    }
    Ok(RenderedDockerfile {
        dockerfile: out,
        build_env_keys: build_args
            .keys()
            .filter(|k| k.as_str() != CACHE_BOUNDARY_ARG)
            .cloned()
            .collect(),
        build_args,
        steps: steps.len(),
    })
}

fn is_root(user: &str) -> bool {
    let name = user.split(':').next().unwrap_or(user);
    name == "root" || name == "0"
}

/// `RUN ["/bin/sh","-c",<cmd>]`.
fn run(out: &mut String, cmd: &str) {
    let json = serde_json::json!(["/bin/sh", "-c", cmd]).to_string();
    out.push_str(&format!("RUN {json}\n"));
}

fn packages_list(packages: &[String], field: &str) -> Result<String, BuildError> {
    if packages.is_empty() {
        return Err(BuildError::InvalidRequest {
            field: field.into(),
            message: "must not be empty".into(),
        });
    }
    for p in packages {
        if p.is_empty()
            || p.starts_with('-')
            || p.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(BuildError::InvalidRequest {
                field: field.into(),
                message: format!("{p:?} is not a package name"),
            });
        }
    }
    Ok(nullspace_rootfs::shell::join(
        packages.iter().map(String::as_str),
    ))
}

fn absolute(path: &str, field: &str) -> Result<(), BuildError> {
    if !path.starts_with('/') || path.chars().any(char::is_control) {
        return Err(BuildError::InvalidRequest {
            field: field.into(),
            message: format!("{path:?} must be an absolute path"),
        });
    }
    Ok(())
}

fn octal(mode: &str, field: &str) -> Result<String, BuildError> {
    if (3..=4).contains(&mode.len()) && mode.chars().all(|c| ('0'..='7').contains(&c)) {
        Ok(mode.to_string())
    } else {
        Err(BuildError::InvalidRequest {
            field: field.into(),
            message: format!("{mode:?} is not an octal mode such as 755"),
        })
    }
}

fn env_pair(key: &str, value: &str, field: &str) -> Result<(), BuildError> {
    if !valid_env_key(key) {
        return Err(BuildError::InvalidRequest {
            field: field.into(),
            message: format!("{key:?} is not a valid variable name"),
        });
    }
    if value.contains(['\n', '\r']) {
        return Err(BuildError::InvalidRequest {
            field: format!("{field}.{key}"),
            message: "values must not contain line breaks".into(),
        });
    }
    Ok(())
}

/// A Dockerfile word in double quotes: `"`, `\` and `$` escaped.
fn double_quoted(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        if matches!(c, '"' | '\\' | '$') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// The build-context paths `steps` copy from, each with the request field naming it
/// (`steps[2].src`, `steps[3].items[0].src`).
pub fn copy_sources(steps: &[Step]) -> Vec<(String, String)> {
    let mut sources = Vec::new();
    for (index, step) in steps.iter().enumerate() {
        match step {
            Step::Copy(item) => sources.push((format!("steps[{index}].src"), item.src.clone())),
            Step::CopyItems { items } => {
                for (i, item) in items.iter().enumerate() {
                    sources.push((format!("steps[{index}].items[{i}].src"), item.src.clone()));
                }
            }
            _ => {}
        }
    }
    sources
}

/// A `COPY` JSON-form argument: `\` and `$` escaped for the Dockerfile's variable expansion.
fn copy_word(s: &str) -> String {
    serde_json::Value::String(s.replace('\\', "\\\\").replace('$', "\\$")).to_string()
}

fn copy(out: &mut String, item: &CopyItem, prefix: &str) -> Result<(), BuildError> {
    let bad = |name: &str, message: String| BuildError::InvalidRequest {
        field: format!("{prefix}{name}"),
        message,
    };
    let src = item.src.trim_start_matches("./");
    if src.is_empty()
        || src.starts_with('/')
        || src.split('/').any(|part| part == "..")
        || src.chars().any(char::is_control)
    {
        return Err(bad(
            "src",
            format!("{:?} must be a path inside the build context", item.src),
        ));
    }
    absolute(&item.dst, &format!("{prefix}dst"))?;
    let mut line = String::from("COPY");
    if let Some(owner) = &item.owner {
        let ok = !owner.is_empty()
            && owner
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-:".contains(c));
        if !ok {
            return Err(bad("owner", format!("{owner:?}: use user[:group]")));
        }
        line.push_str(&format!(" --chown={owner}"));
    }
    if let Some(mode) = &item.mode {
        line.push_str(&format!(
            " --chmod={}",
            octal(mode, &format!("{prefix}mode"))?
        ));
    }
    line.push_str(&format!(" [{},{}]\n", copy_word(src), copy_word(&item.dst)));
    out.push_str(&line);
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn renders_every_step() {
        let steps: Vec<Step> = serde_json::from_value(serde_json::json!([
            {"type": "set_build_envs", "envs": {"TOKEN_HINT": "b$v"}},
            {"type": "apt_install", "packages": ["git", "curl"]},
            {"type": "pip_install", "packages": ["fastapi"], "user": true},
            {"type": "npm_install", "packages": ["typescript"], "global": true},
            {"type": "bun_install", "packages": ["zod"]},
            {"type": "copy", "src": "./app.py", "dst": "/workspace/app $x.py", "mode": "644"},
            {"type": "copy_items", "items": [{"src": "a", "dst": "/a", "owner": "1000:1000"}]},
            {"type": "run_cmd", "cmd": "cat <<EOF > /x\nhi\nEOF"},
            {"type": "git_clone", "url": "https://example.invalid/r.git", "dst": "/src", "branch": "main"},
            {"type": "remove", "paths": ["/tmp/a b"]},
            {"type": "rename", "src": "/a", "dst": "/b"},
            {"type": "make_dir", "path": "/data", "mode": "0750"},
            {"type": "make_symlink", "target": "/b", "link": "/c"},
            {"type": "set_workdir", "path": "/work space"},
            {"type": "set_user", "user": "app"},
            {"type": "apt_install", "packages": ["jq"]},
            {"type": "set_runtime_envs", "envs": {"NODE_ENV": "production \"x\""}}
        ]))
        .unwrap();
        let r = render("debian:bookworm", &steps).unwrap();
        let expected = [
            "FROM debian:bookworm",
            "ARG TOKEN_HINT",
            r#"RUN ["/bin/sh","-c","apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends git curl && rm -rf /var/lib/apt/lists/*"]"#,
            r#"RUN ["/bin/sh","-c","pip install --no-cache-dir --user fastapi"]"#,
            r#"RUN ["/bin/sh","-c","npm install -g typescript"]"#,
            r#"RUN ["/bin/sh","-c","bun add zod"]"#,
            r#"COPY --chmod=644 ["app.py","/workspace/app \\$x.py"]"#,
            r#"COPY --chown=1000:1000 ["a","/a"]"#,
            r#"RUN ["/bin/sh","-c","cat <<EOF > /x\nhi\nEOF"]"#,
            r#"RUN ["/bin/sh","-c","git clone --branch main -- https://example.invalid/r.git /src"]"#,
            r#"RUN ["/bin/sh","-c","rm -rf -- '/tmp/a b'"]"#,
            r#"RUN ["/bin/sh","-c","mv -- /a /b"]"#,
            r#"RUN ["/bin/sh","-c","mkdir -p -m 0750 -- /data"]"#,
            r#"RUN ["/bin/sh","-c","ln -sfn -- /b /c"]"#,
            r#"WORKDIR "/work space""#,
            "USER app",
            "USER root",
            r#"RUN ["/bin/sh","-c","apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends jq && rm -rf /var/lib/apt/lists/*"]"#,
            "USER app",
            r#"ENV NODE_ENV="production \"x\"""#,
        ];
        assert_eq!(r.dockerfile.lines().collect::<Vec<_>>(), expected);
        assert_eq!(r.build_args["TOKEN_HINT"], "b$v");
        assert!(!r.dockerfile.contains("b$v"));
        // The rendered file parses back into one instruction per line.
        let parsed = crate::dockerfile::Dockerfile::parse(&r.dockerfile).unwrap();
        assert_eq!(parsed.instructions.len(), expected.len());
        assert!(parsed.instructions.iter().all(|i| i.heredocs.is_empty()));
    }

    #[test]
    fn rejects_escapes_and_bad_fields() {
        let cases = [
            (
                serde_json::json!({"type": "copy", "src": "../etc/passwd", "dst": "/x"}),
                "steps[0].src",
            ),
            (
                serde_json::json!({"type": "copy", "src": "a", "dst": "rel"}),
                "steps[0].dst",
            ),
            (
                serde_json::json!({"type": "apt_install", "packages": ["-o=evil"]}),
                "steps[0].packages",
            ),
            (
                serde_json::json!({"type": "set_runtime_envs", "envs": {"A": "x\ny"}}),
                "steps[0].envs.A",
            ),
            (
                serde_json::json!({"type": "set_user", "user": "a b"}),
                "steps[0].user",
            ),
            (
                serde_json::json!({"type": "make_dir", "path": "/x", "mode": "999"}),
                "steps[0].mode",
            ),
        ];
        for (step, field) in cases {
            let step: Step = serde_json::from_value(step).unwrap();
            let e = render("debian", &[step]).unwrap_err().to_string();
            assert!(e.contains(field), "{e} should name {field}");
        }
    }
}
