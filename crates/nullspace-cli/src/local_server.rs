//! Local mode of `nullspace sandbox`: a sandbox outlives the command that starts it, so
//! without `NULLSPACE_API_URL` the CLI keeps a `nullspace serve` of its own in the background
//! for this data dir, started on first use and found again through
//! `<data>/sandbox-server.json` (URL, key, pid; readable by the user only). It listens on
//! loopback, accepts only that key (owner `local`), and also starts the templates this CLI
//! built locally (`NULLSPACE_LOCAL_TEMPLATES`). Its log is `<data>/sandbox-server.log`.

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use nullspace_build::DataDir;
use serde::{Deserialize, Serialize};

/// What the state file records.
#[derive(Debug, Serialize, Deserialize)]
struct State {
    url: String,
    key: String,
    pid: u32,
}

fn state_file(data: &DataDir) -> PathBuf {
    data.root().join("sandbox-server.json")
}

/// Whether the server in `state` answers with its key.
async fn answers(state: &State) -> bool {
    let client = reqwest::Client::new();
    let response = client
        .get(format!("{}/v1/sandboxes?state=running", state.url))
        .bearer_auth(&state.key)
        .timeout(Duration::from_secs(5))
        .send()
        .await;
    response.is_ok_and(|r| r.status().is_success())
}

fn random_key() -> anyhow::Result<String> {
    let mut bytes = [0u8; 24];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .context("reading /dev/urandom for the local server's key")?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    let staged = path.with_extension("json.tmp");
    let _ = std::fs::remove_file(&staged);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&staged)
        .with_context(|| format!("writing {}", staged.display()))?;
    std::io::Write::write_all(&mut file, text.as_bytes())?;
    std::fs::rename(&staged, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// The local server's URL and key, starting it when none answers (one CLI at a time decides:
/// the others wait on a lock, then find the one it started).
pub async fn ensure(data: &DataDir) -> anyhow::Result<(String, String)> {
    let lock_path = data.root().join("sandbox-server.lock");
    let lock = std::fs::File::create(&lock_path)
        .with_context(|| format!("creating {}", lock_path.display()))?;
    let lock = tokio::task::spawn_blocking(move || {
        rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive).map(|()| lock)
    })
    .await
    .context("waiting for the local server lock")?
    .with_context(|| format!("locking {}", lock_path.display()))?;
    let found = find_or_start(data).await;
    drop(lock);
    found
}

async fn find_or_start(data: &DataDir) -> anyhow::Result<(String, String)> {
    let file = state_file(data);
    if let Ok(text) = std::fs::read_to_string(&file) {
        if let Ok(state) = serde_json::from_str::<State>(&text) {
            if answers(&state).await {
                return Ok((state.url, state.key));
            }
        }
    }
    let key = random_key()?;
    let log_path = data.root().join("sandbox-server.log");
    let log = std::fs::File::create(&log_path)
        .with_context(|| format!("creating {}", log_path.display()))?;
    let binary = std::env::current_exe().context("finding the nullspace binary")?;
    let child = Command::new(binary)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("NULLSPACE_DATA_DIR", data.root())
        .env("NULLSPACE_API_KEYS", format!("{key}:local"))
        .env("NULLSPACE_LOCAL_TEMPLATES", "1")
        .env_remove("NULLSPACE_API_URL")
        .env_remove("NULLSPACE_API_KEYS_FILE")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        // Its own process group: a Ctrl-C at this terminal is not for it.
        .process_group(0)
        .spawn()
        .context("starting the local sandbox server")?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let url = loop {
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        if let Some(url) = text.lines().find_map(|l| {
            l.split_once("listening on ")
                .map(|(_, u)| u.trim().to_string())
        }) {
            break url;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the local sandbox server did not start within 60 s; see {}",
            log_path.display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let state = State {
        url: url.clone(),
        key: key.clone(),
        pid: child.id(),
    };
    write_private(&file, &serde_json::to_string_pretty(&state)?)?;
    Ok((url, key))
}
