//! Builds the guest agent (`nullspace-init`) as a static binary for the target and hands its
//! path to the crate, which embeds it: the `nullspace` binary then carries its own agent.
//!
//! The agent has its own target dir (`target/agent`): a nested cargo must not share the outer
//! build's lock, and one agent build serves every profile. `NULLSPACE_AGENT_BINARY` names a
//! prebuilt agent instead.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=NULLSPACE_AGENT_BINARY");
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default());
    let Some(workspace) = manifest.parent().and_then(|p| p.parent()) else {
        panic!("nullspace-vm must live at <workspace>/crates/nullspace-vm");
    };
    let agent = match std::env::var("NULLSPACE_AGENT_BINARY") {
        Ok(prebuilt) => PathBuf::from(prebuilt),
        Err(_) => build_agent(workspace),
    };
    println!("cargo:rustc-env=NULLSPACE_AGENT_PATH={}", agent.display());
}

fn build_agent(workspace: &std::path::Path) -> PathBuf {
    let init = workspace.join("crates/nullspace-init");
    for watched in ["src", "Cargo.toml"] {
        println!("cargo:rerun-if-changed={}", init.join(watched).display());
    }
    println!(
        "cargo:rerun-if-changed={}",
        workspace.join("Cargo.lock").display()
    );
    let target = std::env::var("TARGET").unwrap_or_else(|_| "x86_64-unknown-linux-gnu".into());
    let target_dir = workspace.join("target/agent");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut build = Command::new(cargo);
    build
        .current_dir(workspace)
        .args([
            "build",
            "--release",
            "--locked",
            "-p",
            "nullspace-init",
            "--bin",
            "nullspace-init",
        ])
        .arg("--target")
        .arg(&target)
        .arg("--target-dir")
        .arg(&target_dir);
    // The outer build's flags and wrappers (clippy's driver, coverage) are not the agent's.
    for name in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
    ] {
        build.env_remove(name);
    }
    build
        .env("CARGO_ENCODED_RUSTFLAGS", "-Ctarget-feature=+crt-static")
        .env("CARGO_PROFILE_RELEASE_DEBUG", "0")
        .env("CARGO_PROFILE_RELEASE_STRIP", "symbols");
    let status = build.status();
    match status {
        Ok(s) if s.success() => {}
        other => {
            panic!("building the guest agent (nullspace-init, static, {target}) failed: {other:?}")
        }
    }
    target_dir
        .join(&target)
        .join("release")
        .join("nullspace-init")
}
