//! Build-context manifests as a client uploads them: parsed and checked by the same rules as the
//! server (paths, modes, digests, sizes); accepted ones answer every question without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nullspace_api::context::ContextManifest;

fuzz_target!(|data: &[u8]| {
    let Ok(manifest) = nullspace_api::from_json::<ContextManifest>(data) else { return };
    if manifest.validate().is_ok() {
        let _ = manifest.digest();
        let _ = manifest.total_bytes();
        let _ = manifest.file_count();
        let _ = manifest.file_digests();
        let _ = manifest.cache_decisions();
        let _ = manifest.covers("src/main.rs");
    }
});
