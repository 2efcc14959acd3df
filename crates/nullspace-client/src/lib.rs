//! A client of the Nullspace template API, used by the CLI's client mode and by tests:
//! typed requests over HTTP ([`Client`]), the local build context ([`LocalContext`], with
//! `.dockerignore` rules as Docker applies them, [`DockerIgnore`]) and its upload, and a log
//! stream that resumes after a dropped connection ([`Client::follow_logs`]).
//!
//! The server does not depend on this crate: scanning local files is the client's business.
#![deny(missing_docs)]

pub mod error;
pub mod http;
pub mod ignore;
pub mod logs;
pub mod scan;
pub mod upload;

pub use error::ClientError;
pub use http::{segment, Client};
pub use ignore::DockerIgnore;
pub use scan::LocalContext;
