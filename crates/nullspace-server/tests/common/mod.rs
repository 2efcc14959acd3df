//! What the API tests share: the real `nullspace serve` binary started on a fresh data dir,
//! calls as one owner or another, SSE frames, waiting for a build's status.
//!
//! The binary is `$NULLSPACE_BIN`, else `<target>/debug/nullspace` (built on demand). Tests that
//! pull images need the local registries (`scripts/devenv up`, which `scripts/test` runs).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs, dead_code)]

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const ALICE: &str = "alice-key-0000000001";
pub const BOB: &str = "bob-key-00000000002";

pub fn binary() -> PathBuf {
    if let Some(bin) = std::env::var_os("NULLSPACE_BIN") {
        return PathBuf::from(bin);
    }
    let target = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .to_path_buf();
    let bin = target.join("debug").join("nullspace");
    if !bin.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "-p", "nullspace-cli"])
            .status()
            .unwrap();
        assert!(status.success());
    }
    bin
}

/// The devenv's registry; a test run without the devenv fails (it would check nothing).
pub fn registry() -> String {
    std::env::var("NULLSPACE_REGISTRY")
        .expect("NULLSPACE_REGISTRY is unset: run the tests with scripts/test")
}

pub struct Server {
    pub child: Child,
    pub url: String,
}

impl Server {
    pub fn start(data: &Path) -> Server {
        Server::start_with_env::<&str>(data, &[])
    }

    pub fn start_with_env<V: AsRef<std::ffi::OsStr>>(data: &Path, envs: &[(&str, V)]) -> Server {
        let mut all: Vec<(&str, std::ffi::OsString)> = envs
            .iter()
            .map(|(k, v)| (*k, v.as_ref().to_os_string()))
            .collect();
        if let Some(url) = database_for(data) {
            // Short leases: a killed server's builds are taken over within seconds.
            all.push(("NULLSPACE_DATABASE_URL", url.into()));
            all.push(("NULLSPACE_BUILD_LEASE_SECS", "3".into()));
        }
        Server::start_with_args(data, &["--workers", "2"], &all)
    }

    /// `nullspace serve --listen 127.0.0.1:0 ARGS` on `data` with alice's and bob's keys and
    /// `envs`; returns once it listens.
    pub fn start_with_args<V: AsRef<std::ffi::OsStr>>(
        data: &Path,
        args: &[&str],
        envs: &[(&str, V)],
    ) -> Server {
        let mut child = Command::new(binary())
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(args)
            .env("NULLSPACE_DATA_DIR", data)
            .env("NULLSPACE_API_KEYS", format!("{ALICE}:alice,{BOB}:bob"))
            .envs(envs.iter().map(|(k, v)| (*k, v.as_ref())))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let url = loop {
            let line = lines.next().expect("server exited").unwrap();
            if let Some((_, url)) = line.split_once("listening on ") {
                break url.trim().to_string();
            }
        };
        std::thread::spawn(move || for _ in lines {});
        Server { child, url }
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// With `NULLSPACE_TEST_STORE=postgres`, the PostgreSQL database a server of `data` uses: one
/// per data dir, made afresh the first time this test process asks for it (a restarted server
/// of the same data dir finds its state again). `None` runs the server on SQLite.
pub fn database_for(data: &Path) -> Option<String> {
    if std::env::var("NULLSPACE_TEST_STORE").ok()?.as_str() != "postgres" {
        return None;
    }
    let base = std::env::var("NULLSPACE_TEST_POSTGRES")
        .expect("NULLSPACE_TEST_POSTGRES is unset: run the tests with scripts/test");
    Some(fresh_database(&base, &database_name(data)))
}

/// A database name for `key` (a path or a label): `ns_` and 16 hex digits.
pub fn database_name(key: &Path) -> String {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut hasher);
    format!("ns_{:016x}", hasher.finish())
}

/// `base/name`, the database dropped and created the first time this process names it.
pub fn fresh_database(base: &str, name: &str) -> String {
    static MADE: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let mut made = MADE.lock().unwrap();
    if !made.iter().any(|m| m == name) {
        let (admin, name_owned) = (format!("{base}/postgres"), name.to_string());
        // Its own thread and runtime: callers may be inside a runtime already.
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Runtime::new().unwrap();
            runtime.block_on(async {
                let (client, connection) = tokio_postgres::connect(&admin, tokio_postgres::NoTls)
                    .await
                    .expect("connecting to the test PostgreSQL server");
                tokio::spawn(connection);
                // One statement each: neither may run inside a transaction block.
                client
                    .batch_execute(&format!(
                        "DROP DATABASE IF EXISTS {name_owned} WITH (FORCE)"
                    ))
                    .await
                    .unwrap();
                client
                    .batch_execute(&format!("CREATE DATABASE {name_owned}"))
                    .await
                    .unwrap();
            });
        })
        .join()
        .unwrap();
        made.push(name.to_string());
    }
    format!("{base}/{name}")
}

/// The text columns of `sql` (with `$1`... parameters) on the store of the server of `data`:
/// its PostgreSQL database with `NULLSPACE_TEST_STORE=postgres`, else its SQLite file.
pub fn store_rows(data: &Path, sql: &str, params: &[&str]) -> Vec<Vec<Option<String>>> {
    let owned: Vec<String> = params.iter().map(|p| p.to_string()).collect();
    if let Some(url) = database_for_existing(data) {
        let sql = sql.to_string();
        return std::thread::spawn(move || {
            let runtime = tokio::runtime::Runtime::new().unwrap();
            runtime.block_on(async {
                let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                    .await
                    .unwrap();
                tokio::spawn(connection);
                let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = owned
                    .iter()
                    .map(|p| p as &(dyn tokio_postgres::types::ToSql + Sync))
                    .collect();
                client
                    .query(&sql, &params)
                    .await
                    .unwrap()
                    .iter()
                    .map(|row| (0..row.len()).map(|i| row.get(i)).collect())
                    .collect()
            })
        })
        .join()
        .unwrap();
    }
    let db = rusqlite::Connection::open(data.join("nullspace.db")).unwrap();
    let mut statement = db.prepare(sql).unwrap();
    let columns = statement.column_count();
    statement
        .query_map(rusqlite::params_from_iter(owned.iter()), |r| {
            (0..columns).map(|i| r.get(i)).collect()
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// The database of `data`'s server when the tests run on PostgreSQL (without recreating it).
fn database_for_existing(data: &Path) -> Option<String> {
    if std::env::var("NULLSPACE_TEST_STORE").ok()?.as_str() != "postgres" {
        return None;
    }
    let base = std::env::var("NULLSPACE_TEST_POSTGRES").ok()?;
    Some(format!("{base}/{}", database_name(data)))
}

pub fn client() -> reqwest::Client {
    reqwest::Client::new()
}

pub async fn call(
    method: reqwest::Method,
    url: &str,
    key: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = client().request(method, url).bearer_auth(key);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Submits a build as the owner of `key`: `(status, body)`.
pub async fn submit_build(url: &str, key: &str, body: Value) -> (u16, Value) {
    call(
        reqwest::Method::POST,
        &format!("{url}/v1/templates/builds"),
        key,
        Some(body),
    )
    .await
}

/// Submits a build that must be accepted; returns its id.
pub async fn start_build(url: &str, key: &str, body: Value) -> String {
    let (code, build) = submit_build(url, key, body).await;
    assert_eq!(code, 202, "{build}");
    build["build_id"].as_str().unwrap().to_string()
}

/// `(id, data)` of every SSE frame in `text`.
pub fn frames(text: &str) -> Vec<(u64, Value)> {
    text.split("\n\n")
        .filter_map(|frame| {
            let mut id = None;
            let mut data = None;
            for line in frame.lines() {
                if let Some(v) = line.strip_prefix("id:") {
                    id = v.trim().parse().ok();
                } else if let Some(v) = line.strip_prefix("data:") {
                    data = serde_json::from_str(v.trim()).ok();
                }
            }
            Some((id?, data?))
        })
        .collect()
}

pub async fn wait_status(url: &str, build: &str, wanted: &[&str]) -> Value {
    wait_status_as(url, ALICE, build, wanted).await
}

/// Polls build `build` of the owner of `key` until its status is one of `wanted`.
pub async fn wait_status_as(url: &str, key: &str, build: &str, wanted: &[&str]) -> Value {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let (code, body) = call(
            reqwest::Method::GET,
            &format!("{url}/v1/templates/builds/{build}"),
            key,
            None,
        )
        .await;
        assert_eq!(code, 200, "{body}");
        if wanted.contains(&body["build"]["status"].as_str().unwrap()) {
            return body;
        }
        assert!(Instant::now() < deadline, "{build} stuck: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A port that accepts connections and never answers.
pub fn blackhole() -> (TcpListener, String) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap().to_string();
    (listener, address)
}

/// The operator settings that also let the server reach `hosts` (a test's own loopback peers):
/// the private-address allowlist and plain http, on top of the devenv's.
pub fn allowing(hosts: &[&str]) -> Vec<(&'static str, String)> {
    let joined = |variable: &str| {
        let mut all: Vec<String> = std::env::var(variable)
            .unwrap_or_default()
            .split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        all.extend(hosts.iter().map(|h| h.to_string()));
        all.join(",")
    };
    vec![
        (
            "NULLSPACE_SERVER_ALLOWED_HOSTS",
            joined("NULLSPACE_SERVER_ALLOWED_HOSTS"),
        ),
        (
            "NULLSPACE_INSECURE_REGISTRIES",
            joined("NULLSPACE_INSECURE_REGISTRIES"),
        ),
    ]
}
