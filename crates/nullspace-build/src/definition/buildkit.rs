//! The BuildKit side of a definition: the Dockerfile spec a Dockerfile or declarative build
//! runs, checked as far as possible before BuildKit sees it.

use nullspace_api::{BuildBackend, RequestError};

use crate::declarative::RenderedDockerfile;
use crate::dockerfile::BuildkitPolicy;
use crate::dockerfile::{Dockerfile, DockerfileSource, DockerfileSpec};
use crate::engine_dockerfile::declarative_spec;
use crate::engine_template::template_steps_spec;
use crate::error::BuildError;

use super::{Base, BuildDefinition, RequestSecrets};

/// The BuildKit spec of a Dockerfile or declarative build (`None` for native builds), with
/// the request's secrets, and the rendered Dockerfile of a declarative one. Nothing here has
/// been checked: call `spec.validate`.
#[allow(clippy::result_large_err)] // `BuildError` is the engine's error type.
pub fn buildkit_spec(
    definition: &BuildDefinition,
    secrets: &RequestSecrets,
) -> Result<Option<(DockerfileSpec, Option<RenderedDockerfile>)>, BuildError> {
    let buildkit = definition.build_backend == BuildBackend::Buildkit;
    let (mut spec, rendered) = match &definition.base {
        Base::Dockerfile { content } => (
            DockerfileSpec::new(DockerfileSource::Content(content.clone())),
            None,
        ),
        Base::Image { selector } if buildkit => {
            let (spec, rendered) = declarative_spec(selector, &definition.steps, None)?;
            (spec, Some(rendered))
        }
        Base::Template { .. } if buildkit => {
            let (spec, rendered) = template_steps_spec(&definition.steps, None)?;
            (spec, Some(rendered))
        }
        _ => return Ok(None),
    };
    spec.build_secrets = secrets.build_secrets.clone();
    spec.registry_auth = secrets.registry_auth.clone();
    spec.build_backend = Some(definition.build_backend);
    Ok(Some((spec, rendered)))
}

/// A checked BuildKit build: the spec, the rendered Dockerfile of declarative steps, and the
/// parsed Dockerfile.
pub type CheckedSpec = (DockerfileSpec, Option<RenderedDockerfile>, Dockerfile);

/// [`buildkit_spec`] checked as far as possible without BuildKit (`policy`, secrets against
/// `RUN --mount=type=secret`, registry credentials against `FROM` hosts...); errors name the
/// field or the Dockerfile line.
pub fn checked_buildkit_spec(
    definition: &BuildDefinition,
    secrets: &RequestSecrets,
    policy: &BuildkitPolicy,
) -> Result<Option<CheckedSpec>, RequestError> {
    let Some((spec, rendered)) = buildkit_spec(definition, secrets).map_err(request_error)? else {
        return Ok(None);
    };
    if definition.internet_access && !policy.allow_host_network {
        return Err(RequestError::invalid(
            "internet_access",
            crate::buildkit::HOST_NETWORK_REFUSED,
        ));
    }
    let parsed = spec.validate(policy, None).map_err(request_error)?;
    Ok(Some((spec, rendered, parsed)))
}

/// An engine error met while checking a request, as a request error.
pub(super) fn request_error(error: BuildError) -> RequestError {
    match error {
        BuildError::InvalidRequest { field, message } => RequestError::invalid(field, message),
        other => RequestError::Body(other.to_string()),
    }
}

/// The definition and its secrets, once the BuildKit side of them checks out.
pub(super) fn checked(
    definition: BuildDefinition,
    secrets: RequestSecrets,
    policy: &BuildkitPolicy,
) -> Result<(BuildDefinition, RequestSecrets), RequestError> {
    checked_buildkit_spec(&definition, &secrets, policy)?;
    Ok((definition, secrets))
}
