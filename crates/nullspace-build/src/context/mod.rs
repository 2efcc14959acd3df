//! Uploaded build contexts: a manifest of paths naming content-addressed file blobs, and its
//! materialisation into a build's staging dir for BuildKit.
//!
//! A client hashes its files, asks which blobs the server lacks, uploads only those (each
//! verified against its digest), then sends the manifest with the build request. The blobs live
//! per owner (`<data>/context-blobs/<owner>/sha256/<hex>`): a digest alone never gives one
//! owner another owner's file. The manifest is checked as strictly as a layer: relative paths
//! without `..`, no duplicates, nothing beneath a symlink, and it is written with
//! `create_new` into a directory this build created, so no entry can reach outside it.

mod blobs;
mod materialize;

use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

pub use blobs::{parse_digest, BlobUpload, ContextBlobs, UploadError};
pub use materialize::{materialize, ContextStats};
pub use nullspace_api::context::{
    ContextEntry, ContextManifest, UploadStatus, MAX_CONTEXT_ENTRIES,
};

/// Where the named context `name` of a build goes: `<scratch>/contexts/<sha256 of name>`
/// (names may hold `/`); the parent is created.
pub fn staging_named_context_dir(staging: &Path, name: &str) -> std::io::Result<PathBuf> {
    let contexts = staging.join("contexts");
    std::fs::create_dir_all(&contexts)?;
    Ok(contexts.join(format!("{:x}", Sha256::digest(name.as_bytes()))))
}

/// Where a build's uploaded context goes in its scratch dir (`<scratch>/context`).
pub fn staging_context_dir(staging: &Path) -> PathBuf {
    staging.join("context")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::data_dir::DataDir;
    use std::os::unix::fs::PermissionsExt as _;

    fn file(path: &str, content: &[u8]) -> ContextEntry {
        ContextEntry::File {
            path: path.into(),
            digest: format!("sha256:{:x}", Sha256::digest(content)),
            size: content.len() as u64,
            mode: 0o644,
            upload: UploadStatus::Uploaded,
            reason: None,
        }
    }

    fn manifest(entries: Vec<ContextEntry>) -> ContextManifest {
        ContextManifest { entries }
    }

    #[test]
    fn bad_paths_and_entries_are_named() {
        for (entries, needle) in [
            (vec![file("../x", b"a")], "entries[0]"),
            (vec![file("/etc/passwd", b"a")], "must be relative"),
            (vec![file("a//b", b"a")], "must be relative"),
            (vec![file("a", b"a"), file("a", b"b")], "appears twice"),
            (
                vec![
                    ContextEntry::Symlink {
                        path: "l".into(),
                        target: "/etc".into(),
                    },
                    file("l/passwd", b"x"),
                ],
                "beneath the symlink",
            ),
            (vec![file("f", b"x"), file("f/g", b"y")], "beneath the file"),
        ] {
            let error = manifest(entries).validate().unwrap_err().to_string();
            assert!(error.contains(needle), "{error}");
        }
        let mut setuid = file("s", b"x");
        if let ContextEntry::File { mode, .. } = &mut setuid {
            *mode = 0o4755;
        }
        assert!(manifest(vec![setuid]).validate().is_err());
    }

    #[test]
    fn digest_ignores_order_and_upload_reports() {
        let a = manifest(vec![file("a", b"1"), file("b", b"2")]);
        let mut b = manifest(vec![file("b", b"2"), file("a", b"1")]);
        if let ContextEntry::File { upload, .. } = &mut b.entries[0] {
            *upload = UploadStatus::Reused;
        }
        assert_eq!(a.digest(), b.digest());
        assert_ne!(a.digest(), manifest(vec![file("a", b"1")]).digest());
    }

    #[test]
    fn upload_then_materialize() {
        let dir = tempfile::tempdir().unwrap();
        let data = DataDir::open(dir.path()).unwrap();
        let blobs = ContextBlobs::open(&data, "alice").unwrap();
        let content = b"print('hi')\n";
        let entry = file("src/.hidden/app.py", content);
        let ContextEntry::File { digest, .. } = &entry else {
            unreachable!()
        };
        let digest = parse_digest(digest).unwrap();
        assert_eq!(blobs.missing([&digest]).len(), 1);
        // A wrong body never lands.
        let mut wrong = blobs.upload(digest.clone(), 1024).unwrap();
        wrong.write(b"other").unwrap();
        assert!(matches!(
            wrong.commit(),
            Err(UploadError::DigestMismatch { .. })
        ));
        let mut too_big = blobs.upload(digest.clone(), 4).unwrap();
        assert!(matches!(
            too_big.write(content),
            Err(UploadError::TooLarge { .. })
        ));
        assert!(blobs.missing([&digest]).len() == 1);
        let mut upload = blobs.upload(digest.clone(), 1024).unwrap();
        upload.write(content).unwrap();
        assert_eq!(upload.commit().unwrap(), content.len() as u64);
        assert!(blobs.missing([&digest]).is_empty());
        // Another owner does not see it.
        let bob = ContextBlobs::open(&data, "bob").unwrap();
        assert_eq!(bob.missing([&digest]).len(), 1);

        let m = manifest(vec![
            entry,
            ContextEntry::Dir {
                path: "empty".into(),
                mode: 0o700,
            },
            ContextEntry::Symlink {
                path: "link".into(),
                target: "src/.hidden/app.py".into(),
            },
        ]);
        let dest = dir.path().join("ctx");
        let stats = materialize(&m, &blobs, &dest).unwrap();
        assert_eq!(stats.files, 1);
        // The same blob under many paths is written once and hard-linked.
        let many = manifest(
            (0..50)
                .map(|i| file(&format!("copies/{i}.py"), content))
                .collect(),
        );
        assert_eq!(many.total_bytes(), 50 * content.len() as u64);
        materialize(&many, &blobs, &dir.path().join("many")).unwrap();
        let first = std::fs::metadata(dir.path().join("many/copies/0.py")).unwrap();
        assert_eq!(std::os::unix::fs::MetadataExt::nlink(&first), 50);
        assert_eq!(
            std::fs::read(dest.join("src/.hidden/app.py")).unwrap(),
            content
        );
        assert_eq!(
            std::fs::metadata(dest.join("empty"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o700
        );
        assert_eq!(
            std::fs::read_link(dest.join("link")).unwrap(),
            Path::new("src/.hidden/app.py")
        );
        // A blob damaged on disk is caught when copied, and dropped so it is uploaded again.
        let stored = blobs.store.path(&digest);
        let mut bytes = std::fs::read(&stored).unwrap();
        bytes[0] ^= 0xff;
        std::fs::write(&stored, &bytes).unwrap();
        let error = materialize(&m, &blobs, &dir.path().join("ctx-damaged"))
            .unwrap_err()
            .to_string();
        assert!(error.contains("damaged"), "{error}");
        assert_eq!(blobs.missing([&digest]).len(), 1);
        // Bob's build naming Alice's digest fails, naming the path.
        let error = materialize(&m, &bob, &dir.path().join("ctx-bob"))
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("src/.hidden/app.py") && error.contains("not uploaded"),
            "{error}"
        );
    }
}
