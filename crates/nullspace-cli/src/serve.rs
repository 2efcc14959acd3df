//! `nullspace serve`: the template build service.

use std::process::ExitCode;

use anyhow::Context;

use crate::args::ServeArgs;
use nullspace_build::DataDir;
use nullspace_server::config::ServerSettings;
use nullspace_server::{ApiKeys, ServerConfig};

/// Runs the server until SIGINT or SIGTERM.
pub fn serve(data: DataDir, args: ServeArgs) -> anyhow::Result<ExitCode> {
    let keys = ApiKeys::from_env().context("reading API keys")?;
    if let Some(owner) = &args.no_auth_as {
        anyhow::ensure!(
            nullspace_server::auth::valid_owner(owner),
            "--no-auth-as {owner:?}: use 1-63 lower-case letters, digits, '-' or '_'"
        );
        eprintln!("warning: authentication is disabled; every caller acts as {owner:?}");
    }
    let config = ServerConfig {
        listen: args.listen,
        data,
        workers: args.workers,
        keys,
        open_owner: args.no_auth_as,
        settings: server_settings()?,
        registry: nullspace_oci::RegistryConfig::from_env(),
    };
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(nullspace_server::serve(
        config,
        |address| {
            // Scripts and tests read this line to find the port.
            println!("nullspace serve: listening on http://{address}");
        },
        shutdown_signal(),
    ))?;
    Ok(ExitCode::SUCCESS)
}

/// The server's limits and policy, from `NULLSPACE_MAX_CONTEXT_BYTES` (default 16 GiB),
/// `NULLSPACE_MAX_UPLOAD_BYTES` (default 4 GiB) and `NULLSPACE_BUILDKIT_ALLOW_SSH`, read once.
fn server_settings() -> anyhow::Result<ServerSettings> {
    let mut settings = ServerSettings::default();
    let bytes = |name: &str| -> anyhow::Result<Option<u64>> {
        match std::env::var(name) {
            Ok(v) if !v.is_empty() => {
                let parsed: u64 = v
                    .parse()
                    .with_context(|| format!("{name}={v:?}: expected a number of bytes"))?;
                anyhow::ensure!(parsed > 0, "{name}: must be more than 0");
                Ok(Some(parsed))
            }
            _ => Ok(None),
        }
    };
    if let Some(limit) = bytes("NULLSPACE_MAX_CONTEXT_BYTES")? {
        settings.limits.max_context_bytes = limit;
    }
    if let Some(limit) = bytes("NULLSPACE_MAX_UPLOAD_BYTES")? {
        settings.max_upload_bytes = limit;
    }
    settings.policy = nullspace_build::engine_dockerfile::BuildkitOptions::from_env().policy;
    Ok(settings)
}

async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = interrupt => {}
                    _ = terminate.recv() => {}
                }
            }
            Err(_) => {
                let _ = interrupt.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
}
