//! The `converge` binary: CLI verbs, the entity server and the controller daemon.
//!
//! Adding a subcommand is one `Command` variant (with its `clap::Args` struct from its own
//! module) and one arm in `Command::run`.

use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use converge::cli::{self, ClientContext, CommandError, OutputFormat};
use converge::telemetry::{self, LogFormat};
use converge_watch::ServerAddress;
use converge_watch::address::DEFAULT_SERVER;

/// converge: a reconciling controller for containerd nodes.
#[derive(Debug, Parser)]
#[command(name = "converge", version, about, propagate_version = true)]
struct Cli {
    /// Entity server address: unix:PATH or tcp:HOST:PORT. Several (comma-separated or
    /// repeated) are tried in order, and clients fail over to the next when one stops
    /// answering.
    #[arg(
        long = "server",
        global = true,
        value_name = "ADDR",
        env = "CONVERGE_SERVER",
        value_delimiter = ',',
        default_value = DEFAULT_SERVER
    )]
    servers: Vec<ServerAddress>,
    /// Output format where the output is data.
    #[arg(
        short = 'o',
        long,
        global = true,
        value_name = "FORMAT",
        value_enum,
        default_value_t = OutputFormat::Table
    )]
    output: OutputFormat,
    /// Log line format on stderr.
    #[arg(
        long,
        global = true,
        value_name = "FORMAT",
        env = "CONVERGE_LOG_FORMAT",
        value_enum,
        default_value_t = LogFormat::Text
    )]
    log_format: LogFormat,
    /// File holding the bearer token for TCP entity servers (mode 0600); the server
    /// requires it, clients send it.
    #[arg(long, global = true, value_name = "PATH", env = "CONVERGE_TOKEN_FILE")]
    token_file: Option<std::path::PathBuf>,
    /// CA certificate (PEM) a TLS entity server is verified with; clients speak TLS when set.
    #[arg(long, global = true, value_name = "PATH", env = "CONVERGE_TLS_CA")]
    tls_ca: Option<std::path::PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the entity server (and the artifact registry beside it).
    Server(converge::server_process::ServerProcessArgs),
    /// Create or update entities from a file (JSON or YAML, one or a list), all or none.
    Apply(cli::apply::ApplyArgs),
    /// List entities, or show one.
    Get(cli::get::GetArgs),
    /// Delete one entity.
    Delete(cli::delete::DeleteArgs),
    /// Follow changes, one line each, until Ctrl-C.
    Watch(cli::watch::WatchArgs),
    /// Explain one entity for people.
    Describe(cli::describe::DescribeArgs),
    /// Run the entity server, the artifact registry and the controller in one process.
    Up(converge::daemon::up::UpArgs),
    /// Run the controller alone against `--server`.
    Controller(converge::daemon::controller::ControllerArgs),
    /// One dry-run reconcile pass: print the plan; exit 0 when empty, 2 when not.
    Reconcile(converge::daemon::reconcile::ReconcileArgs),
    /// Publish an image tar to the registry as an artifact, or archive one.
    #[command(subcommand)]
    Artifact(cli::artifact::ArtifactCommand),
    /// Print a sandbox's container logs from this node, optionally following them.
    Logs(cli::logs::LogsArgs),
    /// The containerd binary logger converge points task stdio at (run by the shim).
    #[command(hide = true)]
    LogDriver(converge::logdriver::LogDriverArgs),
}

impl Command {
    /// Long-running daemons log at `info` by default; client verbs only warn.
    fn default_log_level(&self) -> &'static str {
        match self {
            Command::Server(_) | Command::Up(_) | Command::Controller(_) => "info",
            _ => "warn",
        }
    }

    async fn run(self, ctx: ClientContext) -> anyhow::Result<()> {
        match self {
            Command::Server(mut args) => converge::server_process::run(
                {
                    args.tls_ca = ctx.tls_ca.clone();
                    args
                },
                ctx.token_file.clone(),
                converge::server::shutdown_signal(),
            )
            .await
            .context("entity server failed"),
            Command::Apply(args) => client_verb(cli::apply::run(&args, &ctx).await),
            Command::Get(args) => client_verb(cli::get::run(&args, &ctx).await),
            Command::Delete(args) => client_verb(cli::delete::run(&args, &ctx).await),
            Command::Watch(args) => client_verb(cli::watch::run(&args, &ctx).await),
            Command::Describe(args) => client_verb(cli::describe::run(&args, &ctx).await),
            Command::Artifact(cmd) => match cli::artifact::run(&cmd, &ctx).await {
                Err(cli::artifact::ArtifactCommandError::Command(e)) => client_verb(Err(e)),
                other => Ok(other?),
            },
            Command::Up(mut args) => converge::daemon::up::run(
                {
                    set_log_driver(&mut args.flags);
                    args.tls_ca = ctx.tls_ca.clone();
                    args
                },
                ctx.token_file.clone(),
                converge::server::shutdown_signal(),
            )
            .await
            .context("converge up failed"),
            Command::Controller(mut args) => converge::daemon::controller::run(
                {
                    set_log_driver(&mut args.flags);
                    // The other `--server` addresses come before any `--fallback-server`.
                    let mut fallbacks = ctx.fallback_servers.clone();
                    fallbacks.append(&mut args.fallback_servers);
                    args.fallback_servers = fallbacks;
                    args
                },
                ctx.server.clone(),
                ctx.client_options().context("cannot use the token file")?,
                converge::server::shutdown_signal(),
            )
            .await
            .context("controller failed"),
            Command::Logs(args) => match cli::logs::run(&args).await {
                Err(cli::logs::LogsError::Output(e))
                    if e.kind() == std::io::ErrorKind::BrokenPipe =>
                {
                    Ok(())
                }
                other => Ok(other?),
            },
            Command::LogDriver(args) => {
                // containerd's shim closes the pipes and then sends SIGTERM: keep running
                // until end of file so the last (unterminated) line is written too. The shim
                // falls back to SIGKILL after 12 s, and end of file comes at once.
                let _ignore_sigterm =
                    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                        .context("cannot handle SIGTERM")?;
                tokio::task::spawn_blocking(move || converge::logdriver::run(&args))
                    .await
                    .context("log driver panicked")?
                    .context("log driver failed")?;
                Ok(())
            }
            Command::Reconcile(args) => {
                let code = converge::daemon::reconcile::run(&args, &ctx).await?;
                if code != 0 {
                    // The plan is printed and flushed; its exit status is the answer.
                    std::process::exit(i32::from(code));
                }
                Ok(())
            }
        }
    }
}

/// Makes this very binary the containers' log driver (`converge log-driver`, run by the
/// shims) unless `--log-driver` named one; if the binary's path cannot be read, output goes
/// raw to the log files and a warning says so.
fn set_log_driver(flags: &mut converge::daemon::flags::ControllerFlags) {
    if flags.log_driver.is_none() {
        match std::env::current_exe() {
            Ok(exe) => flags.log_driver = Some(exe),
            Err(e) => {
                tracing::warn!(error = %e, "cannot find this binary; container logs will be raw")
            }
        }
    }
}

/// The error and its causes joined by `: `, skipping causes whose text is already part of
/// the message (many errors repeat their source in their own text).
fn message_chain(err: &anyhow::Error) -> String {
    let mut message = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if text.is_empty() || message.contains(&text) {
            continue;
        }
        if !message.is_empty() {
            message.push_str(": ");
        }
        message.push_str(&text);
    }
    message
}

/// A closed stdout (`converge get | head`) is not an error worth reporting.
fn client_verb(result: Result<(), CommandError>) -> anyhow::Result<()> {
    match result {
        Err(e) if e.is_broken_pipe() => Ok(()),
        other => Ok(other?),
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = telemetry::init(cli.log_format, cli.command.default_log_level()) {
        eprintln!("error: {}", message_chain(&anyhow::Error::new(e)));
        return ExitCode::FAILURE;
    }
    let mut servers = cli.servers.into_iter();
    let Some(server) = servers.next() else {
        eprintln!("error: --server needs at least one address");
        return ExitCode::FAILURE;
    };
    let ctx = ClientContext {
        server,
        fallback_servers: servers.collect(),
        output: cli.output,
        token_file: cli.token_file,
        tls_ca: cli.tls_ca,
    };
    match cli.command.run(ctx).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", message_chain(&e));
            ExitCode::FAILURE
        }
    }
}
