//! `nullspace template build --from-*`: image imports end to end.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::harness::{assert_fsck_clean, devenv, stderr, stdout, Cli, Mounted};
use crate::tree;

fn path_of(json: &serde_json::Value, key: &str) -> PathBuf {
    PathBuf::from(
        json[key]
            .as_str()
            .unwrap_or_else(|| panic!("{key} missing in {json}")),
    )
}

#[test]
fn debian_base_imports_into_a_clean_rootfs_with_runtime_defaults() {
    let cli = Cli::new();
    let built = cli.build_json(&["--from-debian-image", "--name", "base"]);
    let rootfs = path_of(&built, "rootfs_path");
    assert_fsck_clean(&rootfs);
    let template: serde_json::Value =
        serde_json::from_slice(&std::fs::read(path_of(&built, "template_json_path")).unwrap())
            .unwrap();
    assert_eq!(
        template["source"]["reference"],
        "docker.io/library/debian:bookworm"
    );
    assert_eq!(template["source"]["platform"], "linux/amd64");
    assert!(template["source"]["manifest_digest"]
        .as_str()
        .unwrap()
        .starts_with("sha256:"));
    assert_eq!(template["runtime_defaults"]["start_cmd"], "bash");
    assert!(template["runtime_defaults"]["env"]["PATH"]
        .as_str()
        .unwrap()
        .contains("/usr/bin"));
    assert_eq!(
        template["build_config"]["base_image_auth_kind"],
        serde_json::Value::Null
    );
    assert_eq!(built["canonical_ref"], "local/base:default");

    let mounted = Mounted::new(&rootfs);
    let root = mounted.dir.path();
    assert!(root.join("bin/bash").exists() || root.join("usr/bin/bash").exists());
    let os_release = std::fs::read_to_string(root.join("etc/os-release")).unwrap();
    assert!(os_release.contains("bookworm"), "{os_release}");
    for mount_point in ["dev", "dev/pts", "dev/shm", "proc", "sys", "run", "tmp"] {
        assert!(root.join(mount_point).is_dir(), "/{mount_point} missing");
    }
    drop(mounted);

    // The same request again is a rootfs cache hit, published as a new build.
    let again = cli.build_json(&[
        "--from-debian-image",
        "bookworm",
        "--name",
        "base",
        "--tag",
        "v2",
    ]);
    assert_eq!(again["rootfs_cache_hit"], true);
    assert_ne!(again["build_id"], built["build_id"]);
    assert_fsck_clean(&path_of(&again, "rootfs_path"));

    let exists = cli.run(&["template", "exists", "base:v2"]);
    assert!(exists.status.success());
    let missing = cli.run(&["template", "exists", "base:nope"]);
    assert_eq!(missing.status.code(), Some(3));
    let got = cli.run(&["template", "get", "base"]);
    assert!(got.status.success(), "{}", stderr(&got));
    assert!(stdout(&got).contains(built["build_id"].as_str().unwrap()));
    let by_build = cli.run(&[
        "template",
        "get",
        &format!("base:{}", again["build_id"].as_str().unwrap()),
    ]);
    assert!(by_build.status.success(), "{}", stderr(&by_build));
    let list = cli.run(&["template", "list"]);
    assert!(
        stdout(&list).contains("local/base:default"),
        "{}",
        stdout(&list)
    );
}

#[test]
fn every_base_selector_resolves_to_its_image() {
    let cli = Cli::new();
    for (flag, version, reference) in [
        (
            "--from-ubuntu-image",
            "22.04",
            "docker.io/library/ubuntu:22.04",
        ),
        (
            "--from-python-image",
            "3.12",
            "docker.io/library/python:3.12",
        ),
        ("--from-node-image", "20", "docker.io/library/node:20"),
        ("--from-bun-image", "1.2", "docker.io/oven/bun:1.2"),
        (
            "--from-base-image",
            "debian:bookworm",
            "docker.io/library/debian:bookworm",
        ),
    ] {
        let built = cli.build_json(&[flag, version, "--name", "sel"]);
        assert_eq!(
            built["template"]["source"]["reference"], reference,
            "{flag}"
        );
    }
    // disk_mb is a minimum size for the rootfs.
    let sized = cli.build_json(&[
        "--from-debian-image",
        "--name",
        "sized",
        "--disk-mb",
        "1500",
    ]);
    let rootfs = path_of(&sized, "rootfs_path");
    assert!(std::fs::metadata(&rootfs).unwrap().len() >= 1500 << 20);
    assert_eq!(sized["template"]["build_config"]["disk_mb"], 1500);
    assert_fsck_clean(&rootfs);
    let out = cli.run(&["template", "build", "--from-bun-image", "", "--name", "bun"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("version is required"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn invalid_requests_exit_2_and_publish_nothing() {
    let cli = Cli::new();
    let out = cli.run(&[
        "--json",
        "template",
        "build",
        "--from-debian-image",
        "--name",
        "acme/app",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let envelope: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(envelope["error"]["code"], "invalid_request");
    assert!(envelope["error"]["message"]
        .as_str()
        .unwrap()
        .contains("single-segment"));
    let out = cli.run(&[
        "template",
        "build",
        "--from-image",
        "nullspace/does-not-exist:1",
        "--name",
        "x",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("does-not-exist"), "{}", stderr(&out));
    assert_no_artifacts(&cli);
}

fn assert_no_artifacts(cli: &Cli) {
    let templates: Vec<_> = std::fs::read_dir(cli.data.path().join("templates"))
        .unwrap()
        .collect();
    assert!(templates.is_empty(), "published: {templates:?}");
    let staging: Vec<_> = std::fs::read_dir(cli.data.path().join("staging"))
        .unwrap()
        .collect();
    assert!(staging.is_empty(), "staging left behind: {staging:?}");
}

#[test]
fn basic_auth_registry_needs_the_right_password_and_never_stores_it() {
    let env = devenv();
    let registry = &env["NULLSPACE_AUTH_REGISTRY"];
    let user = &env["NULLSPACE_AUTH_USER"];
    let password = &env["NULLSPACE_AUTH_PASSWORD"];
    let image = format!("{registry}/library/debian:bookworm");
    let cli = Cli::new();

    let anonymous = cli.run(&[
        "template",
        "build",
        "--from-image",
        &image,
        "--name",
        "private",
    ]);
    assert_eq!(anonymous.status.code(), Some(4), "{}", stderr(&anonymous));

    let wrong = "definitely-wrong-password";
    let out = cli.run(&[
        "template",
        "build",
        "--from-image",
        &image,
        "--name",
        "private",
        "--username",
        user,
        "--password",
        wrong,
    ]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(stderr(&out).contains(registry.as_str()), "{}", stderr(&out));
    assert!(!stderr(&out).contains(wrong));
    assert_no_artifacts(&cli);

    let mut command = cli.command();
    command.args([
        "template",
        "build",
        "--json",
        "--from-image",
        &image,
        "--name",
        "private",
    ]);
    command.args(["--username", user, "--password-stdin"]);
    command
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped());
    let mut child = command.spawn().unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{password}\n").as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let built: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        built["template"]["build_config"]["base_image_auth_kind"],
        "basic"
    );
    assert_fsck_clean(&path_of(&built, "rootfs_path"));

    // The secret appears nowhere in the data dir (database, artifacts, caches).
    for file in cli.files() {
        if file.is_file() && std::fs::metadata(&file).unwrap().len() < 64 << 20 {
            let bytes = std::fs::read(&file).unwrap();
            for secret in [password.as_bytes(), wrong.as_bytes()] {
                assert!(
                    !bytes.windows(secret.len()).any(|w| w == secret),
                    "a password is stored in {}",
                    file.display()
                );
            }
        }
    }
}

#[test]
fn multilayer_fixture_matches_an_independent_extraction_file_by_file() {
    let env = devenv();
    let cli = Cli::new();
    let reference = &env["NULLSPACE_FIXTURE_MULTILAYER_REF"];
    // The image has no shell to run its Entrypoint: the build without `--no-start-cmd` fails
    // when the build VM starts it, naming the command derived from Entrypoint + Cmd.
    let failed = cli.run(&[
        "template",
        "build",
        "--from-image",
        reference,
        "--name",
        "multi",
    ]);
    assert!(!failed.status.success());
    let log = stderr(&failed);
    assert!(log.contains("the start command could not start"), "{log}");
    // The command may hold newlines: it runs up to the next log line of the CLI.
    let prefix = "vm startup: start command: ";
    let at = log
        .find(prefix)
        .unwrap_or_else(|| panic!("no start command in the log:\n{log}"))
        + prefix.len();
    let rest = &log[at..];
    let end = ["\nvm ", "\nerror", "\nwarning", "\ncache"]
        .iter()
        .filter_map(|marker| rest.find(marker))
        .min()
        .unwrap_or(rest.len());
    let start_cmd = rest[..end].to_string();
    let built = cli.build_json(&[
        "--from-image",
        reference,
        "--name",
        "multi",
        "--no-start-cmd",
    ]);
    assert!(built["template"]["snapshot"].is_null(), "rootfs-only");
    let rootfs = path_of(&built, "rootfs_path");
    assert_fsck_clean(&rootfs);

    let layout = Path::new(&env["NULLSPACE_FIXTURE_MULTILAYER_LAYOUT"]);
    let expected: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("expected.json")).unwrap()).unwrap();
    let template = &built["template"];
    assert_eq!(
        template["source"]["manifest_digest"],
        expected["manifest_digest"]
    );
    check_runtime_defaults(template, &expected["config"], &start_cmd);

    // The oracle: umoci unpacks the same image as root, applying the same OCI layer rules.
    // Debian's umoci reads no zstd layers, so skopeo first recompresses them to gzip.
    let oracle = tempfile::tempdir().unwrap();
    let converted = oracle.path().join("gzip-layout");
    let status = Command::new("skopeo")
        .args([
            "copy",
            "--quiet",
            "--dest-compress",
            "--dest-compress-format",
            "gzip",
        ])
        .args(["--dest-compress-level", "1"])
        .arg(format!("oci:{}:latest", layout.display()))
        .arg(format!("oci:{}:latest", converted.display()))
        .status()
        .unwrap();
    assert!(status.success(), "skopeo copy failed");
    let unpacked = oracle.path().join("rootfs");
    let status = Command::new("umoci")
        .args(["--log", "error", "raw", "unpack", "--image"])
        .arg(format!("{}:latest", converted.display()))
        .arg(&unpacked)
        .status()
        .unwrap();
    assert!(status.success(), "umoci raw unpack failed");
    let theirs = tree::facts(&unpacked);
    let mounted = Mounted::new(&rootfs);
    let ours = tree::facts(mounted.dir.path());

    let ours_only_allowed = [
        "lost+found",
        "dev",
        "dev/pts",
        "dev/shm",
        "proc",
        "sys",
        "run",
        "tmp",
    ];
    let mut differences = Vec::new();
    for (path, their) in &theirs {
        match ours.get(path) {
            None => differences.push(format!("{path}: missing from our rootfs")),
            Some(our) => {
                let mut our = our.clone();
                let mut their = their.clone();
                // Directories no layer lists are created by each importer as it likes.
                if their.kind == "dir" {
                    our.mtime = their.mtime;
                }
                // umoci does not restore every xattr namespace (it drops security.* on some
                // kernels); compare what it does restore, and check the rest from expected.json.
                our.xattrs.retain(|k, _| their.xattrs.contains_key(k));
                their.links.retain(|p| ours.contains_key(p));
                if our != their {
                    differences.push(format!("{path}:\n  ours   {our:?}\n  theirs {their:?}"));
                }
            }
        }
    }
    for path in ours.keys() {
        if !theirs.contains_key(path)
            && !ours_only_allowed
                .iter()
                .any(|a| path == a || path.starts_with(&format!("{a}/")))
        {
            differences.push(format!("{path}: only in our rootfs"));
        }
    }
    assert!(
        differences.is_empty(),
        "{} differences, first ones:\n{}",
        differences.len(),
        differences
            .iter()
            .take(20)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );

    // Whiteouts removed what they name, and xattrs that umoci may not restore are present.
    for absent in expected["absent"].as_array().unwrap() {
        let absent = absent.as_str().unwrap();
        assert!(!ours.contains_key(absent), "{absent} should be gone");
    }
    for (path, entry) in expected["present"].as_object().unwrap() {
        if let Some(xattrs) = entry.get("xattrs").and_then(|x| x.as_object()) {
            let our = &ours
                .get(path.as_str())
                .unwrap_or_else(|| panic!("{path} missing"))
                .xattrs;
            for name in xattrs.keys() {
                assert!(
                    our.contains_key(name),
                    "{path}: xattr {name} missing; has {our:?}"
                );
            }
        }
    }
}

fn check_runtime_defaults(
    template: &serde_json::Value,
    config: &serde_json::Value,
    start_cmd: &str,
) {
    let runtime = &template["runtime_defaults"];
    assert_eq!(runtime["user"], config["User"].as_str().unwrap().trim());
    assert_eq!(
        runtime["workdir"],
        config["WorkingDir"].as_str().unwrap().trim()
    );
    for entry in config["Env"].as_array().unwrap() {
        let entry = entry.as_str().unwrap();
        match entry.split_once('=') {
            Some((k, v)) if !k.is_empty() => assert_eq!(runtime["env"][k], v, "{entry}"),
            _ => {
                assert!(
                    runtime["env"].get(entry).is_none(),
                    "malformed {entry} imported"
                );
                let warnings = template["warnings"].to_string();
                assert!(
                    warnings.contains(entry),
                    "no warning for {entry}: {warnings}"
                );
            }
        }
    }
    // The start command is one shell line that gives back exactly Entrypoint + Cmd.
    let argv: Vec<String> = config["Entrypoint"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(config["Cmd"].as_array().into_iter().flatten())
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    assert!(runtime["start_cmd"].is_null(), "--no-start-cmd clears it");
    let script = format!("set -- {start_cmd}; for a in \"$@\"; do printf '%s\\0' \"$a\"; done");
    let out = Command::new("sh").arg("-c").arg(script).output().unwrap();
    let mut words: Vec<String> = out
        .stdout
        .split(|b| *b == 0)
        .map(|w| String::from_utf8_lossy(w).into_owned())
        .collect();
    words.pop();
    assert_eq!(words, argv, "start_cmd {start_cmd:?}");
    let metadata = &template["oci_metadata"];
    assert_eq!(metadata["labels"], config["Labels"]);
    let ports: Vec<String> = config["ExposedPorts"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    assert_eq!(metadata["exposed_ports"], serde_json::json!(ports));
    let check = &config["Healthcheck"];
    // The HEALTHCHECK's readiness is kept as metadata; `--no-start-cmd` drops it as readiness.
    assert!(runtime["readiness"].is_null());
    let readiness = &metadata["healthcheck"]["mapped_readiness"];
    assert_eq!(readiness["command"], check["Test"][1]);
    assert_eq!(
        readiness["interval_ms"],
        check["Interval"].as_i64().unwrap() / 1_000_000
    );
    assert_eq!(
        readiness["timeout_ms"],
        check["Timeout"].as_i64().unwrap() / 1_000_000
    );
    assert_eq!(
        readiness["start_period_ms"],
        check["StartPeriod"].as_i64().unwrap() / 1_000_000
    );
    assert_eq!(readiness["retries"], check["Retries"]);
}
