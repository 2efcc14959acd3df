//! Command-line arguments.

use clap::{Args, Parser, Subcommand};

/// Build and manage Nullspace templates.
#[derive(Debug, Parser)]
#[command(name = "nullspace", version, about)]
pub struct Cli {
    /// Print results (and errors) as JSON on stdout.
    #[arg(long, global = true)]
    pub json: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Build and inspect templates.
    #[command(subcommand)]
    Template(TemplateCommand),
    /// Start sandboxes from templates and run commands and move files in them (on the
    /// `nullspace serve` NULLSPACE_API_URL names, else on a background server of the data dir
    /// that also starts local templates).
    #[command(subcommand)]
    Sandbox(crate::sandbox_cmd::SandboxCommand),
    /// Run the template build service (HTTP API) on this machine.
    Serve(ServeArgs),
}

/// `nullspace serve`
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on (port 0 picks a free one; the address is printed).
    #[arg(long, default_value = "127.0.0.1:8080", env = "NULLSPACE_LISTEN")]
    pub listen: std::net::SocketAddr,
    /// Builds that run at once.
    #[arg(long, default_value_t = 2, env = "NULLSPACE_WORKERS")]
    pub workers: usize,
    /// Accept requests without an API key, all as OWNER (local development only).
    #[arg(long, value_name = "OWNER")]
    pub no_auth_as: Option<String>,
    /// What this process does: `api` (records builds, serves the API), `worker` (runs builds
    /// from the shared queue; serves /healthz, /readyz and /metrics) or `all`. `api` and
    /// `worker` need --database.
    #[arg(long, default_value = "all", env = "NULLSPACE_ROLE")]
    pub role: nullspace_server::config::Role,
    /// `postgres://user:password@host:port/db`: share builds, logs and templates with other
    /// processes through PostgreSQL (default: the data dir's SQLite).
    #[arg(long, env = "NULLSPACE_DATABASE_URL", hide_env_values = true)]
    pub database: Option<String>,
    /// Seconds a worker's claim on a build lasts without renewal; a worker that dies loses
    /// its builds to other workers after about this long.
    #[arg(long, default_value_t = 30, env = "NULLSPACE_BUILD_LEASE_SECS")]
    pub lease_secs: u64,
    /// Seconds running builds may take to finish on SIGTERM before they are handed back to the
    /// queue [60 for a worker, 10 otherwise].
    #[arg(long, env = "NULLSPACE_DRAIN_TIMEOUT_SECS")]
    pub drain_timeout_secs: Option<u64>,
    /// `s3://bucket[/prefix]` (credentials and region from the AWS_* variables) or
    /// `file:///dir`: share published templates and build-context files between hosts.
    #[arg(long, env = "NULLSPACE_OBJECT_STORE")]
    pub object_store: Option<String>,
    /// The endpoint of an S3-compatible service (e.g. `http://127.0.0.1:9000`).
    #[arg(long, env = "NULLSPACE_S3_ENDPOINT")]
    pub s3_endpoint: Option<String>,
    /// Bytes of templates fetched from other hosts kept on this one (least recently used go).
    #[arg(long, default_value_t = 64 << 30, env = "NULLSPACE_ARTIFACT_CACHE_BYTES")]
    pub artifact_cache_bytes: u64,
}

/// `nullspace template ...`
#[derive(Debug, Subcommand)]
pub enum TemplateCommand {
    /// Build a template from one base and publish it under a name.
    Build(Box<BuildArgs>),
    /// List templates.
    List,
    /// Show a template's description (template.json).
    Get {
        /// `name`, `name:tag`, `name:tb_...` or `local/name:tag`.
        reference: String,
    },
    /// Exit 0 when the template exists, 3 when it does not.
    Exists {
        /// `name`, `name:tag`, `name:tb_...` or `local/name:tag`.
        reference: String,
    },
    /// Show a build's status and its log entries after an offset (needs NULLSPACE_API_URL).
    Status {
        /// The build id (`tb_...`).
        build_id: String,
        /// First log offset to show (feed back the printed `next_offset`).
        #[arg(long, default_value_t = 0)]
        offset: u64,
    },
    /// Print a build's log entries (needs NULLSPACE_API_URL).
    Logs {
        /// The build id (`tb_...`).
        build_id: String,
        /// First log offset to show.
        #[arg(long, default_value_t = 0)]
        offset: u64,
        /// Keep reading until the build's stream closes.
        #[arg(long)]
        follow: bool,
    },
    /// Wait for a build to finish: exit 0 when ready, 1 on error or cancel (needs
    /// NULLSPACE_API_URL).
    Wait {
        /// The build id (`tb_...`).
        build_id: String,
        /// Milliseconds between polls.
        #[arg(long, default_value_t = 500)]
        poll_interval_ms: u64,
    },
    /// Cancel a queued or running build (needs NULLSPACE_API_URL).
    Cancel {
        /// The build id (`tb_...`).
        build_id: String,
        /// Why, recorded with the build.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Point a tag at a ready build's artifact (needs NULLSPACE_API_URL).
    Promote {
        /// The build id (`tb_...`).
        build_id: String,
        /// The tag to move.
        #[arg(long)]
        tag: String,
    },
    /// Start a new attempt of a build from its stored definition (needs NULLSPACE_API_URL).
    /// Credentials are never stored: pass them again if the build had any.
    Retry {
        /// The build id (`tb_...`).
        build_id: String,
        /// Tags of the new attempt (default: the original's); repeatable.
        #[arg(long = "tag")]
        tags: Vec<String>,
        /// Base-image registry username (with --password-env).
        #[arg(long, requires = "password_env")]
        username: Option<String>,
        /// Environment variable holding the base-image registry password.
        #[arg(long, requires = "username")]
        password_env: Option<String>,
        /// A build secret read from an environment variable (the original's ids); repeatable.
        #[arg(long = "build-secret-env", value_name = "ID=ENVVAR")]
        build_secret_env: Vec<String>,
        /// A build secret read from a file; repeatable.
        #[arg(long = "build-secret-file", value_name = "ID=PATH")]
        build_secret_file: Vec<String>,
    },
    /// Validate a build request on the server; nothing is built (needs NULLSPACE_API_URL).
    Validate(Box<BuildArgs>),
    /// Show the server's normalized plan of a build request; nothing is built (needs
    /// NULLSPACE_API_URL).
    Plan(Box<BuildArgs>),
    /// Rename a template: its builds, tags and aliases stay (on the server when
    /// NULLSPACE_API_URL is set, else in the local data dir).
    Rename {
        /// `name`, an alias, or `tmpl_...`.
        reference: String,
        /// The new single-segment name.
        new_name: String,
    },
}

/// `nullspace template build`
#[derive(Debug, Args)]
pub struct BuildArgs {
    /// Template name: a single segment (tags go in --tag).
    #[arg(long)]
    pub name: String,
    /// Tag to point at the build; repeatable. Default: `default`.
    #[arg(long = "tag")]
    pub tags: Vec<String>,
    /// The base: exactly one of these.
    #[command(flatten)]
    pub base: BaseArgs,
    /// Dockerfile build flags.
    #[command(flatten)]
    pub dockerfile: crate::dockerfile_cmd::DockerfileArgs,
    /// Declarative steps and runtime defaults.
    #[command(flatten)]
    pub steps: crate::steps_cmd::StepArgs,
    /// Username for the base image's registry.
    #[arg(long, requires = "password_source")]
    pub username: Option<String>,
    /// Password or token for the base image's registry (prefer --password-stdin).
    #[arg(
        long,
        group = "password_source",
        env = "NULLSPACE_BASE_IMAGE_PASSWORD",
        hide_env_values = true
    )]
    pub password: Option<String>,
    /// Read the registry password from standard input.
    #[arg(long, group = "password_source")]
    pub password_stdin: bool,
    /// GCP Artifact Registry: a service-account key file, exchanged for an access token.
    #[arg(long, value_name = "PATH", conflicts_with_all = ["username", "aws_access_key_id"])]
    pub gcp_service_account_json: Option<std::path::PathBuf>,
    /// AWS ECR: access key id (the secret comes from --aws-secret-access-key or the env).
    #[arg(long, requires = "aws_secret_access_key")]
    pub aws_access_key_id: Option<String>,
    /// AWS ECR: secret access key.
    #[arg(long, env = "AWS_SECRET_ACCESS_KEY", hide_env_values = true)]
    pub aws_secret_access_key: Option<String>,
    /// AWS ECR: session token for temporary credentials.
    #[arg(long, env = "AWS_SESSION_TOKEN", hide_env_values = true)]
    pub aws_session_token: Option<String>,
    /// AWS ECR: region (default: taken from the ECR registry host).
    #[arg(long, env = "AWS_REGION")]
    pub aws_region: Option<String>,
    /// AWS ECR: API endpoint override (private endpoints, emulators).
    #[arg(long, value_name = "URL")]
    pub aws_ecr_endpoint: Option<String>,
    /// Minimum rootfs size in MiB.
    #[arg(long)]
    pub disk_mb: Option<u64>,
    /// vCPUs for the build VM.
    #[arg(long)]
    pub cpu_count: Option<u32>,
    /// Memory for the build VM in MiB.
    #[arg(long)]
    pub memory_mb: Option<u32>,
    /// Build steps get no network.
    #[arg(long)]
    pub no_internet_access: bool,
    /// Bypass every cache.
    #[arg(long)]
    pub skip_cache: bool,
    /// Build backend; imports use `native`, Dockerfiles `buildkit`.
    #[arg(long, value_parser = ["native", "buildkit"])]
    pub backend: Option<String>,
    /// Start the build on the server (NULLSPACE_API_URL) and print its id without waiting.
    #[arg(long)]
    pub background: bool,
    /// Print the request (secrets redacted) and, for steps, the rendered Dockerfile; build
    /// and upload nothing.
    #[arg(long, conflicts_with = "background")]
    pub dry_run: bool,
}

/// The base selectors; clap enforces exactly one.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct BaseArgs {
    /// `ubuntu:<VERSION>`.
    #[arg(long, value_name = "VERSION")]
    pub from_ubuntu_image: Option<String>,
    /// `debian:<VERSION>` (default bookworm).
    #[arg(long, value_name = "VERSION", num_args = 0..=1, default_missing_value = "")]
    pub from_debian_image: Option<String>,
    /// `python:<VERSION>`.
    #[arg(long, value_name = "VERSION")]
    pub from_python_image: Option<String>,
    /// `node:<VERSION>`.
    #[arg(long, value_name = "VERSION")]
    pub from_node_image: Option<String>,
    /// `oven/bun:<VERSION>` (version required).
    #[arg(long, value_name = "VERSION")]
    pub from_bun_image: Option<String>,
    /// Any OCI image reference.
    #[arg(long, value_name = "REF")]
    pub from_image: Option<String>,
    /// Any OCI image reference, as a base.
    #[arg(long, value_name = "REF")]
    pub from_base_image: Option<String>,
    /// A Dockerfile, built with BuildKit (context: its folder unless --context).
    #[arg(long, value_name = "PATH")]
    pub from_dockerfile: Option<std::path::PathBuf>,
    /// An existing template (`name[:tag]`, `name:tb_...`): its rootfs and runtime defaults.
    #[arg(long, value_name = "REF")]
    pub from_template: Option<String>,
}
