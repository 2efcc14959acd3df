//! `nullspace template build --from-dockerfile` through the real BuildKit of the devenv.

use std::path::Path;
use std::process::Command;

use crate::harness::{assert_fsck_clean, devenv, stderr, stdout, Cli};

/// A CLI whose children see the devenv's Docker config (the harness hides the user's).
fn run(cli: &Cli, args: &[&str], envs: &[(&str, &str)]) -> std::process::Output {
    let mut command = cli.command();
    command.env("DOCKER_CONFIG", &devenv()["DOCKER_CONFIG"]);
    for (k, v) in envs {
        command.env(k, v);
    }
    command.args(args).output().unwrap()
}

fn debugfs_cat(image: &Path, path: &str) -> Option<String> {
    let out = Command::new("debugfs")
        .arg("-R")
        .arg(format!("cat {path}"))
        .arg(image)
        .output()
        .unwrap();
    if String::from_utf8_lossy(&out.stderr).contains("File not found") {
        None
    } else {
        Some(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

#[test]
fn builds_a_dockerfile_with_secrets_and_named_contexts() {
    let cli = Cli::new();
    let work = tempfile::tempdir().unwrap();
    let app = work.path().join("app");
    let shared = work.path().join("shared");
    std::fs::create_dir_all(&app).unwrap();
    std::fs::create_dir_all(&shared).unwrap();
    std::fs::write(app.join("main.sh"), "echo main\n").unwrap();
    std::fs::write(app.join("secret-notes.txt"), "ignored\n").unwrap();
    std::fs::write(app.join(".dockerignore"), "secret-notes.txt\n").unwrap();
    std::fs::write(shared.join("lib.sh"), "echo lib\n").unwrap();
    let secret_file = work.path().join("token.txt");
    std::fs::write(&secret_file, "file-secret-9876").unwrap();
    std::fs::write(
        app.join("Dockerfile"),
        "FROM debian:bookworm\n\
         COPY . /app/\n\
         COPY --from=shared lib.sh /app/lib.sh\n\
         RUN --mount=type=secret,id=env_tok --mount=type=secret,id=file_tok \\\n\
         \x20   cat /run/secrets/env_tok /run/secrets/file_tok | wc -c > /app/secret-bytes\n\
         WORKDIR /app\n\
         CMD [\"sh\", \"main.sh\"]\n",
    )
    .unwrap();
    let dockerfile = app.join("Dockerfile");
    let context_arg = format!("shared={}", shared.display());
    let file_arg = format!("file_tok={}", secret_file.display());
    let out = run(
        &cli,
        &[
            "--json",
            "template",
            "build",
            "--name",
            "from-df",
            "--from-dockerfile",
            dockerfile.to_str().unwrap(),
            "--build-secret-env",
            "env_tok=NS_TEST_TOKEN",
            "--build-secret-file",
            &file_arg,
            "--build-context",
            &context_arg,
        ],
        &[("NS_TEST_TOKEN", "env-secret-1234")],
    );
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    let outcome: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rootfs = Path::new(outcome["rootfs_path"].as_str().unwrap());
    assert_fsck_clean(rootfs);
    assert_eq!(debugfs_cat(rootfs, "/app/main.sh").unwrap(), "echo main\n");
    assert_eq!(debugfs_cat(rootfs, "/app/lib.sh").unwrap(), "echo lib\n");
    assert_eq!(debugfs_cat(rootfs, "/app/secret-notes.txt"), None);
    assert_eq!(
        debugfs_cat(rootfs, "/app/secret-bytes").unwrap().trim(),
        "31"
    );
    let t = &outcome["template"];
    assert_eq!(t["source"]["kind"], "dockerfile");
    assert_eq!(t["build_config"]["build_backend"], "buildkit");
    assert_eq!(t["runtime_defaults"]["workdir"], "/app");
    assert_eq!(t["runtime_defaults"]["start_cmd"], "sh main.sh");
    let everything = format!("{}{}", stdout(&out), stderr(&out));
    for secret in ["env-secret-1234", "file-secret-9876"] {
        assert!(!everything.contains(secret));
        for file in cli.files() {
            let bytes = std::fs::read(&file).unwrap_or_default();
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "{secret} in {}",
                file.display()
            );
        }
    }
    let got = run(&cli, &["template", "get", "from-df"], &[]);
    assert!(got.status.success());
    assert!(stdout(&got).contains("\"dockerfile\""));
}

#[test]
fn native_backend_and_missing_secrets_exit_2() {
    let cli = Cli::new();
    let work = tempfile::tempdir().unwrap();
    let dockerfile = work.path().join("Dockerfile");
    std::fs::write(
        &dockerfile,
        "FROM debian:bookworm\nRUN --mount=type=secret,id=npm true\n",
    )
    .unwrap();
    let path = dockerfile.to_str().unwrap();
    let base = [
        "--json",
        "template",
        "build",
        "--name",
        "x",
        "--from-dockerfile",
        path,
    ];
    let mut native = base.to_vec();
    native.extend(["--backend", "native"]);
    let out = run(&cli, &native, &[]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let envelope: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(envelope["error"]["code"], "invalid_request");
    assert!(envelope["error"]["message"]
        .as_str()
        .unwrap()
        .contains("native"));
    let out = run(&cli, &base, &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stdout(&out).contains("line 2"), "{}", stdout(&out));
    let out = run(
        &cli,
        &[
            "template",
            "build",
            "--name",
            "x",
            "--from-debian-image",
            "--context",
            "/tmp",
        ],
        &[],
    );
    assert_eq!(
        out.status.code(),
        Some(2),
        "--context needs --from-dockerfile"
    );
}

#[test]
fn step_flags_build_in_order_and_from_template_reuses_the_rootfs() {
    let cli = Cli::new();
    let work = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(work.path().join("site/.well-known")).unwrap();
    std::fs::write(work.path().join("site/index.html"), "<h1>hi</h1>\n").unwrap();
    std::fs::write(work.path().join("site/.well-known/id"), "dotfile\n").unwrap();
    std::fs::write(work.path().join("site/debug.log"), "noise\n").unwrap();
    std::fs::write(work.path().join(".dockerignore"), "**/*.log\n").unwrap();
    let mut command = cli.command();
    command
        .env("DOCKER_CONFIG", &devenv()["DOCKER_CONFIG"])
        .current_dir(work.path())
        .args([
            "--json",
            "template",
            "build",
            "--name",
            "flags",
            "--from-debian-image",
            "--run-cmd",
            "mkdir -p /srv && echo first > /srv/order",
            "--copy-src",
            "./site",
            "--copy-dst",
            "/srv/site",
            "--run-cmd",
            "echo second >> /srv/order && ls -A /srv/site > /srv/listing",
            "--set-workdir",
            "/srv",
            "--env",
            "MODE=prod",
            "--start-cmd",
            "exec sleep 600",
            "--ready-cmd",
            "test -f /srv/order",
        ]);
    let out = command.output().unwrap();
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    let outcome: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let image = Path::new(outcome["rootfs_path"].as_str().unwrap());
    assert_fsck_clean(image);
    assert_eq!(debugfs_cat(image, "/srv/order").unwrap(), "first\nsecond\n");
    assert_eq!(
        debugfs_cat(image, "/srv/listing").unwrap(),
        ".well-known\nindex.html\n"
    );
    assert_eq!(
        debugfs_cat(image, "/srv/site/.well-known/id").unwrap(),
        "dotfile\n"
    );
    let defaults = &outcome["template"]["runtime_defaults"];
    assert_eq!(defaults["workdir"], "/srv", "{defaults}");
    assert_eq!(defaults["env"]["MODE"], "prod", "{defaults}");
    assert_eq!(defaults["start_cmd"], "exec sleep 600");
    assert_eq!(defaults["readiness"]["kind"], "command");
    assert_eq!(outcome["template"]["snapshot"]["start"]["state"], "running");

    // A template on that template: the same rootfs, its defaults, a new name.
    let child = cli.build_json(&["--from-template", "flags", "--name", "child"]);
    assert_eq!(
        child["template"]["source"]["kind"], "template_base",
        "{child}"
    );
    assert_eq!(child["template"]["runtime_defaults"]["workdir"], "/srv");
    // The child runs the inherited start command in its own build VM: its own snapshot, in
    // its own artifact.
    assert_eq!(
        child["template"]["snapshot"]["start"]["state"], "running",
        "{child}"
    );
    let child_dir = Path::new(child["artifact_dir"].as_str().unwrap());
    assert!(child_dir.join("snapshot/machine.json").is_file());
    assert!(child_dir.join("snapshot/state").is_file());
    let child_image = Path::new(child["rootfs_path"].as_str().unwrap());
    assert_eq!(
        debugfs_cat(child_image, "/srv/order").unwrap(),
        "first\nsecond\n"
    );

    // Steps on a template: its image goes to BuildKit; its start command carries over.
    let mut command = cli.command();
    let out = command
        .env("DOCKER_CONFIG", &devenv()["DOCKER_CONFIG"])
        .current_dir(work.path())
        .args([
            "--json",
            "template",
            "build",
            "--from-template",
            "flags",
            "--name",
            "grandchild",
            "--run-cmd",
            "echo third >> /srv/order",
            "--env",
            "LEVEL=2",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    let grandchild: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let image = Path::new(grandchild["rootfs_path"].as_str().unwrap());
    assert_fsck_clean(image);
    assert_eq!(
        debugfs_cat(image, "/srv/order").unwrap(),
        "first\nsecond\nthird\n"
    );
    let defaults = &grandchild["template"]["runtime_defaults"];
    assert_eq!(defaults["env"]["MODE"], "prod", "{defaults}");
    assert_eq!(defaults["env"]["LEVEL"], "2", "{defaults}");
    assert_eq!(defaults["workdir"], "/srv");
    assert_eq!(defaults["start_cmd"], "exec sleep 600");
    assert_eq!(defaults["readiness"]["command"], "test -f /srv/order");

    // A scope modifier anywhere but right after its install flag is a usage error.
    let out = cli.run(&[
        "template",
        "build",
        "--name",
        "bad",
        "--from-debian-image",
        "--npm-install",
        "x",
        "--run-cmd",
        "true",
        "--npm-global",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--npm-global"), "{}", stderr(&out));
    // A copy source outside the current directory is refused before anything runs.
    let mut command = cli.command();
    let out = command
        .current_dir(work.path().join("site"))
        .args([
            "template",
            "build",
            "--name",
            "bad",
            "--from-debian-image",
            "--copy-src",
            "../.dockerignore",
            "--copy-dst",
            "/x",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("outside the build context"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn dry_run_shows_the_request_and_dockerfile_with_secrets_redacted() {
    let cli = Cli::new();
    let work = tempfile::tempdir().unwrap();
    std::fs::write(work.path().join("app.sh"), "echo app\n").unwrap();
    let out = cli
        .command()
        .current_dir(work.path())
        .env("NULLSPACE_BASE_IMAGE_PASSWORD", "dry-run-password-771")
        .args([
            "--json",
            "template",
            "build",
            "--name",
            "dry",
            "--from-image",
            "127.0.0.1:5001/library/debian:bookworm",
            "--username",
            "nullspace",
            "--apt-install",
            "curl",
            "--copy-src",
            "app.sh",
            "--copy-dst",
            "/app.sh",
            "--dry-run",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(!text.contains("dry-run-password-771"), "{text}");
    let shown: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        shown["request"]["base_image_auth"]["password"],
        "<redacted>"
    );
    assert_eq!(
        shown["request"]["build_context"]["entries"][0]["path"],
        "app.sh"
    );
    let dockerfile = shown["dockerfile"].as_str().unwrap();
    assert!(
        dockerfile.contains(r#"COPY ["app.sh","/app.sh"]"#),
        "{dockerfile}"
    );

    let dockerfile = work.path().join("Dockerfile");
    std::fs::write(
        &dockerfile,
        "FROM debian:bookworm\nRUN --mount=type=secret,id=tok true\n",
    )
    .unwrap();
    let out = cli
        .command()
        .env("NS_DRY_TOKEN", "dry-run-secret-993")
        .args([
            "template",
            "build",
            "--name",
            "dry",
            "--from-dockerfile",
            dockerfile.to_str().unwrap(),
            "--build-secret-env",
            "tok=NS_DRY_TOKEN",
            "--dry-run",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        !text.contains("dry-run-secret-993") && text.contains("<redacted>"),
        "{text}"
    );
    // Nothing was built.
    assert!(!cli.files().iter().any(|f| f.ends_with("rootfs.ext4")));
}
