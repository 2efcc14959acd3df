//! Benchmark: a Dockerfile built end to end by Nullspace (BuildKit → OCI archive → blob store →
//! ext4 rootfs → publish) against bare `docker buildx build --output type=oci` of the same
//! Dockerfile, cold (fresh BuildKit cache keys) and cached, in the same run.
//!
//! ```text
//! eval "$(scripts/devenv env)"
//! cargo run --release -p nullspace-build --example buildkit_bench -- [ROUNDS] [gzip|zstd]
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Instant;

use nullspace_build::buildkit::{BuildkitDriver, Compression, DockerBuildx, DockerBuildxConfig};
use nullspace_build::dockerfile::{DockerfileSource, DockerfileSpec};
use nullspace_build::engine_dockerfile::BuildkitOptions;
use nullspace_build::{BaseSelector, BuildRequest, DataDir, Engine};
use nullspace_oci::{Credentials, RegistryConfig};

fn dockerfile(nonce: &str) -> String {
    format!(
        "FROM debian:bookworm\n\
         RUN echo {nonce} > /nonce && mkdir /many && cd /many && seq 1 3000 | xargs touch \
         && head -c 20000000 /dev/urandom > /blob\n\
         COPY data.txt /data.txt\n\
         RUN cat /nonce /data.txt > /combined\n\
         ENV APP=bench\nCMD [\"sh\"]\n"
    )
}

fn bare(ctx: &Path, dockerfile: &Path, out: &Path, compression: Compression) -> f64 {
    let mut output = format!("type=oci,dest={}", out.display());
    if compression == Compression::Zstd {
        output.push_str(",compression=zstd,force-compression=true");
    }
    let docker = std::env::var("NULLSPACE_DOCKER").unwrap_or_else(|_| "docker".into());
    let started = Instant::now();
    let status = Command::new(docker)
        .args([
            "buildx",
            "build",
            "--network=none",
            "--provenance=false",
            "--progress=quiet",
        ])
        .arg("--output")
        .arg(output)
        .arg("-f")
        .arg(dockerfile)
        .arg(ctx)
        .stdout(Stdio::null())
        .status()
        .expect("running docker buildx build");
    assert!(status.success(), "docker buildx build failed");
    started.elapsed().as_secs_f64()
}

async fn ours(engine: &Engine, options: &BuildkitOptions, ctx: &Path, text: &str) -> (f64, bool) {
    let mut spec = DockerfileSpec::new(DockerfileSource::Content(text.into()));
    spec.context_dir = Some(ctx.to_path_buf());
    let mut request = BuildRequest::new("bench", BaseSelector::DebianImage(None));
    request.internet_access = false;
    let started = Instant::now();
    let outcome = engine
        .build_dockerfile_with(
            engine.buildkit_driver(),
            options,
            &request,
            &spec,
            &Credentials::Anonymous,
            Arc::new(|_| {}),
        )
        .await
        .expect("nullspace build failed");
    (started.elapsed().as_secs_f64(), outcome.rootfs_cache_hit)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let rounds: usize = args.get(1).and_then(|r| r.parse().ok()).unwrap_or(3);
    let compression = match args.get(2).map(String::as_str) {
        Some("zstd") => Compression::Zstd,
        _ => Compression::Gzip,
    };
    let options = BuildkitOptions {
        compression,
        client_config_dir: std::env::var_os("DOCKER_CONFIG").map(PathBuf::from),
        ..BuildkitOptions::default()
    };
    let info = DockerBuildx::new(buildx_config())
        .detect()
        .await
        .expect("BuildKit not reachable");
    println!(
        "BuildKit {} via {} (builder {}, engine {}), layers {:?}, {rounds} round(s)",
        info.buildkit_version,
        info.driver,
        info.builder,
        info.engine_version.as_deref().unwrap_or("?"),
        compression
    );
    let work = tempfile::tempdir().unwrap();
    let ctx = work.path().join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(ctx.join("data.txt"), "bench data\n").unwrap();
    let seed = std::process::id();
    let (mut bare_cold, mut bare_cached, mut our_cold, mut our_cached) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        // Bare BuildKit: a fresh nonce (cold), then the same Dockerfile again (cached).
        let file = work.path().join(format!("bare-{round}.Dockerfile"));
        std::fs::write(&file, dockerfile(&format!("bare-{seed}-{round}"))).unwrap();
        let out = work.path().join("bare.tar");
        bare_cold.push(bare(&ctx, &file, &out, compression));
        bare_cached.push(bare(&ctx, &file, &out, compression));
        // Ours: a fresh data dir and nonce (cold everywhere), then the same again (cached).
        let data = work.path().join(format!("data-{round}"));
        let engine = Engine::open(DataDir::open(&data).unwrap(), RegistryConfig::from_env())
            .unwrap()
            .with_buildkit(buildx_config(), options.clone());
        let text = dockerfile(&format!("ours-{seed}-{round}"));
        let (cold, cold_hit) = ours(&engine, &options, &ctx, &text).await;
        let (cached, cached_hit) = ours(&engine, &options, &ctx, &text).await;
        assert!(!cold_hit && cached_hit, "unexpected rootfs cache behaviour");
        our_cold.push(cold);
        our_cached.push(cached);
        println!(
            "round {}: bare cold {:.2}s cached {:.2}s | nullspace cold {:.2}s cached {:.2}s",
            round + 1,
            bare_cold[round],
            bare_cached[round],
            cold,
            cached
        );
    }
    let (bc, bh, oc, oh) = (
        median(bare_cold),
        median(bare_cached),
        median(our_cold),
        median(our_cached),
    );
    println!(
        "median  bare cold {bc:.2}s cached {bh:.2}s | nullspace cold {oc:.2}s cached {oh:.2}s"
    );
    println!(
        "overhead: cold x{:.2} (+{:.2}s), cached x{:.2} (+{:.2}s)",
        oc / bc,
        oc - bc,
        oh / bh,
        oh - bh
    );
}

/// `docker buildx` as the CLI configures it (`NULLSPACE_DOCKER`, `DOCKER_HOST`, `DOCKER_CONFIG`).
fn buildx_config() -> DockerBuildxConfig {
    let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    DockerBuildxConfig {
        docker: var("NULLSPACE_DOCKER").map_or_else(|| "docker".into(), PathBuf::from),
        docker_host: var("DOCKER_HOST"),
        docker_config: var("DOCKER_CONFIG").map(PathBuf::from),
        ..DockerBuildxConfig::default()
    }
}
