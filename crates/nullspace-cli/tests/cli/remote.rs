//! Client mode against the real `nullspace serve`: a background build, wait, status with
//! offsets, logs, promote, and the error exit codes.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};

use serde_json::Value;

use crate::harness::{self, Cli};

const KEY: &str = "key-00000001";

/// `nullspace serve` on a free port, killed on drop.
struct Server {
    child: Child,
    url: String,
    _data: tempfile::TempDir,
}

impl Server {
    fn start() -> Server {
        Server::start_with(false)
    }

    /// With `buildkit`, the server sees the devenv's Docker config (where buildx lives), as
    /// Dockerfile and declarative builds need.
    fn start_with(buildkit: bool) -> Server {
        let data = tempfile::Builder::new()
            .prefix("nullspace-cli-serve")
            .tempdir()
            .unwrap();
        let (child, url) = spawn_serve(data.path(), "127.0.0.1:0", buildkit, false);
        Server {
            child,
            url,
            _data: data,
        }
    }
}

/// `nullspace serve` on `listen` with `data`; its URL once it listens. With `own_group`, in
/// its own process group (so that killing the group takes its `docker buildx` children).
fn spawn_serve(
    data: &std::path::Path,
    listen: &str,
    buildkit: bool,
    own_group: bool,
) -> (Child, String) {
    use std::os::unix::process::CommandExt as _;
    let mut command = Command::new(env!("CARGO_BIN_EXE_nullspace"));
    command
        .args(["serve", "--listen", listen])
        .envs(harness::devenv())
        .env("NULLSPACE_DATA_DIR", data)
        .env("NULLSPACE_API_KEYS", format!("{KEY}:alice"));
    if !buildkit {
        command.env_remove("DOCKER_CONFIG");
    }
    if own_group {
        command.process_group(0);
    }
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let url = loop {
        let line = lines.next().expect("server exited").unwrap();
        if let Some((_, url)) = line.split_once("listening on ") {
            break url.trim().to_string();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    (child, url)
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn run(cli: &Cli, server: &Server, key: &str, args: &[&str]) -> Output {
    cli.command()
        .env("NULLSPACE_API_URL", &server.url)
        .env("NULLSPACE_API_KEY", key)
        .args(args)
        .output()
        .unwrap()
}

/// One API call with the test key: status and JSON body.
fn http(method: reqwest::Method, url: &str, body: Option<Value>) -> (u16, Value) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let mut request = reqwest::Client::new().request(method, url).bearer_auth(KEY);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    })
}

fn ok(out: &Output) -> &Output {
    assert!(
        out.status.success(),
        "failed ({:?}):\nstdout: {}\nstderr: {}",
        out.status,
        harness::stdout(out),
        harness::stderr(out)
    );
    out
}

fn json(out: &Output) -> Value {
    serde_json::from_slice(&ok(out).stdout).unwrap()
}

#[test]
fn client_mode_against_the_server() {
    let cli = Cli::new();
    let server = Server::start();

    let build = json(&run(
        &cli,
        &server,
        KEY,
        &[
            "template",
            "build",
            "--from-debian-image",
            "--name",
            "remote",
            "--background",
            "--json",
        ],
    ));
    let id = build["build_id"].as_str().unwrap().to_string();
    assert!(id.starts_with("tb_"), "{build}");

    ok(&run(&cli, &server, KEY, &["template", "wait", &id]));

    let status = json(&run(
        &cli,
        &server,
        KEY,
        &["template", "status", &id, "--json"],
    ));
    assert_eq!(status["build"]["status"], "ready", "{status}");
    let next = status["next_offset"].as_u64().unwrap();
    assert!(next > 0, "{status}");
    let later = json(&run(
        &cli,
        &server,
        KEY,
        &[
            "template",
            "status",
            &id,
            "--offset",
            &next.to_string(),
            "--json",
        ],
    ));
    assert_eq!(later["entries"].as_array().unwrap().len(), 0, "{later}");
    assert_eq!(later["next_offset"].as_u64().unwrap(), next, "{later}");

    let text = harness::stdout(ok(&run(&cli, &server, KEY, &["template", "status", &id])));
    assert!(
        text.contains("ready") && text.contains("next_offset"),
        "{text}"
    );

    let logs = harness::stdout(ok(&run(&cli, &server, KEY, &["template", "logs", &id])));
    assert!(logs.lines().any(|l| l.contains("] end ")), "{logs}");
    let logs_json = harness::stdout(ok(&run(
        &cli,
        &server,
        KEY,
        &["template", "logs", &id, "--json"],
    )));
    let last: Value = serde_json::from_str(logs_json.lines().last().unwrap()).unwrap();
    assert_eq!(last["kind"], "end", "{logs_json}");

    let promoted = json(&run(
        &cli,
        &server,
        KEY,
        &["template", "promote", &id, "--tag", "stable", "--json"],
    ));
    assert_eq!(promoted["tag"], "stable", "{promoted}");

    let missing = run(
        &cli,
        &server,
        KEY,
        &["template", "status", "tb_doesnotexist"],
    );
    assert_eq!(
        missing.status.code(),
        Some(3),
        "{}",
        harness::stderr(&missing)
    );
    let missing = run(
        &cli,
        &server,
        KEY,
        &["template", "status", "tb_doesnotexist", "--json"],
    );
    assert_eq!(missing.status.code(), Some(3));
    let envelope: Value = serde_json::from_slice(&missing.stdout).unwrap();
    assert!(
        envelope["code"].as_str().unwrap().ends_with("_not_found"),
        "{envelope}"
    );

    // logs --follow on a running build streams until its end entry.
    let second = json(&run(
        &cli,
        &server,
        KEY,
        &[
            "template",
            "build",
            "--from-debian-image",
            "--name",
            "remote",
            "--background",
            "--skip-cache",
            "--json",
        ],
    ));
    let second_id = second["build_id"].as_str().unwrap().to_string();
    let followed = harness::stdout(ok(&run(
        &cli,
        &server,
        KEY,
        &["template", "logs", &second_id, "--follow", "--json"],
    )));
    let end: Value = serde_json::from_str(followed.lines().last().unwrap()).unwrap();
    assert_eq!(end["kind"], "end", "{followed}");
    assert_eq!(end["result"], "ready", "{followed}");

    // retry: a new attempt from the stored definition, with new tags.
    let retried = json(&run(
        &cli,
        &server,
        KEY,
        &["template", "retry", &id, "--tag", "retried", "--json"],
    ));
    let retried_id = retried["build_id"].as_str().unwrap().to_string();
    assert_ne!(retried_id, id);
    assert_eq!(retried["retry_of"], id.as_str(), "{retried}");
    ok(&run(&cli, &server, KEY, &["template", "wait", &retried_id]));

    // validate and plan: nothing is built.
    let valid = json(&run(
        &cli,
        &server,
        KEY,
        &[
            "template",
            "validate",
            "--from-image",
            "debian:bookworm",
            "--name",
            "v",
            "--json",
        ],
    ));
    assert_eq!(valid["valid"], true, "{valid}");
    let invalid = run(
        &cli,
        &server,
        KEY,
        &[
            "template",
            "validate",
            "--from-image",
            "Not A Ref",
            "--name",
            "v",
        ],
    );
    assert_eq!(
        invalid.status.code(),
        Some(2),
        "{}",
        harness::stdout(&invalid)
    );
    assert!(
        harness::stdout(&invalid).contains("invalid_request"),
        "{}",
        harness::stdout(&invalid)
    );
    let plan = json(&run(
        &cli,
        &server,
        KEY,
        &[
            "template",
            "plan",
            "--from-ubuntu-image",
            "22.04",
            "--name",
            "p",
            "--json",
        ],
    ));
    assert_eq!(
        plan["build_plan"]["base_image"], "docker.io/library/ubuntu:22.04",
        "{plan}"
    );

    // rename keeps builds, tags and aliases; the old name stops resolving.
    let (status, aliased) = http(
        reqwest::Method::POST,
        &format!("{}/v1/templates/remote/aliases", server.url),
        Some(serde_json::json!({"alias": "remote-alias"})),
    );
    assert_eq!(status, 201, "{aliased}");
    let renamed = json(&run(
        &cli,
        &server,
        KEY,
        &["template", "rename", "remote", "renamed", "--json"],
    ));
    assert_eq!(renamed["name"], "renamed", "{renamed}");
    assert_eq!(
        renamed["aliases"],
        serde_json::json!(["remote-alias"]),
        "{renamed}"
    );
    let tags = renamed["tags"].as_array().unwrap();
    assert!(tags.contains(&Value::from("stable")), "{renamed}");
    let (status, by_alias) = http(
        reqwest::Method::GET,
        &format!("{}/v1/templates/refs/remote-alias:stable", server.url),
        None,
    );
    assert_eq!(status, 200, "{by_alias}");
    assert_eq!(
        by_alias["canonical_ref"], "alice/renamed:stable",
        "{by_alias}"
    );
    let old = run(&cli, &server, KEY, &["template", "status", &id, "--json"]);
    assert_eq!(json(&old)["build"]["status"], "ready");
    let (status, gone) = http(
        reqwest::Method::GET,
        &format!("{}/v1/templates/refs/remote", server.url),
        None,
    );
    assert_eq!(status, 404, "{gone}");
    let taken = run(
        &cli,
        &server,
        KEY,
        &["template", "rename", "renamed", "remote-alias"],
    );
    assert_eq!(taken.status.code(), Some(7), "{}", harness::stderr(&taken));

    let denied = run(
        &cli,
        &server,
        "wrong-key-000000",
        &["template", "status", &id],
    );
    assert_eq!(
        denied.status.code(),
        Some(4),
        "{}",
        harness::stderr(&denied)
    );
}

#[test]
fn lifecycle_commands_need_a_server() {
    let cli = Cli::new();
    for args in [
        &["template", "status", "tb_x"][..],
        &["template", "wait", "tb_x"],
        &["template", "logs", "tb_x"],
        &["template", "cancel", "tb_x"],
        &["template", "promote", "tb_x", "--tag", "t"],
        &["template", "retry", "tb_x"],
        &["template", "validate", "--from-debian-image", "--name", "n"],
        &["template", "plan", "--from-debian-image", "--name", "n"],
    ] {
        let out = cli
            .command()
            .env_remove("NULLSPACE_API_URL")
            .args(args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(
            harness::stderr(&out).contains("NULLSPACE_API_URL"),
            "{}",
            harness::stderr(&out)
        );
    }
}

#[test]
fn background_builds_upload_their_build_context() {
    let cli = Cli::new();
    let server = Server::start_with(true);
    let work = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(work.path().join("app")).unwrap();
    std::fs::write(work.path().join("app/main.sh"), "echo main\n").unwrap();
    std::fs::write(work.path().join("app/.env"), "A=1\n").unwrap();
    std::fs::write(work.path().join("app/secret.key"), "do-not-upload-4242\n").unwrap();
    std::fs::write(work.path().join(".dockerignore"), "**/*.key\n").unwrap();
    std::fs::write(
        work.path().join("Dockerfile"),
        "FROM debian:bookworm\nCOPY app /app\nCOPY --from=shared lib.sh /lib.sh\n\
         RUN ls -A /app > /listing\n",
    )
    .unwrap();
    let shared = tempfile::tempdir().unwrap();
    std::fs::write(shared.path().join("lib.sh"), "echo lib\n").unwrap();
    let named = format!("shared={}", shared.path().display());
    let in_work = |args: &[&str]| {
        cli.command()
            .current_dir(work.path())
            .env("NULLSPACE_API_URL", &server.url)
            .env("NULLSPACE_API_KEY", KEY)
            .args(args)
            .output()
            .unwrap()
    };
    // Declarative copy: the plan shows it, the build uploads app/ (minus the key) and runs.
    let plan = json(&in_work(&[
        "template",
        "plan",
        "--from-debian-image",
        "--name",
        "ctx",
        "--copy-src",
        "app",
        "--copy-dst",
        "/srv/app",
        "--json",
    ]));
    let dockerfile = plan["build_plan"]["dockerfile"].as_str().unwrap();
    assert!(dockerfile.contains(r#"COPY ["app","/srv/app"]"#), "{plan}");
    assert_eq!(plan["context_manifest"]["file_count"], 2, "{plan}");
    let build = json(&in_work(&[
        "template",
        "build",
        "--from-debian-image",
        "--name",
        "ctx",
        "--copy-src",
        "./app",
        "--copy-dst",
        "/srv/app",
        "--run-cmd",
        "ls -A /srv/app > /srv/listing",
        "--background",
        "--json",
    ]));
    let id = build["build_id"].as_str().unwrap().to_string();
    ok(&run(&cli, &server, KEY, &["template", "wait", &id]));
    let status = json(&run(
        &cli,
        &server,
        KEY,
        &["template", "status", &id, "--json"],
    ));
    let summary = &status["build"]["cache_summary"];
    assert_eq!(summary["file_blob_misses"], 2, "{status}");
    // The same build again reuses both blobs.
    let again = json(&in_work(&[
        "template",
        "build",
        "--from-debian-image",
        "--name",
        "ctx",
        "--copy-src",
        "app",
        "--copy-dst",
        "/srv/app",
        "--background",
        "--json",
    ]));
    let again_id = again["build_id"].as_str().unwrap().to_string();
    ok(&run(&cli, &server, KEY, &["template", "wait", &again_id]));
    let status = json(&run(
        &cli,
        &server,
        KEY,
        &["template", "status", &again_id, "--json"],
    ));
    assert_eq!(
        status["build"]["cache_summary"]["file_blob_hits"], 2,
        "{status}"
    );

    // `force_upload` in --copy-items sends the blobs again: bypasses, not hits.
    std::fs::write(
        work.path().join("items.json"),
        r#"[{"src": "app", "dst": "/srv/app", "force_upload": true}]"#,
    )
    .unwrap();
    let forced = json(&in_work(&[
        "template",
        "build",
        "--from-debian-image",
        "--name",
        "ctx",
        "--copy-items",
        "@items.json",
        "--background",
        "--json",
    ]));
    let forced_id = forced["build_id"].as_str().unwrap().to_string();
    ok(&run(&cli, &server, KEY, &["template", "wait", &forced_id]));
    let status = json(&run(
        &cli,
        &server,
        KEY,
        &["template", "status", &forced_id, "--json"],
    ));
    assert_eq!(
        status["build"]["cache_summary"]["file_blob_bypasses"], 2,
        "{status}"
    );

    // A Dockerfile build sends its folder as the context.
    let df = json(&in_work(&[
        "template",
        "build",
        "--from-dockerfile",
        "Dockerfile",
        "--build-context",
        &named,
        "--name",
        "ctx-df",
        "--background",
        "--json",
    ]));
    let df_id = df["build_id"].as_str().unwrap().to_string();
    ok(&run(&cli, &server, KEY, &["template", "wait", &df_id]));
    let status = json(&run(
        &cli,
        &server,
        KEY,
        &["template", "status", &df_id, "--json"],
    ));
    assert_eq!(status["build"]["status"], "ready", "{status}");
    assert!(status["build"]["context_digest"]
        .as_str()
        .unwrap()
        .starts_with("sha256:"));
    // The ignored key never reached the server.
    let blobs = server._data.path().join("context-blobs");
    let needle = b"do-not-upload-4242";
    for entry in walk(&blobs) {
        let bytes = std::fs::read(&entry).unwrap();
        assert!(
            !bytes.windows(needle.len()).any(|w| w == needle),
            "{}",
            entry.display()
        );
    }
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// SIGKILL to the whole process group of `child`.
fn kill_group(child: &mut Child) {
    // procps' kill reads `-PID` after a signal as a process group only after `--`.
    let status = Command::new("kill")
        .args(["-s", "KILL", "--", &format!("-{}", child.id())])
        .status()
        .unwrap();
    assert!(status.success());
    let _ = child.wait();
}

/// `logs --follow` survives the server being killed and restarted mid-stream: it resumes
/// from the next offset, prints every entry exactly once, and ends with the build.
#[test]
fn logs_follow_resumes_after_the_server_restarts() {
    let cli = Cli::new();
    let data = tempfile::Builder::new()
        .prefix("nullspace-cli-restart")
        .tempdir()
        .unwrap();
    let (mut server, url) = spawn_serve(data.path(), "127.0.0.1:0", true, true);
    let listen = url.trim_start_matches("http://").to_string();
    let work = tempfile::tempdir().unwrap();
    // A new RUN each time, so that BuildKit's cache never answers for it.
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    std::fs::write(
        work.path().join("Dockerfile"),
        format!(
            "FROM debian:bookworm\nRUN echo {nonce}; for i in $(seq 1 60); do echo line $i; sleep 0.25; done\n"
        ),
    )
    .unwrap();
    let started = cli
        .command()
        .current_dir(work.path())
        .env("NULLSPACE_API_URL", &url)
        .env("NULLSPACE_API_KEY", KEY)
        .args([
            "template",
            "build",
            "--from-dockerfile",
            "Dockerfile",
            "--name",
            "slow-logs",
            "--background",
            "--json",
        ])
        .output()
        .unwrap();
    let build_id = json(&started)["build_id"].as_str().unwrap().to_string();
    let mut follower = cli
        .command()
        .env("NULLSPACE_API_URL", &url)
        .env("NULLSPACE_API_KEY", KEY)
        .args(["template", "logs", &build_id, "--follow", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(follower.stdout.take().unwrap()).lines();
    let mut entries: Vec<Value> = Vec::new();
    // Wait until the build's own output streams, then kill the server under the follower.
    while !entries
        .iter()
        .any(|e| e["message"].as_str().is_some_and(|m| m.contains("line 3")))
    {
        let Some(line) = lines.next() else {
            let mut stderr = String::new();
            let _ =
                std::io::Read::read_to_string(&mut follower.stderr.take().unwrap(), &mut stderr);
            panic!("the follower stopped early: {entries:?}\n{stderr}");
        };
        entries.push(serde_json::from_str(&line.unwrap()).unwrap());
    }
    kill_group(&mut server);
    // Down for longer than a few quick retries would cover.
    std::thread::sleep(std::time::Duration::from_secs(6));
    let (mut restarted, _) = spawn_serve(data.path(), &listen, true, true);
    for line in lines {
        entries.push(serde_json::from_str(&line.unwrap()).unwrap());
    }
    let status = follower.wait().unwrap();
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut follower.stderr.take().unwrap(), &mut stderr).unwrap();
    kill_group(&mut restarted);
    assert!(status.success(), "{status:?}: {stderr}");
    let offsets: Vec<u64> = entries
        .iter()
        .map(|e| e["offset"].as_u64().unwrap())
        .collect();
    let dense: Vec<u64> = (0..offsets.len() as u64).collect();
    assert_eq!(offsets, dense, "{stderr}");
    let last = entries.last().unwrap();
    assert_eq!(last["kind"], "end", "{last}");
    // The restart failed the interrupted build, and the follower saw that too.
    assert_eq!(last["result"], "error", "{last}");
    assert!(
        entries
            .iter()
            .any(|e| e["kind"] == "error" && e["error_detail"]["phase"] == "build"),
        "{entries:?}"
    );
    assert!(stderr.contains("resuming from offset"), "{stderr}");
}

/// `nullspace sandbox ...` with stdin.
fn run_with_stdin(cli: &Cli, server: &Server, args: &[&str], stdin: &[u8]) -> Output {
    use std::io::Write as _;
    let mut child = cli
        .command()
        .env("NULLSPACE_API_URL", &server.url)
        .env("NULLSPACE_API_KEY", KEY)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn sandbox_commands_against_the_server() {
    let cli = Cli::new();
    let server = Server::start();
    // The builtin base template (Debian bookworm through the devenv's mirror), built on first use.
    let created = json(&run(
        &cli,
        &server,
        KEY,
        &["sandbox", "create", "--env", "GREETING=hi", "--json"],
    ));
    assert_eq!(created["template"], "base", "{created}");
    assert_eq!(created["started_from"], "snapshot", "{created}");
    let id = created["sandbox_id"].as_str().unwrap();

    let out = run(
        &cli,
        &server,
        KEY,
        &["sandbox", "exec", id, "echo", "$GREETING", "&&", "pwd"],
    );
    assert_eq!(harness::stdout(ok(&out)), "hi\n/\n");
    let out = run(
        &cli,
        &server,
        KEY,
        &["sandbox", "exec", id, "echo oops >&2; exit 5"],
    );
    assert_eq!(out.status.code(), Some(5));
    assert_eq!(harness::stderr(&out), "oops\n");
    let out = run(
        &cli,
        &server,
        KEY,
        &["sandbox", "exec", "--timeout", "1", id, "sleep 30"],
    );
    assert_eq!(out.status.code(), Some(124), "{}", harness::stderr(&out));

    let payload: Vec<u8> = (0..=255u8).collect();
    let written = run_with_stdin(
        &cli,
        &server,
        &["sandbox", "write", id, "/srv/blob.bin", "--json"],
        &payload,
    );
    assert_eq!(json(&written)["size"], 256);
    let read = ok(&run(
        &cli,
        &server,
        KEY,
        &["sandbox", "read", id, "/srv/blob.bin"],
    ))
    .stdout
    .clone();
    assert_eq!(read, payload);
    let listing = json(&run(
        &cli,
        &server,
        KEY,
        &["sandbox", "read", "--list", id, "/srv", "--json"],
    ));
    assert_eq!(listing["entries"][0]["name"], "blob.bin", "{listing}");
    let missing = run(
        &cli,
        &server,
        KEY,
        &["sandbox", "read", id, "/no/such", "--json"],
    );
    assert_eq!(
        missing.status.code(),
        Some(3),
        "{}",
        harness::stdout(&missing)
    );

    let listed = json(&run(&cli, &server, KEY, &["sandbox", "list", "--json"]));
    assert_eq!(listed["sandboxes"][0]["sandbox_id"], id);
    let killed = json(&run(&cli, &server, KEY, &["sandbox", "kill", id, "--json"]));
    assert_eq!(
        (killed["state"].as_str(), killed["end_reason"].as_str()),
        (Some("ended"), Some("killed"))
    );
    let gone = run(&cli, &server, KEY, &["sandbox", "exec", id, "true"]);
    assert_eq!(gone.status.code(), Some(3), "{}", harness::stderr(&gone));
    let got = json(&run(&cli, &server, KEY, &["sandbox", "get", id, "--json"]));
    assert_eq!(got["state"], "ended");

    // Without a server: local mode, on this data dir's own background server, which also
    // starts the templates built locally.
    let local = Cli::new();
    let built = local.build_json(&[
        "--from-debian-image",
        "--name",
        "local-web",
        "--ready-cmd",
        "true",
    ]);
    assert!(!built["template"]["snapshot"].is_null(), "{built}");
    let run_local = |args: &[&str]| {
        local
            .command()
            .env_remove("NULLSPACE_API_URL")
            .env_remove("NULLSPACE_API_KEY")
            .args(args)
            .output()
            .unwrap()
    };
    let created = json(&run_local(&[
        "sandbox",
        "create",
        "--template",
        "local-web",
        "--json",
    ]));
    assert_eq!(created["started_from"], "snapshot", "{created}");
    let id = created["sandbox_id"].as_str().unwrap();
    let out = run_local(&["sandbox", "exec", id, "cat", "/etc/debian_version"]);
    assert!(harness::stdout(ok(&out)).starts_with("12"));
    let listed = json(&run_local(&["sandbox", "list", "--json"]));
    assert_eq!(listed["sandboxes"][0]["sandbox_id"], id);
    let killed = json(&run_local(&["sandbox", "kill", id, "--json"]));
    assert_eq!(killed["end_reason"], "killed");
    let state: Value = serde_json::from_slice(
        &std::fs::read(local.data.path().join("sandbox-server.json")).unwrap(),
    )
    .unwrap();
    let pid = state["pid"].as_u64().unwrap();
    let _ = Command::new("kill").arg(pid.to_string()).status();
}
