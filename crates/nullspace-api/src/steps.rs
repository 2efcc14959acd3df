//! Declarative builder steps, as the API's `steps` array carries them
//! (`{"type": "run_cmd", "cmd": "..."}`). The engine renders them into a Dockerfile.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// One file or directory copied from the build context.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CopyItem {
    /// Path inside the context (relative, no `..`).
    pub src: String,
    /// Absolute destination in the image.
    pub dst: String,
    /// `user[:group]` owning the copy (`--chown`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// Octal mode (`--chmod`), e.g. `755`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// The client uploaded the source's blobs even if the server had them (reported by the
    /// build context's entries; kept here so plans show it).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub force_upload: bool,
}

/// A declarative builder step (`{"type": "run_cmd", ...}`); unknown fields are refused.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Step {
    /// `apt-get install -y` (as root, lists removed afterwards).
    AptInstall {
        /// Package names (optionally `name=version`).
        packages: Vec<String>,
    },
    /// `pip install` (`--user` with `user: true`).
    PipInstall {
        /// Requirement specifiers.
        packages: Vec<String>,
        /// Install into the user's site-packages.
        #[serde(default)]
        user: bool,
    },
    /// `npm install` (`-g` with `global: true`).
    NpmInstall {
        /// Package specifiers.
        packages: Vec<String>,
        /// Install globally.
        #[serde(default)]
        global: bool,
    },
    /// `bun add` (`-g` with `global: true`).
    BunInstall {
        /// Package specifiers.
        packages: Vec<String>,
        /// Install globally.
        #[serde(default)]
        global: bool,
    },
    /// One copy from the context.
    Copy(CopyItem),
    /// Several copies from the context.
    CopyItems {
        /// The copies, in order.
        items: Vec<CopyItem>,
    },
    /// A shell command (`/bin/sh -c`).
    RunCmd {
        /// The command.
        cmd: String,
    },
    /// `git clone [--branch B] [--depth N] URL DST`.
    GitClone {
        /// Repository URL.
        url: String,
        /// Absolute destination.
        dst: String,
        /// Branch or tag.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        branch: Option<String>,
        /// Shallow clone depth.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        depth: Option<u32>,
    },
    /// `rm -rf` of absolute paths.
    Remove {
        /// Paths to remove.
        paths: Vec<String>,
    },
    /// `mv SRC DST`.
    Rename {
        /// Existing absolute path.
        src: String,
        /// New absolute path.
        dst: String,
    },
    /// `mkdir -p [-m MODE] PATH`.
    MakeDir {
        /// Absolute path.
        path: String,
        /// Octal mode.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mode: Option<String>,
    },
    /// `ln -sfn TARGET LINK`.
    MakeSymlink {
        /// What the link points to (any string).
        target: String,
        /// Absolute path of the link.
        link: String,
    },
    /// `WORKDIR`: later steps and the template's default workdir.
    SetWorkdir {
        /// Absolute path.
        path: String,
    },
    /// `USER`: later steps and the template's default user.
    SetUser {
        /// `name`, `uid` or `user:group`.
        user: String,
    },
    /// Env visible to later build steps only, never persisted.
    SetBuildEnvs {
        /// Variables.
        envs: BTreeMap<String, String>,
    },
    /// Env for later steps and the template's runtime defaults.
    SetRuntimeEnvs {
        /// Variables.
        envs: BTreeMap<String, String>,
    },
    /// The builder's `skip_cache()`: later steps never reuse BuildKit's cache. Rendered as an
    /// `ARG` whose value is new on every build, which changes the cache key of every later
    /// `RUN` (copies are keyed by their content, which is what they copy).
    SkipCache,
}
