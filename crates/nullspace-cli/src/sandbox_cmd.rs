//! `nullspace sandbox ...`: sandboxes from templates on a `nullspace serve` instance (the
//! server keeps them running between commands).

use std::io::{Read, Write};
use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;
use eventsource_stream::Eventsource as _;
use futures_util::StreamExt as _;
use nullspace_api::sandbox::{
    CommandInfo, CommandRequest, CommandStreamEvent, CreateSandboxRequest, FileListing,
    FileWritten, SandboxInfo, SandboxList,
};
use nullspace_client::{segment, Client};
use reqwest::Method;

/// `nullspace sandbox ...`
#[derive(Debug, Subcommand)]
pub enum SandboxCommand {
    /// Start a sandbox from a template (its snapshot: the start command is already running)
    /// and print its id.
    Create {
        /// Template ref: `name`, `name:tag`, `tb_...`, `owner/name:tag`; `base` when absent.
        #[arg(long, short = 't')]
        template: Option<String>,
        /// `KEY=VALUE` env for the sandbox's commands (repeatable).
        #[arg(long = "env", short = 'e', value_name = "KEY=VALUE")]
        envs: Vec<String>,
        /// Seconds until it is killed (server default 300).
        #[arg(long)]
        timeout: Option<u64>,
    },
    /// List your sandboxes.
    List {
        /// Only `running` or `ended` ones.
        #[arg(long)]
        state: Option<String>,
    },
    /// Show a sandbox.
    Get {
        /// `sb_...`.
        sandbox_id: String,
    },
    /// Run a command in a sandbox, streaming its output; exits with its exit code.
    Exec {
        /// `sb_...`.
        sandbox_id: String,
        /// `KEY=VALUE` env for this command (repeatable).
        #[arg(long = "env", short = 'e', value_name = "KEY=VALUE")]
        envs: Vec<String>,
        /// Run as this user (default: the template's).
        #[arg(long, short = 'u')]
        user: Option<String>,
        /// Working directory (default: the template's).
        #[arg(long, short = 'w')]
        cwd: Option<String>,
        /// Seconds before it is killed (0: no limit; server default 60).
        #[arg(long)]
        timeout: Option<u64>,
        /// Start it and print its id instead of waiting.
        #[arg(long)]
        background: bool,
        /// The command, run with `/bin/sh -c` (several words are joined with spaces).
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<String>,
    },
    /// Write a file in a sandbox from a local file or stdin (`-`).
    Write {
        /// `sb_...`.
        sandbox_id: String,
        /// Path in the sandbox.
        path: String,
        /// Local file, `-` for stdin.
        #[arg(default_value = "-")]
        source: String,
        /// Write as this user (default: the template's).
        #[arg(long, short = 'u')]
        user: Option<String>,
    },
    /// Print a file of a sandbox (raw bytes), or list it with `--list` when it is a directory.
    Read {
        /// `sb_...`.
        sandbox_id: String,
        /// Path in the sandbox.
        path: String,
        /// List the directory instead.
        #[arg(long)]
        list: bool,
        /// Read as this user (default: the template's).
        #[arg(long, short = 'u')]
        user: Option<String>,
    },
    /// Kill a sandbox.
    Kill {
        /// `sb_...`.
        sandbox_id: String,
    },
}

fn env_pairs(envs: &[String]) -> anyhow::Result<std::collections::BTreeMap<String, String>> {
    envs.iter()
        .map(|entry| {
            entry
                .split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .with_context(|| format!("--env {entry:?}: expected KEY=VALUE"))
        })
        .collect()
}

fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

fn sandbox_line(sandbox: &SandboxInfo) -> String {
    format!(
        "{}\t{}\t{}\t{}\t{}",
        sandbox.sandbox_id,
        sandbox.state,
        sandbox.template,
        sandbox.started_from,
        sandbox
            .end_reason
            .clone()
            .or(sandbox.end_at.clone())
            .unwrap_or_default()
    )
}

fn file_path(sandbox_id: &str, path: &str, user: Option<&str>, list: bool) -> String {
    let mut url = url::form_urlencoded::Serializer::new(String::new());
    url.append_pair("path", path);
    if let Some(user) = user {
        url.append_pair("user", user);
    }
    format!(
        "/v1/sandboxes/{}/files{}?{}",
        segment(sandbox_id),
        if list { "/list" } else { "" },
        url.finish()
    )
}

/// Runs a sandbox subcommand against `client`.
pub async fn run(
    client: &Client,
    command: SandboxCommand,
    json_output: bool,
) -> anyhow::Result<ExitCode> {
    match command {
        SandboxCommand::Create {
            template,
            envs,
            timeout,
        } => {
            let body = CreateSandboxRequest {
                template,
                envs: env_pairs(&envs)?,
                timeout,
            };
            let sandbox: SandboxInfo = client
                .call(Method::POST, "/v1/sandboxes", Some(&body))
                .await?;
            if json_output {
                print_json(&sandbox)?;
            } else {
                println!("{}", sandbox.sandbox_id);
            }
        }
        SandboxCommand::List { state } => {
            let path = match state {
                Some(state) => format!("/v1/sandboxes?state={}", segment(&state)),
                None => "/v1/sandboxes".into(),
            };
            let list: SandboxList = client.call(Method::GET, &path, None::<&()>).await?;
            if json_output {
                print_json(&list)?;
            } else {
                for sandbox in &list.sandboxes {
                    println!("{}", sandbox_line(sandbox));
                }
            }
        }
        SandboxCommand::Get { sandbox_id } => {
            let path = format!("/v1/sandboxes/{}", segment(&sandbox_id));
            let sandbox: SandboxInfo = client.call(Method::GET, &path, None::<&()>).await?;
            if json_output {
                print_json(&sandbox)?;
            } else {
                println!("{}", sandbox_line(&sandbox));
            }
        }
        SandboxCommand::Kill { sandbox_id } => {
            let path = format!("/v1/sandboxes/{}", segment(&sandbox_id));
            let sandbox: SandboxInfo = client.call(Method::DELETE, &path, None::<&()>).await?;
            if json_output {
                print_json(&sandbox)?;
            } else {
                println!("{}", sandbox_line(&sandbox));
            }
        }
        SandboxCommand::Exec {
            sandbox_id,
            envs,
            user,
            cwd,
            timeout,
            background,
            command,
        } => {
            let body = CommandRequest {
                cmd: Some(command.join(" ")),
                argv: None,
                envs: env_pairs(&envs)?,
                user,
                cwd,
                timeout,
                background,
            };
            return exec(client, &sandbox_id, &body, json_output).await;
        }
        SandboxCommand::Write {
            sandbox_id,
            path,
            source,
            user,
        } => {
            let mut data = Vec::new();
            if source == "-" {
                std::io::stdin()
                    .read_to_end(&mut data)
                    .context("reading stdin")?;
            } else {
                data = std::fs::read(&source).with_context(|| format!("reading {source}"))?;
            }
            let request = client
                .request(
                    Method::PUT,
                    &file_path(&sandbox_id, &path, user.as_deref(), false),
                )
                .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
                .body(data);
            let written: FileWritten = client
                .send(request)
                .await?
                .json()
                .await
                .context("decoding the server's answer")?;
            if json_output {
                print_json(&written)?;
            } else {
                println!("{}\t{} bytes", written.path, written.size);
            }
        }
        SandboxCommand::Read {
            sandbox_id,
            path,
            list,
            user,
        } => {
            let url = file_path(&sandbox_id, &path, user.as_deref(), list);
            if list {
                let listing: FileListing = client.call(Method::GET, &url, None::<&()>).await?;
                if json_output {
                    print_json(&listing)?;
                } else {
                    for entry in &listing.entries {
                        println!(
                            "{}\t{}\t{}\t{}:{}\t{}",
                            entry.kind, entry.mode, entry.size, entry.uid, entry.gid, entry.name
                        );
                    }
                }
            } else {
                let response = client.send(client.request(Method::GET, &url)).await?;
                let bytes = response.bytes().await.context("reading the file")?;
                std::io::stdout()
                    .write_all(&bytes)
                    .context("writing stdout")?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The exit code for a command's end: its own exit code, 124 for a timeout (as `timeout(1)`),
/// 128+N for signal N, 1 otherwise.
fn exit_code(info: &CommandInfo) -> ExitCode {
    let code = match (info.status.as_str(), info.exit_code, info.signal) {
        ("timed_out", _, _) => 124,
        (_, Some(code), _) => code,
        (_, None, Some(signal)) => 128 + signal,
        _ => 1,
    };
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

async fn exec(
    client: &Client,
    sandbox_id: &str,
    body: &CommandRequest,
    json_output: bool,
) -> anyhow::Result<ExitCode> {
    let path = format!("/v1/sandboxes/{}/commands", segment(sandbox_id));
    if body.background || json_output {
        let info: CommandInfo = client.call(Method::POST, &path, Some(body)).await?;
        if json_output {
            print_json(&info)?;
        } else {
            println!("{}", info.command_id);
        }
        return Ok(if body.background {
            ExitCode::SUCCESS
        } else {
            exit_code(&info)
        });
    }
    let request = client
        .request(Method::POST, &path)
        .header(reqwest::header::ACCEPT, "text/event-stream")
        .json(body);
    let response = client.send(request).await?;
    let mut events = Box::pin(response.bytes_stream().eventsource());
    while let Some(event) = events.next().await {
        let event = event.context("reading the command's output stream")?;
        let payload: CommandStreamEvent =
            serde_json::from_str(&event.data).context("decoding a command event")?;
        match payload {
            CommandStreamEvent::Start { .. } => {}
            CommandStreamEvent::Stdout { data } => {
                let mut out = std::io::stdout();
                out.write_all(data.as_bytes())?;
                out.flush()?;
            }
            CommandStreamEvent::Stderr { data } => {
                let mut err = std::io::stderr();
                err.write_all(data.as_bytes())?;
                err.flush()?;
            }
            CommandStreamEvent::End { command } => {
                if let Some(error) = &command.error {
                    eprintln!("nullspace: {error}");
                } else if command.status == "timed_out" {
                    eprintln!("nullspace: the command was killed at its timeout");
                }
                return Ok(exit_code(&command));
            }
        }
    }
    anyhow::bail!("the command's output stream ended before the command did")
}
