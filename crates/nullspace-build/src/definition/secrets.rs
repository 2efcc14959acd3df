//! Request-time values that are never stored (base-image credentials, build secrets,
//! registry credentials), converted from their wire shapes.

use std::collections::BTreeMap;

use nullspace_api::request::{self, AuthKind, BaseImageAuth, BuildSecrets};
use nullspace_api::RequestError;
use nullspace_oci::Credentials;

use crate::dockerfile::{RegistryAuth, SecretValue};

/// The request-time values of a build that are never stored. `Debug` shows none of them.
#[derive(Clone, Default)]
pub struct RequestSecrets {
    /// `base_image_auth`.
    pub base_image_auth: Option<Credentials>,
    /// `build_secrets` by id.
    pub build_secrets: BTreeMap<String, SecretValue>,
    /// `registry_auth`.
    pub registry_auth: Vec<RegistryAuth>,
}

impl RequestSecrets {
    /// Nothing held.
    pub fn is_empty(&self) -> bool {
        self.base_image_auth.is_none()
            && self.build_secrets.is_empty()
            && self.registry_auth.is_empty()
    }
}

impl std::fmt::Debug for RequestSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "RequestSecrets(base_image_auth: {:?}, build_secrets: {:?}, registry_auth: {:?})",
            self.base_image_auth.as_ref().map(Credentials::kind),
            self.build_secrets.keys().collect::<Vec<_>>(),
            self.registry_auth
                .iter()
                .map(|a| a.registry.as_str())
                .collect::<Vec<_>>()
        )
    }
}

/// `base_image_auth` as credentials: each kind takes its own fields, all non-empty.
pub fn base_image_credentials(auth: &BaseImageAuth) -> Result<Credentials, RequestError> {
    let kind = auth.kind.unwrap_or_default();
    let given: [(&str, bool); 6] = [
        ("username", auth.username.is_some()),
        ("password", auth.password.is_some()),
        ("service_account_json", auth.service_account_json.is_some()),
        ("access_key_id", auth.access_key_id.is_some()),
        ("secret_access_key", auth.secret_access_key.is_some()),
        ("region", auth.region.is_some()),
    ];
    let allowed: &[&str] = match kind {
        AuthKind::Basic => &["username", "password"],
        AuthKind::Gcp => &["service_account_json"],
        AuthKind::Ecr => &["access_key_id", "secret_access_key", "region"],
    };
    let kind_name = serde_json::to_value(kind)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    if let Some((unknown, _)) = given
        .iter()
        .find(|(name, present)| *present && !allowed.contains(name))
    {
        return Err(RequestError::invalid(
            format!("base_image_auth.{unknown}"),
            format!("unknown field for kind {kind_name}"),
        ));
    }
    let required = |name: &str, value: Option<&str>| -> Result<String, RequestError> {
        match value {
            Some(text) if !text.is_empty() => Ok(text.to_string()),
            Some(_) => Err(RequestError::invalid(
                format!("base_image_auth.{name}"),
                "must not be empty",
            )),
            None => Err(RequestError::invalid(
                format!("base_image_auth.{name}"),
                "is required (a string)",
            )),
        }
    };
    Ok(match kind {
        AuthKind::Basic => Credentials::basic(
            required("username", auth.username.as_deref())?,
            required("password", auth.password.as_ref().map(|s| s.expose()))?,
        ),
        AuthKind::Gcp => Credentials::gcp(required(
            "service_account_json",
            auth.service_account_json.as_ref().map(|s| s.expose()),
        )?),
        AuthKind::Ecr => Credentials::ecr(
            required("access_key_id", auth.access_key_id.as_deref())?,
            required(
                "secret_access_key",
                auth.secret_access_key.as_ref().map(|s| s.expose()),
            )?,
            required("region", auth.region.as_deref())?,
        ),
    })
}

/// `build_secrets` by id; an id given twice is an error.
pub fn build_secret_values(
    secrets: Option<&BuildSecrets>,
) -> Result<BTreeMap<String, SecretValue>, RequestError> {
    let mut out = BTreeMap::new();
    for secret in secrets.map(|s| s.0.as_slice()).unwrap_or_default() {
        if secret.id.is_empty() {
            return Err(RequestError::invalid("build_secrets", "an id is empty"));
        }
        let value = SecretValue::new(secret.value.expose().as_bytes().to_vec());
        if out.insert(secret.id.clone(), value).is_some() {
            return Err(RequestError::invalid(
                format!("build_secrets.{}", secret.id),
                "is given twice",
            ));
        }
    }
    Ok(out)
}

/// `registry_auth`, every field non-empty.
pub fn registry_credentials(
    auth: Option<&[request::RegistryAuth]>,
) -> Result<Vec<RegistryAuth>, RequestError> {
    let mut out = Vec::new();
    for (index, item) in auth.unwrap_or_default().iter().enumerate() {
        for (name, value) in [
            ("registry", item.registry.as_str()),
            ("username", item.username.as_str()),
            ("password", item.password.expose()),
        ] {
            if value.is_empty() {
                return Err(RequestError::invalid(
                    format!("registry_auth[{index}].{name}"),
                    "is required (a non-empty string)",
                ));
            }
        }
        out.push(RegistryAuth {
            registry: item.registry.clone(),
            username: item.username.clone(),
            password: SecretValue::new(item.password.expose().as_bytes().to_vec()),
        });
    }
    Ok(out)
}
