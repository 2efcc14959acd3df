//! The `nullspace` command line: builds templates on this machine with the embedded engine.
//!
//! With `NULLSPACE_API_URL` set, the build-lifecycle subcommands talk to a build server instead
//! ([`remote`]).
//!
//! Exit codes: 0 success, 1 failure, 2 invalid request or usage, 3 not found, 4 authentication,
//! 7 conflict.

mod args;
mod config;
mod dockerfile_cmd;
mod local_server;
mod progress;
mod remote;
mod sandbox_cmd;
mod serve;
mod steps_cmd;

use std::io::Read;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{CommandFactory, FromArgMatches};
use serde_json::json;

use args::{BaseArgs, BuildArgs, Cli, Command, TemplateCommand};
use nullspace_build::{BaseSelector, BuildError, BuildRequest, DataDir};
use nullspace_oci::Credentials;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("NULLSPACE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let matches = Cli::command().get_matches();
    let json_output = matches.get_flag("json");
    let cli = match Cli::from_arg_matches(&matches)
        .map_err(anyhow::Error::from)
        .and_then(|mut cli| order_steps(&mut cli, &matches).map(|()| cli))
    {
        Ok(cli) => cli,
        Err(error) => return report(&error, json_output),
    };
    match run(cli) {
        Ok(code) => code,
        Err(error) => report(&error, json_output),
    }
}

/// Puts the declarative step flags of `build`, `validate` and `plan` in command-line order.
fn order_steps(cli: &mut Cli, matches: &clap::ArgMatches) -> anyhow::Result<()> {
    let Command::Template(
        TemplateCommand::Build(args)
        | TemplateCommand::Validate(args)
        | TemplateCommand::Plan(args),
    ) = &mut cli.command
    else {
        return Ok(());
    };
    let sub = matches
        .subcommand_matches("template")
        .and_then(|m| m.subcommand().map(|(_, m)| m));
    match sub {
        Some(sub) => steps_cmd::ordered_steps(&mut args.steps, sub),
        None => Ok(()),
    }
}

/// Prints an error (as the JSON envelope with `--json`) and picks the exit code.
fn report(error: &anyhow::Error, json_output: bool) -> ExitCode {
    if let Some(remote) = error.downcast_ref::<remote::RemoteError>() {
        return remote.report(json_output);
    }
    if let Some(client) = error.downcast_ref::<nullspace_client::ClientError>() {
        return remote::RemoteError::from(client).report(json_output);
    }
    let build_error = error.downcast_ref::<BuildError>();
    let code = build_error.map(|e| e.code()).unwrap_or("error");
    let auth = build_error.is_some_and(BuildError::is_authentication);
    let (code, exit) = match code {
        "invalid_request" => (code, 2),
        c if c.ends_with("_not_found") => (code, 3),
        _ if auth => ("authentication_failed", 4),
        _ => (code, 1),
    };
    let message = format!("{error:#}");
    if json_output {
        let mut envelope =
            json!({ "error": { "code": code, "message": message, "retryable": false } });
        if let Some(e) = build_error {
            envelope["error"]["phase"] = json!(e.phase().to_string());
        }
        println!("{envelope}");
    } else {
        eprintln!("error: {message}");
    }
    ExitCode::from(exit)
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    if remote::handles(&cli) {
        return remote::run(cli);
    }
    if let Command::Sandbox(command) = cli.command {
        return remote::run_sandbox(command, cli.json);
    }
    let data = DataDir::from_env()?;
    match cli.command {
        // Taken above: sandboxes live in a server.
        Command::Sandbox(_) => Err(remote::needs_server()),
        Command::Serve(args) => serve::serve(data, args),
        Command::Template(TemplateCommand::Build(args)) => build(data, *args, cli.json),
        Command::Template(TemplateCommand::List) => {
            let engine = config::engine(data)?;
            let templates = engine.store().list()?;
            if cli.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&json!({ "templates": templates }))?
                );
            } else {
                for template in templates {
                    let tags: Vec<&str> = template.tags.iter().map(|(t, _)| t.as_str()).collect();
                    println!(
                        "{}\t{}\t{}",
                        template.id,
                        template.canonical_ref,
                        tags.join(",")
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Template(TemplateCommand::Get { reference }) => {
            let engine = config::engine(data)?;
            let found = engine.store().resolve(&reference)?;
            let document = nullspace_build::artifact::read_document(&found.artifact_dir)?;
            println!("{}", serde_json::to_string_pretty(&document)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Template(TemplateCommand::Exists { reference }) => {
            let engine = config::engine(data)?;
            let exists = match engine.store().resolve(&reference) {
                Ok(_) => true,
                Err(BuildError::NotFound { .. }) => false,
                Err(other) => return Err(other.into()),
            };
            if cli.json {
                println!("{}", json!({ "exists": exists }));
            }
            Ok(if exists {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(3)
            })
        }
        Command::Template(
            TemplateCommand::Status { .. }
            | TemplateCommand::Logs { .. }
            | TemplateCommand::Wait { .. }
            | TemplateCommand::Cancel { .. }
            | TemplateCommand::Promote { .. }
            | TemplateCommand::Retry { .. }
            | TemplateCommand::Validate(_)
            | TemplateCommand::Plan(_),
        ) => Err(remote::needs_server()),
        Command::Template(TemplateCommand::Rename {
            reference,
            new_name,
        }) => {
            let engine = config::engine(data)?;
            engine.store().rename(&reference, &new_name)?;
            if cli.json {
                println!("{}", json!({ "name": new_name, "renamed_from": reference }));
            } else {
                println!("renamed {reference} to {new_name}");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The base image's registry credentials from the build flags (taken out of `args`): a GCP key
/// file, AWS keys, or a username with a password (from the flag, the env or stdin).
pub(crate) fn base_image_credentials(args: &mut BuildArgs) -> anyhow::Result<Credentials> {
    let password = if args.password_stdin {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("reading the password from standard input")?;
        Some(text.trim_end_matches(['\r', '\n']).to_string())
    } else {
        args.password.take()
    };
    Ok(if let Some(key_file) = &args.gcp_service_account_json {
        let key = std::fs::read_to_string(key_file).with_context(|| {
            format!("reading the GCP service-account key {}", key_file.display())
        })?;
        Credentials::gcp(key)
    } else if let (Some(access_key_id), Some(secret_access_key)) = (
        args.aws_access_key_id.take(),
        args.aws_secret_access_key.take(),
    ) {
        Credentials::Ecr {
            access_key_id,
            secret_access_key,
            session_token: args.aws_session_token.take(),
            region: args.aws_region.take().unwrap_or_default(),
            endpoint: args.aws_ecr_endpoint.take(),
        }
    } else {
        match (args.username.take(), password) {
            (Some(username), Some(password)) => Credentials::Basic { username, password },
            (None, Some(_)) => anyhow::bail!("--password needs --username"),
            _ => Credentials::Anonymous,
        }
    })
}

fn base_selector(base: BaseArgs) -> anyhow::Result<BaseSelector> {
    Ok(if let Some(v) = base.from_ubuntu_image {
        BaseSelector::UbuntuImage(v)
    } else if let Some(v) = base.from_debian_image {
        BaseSelector::DebianImage((!v.is_empty()).then_some(v))
    } else if let Some(v) = base.from_python_image {
        BaseSelector::PythonImage(v)
    } else if let Some(v) = base.from_node_image {
        BaseSelector::NodeImage(v)
    } else if let Some(v) = base.from_bun_image {
        BaseSelector::BunImage(v)
    } else if let Some(r) = base.from_image {
        BaseSelector::Image(r)
    } else if let Some(r) = base.from_base_image {
        BaseSelector::BaseImage(r)
    } else if base.from_dockerfile.is_some() || base.from_template.is_some() {
        // Unused: a Dockerfile's FROM lines are its base; a template base is not an image.
        BaseSelector::DebianImage(None)
    } else {
        anyhow::bail!("choose one base image (e.g. --from-debian-image bookworm)")
    })
}

/// `template build --dry-run`: the request with secrets redacted, and the Dockerfile that
/// steps render to. Nothing is built or uploaded.
fn dry_run(args: BuildArgs, json_output: bool) -> anyhow::Result<ExitCode> {
    let request = remote::dry_run_body(args)?;
    let dockerfile = match (request.get("steps"), request.get("base")) {
        (Some(steps), Some(base)) => {
            let steps: Vec<nullspace_build::declarative::Step> =
                serde_json::from_value(steps.clone())?;
            match serde_json::from_value::<BaseSelector>(base.clone()) {
                Ok(selector) => Some(
                    nullspace_build::declarative::render(&selector.image_reference()?, &steps)?
                        .dockerfile,
                ),
                Err(_) => None,
            }
        }
        _ => None,
    };
    if json_output {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({ "request": request, "dockerfile": dockerfile }))?
        );
    } else {
        println!("{}", serde_json::to_string_pretty(&request)?);
        if let Some(dockerfile) = dockerfile {
            println!("--- Dockerfile ---\n{dockerfile}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn build(data: DataDir, mut args: BuildArgs, json_output: bool) -> anyhow::Result<ExitCode> {
    if args.dry_run {
        return dry_run(args, json_output);
    }
    let credentials = base_image_credentials(&mut args)?;
    let dockerfile = match args.base.from_dockerfile.clone() {
        Some(path) => Some(dockerfile_cmd::spec(
            path,
            args.dockerfile,
            args.backend.as_deref(),
        )?),
        None => {
            dockerfile_cmd::reject_without_dockerfile(&args.dockerfile)?;
            None
        }
    };
    if args.backend.as_deref() == Some("buildkit")
        && dockerfile.is_none()
        && args.steps.steps.is_empty()
    {
        return Err(BuildError::InvalidRequest {
            field: "build_backend".into(),
            message: "image imports use the native backend; buildkit serves Dockerfiles".into(),
        }
        .into());
    }
    let steps = std::mem::take(&mut args.steps.steps);
    if !steps.is_empty() && dockerfile.is_some() {
        return Err(BuildError::InvalidRequest {
            field: "steps".into(),
            message: "a Dockerfile build takes no step flags; write them in the Dockerfile".into(),
        }
        .into());
    }
    let from_template = args.base.from_template.clone();
    let readiness = steps_cmd::readiness(&args.steps)?;
    let start_cmd = args.steps.start_cmd.take();
    let mut request = BuildRequest::new(&args.name, base_selector(args.base)?);
    request.start_cmd = start_cmd;
    request.no_start_cmd = args.steps.no_start_cmd;
    request.readiness = readiness;
    if !args.tags.is_empty() {
        request.tags = args.tags;
    }
    request.disk_mb = args.disk_mb;
    request.cpu_count = args.cpu_count;
    request.memory_mb = args.memory_mb;
    request.internet_access = !args.no_internet_access;
    request.skip_cache = args.skip_cache;
    let engine = config::engine(data)?;
    let display = Arc::new(progress::Display::for_stderr());
    let sink = {
        let display = display.clone();
        Arc::new(move |event| display.show(event))
    };
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let outcome = match &dockerfile {
        Some(spec) => runtime.block_on(dockerfile_cmd::build(
            &engine,
            &request,
            spec,
            &credentials,
            sink,
        ))?,
        None if from_template.is_some() && steps.is_empty() => {
            let reference = from_template.as_deref().unwrap_or_default();
            runtime.block_on(engine.build_on_local_template(&request, reference, sink))?
        }
        None if !steps.is_empty() => {
            // Copies read the current directory (its .dockerignore applies, in BuildKit).
            let root = std::env::current_dir().context("reading the current directory")?;
            let mut steps = steps;
            steps_cmd::relative_copy_sources(&mut steps, &root)?;
            match from_template.as_deref() {
                Some(reference) => runtime.block_on(engine.build_steps_on_local_template(
                    &request,
                    reference,
                    &steps,
                    Some(root),
                    sink,
                ))?,
                None => runtime.block_on(engine.build_declarative(
                    &request,
                    &steps,
                    Some(root),
                    &credentials,
                    sink,
                ))?,
            }
        }
        None => runtime.block_on(engine.build(&request, &credentials, sink))?,
    };
    if json_output {
        println!("{}", serde_json::to_string_pretty(&outcome)?);
    } else {
        let t = &outcome.template;
        println!("built {} ({})", outcome.canonical_ref, outcome.build_id);
        println!(
            "  image     {} @ {}",
            t.source.reference, t.source.manifest_digest
        );
        println!("  platform  {}", t.source.platform);
        println!(
            "  rootfs    {} ({} MiB, {} entries{})",
            outcome.rootfs_path.display(),
            t.rootfs.size_bytes / (1024 * 1024),
            t.rootfs.entries,
            if outcome.rootfs_cache_hit {
                ", from cache"
            } else {
                ""
            }
        );
        match &t.snapshot {
            Some(snapshot) => println!(
                "  snapshot  {} ({}, {} vCPU, {} MiB; {} MiB of RAM on disk; booted in {:.1}s)",
                outcome.artifact_dir.join(&snapshot.path).display(),
                snapshot.machine.accel.as_str(),
                snapshot.machine.size.cpu_count,
                snapshot.machine.size.memory_mb,
                snapshot.machine.memory_allocated_bytes / (1024 * 1024),
                snapshot.boot_ms as f64 / 1000.0
            ),
            None => println!("  snapshot  none (rootfs-only template)"),
        }
        println!("  template  {}", outcome.template_json_path.display());
        println!("  took      {:.2}s", outcome.seconds);
    }
    Ok(ExitCode::SUCCESS)
}
