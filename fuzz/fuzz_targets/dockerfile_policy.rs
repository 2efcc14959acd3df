//! Dockerfiles against the checks that run before BuildKit (parser, build args, mounts,
//! networks, secrets, heredocs), under the shared server's policy and a local user's.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nullspace_build::dockerfile::{BuildkitPolicy, DockerfileSource, DockerfileSpec};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let spec = DockerfileSpec::new(DockerfileSource::Content(text.to_owned()));
    let _ = spec.validate(&BuildkitPolicy::default(), Some(true));
    let _ = spec.validate(&BuildkitPolicy::local(), Some(false));
});
