//! What a running build reports, for progress bars, plain log lines and (later) the durable log.

use serde::Serialize;

/// One thing that happened during a build.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum BuildEvent {
    /// The reference resolved to a manifest for a platform.
    Resolved {
        /// Canonical reference.
        reference: String,
        /// Manifest digest.
        digest: String,
        /// `os/arch[/variant]`.
        platform: String,
        /// Layer digests and sizes, bottom-up.
        layers: Vec<(String, u64)>,
    },
    /// Bytes of a layer downloaded so far.
    Download {
        /// Layer index.
        index: usize,
        /// Bytes so far.
        bytes: u64,
        /// Layer size.
        total: u64,
    },
    /// A layer's blob is in the store (downloaded or already there).
    Downloaded {
        /// Layer index.
        index: usize,
        /// Whether it was already in the store.
        cached: bool,
    },
    /// Compressed bytes of a layer applied so far.
    Apply {
        /// Layer index.
        index: usize,
        /// Bytes so far.
        bytes: u64,
        /// Layer size.
        total: u64,
    },
    /// A layer is applied.
    Applied {
        /// Layer index.
        index: usize,
        /// Entries the layer held.
        entries: u64,
    },
    /// A cache decision.
    Cache {
        /// What the decision was about.
        kind: nullspace_api::CacheKind,
        /// The outcome.
        status: nullspace_api::CacheStatus,
        /// Why, for misses and bypasses.
        reason: Option<&'static str>,
        /// What the decision was about.
        subject: String,
    },
    /// Something skipped or worth a look.
    Warning {
        /// The message.
        message: String,
    },
    /// A BuildKit step started (`[stage-1 2/3] RUN make`; numbers are per stage).
    Step {
        /// 1-based index within its stage.
        index: usize,
        /// Steps in that stage.
        total: usize,
        /// The step as BuildKit names it.
        name: String,
    },
    /// A line a build step printed (secret values scrubbed).
    Log {
        /// `stdout` or `stderr`.
        stream: &'static str,
        /// The line.
        message: String,
    },
    /// What the build VM is doing, in a VM phase (`vm_create`, `startup`, `readiness`,
    /// `sync`, `snapshot`).
    Vm {
        /// The phase.
        phase: nullspace_api::LogPhase,
        /// How much it matters.
        level: nullspace_api::LogLevel,
        /// The message.
        message: String,
    },
    /// A line the start command printed in the build VM.
    GuestOutput {
        /// `stdout` or `stderr`.
        stream: &'static str,
        /// The line.
        line: String,
    },
    /// A step of the build in plain words.
    Message {
        /// The message.
        message: String,
    },
}

/// Receives build events.
pub trait EventSink: Send + Sync {
    /// Handles one event; must not block for long.
    fn event(&self, event: BuildEvent);
}

impl<F: Fn(BuildEvent) + Send + Sync> EventSink for F {
    fn event(&self, event: BuildEvent) {
        self(event)
    }
}
