//! Client mode: with `NULLSPACE_API_URL` set, the build-lifecycle subcommands (and
//! `template build --background`) talk to a `nullspace serve` instance over its HTTP API,
//! through `nullspace-client`. `body` turns the build flags into the request, `commands` runs
//! each subcommand, `output` prints answers, `error` maps error codes to exit codes.

mod body;
mod commands;
mod error;
mod output;

use std::process::ExitCode;

use anyhow::Context;

use crate::args::{Cli, Command, TemplateCommand};

pub use body::dry_run_body;
pub use error::RemoteError;

/// The server's base URL.
const URL_ENV: &str = "NULLSPACE_API_URL";
/// The API key sent as `Authorization: Bearer`.
const KEY_ENV: &str = "NULLSPACE_API_KEY";

/// The error for a server-only subcommand run without `NULLSPACE_API_URL`.
pub fn needs_server() -> anyhow::Error {
    RemoteError::new(
        "invalid_request",
        format!(
            "this command needs a server: set {URL_ENV} (and {KEY_ENV}) to a `nullspace serve` URL (sandboxes outlive the command that starts them, so they live in the server)"
        ),
    )
    .into()
}

/// Whether `command` exists only against a server (the build lifecycle, validate, plan).
pub fn is_server_only(command: &TemplateCommand) -> bool {
    matches!(
        command,
        TemplateCommand::Status { .. }
            | TemplateCommand::Logs { .. }
            | TemplateCommand::Wait { .. }
            | TemplateCommand::Cancel { .. }
            | TemplateCommand::Promote { .. }
            | TemplateCommand::Retry { .. }
            | TemplateCommand::Validate(_)
            | TemplateCommand::Plan(_)
    )
}

/// Whether `cli` is a client-mode command.
pub fn handles(cli: &Cli) -> bool {
    match &cli.command {
        Command::Template(TemplateCommand::Build(args)) => args.background,
        Command::Template(command) if is_server_only(command) => true,
        Command::Template(TemplateCommand::Rename { .. }) => {
            std::env::var(URL_ENV).is_ok_and(|url| !url.trim().is_empty())
        }
        _ => false,
    }
}

/// The client of the server `NULLSPACE_API_URL` names.
fn client() -> anyhow::Result<nullspace_client::Client> {
    let base = match std::env::var(URL_ENV) {
        Ok(url) if !url.trim().is_empty() => url,
        _ => return Err(needs_server()),
    };
    Ok(nullspace_client::Client::new(
        &base,
        std::env::var(KEY_ENV).ok().filter(|k| !k.is_empty()),
    ))
}

/// Runs a client-mode command (see [`handles`]).
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let client = client()?;
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(commands::run(&client, cli))
}

/// Runs a `sandbox` subcommand against the server `NULLSPACE_API_URL` names, or without one
/// against this data dir's local sandbox server (started on first use).
pub fn run_sandbox(
    command: crate::sandbox_cmd::SandboxCommand,
    json_output: bool,
) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async {
        let client = match std::env::var(URL_ENV) {
            Ok(url) if !url.trim().is_empty() => client()?,
            _ => {
                let data = nullspace_build::DataDir::from_env()?;
                let (url, key) = crate::local_server::ensure(&data).await?;
                nullspace_client::Client::new(&url, Some(key))
            }
        };
        crate::sandbox_cmd::run(&client, command, json_output).await
    })
}
