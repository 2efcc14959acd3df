//! Runs the real `nullspace` binary against the real test environment (`scripts/devenv`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .unwrap()
        .to_path_buf()
}

/// The test environment's variables, bringing it up once per test binary.
pub fn devenv() -> &'static HashMap<String, String> {
    static ENV: OnceLock<HashMap<String, String>> = OnceLock::new();
    ENV.get_or_init(|| {
        let out = Command::new(repo_root().join("scripts/devenv"))
            .arg("up")
            .stderr(Stdio::inherit())
            .output()
            .expect("running scripts/devenv up");
        assert!(out.status.success(), "scripts/devenv up failed");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.strip_prefix("export "))
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), unquote(v)))
            .collect()
    })
}

fn unquote(value: &str) -> String {
    let v = value.trim();
    if v.len() >= 2
        && ((v.starts_with('\'') && v.ends_with('\'')) || (v.starts_with('"') && v.ends_with('"')))
    {
        v[1..v.len() - 1].to_string()
    } else {
        v.to_string()
    }
}

/// A data dir of its own and a way to run the CLI on it.
pub struct Cli {
    pub data: tempfile::TempDir,
}

impl Cli {
    pub fn new() -> Cli {
        devenv();
        Cli {
            data: tempfile::Builder::new()
                .prefix("nullspace-cli-test")
                .tempdir()
                .unwrap(),
        }
    }

    pub fn command(&self) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_nullspace"));
        command.envs(devenv());
        command.env("NULLSPACE_DATA_DIR", self.data.path());
        command.env_remove("DOCKER_CONFIG");
        command.stdin(Stdio::null());
        command
    }

    /// Runs with `args`, returning the output whatever the exit code.
    pub fn run(&self, args: &[&str]) -> Output {
        self.command().args(args).output().unwrap()
    }

    /// Runs a `--json` build that must succeed and returns its JSON.
    pub fn build_json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = vec!["template", "build", "--json"];
        all.extend_from_slice(args);
        let out = self.run(&all);
        assert!(
            out.status.success(),
            "nullspace {all:?} failed ({:?}):\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// Everything under the data dir, for leak and leftover checks.
    pub fn files(&self) -> Vec<PathBuf> {
        fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
            for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                let path = entry.path();
                if path.is_dir() {
                    walk(&path, out);
                }
                out.push(path);
            }
        }
        let mut out = Vec::new();
        walk(self.data.path(), &mut out);
        out
    }
}

/// `e2fsck -fn` must find nothing to fix.
pub fn assert_fsck_clean(image: &Path) {
    let out = Command::new("e2fsck")
        .arg("-fn")
        .arg(image)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "e2fsck -fn {}:\n{}{}",
        image.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A read-only loop mount, unmounted on drop.
pub struct Mounted {
    pub dir: tempfile::TempDir,
}

impl Mounted {
    pub fn new(image: &Path) -> Mounted {
        let dir = tempfile::tempdir().unwrap();
        let status = Command::new("mount")
            .args(["-o", "loop,ro,noload"])
            .arg(image)
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(status.success(), "mount of {} failed", image.display());
        Mounted { dir }
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}
