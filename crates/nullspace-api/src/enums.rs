//! The API's closed sets of values: build status, backend, source kind, phases, log kinds and
//! levels, cache decisions. Each serialises as its `snake_case` name.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Declares a `snake_case` enum with `as_str`, `Display` and `FromStr` over the same names.
macro_rules! wire_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
        #[serde(rename_all = "snake_case")]
        pub enum $name {
            $($(#[$vmeta])* $variant),+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The wire name.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $name {
            type Err = String;

            fn from_str(text: &str) -> Result<$name, String> {
                match text {
                    $($text => Ok($name::$variant),)+
                    other => Err(format!(
                        "{other:?} is not one of {}",
                        [$($text),+].join(", ")
                    )),
                }
            }
        }
    };
}

wire_enum! {
    /// Where a build is in its life.
    BuildStatus {
        /// Queued, not started.
        Waiting = "waiting",
        /// Running.
        Building = "building",
        /// Published.
        Ready = "ready",
        /// Failed.
        Error = "error",
        /// Cancelled.
        Cancelled = "cancelled",
    }
}

impl BuildStatus {
    /// Whether the build has ended (`ready`, `error` or `cancelled`).
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            BuildStatus::Ready | BuildStatus::Error | BuildStatus::Cancelled
        )
    }
}

wire_enum! {
    /// What builds the template.
    BuildBackend {
        /// Our importer (image imports, template bases without steps).
        Native = "native",
        /// BuildKit (Dockerfiles and declarative steps).
        Buildkit = "buildkit",
    }
}

wire_enum! {
    /// What a build starts from.
    SourceKind {
        /// Declarative steps on an image (rendered into a Dockerfile).
        Declarative = "declarative",
        /// A Dockerfile.
        Dockerfile = "dockerfile",
        /// A plain image import.
        OciImport = "oci_import",
        /// An existing template.
        TemplateBase = "template_base",
    }
}

wire_enum! {
    /// The phase a build failed in (`failure_phase`, `error_detail.phase`).
    FailurePhase {
        /// Checking the request and what it refers to.
        Prepare = "prepare",
        /// Resolving, fetching and applying the base image.
        BaseImageImport = "base_image_import",
        /// Running build steps (BuildKit evaluating a Dockerfile).
        BuildSteps = "build_steps",
        /// Booting the build VM.
        VmCreate = "vm_create",
        /// Starting the start command (or it exited).
        Startup = "startup",
        /// Waiting for readiness.
        Readiness = "readiness",
        /// Snapshotting the ready VM.
        Snapshot = "snapshot",
        /// The build as a whole (interrupted by a server restart).
        Build = "build",
        /// Writing the artifact and recording it.
        Finalize = "finalize",
    }
}

wire_enum! {
    /// The phase a log entry belongs to (spec §3.6).
    LogPhase {
        /// Cache decisions.
        Cache = "cache",
        /// Resolving and importing the base.
        Preparing = "preparing",
        /// Creating the build VM.
        VmCreate = "vm_create",
        /// Build steps.
        Step = "step",
        /// Syncing the guest's filesystems.
        Sync = "sync",
        /// Starting the start command.
        Startup = "startup",
        /// Waiting for readiness.
        Readiness = "readiness",
        /// Snapshotting the VM.
        Snapshot = "snapshot",
        /// Writing and publishing the artifact.
        Finalize = "finalize",
        /// Cleaning up after the build.
        Cleanup = "cleanup",
        /// A retried attempt.
        Retry = "retry",
    }
}

wire_enum! {
    /// What a log entry reports.
    LogKind {
        /// The build started.
        Start = "start",
        /// Progress.
        Message = "message",
        /// A cache decision.
        Cache = "cache",
        /// A retried attempt.
        Retry = "retry",
        /// Something the user should know.
        Warning = "warning",
        /// The failure.
        Error = "error",
        /// The build was cancelled.
        Cancelled = "cancelled",
        /// The build ended (`result` says how).
        End = "end",
    }
}

wire_enum! {
    /// How much a log entry matters.
    LogLevel {
        /// Detail.
        Debug = "debug",
        /// Progress.
        Info = "info",
        /// A warning.
        Warn = "warn",
        /// A failure.
        Error = "error",
    }
}

wire_enum! {
    /// What a cache decision was about.
    CacheKind {
        /// A build-context file blob.
        FileBlob = "file_blob",
        /// An image layer.
        Layer = "layer",
        /// The whole artifact.
        FinalArtifact = "final_artifact",
    }
}

wire_enum! {
    /// The outcome of a cache decision.
    CacheStatus {
        /// Reused.
        Hit = "hit",
        /// Not found.
        Miss = "miss",
        /// Stored for later builds.
        Stored = "stored",
        /// Deliberately not used.
        Bypass = "bypass",
    }
}

wire_enum! {
    /// Who may use a template.
    Visibility {
        /// Its owner only.
        Private = "private",
        /// Everyone.
        Public = "public",
    }
}

wire_enum! {
    /// What started a build.
    TriggeredBy {
        /// A build request.
        Api = "api",
        /// A retry of another build.
        Retry = "retry",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_through_serde_and_from_str() {
        for status in BuildStatus::ALL {
            let json = serde_json::to_string(status).unwrap();
            assert_eq!(json, format!("\"{status}\""));
            assert_eq!(status.as_str().parse::<BuildStatus>().unwrap(), *status);
        }
        assert!("nope"
            .parse::<LogKind>()
            .unwrap_err()
            .contains("start, message"));
        assert!(BuildStatus::Cancelled.is_terminal() && !BuildStatus::Building.is_terminal());
    }
}
