//! Registry authentication: credentials, `WWW-Authenticate` challenges, basic auth, the bearer
//! token flow, Docker's config.json / credential helpers, and the cloud providers (GCP
//! service-account keys, AWS ECR access keys) whose credentials are exchanged for basic
//! credentials when an image is pulled.

pub mod basic;
pub mod challenge;
pub mod cloud;
pub mod docker_config;
pub mod ecr;
pub mod gcp;
pub mod token;

pub use cloud::CloudAuthError;

use std::fmt;

/// Credentials for one registry. `Debug` never prints secrets.
#[derive(Clone, Default, PartialEq, Eq)]
pub enum Credentials {
    /// No credentials (anonymous tokens are still requested when the registry asks).
    #[default]
    Anonymous,
    /// Username and password (or robot token), used for basic auth and for the token server.
    Basic {
        /// User name.
        username: String,
        /// Password or access token.
        password: String,
    },
    /// A bearer token already issued (e.g. by GCP or ECR), sent as is.
    Bearer(String),
    /// A GCP service-account key (the JSON file from the IAM console), exchanged at pull time
    /// for an OAuth2 access token sent as basic auth `oauth2accesstoken` / token (see
    /// [`gcp`]).
    Gcp {
        /// The key file's JSON text.
        service_account_json: String,
    },
    /// An AWS access key, exchanged at pull time by ECR's `GetAuthorizationToken` for a
    /// registry password sent as basic auth `AWS` / password (see [`ecr`]).
    Ecr {
        /// AWS access key id.
        access_key_id: String,
        /// AWS secret access key.
        secret_access_key: String,
        /// Session token of temporary credentials (STS).
        session_token: Option<String>,
        /// AWS region of the registry (`us-east-1`). When empty, the region is read from an
        /// ECR registry host (`<account>.dkr.ecr.<region>.amazonaws.com`).
        region: String,
        /// ECR API endpoint, when not `https://api.ecr.<region>.amazonaws.com/`.
        endpoint: Option<String>,
    },
}

impl Credentials {
    /// Basic credentials.
    pub fn basic(username: impl Into<String>, password: impl Into<String>) -> Credentials {
        Credentials::Basic {
            username: username.into(),
            password: password.into(),
        }
    }

    /// GCP service-account credentials from the key file's JSON text.
    pub fn gcp(service_account_json: impl Into<String>) -> Credentials {
        Credentials::Gcp {
            service_account_json: service_account_json.into(),
        }
    }

    /// AWS ECR credentials for `region`, without session token, at the public endpoint.
    pub fn ecr(
        access_key_id: impl Into<String>,
        secret_access_key: impl Into<String>,
        region: impl Into<String>,
    ) -> Credentials {
        Credentials::Ecr {
            access_key_id: access_key_id.into(),
            secret_access_key: secret_access_key.into(),
            session_token: None,
            region: region.into(),
            endpoint: None,
        }
    }

    /// Whether these are [`Credentials::Anonymous`].
    pub fn is_anonymous(&self) -> bool {
        matches!(self, Credentials::Anonymous)
    }

    /// The kind of credentials, safe to record: `"anonymous"`, `"basic"`, `"bearer"`, `"gcp"`
    /// or `"ecr"`.
    pub fn kind(&self) -> &'static str {
        match self {
            Credentials::Anonymous => "anonymous",
            Credentials::Basic { .. } => "basic",
            Credentials::Bearer(_) => "bearer",
            Credentials::Gcp { .. } => "gcp",
            Credentials::Ecr { .. } => "ecr",
        }
    }

    /// Whether these must be exchanged (GCP, ECR) before a registry accepts them.
    pub fn needs_exchange(&self) -> bool {
        matches!(self, Credentials::Gcp { .. } | Credentials::Ecr { .. })
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credentials::Anonymous => f.write_str("Anonymous"),
            Credentials::Basic { username, .. } => f
                .debug_struct("Basic")
                .field("username", username)
                .field("password", &"<redacted>")
                .finish(),
            Credentials::Bearer(_) => f.write_str("Bearer(<redacted>)"),
            Credentials::Gcp { .. } => f
                .debug_struct("Gcp")
                .field("service_account_json", &"<redacted>")
                .finish(),
            Credentials::Ecr {
                region, endpoint, ..
            } => f
                .debug_struct("Ecr")
                .field("access_key_id", &"<redacted>")
                .field("secret_access_key", &"<redacted>")
                .field("session_token", &"<redacted>")
                .field("region", region)
                .field("endpoint", endpoint)
                .finish(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_redacts_secrets() {
        let b = format!("{:?}", Credentials::basic("robot", "s3cr3t-pw"));
        assert!(b.contains("robot") && !b.contains("s3cr3t-pw"), "{b}");
        let t = format!("{:?}", Credentials::Bearer("tok-123".into()));
        assert!(!t.contains("tok-123"), "{t}");
        let g = format!("{:?}", Credentials::gcp(r#"{"private_key":"PEM-SECRET"}"#));
        assert!(!g.contains("PEM-SECRET"), "{g}");
        let e = Credentials::Ecr {
            access_key_id: "AKIDSECRET".into(),
            secret_access_key: "aws-secret".into(),
            session_token: Some("sess-secret".into()),
            region: "eu-west-1".into(),
            endpoint: None,
        };
        let d = format!("{e:?}");
        assert!(d.contains("eu-west-1"), "{d}");
        for s in ["AKIDSECRET", "aws-secret", "sess-secret"] {
            assert!(!d.contains(s), "{d}");
        }
    }

    #[test]
    fn kinds() {
        assert_eq!(Credentials::Anonymous.kind(), "anonymous");
        assert_eq!(Credentials::basic("u", "p").kind(), "basic");
        assert_eq!(Credentials::Bearer("t".into()).kind(), "bearer");
        assert_eq!(Credentials::gcp("{}").kind(), "gcp");
        assert_eq!(Credentials::ecr("a", "s", "us-east-1").kind(), "ecr");
        assert!(Credentials::gcp("{}").needs_exchange());
        assert!(!Credentials::basic("u", "p").needs_exchange());
    }
}
