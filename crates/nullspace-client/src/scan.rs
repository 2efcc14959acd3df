//! The local build context: the files that `copy` steps or a Dockerfile read, hashed, with
//! `.dockerignore` applied, ready to be described in a request and uploaded blob by blob.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use nullspace_api::{ContextEntry, ContextManifest, UploadStatus};

use crate::error::{io_at, ClientError};
use crate::ignore::DockerIgnore;

/// A context collected from local files: its manifest, where each file is on disk, and what
/// `.dockerignore` left out.
#[derive(Clone, Debug, Default)]
pub struct LocalContext {
    /// The manifest (files marked `reused` until an upload says otherwise).
    pub manifest: ContextManifest,
    /// Local path of each file, by context path.
    pub files: BTreeMap<String, PathBuf>,
    /// Context paths `.dockerignore` excluded.
    pub ignored: Vec<String>,
    /// Context paths already in the manifest (overlapping sources add each once).
    seen: BTreeSet<String>,
}

impl LocalContext {
    /// Every file under `root` (a Dockerfile's context), `.dockerignore` applied, dotfiles
    /// included; sockets, pipes and devices are skipped.
    pub fn scan_tree(root: &Path) -> Result<LocalContext, ClientError> {
        let ignore = DockerIgnore::load(root)?;
        let mut context = LocalContext::default();
        context.walk(root, root, "", &ignore)?;
        Ok(context)
    }

    /// The copy sources `sources` (context paths under `root`), `.dockerignore` applied; a
    /// source that is missing or excluded is an error naming it.
    pub fn scan_paths(root: &Path, sources: &[String]) -> Result<LocalContext, ClientError> {
        let ignore = DockerIgnore::load(root)?;
        let mut context = LocalContext::default();
        for source in sources {
            let rel = source.trim_start_matches("./").trim_end_matches('/');
            if rel.is_empty() || rel == "." {
                // The whole context.
                context.walk(root, root, "", &ignore)?;
                continue;
            }
            if ignore.excluded(rel) {
                return Err(ClientError::FileUpload {
                    path: rel.to_string(),
                    message: format!("excluded by {}", root.join(".dockerignore").display()),
                });
            }
            let local = root.join(rel);
            let meta = std::fs::symlink_metadata(&local).map_err(|e| ClientError::FileUpload {
                path: rel.to_string(),
                message: format!("{}: {e}", local.display()),
            })?;
            let mut parent = String::new();
            for part in rel
                .split('/')
                .collect::<Vec<_>>()
                .split_last()
                .map(|(_, p)| p)
                .unwrap_or(&[])
            {
                parent = if parent.is_empty() {
                    part.to_string()
                } else {
                    format!("{parent}/{part}")
                };
                context.add_dir(&parent, &root.join(&parent))?;
            }
            context.add(root, rel, &local, &meta, &ignore)?;
        }
        Ok(context)
    }

    fn walk(
        &mut self,
        root: &Path,
        dir: &Path,
        prefix: &str,
        ignore: &DockerIgnore,
    ) -> Result<(), ClientError> {
        let mut names: Vec<_> = std::fs::read_dir(dir)
            .map_err(io_at(dir))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<_, _>>()
            .map_err(io_at(dir))?;
        names.sort();
        for name in names {
            let Some(name) = name.to_str().map(str::to_string) else {
                // Context paths are UTF-8 (JSON); such a file cannot be sent.
                self.ignored
                    .push(format!("{prefix}/{}", name.to_string_lossy()));
                continue;
            };
            let rel = if prefix.is_empty() {
                name.clone()
            } else {
                format!("{prefix}/{name}")
            };
            let local = dir.join(&name);
            let meta = std::fs::symlink_metadata(&local).map_err(io_at(&local))?;
            self.add(root, &rel, &local, &meta, ignore)?;
        }
        Ok(())
    }

    fn add(
        &mut self,
        root: &Path,
        rel: &str,
        local: &Path,
        meta: &std::fs::Metadata,
        ignore: &DockerIgnore,
    ) -> Result<(), ClientError> {
        let excluded = ignore.excluded(rel);
        if excluded {
            self.ignored.push(rel.to_string());
        }
        let kind = meta.file_type();
        if kind.is_dir() {
            if excluded && !ignore.has_exceptions() {
                return Ok(());
            }
            if !excluded {
                self.add_dir(rel, local)?;
            }
            return self.walk(root, local, rel, ignore);
        }
        if excluded {
            return Ok(());
        }
        if kind.is_symlink() {
            let target = std::fs::read_link(local).map_err(io_at(local))?;
            if !self.seen.insert(rel.to_string()) {
                return Ok(());
            }
            self.manifest.entries.push(ContextEntry::Symlink {
                path: rel.to_string(),
                target: target.to_string_lossy().into_owned(),
            });
        } else if kind.is_file() {
            let mut file = std::fs::File::open(local).map_err(io_at(local))?;
            let mut hasher = Sha256::new();
            let size = std::io::copy(&mut file, &mut hasher).map_err(io_at(local))?;
            if !self.seen.insert(rel.to_string()) {
                return Ok(());
            }
            self.manifest.entries.push(ContextEntry::File {
                path: rel.to_string(),
                digest: format!("sha256:{:x}", hasher.finalize()),
                size,
                mode: meta.permissions().mode() & 0o777,
                upload: UploadStatus::Reused,
                reason: None,
            });
            self.files.insert(rel.to_string(), local.to_path_buf());
        }
        Ok(())
    }

    fn add_dir(&mut self, rel: &str, local: &Path) -> Result<(), ClientError> {
        if !self.seen.insert(rel.to_string()) {
            return Ok(());
        }
        let meta = std::fs::metadata(local).map_err(io_at(local))?;
        self.manifest.entries.push(ContextEntry::Dir {
            path: rel.to_string(),
            mode: meta.permissions().mode() & 0o777,
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn dockerignore_follows_docker() {
        let ignore = DockerIgnore::parse(
            "# comment\n/secret.txt\n*.log\n!keep.log\nbuild/\n**/*.pyc\ndocs/[a-c]*.md\n",
        )
        .unwrap();
        for (path, excluded) in [
            ("secret.txt", true),
            ("a.log", true),
            ("keep.log", false),
            ("sub/a.log", false), // `*` stays in the root segment
            ("build", true),
            ("build/out/x", true), // beneath an excluded dir
            ("app/cache.pyc", true),
            ("cache.pyc", true),
            ("docs/api.md", true),
            ("docs/zeta.md", false),
            ("src/main.rs", false),
        ] {
            assert_eq!(ignore.excluded(path), excluded, "{path}");
        }
        assert!(ignore.has_exceptions());
    }

    #[test]
    fn scans_follow_dockerignore_and_keep_dotfiles() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("app/.cfg")).unwrap();
        std::fs::write(root.join("app/main.py"), "x").unwrap();
        std::fs::write(root.join("app/.cfg/env"), "y").unwrap();
        std::fs::write(root.join("app/skip.pyc"), "z").unwrap();
        std::fs::write(root.join(".dockerignore"), "**/*.pyc\n").unwrap();
        let tree = LocalContext::scan_tree(root).unwrap();
        let files: Vec<&str> = tree.files.keys().map(String::as_str).collect();
        assert_eq!(files, [".dockerignore", "app/.cfg/env", "app/main.py"]);
        assert_eq!(tree.ignored, ["app/skip.pyc"]);
        tree.manifest.validate().unwrap();
        let copied = LocalContext::scan_paths(root, &["./app/.cfg/env".into()]).unwrap();
        let paths: Vec<&str> = copied
            .manifest
            .entries
            .iter()
            .map(ContextEntry::path)
            .collect();
        assert_eq!(paths, ["app", "app/.cfg", "app/.cfg/env"]);
        // Overlapping sources add each path once; "." is the whole tree.
        let overlapping =
            LocalContext::scan_paths(root, &["app".into(), "app/main.py".into()]).unwrap();
        overlapping.manifest.validate().unwrap();
        let whole = LocalContext::scan_paths(root, &[".".into()]).unwrap();
        assert_eq!(whole.files.len(), tree.files.len());
        let error = LocalContext::scan_paths(root, &["app/skip.pyc".into()]).unwrap_err();
        assert!(error.to_string().contains("excluded"), "{error}");
    }
}
