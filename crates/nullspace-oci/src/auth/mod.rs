//! Registry authentication: credentials, `WWW-Authenticate` challenges, basic auth, the bearer
//! token flow and Docker's config.json / credential helpers.

pub mod basic;
pub mod challenge;
pub mod docker_config;
pub mod token;

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
}

impl Credentials {
    /// Basic credentials.
    pub fn basic(username: impl Into<String>, password: impl Into<String>) -> Credentials {
        Credentials::Basic {
            username: username.into(),
            password: password.into(),
        }
    }

    /// Whether these are [`Credentials::Anonymous`].
    pub fn is_anonymous(&self) -> bool {
        matches!(self, Credentials::Anonymous)
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
    }
}
