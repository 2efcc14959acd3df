//! The guest kernel: an unpacked Debian kernel package (`boot/vmlinuz-RELEASE` and
//! `lib/modules/RELEASE/` with its `modules.dep`).

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::error::{io_at, VmError};

/// A guest kernel and its modules.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuestKernel {
    /// The bootable image (`bzImage`).
    pub image: PathBuf,
    /// `lib/modules/RELEASE`.
    pub modules: PathBuf,
    /// The kernel release (`6.1.0-57-cloud-amd64`).
    pub release: String,
}

impl GuestKernel {
    /// Finds the kernel in `root`: exactly one `boot/vmlinuz-*` with its `lib/modules/*/modules.dep`.
    pub fn find(root: &Path) -> Result<GuestKernel, VmError> {
        let missing = |what: String| VmError::KernelMissing {
            dir: root.to_path_buf(),
            what,
        };
        let boot = root.join("boot");
        let mut images: Vec<PathBuf> = std::fs::read_dir(&boot)
            .map_err(|e| missing(format!("{}: {e}", boot.display())))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("vmlinuz-"))
            })
            .collect();
        images.sort();
        let image = match images.as_slice() {
            [one] => one.clone(),
            [] => return Err(missing(format!("no vmlinuz-* in {}", boot.display()))),
            many => {
                return Err(missing(format!(
                    "{} kernels in {}; keep one",
                    many.len(),
                    boot.display()
                )))
            }
        };
        let release = image
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix("vmlinuz-"))
            .unwrap_or_default()
            .to_string();
        let modules = root.join("lib/modules").join(&release);
        if !modules.join("modules.dep").is_file() {
            return Err(missing(format!(
                "{} (run `depmod -b {} {release}`)",
                modules.join("modules.dep").display(),
                root.display()
            )));
        }
        Ok(GuestKernel {
            image,
            modules,
            release,
        })
    }

    /// `sha256:` digest of the kernel image.
    pub fn digest(&self) -> Result<String, VmError> {
        let bytes = std::fs::read(&self.image).map_err(io_at(&self.image))?;
        Ok(format!("sha256:{}", hex::encode(Sha256::digest(&bytes))))
    }
}
