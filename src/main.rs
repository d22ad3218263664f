//! The `herald` command: CLI, logging and signals around [`herald::run`].

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use herald::config::{default_config_text, Config};

/// Herald: a self-hosted real-time message broker.
///
/// Backends publish over HTTP; browsers subscribe over WebSocket, Server-Sent
/// Events or long polling. With no configuration it listens on
/// 127.0.0.1:7400 and keeps history in memory.
#[derive(Debug, Parser)]
#[command(name = "herald", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server.
    Serve {
        /// Address for every HTTP transport, e.g. 0.0.0.0:7400 (overrides server.listen).
        #[arg(long, env = "HERALD_LISTEN", value_name = "ADDR")]
        listen: Option<SocketAddr>,
        /// TOML configuration file; see `herald config default` for every key.
        #[arg(long, env = "HERALD_CONFIG", value_name = "FILE")]
        config: Option<PathBuf>,
        /// Development mode: anyone may publish and subscribe without a key.
        /// Never use it on a reachable address.
        #[arg(long, env = "HERALD_DEV")]
        dev: bool,
        /// Log lines as text (for people) or JSON (one object per line, for
        /// log shippers).
        #[arg(long, env = "HERALD_LOG_FORMAT", value_enum, default_value = "text")]
        log_format: LogFormat,
    },
    /// Drain a running server before a restart (as SIGUSR1 does): it
    /// answers /readyz with 503, refuses new clients, closes its clients
    /// with `server_draining` spread over server.drain_window, then exits.
    /// Asks over the admin API with admin.key.
    Drain {
        /// The server's base URL; by default the configured admin.listen,
        /// else server.listen.
        #[arg(long, value_name = "URL")]
        url: Option<String>,
        #[arg(long, env = "HERALD_CONFIG", value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Inspect configuration.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Mint a user token (HS256, from the configured auth.jwt_hs256_secret)
    /// for development and tests; in production the application's backend
    /// mints tokens for its logged-in users.
    Token {
        /// The user id (`sub`).
        #[arg(long)]
        sub: String,
        /// A pattern the user may publish to (repeatable).
        #[arg(long = "pub", value_name = "PATTERN")]
        publish: Vec<String>,
        /// A pattern the user may subscribe to (repeatable; `{sub}` is the user id).
        #[arg(long = "sub-allow", value_name = "PATTERN")]
        subscribe: Vec<String>,
        /// A pattern the user may not subscribe to (repeatable; deny wins).
        #[arg(long = "sub-deny", value_name = "PATTERN")]
        subscribe_deny: Vec<String>,
        /// How long the token is valid, e.g. 15m, 1h.
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        ttl: std::time::Duration,
        #[arg(long, env = "HERALD_CONFIG", value_name = "FILE")]
        config: Option<PathBuf>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Print the built-in default configuration, with comments.
    Default,
    /// Load and validate a configuration (defaults, file, environment).
    Check {
        #[arg(long, env = "HERALD_CONFIG", value_name = "FILE")]
        config: Option<PathBuf>,
    },
}

fn main() {
    let cli = Cli::parse();
    if let Err(error) = execute(cli) {
        // One line with the whole chain of causes, no backtrace: these are
        // configuration and start-up errors meant for the operator.
        eprintln!("herald: {error:#}");
        std::process::exit(1);
    }
}

fn execute(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Config {
            command: ConfigCommand::Default,
        } => {
            print!("{}", default_config_text());
            Ok(())
        }
        Command::Config {
            command: ConfigCommand::Check { config },
        } => {
            let loaded = Config::load(config.as_deref(), true)?;
            println!(
                "configuration is valid; listening would be on {}",
                loaded.server.listen
            );
            Ok(())
        }
        Command::Serve {
            listen,
            config,
            dev,
            log_format,
        } => serve(listen, config, dev, log_format),
        Command::Drain { url, config } => drain(url, config),
        Command::Token {
            sub,
            publish,
            subscribe,
            subscribe_deny,
            ttl,
            config,
        } => {
            let loaded = Config::load(config.as_deref(), true)?;
            let secret = loaded
                .auth
                .jwt_hs256_secret
                .filter(|secret| !secret.0.is_empty())
                .context("auth.jwt_hs256_secret is not set: there is no key to sign with")?;
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?;
            let claims = serde_json::json!({
                "sub": sub,
                "iat": now.as_secs(),
                "exp": (now + ttl).as_secs(),
                "herald": {
                    "pub": {"allow": publish},
                    "sub": {"allow": subscribe, "deny": subscribe_deny},
                },
            });
            let key = jsonwebtoken::EncodingKey::from_secret(secret.0.as_bytes());
            println!(
                "{}",
                jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key)?
            );
            Ok(())
        }
    }
}

fn serve(
    listen: Option<SocketAddr>,
    config_file: Option<PathBuf>,
    dev: bool,
    log_format: LogFormat,
) -> anyhow::Result<()> {
    let logs = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        // If the log's reader goes away (a closed pipe), drop log lines
        // rather than report the failure with `eprintln!`, which panics.
        .log_internal_errors(false)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        );
    match log_format {
        LogFormat::Text => logs
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        // One JSON object per line: the event's fields at the top level,
        // beside `timestamp`, `level`, `target` and `message`.
        LogFormat::Json => logs.json().flatten_event(true).with_ansi(false).init(),
    }
    let mut config = Config::load(config_file.as_deref(), true)?;
    if let Some(listen) = listen {
        config.server.listen = listen;
    }
    if dev {
        herald::open_for_development(&mut config);
        tracing::warn!(
            "DEVELOPMENT MODE: anyone who can reach this server may publish and subscribe to every subject \
             without a key, from any browser origin. Do not expose it."
        );
    } else if !config.auth.anonymous_publish.is_empty() {
        tracing::warn!(
            patterns = ?config.auth.anonymous_publish,
            "auth.anonymous_publish: anyone who can reach this server may publish to these subjects without a key"
        );
    } else if config.auth.api_keys.is_empty()
        && config.auth.jwt_hs256_secret.is_none()
        && config.auth.jwt_public_key_file.is_none()
    {
        tracing::info!(
            anonymous_subscribe = ?config.auth.anonymous_subscribe,
            "no API keys and no token key configured: clients may only read what auth.anonymous_subscribe \
             allows until auth.api_keys, auth.jwt_hs256_secret or auth.jwt_public_key_file is set (or use --dev)"
        );
    }
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    runtime.block_on(async move {
        // Handlers first: a signal that arrives once the server is
        // listening must shut it down gracefully, not kill it.
        let shutdown = shutdown_signal()?;
        let drain_requested = drain_signal()?;
        let mut hangups = hangup_signal()?;
        let listener = tokio::net::TcpListener::bind(config.server.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.server.listen))?;
        let herald = herald::Herald::new(config)?;
        let drain = herald.drain_trigger();
        tokio::spawn(async move {
            drain_requested.await;
            tracing::warn!("SIGUSR1: draining");
            drain.cancel();
        });
        let reload = herald.tls_reload_trigger();
        tokio::spawn(async move {
            while hangups.recv().await.is_some() {
                match &reload {
                    Some(reload) => reload.notify_one(),
                    None => tracing::info!("SIGHUP: no [tls] files to reload"),
                }
            }
        });
        herald.run(listener, shutdown).await
    })
}

/// `herald drain`: `POST /v1/admin/drain` with the admin key.
fn drain(url: Option<String>, config_file: Option<PathBuf>) -> anyhow::Result<()> {
    let config = Config::load(config_file.as_deref(), true)?;
    anyhow::ensure!(
        config.admin.is_enabled(),
        "admin.key is not set: the server has no admin API to ask (SIGUSR1 drains it too)"
    );
    let url = url.unwrap_or_else(|| herald::admin_url(&config));
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let answer = runtime.block_on(herald::client::post(
        &url,
        "/v1/admin/drain",
        &config.admin.key.0,
        &config,
    ))?;
    println!("{url}: {answer}");
    Ok(())
}

/// Installs the SIGUSR1 handler now (its default action would end the
/// process); the future completes on the first one.
#[cfg(unix)]
fn drain_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut user1 = signal(SignalKind::user_defined1()).context("cannot handle SIGUSR1")?;
    Ok(async move {
        user1.recv().await;
    })
}

/// Installs the SIGHUP handler now (its default action would end the
/// process): it reloads the TLS certificate files.
#[cfg(unix)]
fn hangup_signal() -> anyhow::Result<tokio::signal::unix::Signal> {
    use tokio::signal::unix::{signal, SignalKind};
    signal(SignalKind::hangup()).context("cannot handle SIGHUP")
}

#[cfg(not(unix))]
fn hangup_signal() -> anyhow::Result<NoSignal> {
    Ok(NoSignal)
}

/// Where there is no SIGHUP.
#[cfg(not(unix))]
#[derive(Debug)]
struct NoSignal;

#[cfg(not(unix))]
impl NoSignal {
    async fn recv(&mut self) -> Option<()> {
        std::future::pending().await
    }
}

#[cfg(not(unix))]
fn drain_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    Ok(std::future::pending())
}

/// Installs the SIGINT (Ctrl-C) and SIGTERM handlers now; the future
/// completes on either.
#[cfg(unix)]
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let mut terminate = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {},
            _ = terminate.recv() => {},
        }
    })
}

/// Installs the Ctrl-C handler when first polled; the future completes on it.
#[cfg(not(unix))]
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    Ok(async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    })
}
