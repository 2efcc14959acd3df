//! `nullspace serve`: the template build service.

use std::process::ExitCode;

use anyhow::Context;

use crate::args::ServeArgs;
use nullspace_build::DataDir;
use nullspace_server::{ApiKeys, ServerConfig};

/// Runs the server until SIGINT or SIGTERM.
pub fn serve(data: DataDir, args: ServeArgs) -> anyhow::Result<ExitCode> {
    let keys = if args.role.serves_api() {
        ApiKeys::from_env().context("reading API keys")?
    } else {
        ApiKeys::default()
    };
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
        settings: crate::config::server_settings()?,
        registry: crate::config::server_registry(),
        buildx: crate::config::buildx(),
        buildkit: crate::config::server_buildkit(),
        vm: crate::config::vm()?,
        require_snapshots: crate::config::require_snapshots(),
        sandboxes: crate::config::sandbox_settings()?,
        deployment: nullspace_server::config::Deployment {
            role: args.role,
            database_url: args.database,
            lease: std::time::Duration::from_secs(args.lease_secs.clamp(3, 3600)),
            drain_timeout: std::time::Duration::from_secs(args.drain_timeout_secs.unwrap_or(
                if args.role == nullspace_server::config::Role::Worker {
                    60
                } else {
                    10
                },
            )),
            instance: nullspace_server::config::default_instance(),
            artifact_cache_bytes: args.artifact_cache_bytes,
            object_store_url: args.object_store,
            s3_endpoint: args.s3_endpoint,
        },
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
