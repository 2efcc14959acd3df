//! The declarative build flags of `nullspace template build|validate|plan` (spec §2.2):
//! `--apt-install a,b`, `--pip-install a` (`--pip-user-install` right after), `--copy-src P
//! --copy-dst P`, `--copy-items @copy.json`, `--run-cmd`, `--set-workdir`, `--start-cmd`,
//! `--ready-port`... They become declarative steps in the order they were given, which clap
//! reports through the argument indices.

use std::collections::BTreeMap;

use clap::{ArgAction, ArgMatches, Args};

use nullspace_api::request::{ReadinessKind, ReadinessSpec};
use nullspace_build::declarative::{CopyItem, Step};
use nullspace_build::BuildError;
use nullspace_rootfs::runtime::Readiness;

/// Declarative steps and runtime defaults, as flags.
#[derive(Debug, Default, Args)]
pub struct StepArgs {
    /// `apt-get install` these (comma-separated); repeatable.
    #[arg(long = "apt-install", value_name = "PKG,...")]
    pub apt_install: Vec<String>,
    /// `pip install` these (comma-separated); repeatable.
    #[arg(long = "pip-install", value_name = "PKG,...")]
    pub pip_install: Vec<String>,
    /// The `--pip-install` right before installs into the user's site-packages.
    #[arg(long = "pip-user-install", action = ArgAction::Append, num_args = 0, default_missing_value = "true")]
    pub pip_user_install: Vec<bool>,
    /// `npm install` these (comma-separated); repeatable.
    #[arg(long = "npm-install", value_name = "PKG,...")]
    pub npm_install: Vec<String>,
    /// The `--npm-install` right before installs globally.
    #[arg(long = "npm-global", action = ArgAction::Append, num_args = 0, default_missing_value = "true")]
    pub npm_global: Vec<bool>,
    /// `bun add` these (comma-separated); repeatable.
    #[arg(long = "bun-install", value_name = "PKG,...")]
    pub bun_install: Vec<String>,
    /// The `--bun-install` right before installs globally.
    #[arg(long = "bun-global", action = ArgAction::Append, num_args = 0, default_missing_value = "true")]
    pub bun_global: Vec<bool>,
    /// A local file or directory to copy (relative to the current directory; with
    /// `--copy-dst`); repeatable, paired in order.
    #[arg(long = "copy-src", value_name = "PATH")]
    pub copy_src: Vec<String>,
    /// Where the matching `--copy-src` goes in the template (absolute).
    #[arg(long = "copy-dst", value_name = "PATH")]
    pub copy_dst: Vec<String>,
    /// Many copies from a JSON file: `[{"src", "dst", "owner"?, "mode"?}]`.
    #[arg(long = "copy-items", value_name = "@FILE")]
    pub copy_items: Vec<String>,
    /// Remove this absolute path (`rm -rf`); repeatable.
    #[arg(long = "remove", value_name = "PATH")]
    pub remove: Vec<String>,
    /// Rename this absolute path (with `--rename-dst`); repeatable, paired in order.
    #[arg(long = "rename-src", value_name = "PATH")]
    pub rename_src: Vec<String>,
    /// The new path of the matching `--rename-src`.
    #[arg(long = "rename-dst", value_name = "PATH")]
    pub rename_dst: Vec<String>,
    /// Run a shell command; repeatable.
    #[arg(long = "run-cmd", value_name = "CMD")]
    pub run_cmd: Vec<String>,
    /// Working directory of later steps and of the template.
    #[arg(long = "set-workdir", value_name = "PATH")]
    pub set_workdir: Vec<String>,
    /// User of later steps and of the template.
    #[arg(long = "set-user", value_name = "USER")]
    pub set_user: Vec<String>,
    /// A runtime env default (`KEY=VALUE`); repeatable.
    #[arg(long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// An env for later build steps only (`KEY=VALUE`); repeatable.
    #[arg(long = "build-env", value_name = "KEY=VALUE")]
    pub build_env: Vec<String>,
    /// The template's start command: run in the build VM, kept running in its snapshot.
    #[arg(
        long = "start-cmd",
        value_name = "CMD",
        conflicts_with = "no_start_cmd"
    )]
    pub start_cmd: Option<String>,
    /// No start command, not even the image's Entrypoint/Cmd, and no readiness (not even its
    /// HEALTHCHECK): a rootfs-only template, no build VM.
    #[arg(long = "no-start-cmd", conflicts_with_all = ["ready_port", "ready_cmd"])]
    pub no_start_cmd: bool,
    /// Readiness: something listens on this TCP port.
    #[arg(long = "ready-port", value_name = "PORT", conflicts_with = "ready_cmd")]
    pub ready_port: Option<u16>,
    /// Readiness: this shell command exits 0.
    #[arg(long = "ready-cmd", value_name = "CMD")]
    pub ready_cmd: Option<String>,
    /// The steps, in command-line order (filled by [`ordered_steps`]).
    #[arg(skip)]
    pub steps: Vec<Step>,
}

fn invalid(field: &str, message: impl Into<String>) -> anyhow::Error {
    BuildError::InvalidRequest {
        field: field.into(),
        message: message.into(),
    }
    .into()
}

fn packages(flag: &str, value: &str) -> anyhow::Result<Vec<String>> {
    let list: Vec<String> = value
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(str::to_string)
        .collect();
    if list.is_empty() {
        return Err(invalid(flag, "needs at least one package"));
    }
    Ok(list)
}

fn key_value(flag: &str, value: &str) -> anyhow::Result<(String, String)> {
    value
        .split_once('=')
        .filter(|(k, _)| !k.is_empty())
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| invalid(flag, format!("{value:?}: expected KEY=VALUE")))
}

/// The positions of `id`'s values (or of the flag itself, for counters).
fn positions(matches: &ArgMatches, id: &str) -> Vec<usize> {
    // Counters have a default value (0), which has an index too.
    if matches.value_source(id) != Some(clap::parser::ValueSource::CommandLine) {
        return Vec::new();
    }
    matches
        .indices_of(id)
        .map(Iterator::collect)
        .unwrap_or_default()
}

/// Fills `args.steps` from the flags, in the order given on the command line. A scope
/// modifier (`--pip-user-install`, `--npm-global`, `--bun-global`) applies to the install flag
/// right before it, and is an error anywhere else.
pub fn ordered_steps(args: &mut StepArgs, matches: &ArgMatches) -> anyhow::Result<()> {
    let mut steps: Vec<(usize, Step)> = Vec::new();
    let mut taken_modifiers = Vec::new();
    // Every argument's position, to find what comes "right after" an install.
    let all: Vec<usize> = matches
        .ids()
        .flat_map(|id| positions(matches, id.as_str()))
        .collect();
    let next_after = |at: usize| all.iter().copied().filter(|&p| p > at).min();
    let modifier_after = |at: usize, modifier: &str, taken: &mut Vec<usize>| -> bool {
        let next = next_after(at);
        let hit = positions(matches, modifier)
            .into_iter()
            .find(|&p| Some(p) == next);
        if let Some(p) = hit {
            taken.push(p);
        }
        hit.is_some()
    };
    for (value, at) in args
        .apt_install
        .iter()
        .zip(positions(matches, "apt_install"))
    {
        let packages = packages("--apt-install", value)?;
        steps.push((at, Step::AptInstall { packages }));
    }
    for (value, at) in args
        .pip_install
        .iter()
        .zip(positions(matches, "pip_install"))
    {
        let packages = packages("--pip-install", value)?;
        let user = modifier_after(at, "pip_user_install", &mut taken_modifiers);
        steps.push((at, Step::PipInstall { packages, user }));
    }
    for (value, at) in args
        .npm_install
        .iter()
        .zip(positions(matches, "npm_install"))
    {
        let packages = packages("--npm-install", value)?;
        let global = modifier_after(at, "npm_global", &mut taken_modifiers);
        steps.push((at, Step::NpmInstall { packages, global }));
    }
    for (value, at) in args
        .bun_install
        .iter()
        .zip(positions(matches, "bun_install"))
    {
        let packages = packages("--bun-install", value)?;
        let global = modifier_after(at, "bun_global", &mut taken_modifiers);
        steps.push((at, Step::BunInstall { packages, global }));
    }
    for (modifier, flag) in [
        ("pip_user_install", "--pip-user-install"),
        ("npm_global", "--npm-global"),
        ("bun_global", "--bun-global"),
    ] {
        if positions(matches, modifier)
            .iter()
            .any(|p| !taken_modifiers.contains(p))
        {
            return Err(invalid(
                flag,
                format!(
                    "must come right after the install flag it modifies ({})",
                    flag.replace("-user", "").replace("-global", "-install")
                ),
            ));
        }
    }
    if args.copy_src.len() != args.copy_dst.len() {
        return Err(invalid(
            "--copy-src",
            format!(
                "{} --copy-src but {} --copy-dst; give them in pairs",
                args.copy_src.len(),
                args.copy_dst.len()
            ),
        ));
    }
    for ((src, dst), at) in args
        .copy_src
        .iter()
        .zip(&args.copy_dst)
        .zip(positions(matches, "copy_src"))
    {
        steps.push((
            at,
            Step::Copy(CopyItem {
                src: src.clone(),
                dst: dst.clone(),
                owner: None,
                mode: None,
                force_upload: false,
            }),
        ));
    }
    for (value, at) in args.copy_items.iter().zip(positions(matches, "copy_items")) {
        let path = value.strip_prefix('@').unwrap_or(value);
        let text = std::fs::read_to_string(path)
            .map_err(|e| invalid("--copy-items", format!("{path}: {e}")))?;
        let items: Vec<CopyItem> = serde_json::from_str(&text).map_err(|e| {
            invalid(
                "--copy-items",
                format!("{path}: expected [{{\"src\", \"dst\", \"owner\"?, \"mode\"?}}]: {e}"),
            )
        })?;
        steps.push((at, Step::CopyItems { items }));
    }
    for (path, at) in args.remove.iter().zip(positions(matches, "remove")) {
        steps.push((
            at,
            Step::Remove {
                paths: vec![path.clone()],
            },
        ));
    }
    if args.rename_src.len() != args.rename_dst.len() {
        return Err(invalid(
            "--rename-src",
            "--rename-src and --rename-dst come in pairs",
        ));
    }
    for ((src, dst), at) in args
        .rename_src
        .iter()
        .zip(&args.rename_dst)
        .zip(positions(matches, "rename_src"))
    {
        steps.push((
            at,
            Step::Rename {
                src: src.clone(),
                dst: dst.clone(),
            },
        ));
    }
    for (cmd, at) in args.run_cmd.iter().zip(positions(matches, "run_cmd")) {
        steps.push((at, Step::RunCmd { cmd: cmd.clone() }));
    }
    for (path, at) in args
        .set_workdir
        .iter()
        .zip(positions(matches, "set_workdir"))
    {
        steps.push((at, Step::SetWorkdir { path: path.clone() }));
    }
    for (user, at) in args.set_user.iter().zip(positions(matches, "set_user")) {
        steps.push((at, Step::SetUser { user: user.clone() }));
    }
    for (value, at) in args.env.iter().zip(positions(matches, "env")) {
        let (k, v) = key_value("--env", value)?;
        steps.push((
            at,
            Step::SetRuntimeEnvs {
                envs: BTreeMap::from([(k, v)]),
            },
        ));
    }
    for (value, at) in args.build_env.iter().zip(positions(matches, "build_env")) {
        let (k, v) = key_value("--build-env", value)?;
        steps.push((
            at,
            Step::SetBuildEnvs {
                envs: BTreeMap::from([(k, v)]),
            },
        ));
    }
    steps.sort_by_key(|(at, _)| *at);
    args.steps = steps.into_iter().map(|(_, step)| step).collect();
    Ok(())
}

/// The readiness the flags ask for, as the API's readiness object (`None` if none).
pub fn readiness_request(args: &StepArgs) -> Option<ReadinessSpec> {
    if let Some(port) = args.ready_port {
        let mut spec = ReadinessSpec::new(ReadinessKind::Tcp);
        spec.port = Some(u64::from(port));
        return Some(spec);
    }
    args.ready_cmd.as_ref().map(|command| {
        let mut spec = ReadinessSpec::new(ReadinessKind::Command);
        spec.command = Some(command.clone());
        spec
    })
}

/// The readiness the flags ask for, with the same defaults the service applies.
pub fn readiness(args: &StepArgs) -> anyhow::Result<Option<Readiness>> {
    match readiness_request(args) {
        Some(value) => Ok(Some(nullspace_build::request::parse_readiness(
            &value,
            "readiness",
        )?)),
        None => Ok(None),
    }
}

/// Rewrites each copy source as a path inside the context `root` (the current directory):
/// `./app`, `app/` and `/abs/root/app` all become `app`; a source outside is an error.
pub fn relative_copy_sources(steps: &mut [Step], root: &std::path::Path) -> anyhow::Result<()> {
    let relative = |src: &mut String| -> anyhow::Result<()> {
        let joined = root.join(&*src);
        let mut parts: Vec<String> = Vec::new();
        for component in joined.components() {
            match component {
                std::path::Component::ParentDir => {
                    parts.pop();
                }
                std::path::Component::CurDir => {}
                other => parts.push(other.as_os_str().to_string_lossy().into_owned()),
            }
        }
        let normalized: std::path::PathBuf = parts.iter().collect();
        if normalized == root {
            // The whole context.
            *src = ".".to_string();
            return Ok(());
        }
        let rel = normalized
            .strip_prefix(root)
            .ok()
            .filter(|r| !r.as_os_str().is_empty())
            .ok_or_else(|| {
                invalid(
                    "--copy-src",
                    format!("{src:?} is outside the build context {}", root.display()),
                )
            })?;
        *src = rel.to_string_lossy().into_owned();
        Ok(())
    };
    for step in steps {
        match step {
            Step::Copy(item) => relative(&mut item.src)?,
            Step::CopyItems { items } => {
                for item in items {
                    relative(&mut item.src)?;
                }
            }
            _ => {}
        }
    }
    Ok(())
}
