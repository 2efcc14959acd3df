//! Each client-mode subcommand: one or two API calls and what to print.

use std::process::ExitCode;
use std::time::Duration;

use nullspace_api::request::{CancelBody, PromoteBody, RenameBody, RetryBody, TagOrTags};
use nullspace_client::{segment, Client};
use nullspace_oci::Credentials;
use reqwest::Method;
use serde_json::Value;

use crate::args::{Cli, Command, TemplateCommand};

use super::body::{base_image_auth, build_body, build_secrets};
use super::error::RemoteError;
use super::needs_server;
use super::output::{entry_line, print_entry, text};

/// Prints `value` as pretty JSON.
fn print_json(value: &Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// Runs `cli`'s client-mode command against `client`.
pub(super) async fn run(client: &Client, cli: Cli) -> anyhow::Result<ExitCode> {
    let json_output = cli.json;
    let Command::Template(command) = cli.command else {
        return Err(needs_server());
    };
    match command {
        TemplateCommand::Build(args) => {
            let body = build_body(*args)?.prepare(client, true).await?;
            let build: Value = client
                .call(Method::POST, "/v1/templates/builds", Some(&body))
                .await?;
            if json_output {
                print_json(&build)?;
            } else {
                println!("{}", text(&build["build_id"]));
            }
            Ok(ExitCode::SUCCESS)
        }
        TemplateCommand::Status { build_id, offset } => {
            let status = client.status(&build_id, offset).await?;
            if json_output {
                print_json(&status)?;
            } else {
                let build = &status["build"];
                println!("{}\t{}", text(&build["build_id"]), text(&build["status"]));
                for entry in status["entries"].as_array().into_iter().flatten() {
                    println!("{}", entry_line(entry));
                }
                println!("next_offset {}", status["next_offset"]);
            }
            Ok(ExitCode::SUCCESS)
        }
        TemplateCommand::Logs {
            build_id,
            offset,
            follow,
        } => {
            client
                .follow_logs(&build_id, offset, follow, |entry| {
                    print_entry(entry, json_output).map_err(|e| {
                        nullspace_client::ClientError::Decode {
                            what: "a log entry",
                            message: e.to_string(),
                        }
                    })
                })
                .await?;
            Ok(ExitCode::SUCCESS)
        }
        TemplateCommand::Wait {
            build_id,
            poll_interval_ms,
        } => wait(client, &build_id, poll_interval_ms, json_output).await,
        TemplateCommand::Cancel { build_id, reason } => {
            let path = format!("/v1/templates/builds/{}/cancel", segment(&build_id));
            let out: Value = client
                .call(Method::POST, &path, Some(&CancelBody { reason }))
                .await?;
            if json_output {
                print_json(&out)?;
            } else {
                println!(
                    "{}\t{}",
                    text(&out["build"]["build_id"]),
                    text(&out["build"]["status"])
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        TemplateCommand::Promote { build_id, tag } => {
            let path = format!("/v1/templates/builds/{}/promote", segment(&build_id));
            let out: Value = client
                .call(Method::POST, &path, Some(&PromoteBody { tag: tag.clone() }))
                .await?;
            if json_output {
                print_json(&out)?;
            } else {
                let target = out.get("canonical_ref").map(text).unwrap_or(tag);
                println!("promoted {build_id} to {target}");
            }
            Ok(ExitCode::SUCCESS)
        }
        TemplateCommand::Retry {
            build_id,
            tags,
            username,
            password_env,
            build_secret_env,
            build_secret_file,
        } => {
            let mut body = RetryBody::default();
            let secrets = build_secrets(&build_secret_env, &build_secret_file)?;
            if !secrets.0.is_empty() {
                body.build_secrets = Some(secrets);
            }
            if !tags.is_empty() {
                body.tags = Some(TagOrTags::Many(tags));
            }
            if let (Some(username), Some(variable)) = (username, password_env) {
                let password = std::env::var(&variable).map_err(|_| {
                    RemoteError::new(
                        "invalid_request",
                        format!("--password-env: ${variable} is not set"),
                    )
                })?;
                body.base_image_auth = base_image_auth(Credentials::basic(username, password))?;
            }
            let path = format!("/v1/templates/builds/{}/retry", segment(&build_id));
            let build: Value = client.call(Method::POST, &path, Some(&body)).await?;
            if json_output {
                print_json(&build)?;
            } else {
                println!("{}", text(&build["build_id"]));
            }
            Ok(ExitCode::SUCCESS)
        }
        TemplateCommand::Validate(args) => {
            let body = build_body(*args)?.prepare(client, false).await?;
            let out: Value = client
                .call(Method::POST, "/v1/templates/validate", Some(&body))
                .await?;
            let valid = out["valid"].as_bool() == Some(true);
            if json_output {
                print_json(&out)?;
            } else {
                println!("{}", if valid { "valid" } else { "invalid" });
                for error in out["errors"].as_array().into_iter().flatten() {
                    println!(
                        "error {}: {}",
                        text(&error["code"]),
                        text(&error["message"])
                    );
                }
                for warning in out["warnings"].as_array().into_iter().flatten() {
                    println!("warning: {}", text(warning));
                }
            }
            Ok(if valid {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(2)
            })
        }
        TemplateCommand::Plan(args) => {
            let body = build_body(*args)?.prepare(client, false).await?;
            let out: Value = client
                .call(Method::POST, "/v1/templates/plan", Some(&body))
                .await?;
            if json_output {
                print_json(&out)?;
            } else {
                let plan = &out["build_plan"];
                for key in [
                    "name",
                    "source_kind",
                    "build_backend",
                    "base_image",
                    "base_template",
                ] {
                    if !plan[key].is_null() {
                        println!("{key}: {}", text(&plan[key]));
                    }
                }
                if let Some(dockerfile) = plan["dockerfile"].as_str() {
                    println!("dockerfile:\n{dockerfile}");
                }
                for warning in out["warnings"].as_array().into_iter().flatten() {
                    println!("warning: {}", text(warning));
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        TemplateCommand::Rename {
            reference,
            new_name,
        } => {
            let path = format!("/v1/templates/{}/rename", segment(&reference));
            let out: Value = client
                .call(Method::POST, &path, Some(&RenameBody { name: new_name }))
                .await?;
            if json_output {
                print_json(&out)?;
            } else {
                println!("renamed {reference} to {}", text(&out["name"]));
            }
            Ok(ExitCode::SUCCESS)
        }
        _ => Err(needs_server()),
    }
}

/// Polls until the build is terminal, printing new entries on stderr as they come.
async fn wait(
    client: &Client,
    build_id: &str,
    poll_interval_ms: u64,
    json_output: bool,
) -> anyhow::Result<ExitCode> {
    let mut offset = 0;
    loop {
        let status = client.status(build_id, offset).await?;
        if !json_output {
            for entry in status["entries"].as_array().into_iter().flatten() {
                eprintln!("{}", entry_line(entry));
            }
        }
        offset = status["next_offset"].as_u64().unwrap_or(offset);
        let build = &status["build"];
        let state = build["status"].as_str().unwrap_or_default();
        if matches!(state, "ready" | "error" | "cancelled") {
            if json_output {
                print_json(build)?;
            } else {
                println!("{}\t{state}", text(&build["build_id"]));
                if state != "ready" {
                    match build.get("error_detail").filter(|d| !d.is_null()) {
                        Some(detail) => eprintln!(
                            "error: build {state} in {}: {}",
                            text(&detail["phase"]),
                            text(&detail["message"])
                        ),
                        None => eprintln!("error: build {state}"),
                    }
                }
            }
            return Ok(if state == "ready" {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            });
        }
        tokio::time::sleep(Duration::from_millis(poll_interval_ms.max(10))).await;
    }
}
