//! TLS for the HTTP listeners (HTTPS, WSS, SSE and long polling over
//! TLS), from a PEM certificate chain and key (`[tls]`), with rustls.
//!
//! The files are read again when they change (their size or modification
//! time, checked every `tls.watch_interval`) and on SIGHUP. A reload that
//! fails (a half-written file, a key that does not match) keeps the
//! certificate in use and logs why. Each new connection takes the current
//! certificate; open connections keep the one they started with.
//!
//! Every successful reload also bumps [`Tls::changes`]: the WebTransport
//! endpoint, when it uses the same files, reloads on it.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use anyhow::Context;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;
use tokio::sync::{watch, Notify};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

/// The `[tls]` section.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain, leaf first; with `key_file`, TLS is on.
    pub cert_file: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// How often the files are checked for a change.
    #[serde(with = "herald_broker::units::duration")]
    pub watch_interval: Duration,
}

impl TlsConfig {
    pub fn is_enabled(&self) -> bool {
        !self.cert_file.as_os_str().is_empty()
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        let (cert, key) = (self.cert_file.as_os_str(), self.key_file.as_os_str());
        anyhow::ensure!(
            cert.is_empty() == key.is_empty(),
            "tls.cert_file and tls.key_file go together: set both or neither"
        );
        anyhow::ensure!(
            self.watch_interval >= Duration::from_millis(100),
            "tls.watch_interval must be at least 100ms"
        );
        Ok(())
    }
}

/// The certificate the listeners present now, and how it is kept current.
#[derive(Debug)]
pub struct Tls {
    config: TlsConfig,
    current: RwLock<Arc<ServerConfig>>,
    /// What the files looked like when last read.
    seen: RwLock<Option<Fingerprint>>,
    changes: watch::Sender<u64>,
    /// Notified on SIGHUP.
    reload_now: Arc<Notify>,
}

/// Size and modification time of both files: enough to see a renewal.
type Fingerprint = [(u64, Option<SystemTime>); 2];

impl Tls {
    /// Loads the files; an error names which one and why.
    pub fn new(config: &TlsConfig) -> anyhow::Result<Arc<Tls>> {
        let seen = fingerprint(config).ok();
        let server_config = load(&config.cert_file, &config.key_file)?;
        Ok(Arc::new(Tls {
            config: config.clone(),
            current: RwLock::new(server_config),
            seen: RwLock::new(seen),
            changes: watch::channel(0).0,
            reload_now: Arc::new(Notify::new()),
        }))
    }

    /// A handshake with the current certificate.
    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.current.read().unwrap_or_else(|p| p.into_inner()).clone())
    }

    /// Bumped after each successful reload.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// What SIGHUP notifies.
    pub fn reload_trigger(&self) -> Arc<Notify> {
        self.reload_now.clone()
    }

    /// Reads the files again; on failure keeps what it has.
    pub fn reload(&self) -> anyhow::Result<()> {
        let seen = fingerprint(&self.config).ok();
        let server_config = load(&self.config.cert_file, &self.config.key_file)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = server_config;
        *self.seen.write().unwrap_or_else(|p| p.into_inner()) = seen;
        self.changes.send_modify(|generation| *generation += 1);
        Ok(())
    }

    /// Reloads when the files change or on SIGHUP, until `stop`.
    pub async fn watch(self: Arc<Self>, stop: CancellationToken) {
        // The files were read at start: the first check is one interval
        // later (an immediate one would race a change made after start).
        let every = self.config.watch_interval;
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let asked = tokio::select! {
                _ = ticks.tick() => false,
                () = self.reload_now.notified() => true,
                () = stop.cancelled() => return,
            };
            let changed =
                fingerprint(&self.config).ok() != *self.seen.read().unwrap_or_else(|p| p.into_inner());
            if !asked && !changed {
                continue;
            }
            let why = if asked { "SIGHUP" } else { "the files changed" };
            match self.reload() {
                Ok(()) => tracing::info!(
                    cert_file = %self.config.cert_file.display(),
                    why,
                    "TLS certificate reloaded; new connections get it"
                ),
                Err(error) => {
                    // Remember the broken state, so it is not retried (and
                    // logged) every tick until the files change again.
                    *self.seen.write().unwrap_or_else(|p| p.into_inner()) = fingerprint(&self.config).ok();
                    tracing::error!(
                        error = format!("{error:#}"),
                        why,
                        "TLS certificate not reloaded; keeping the current one"
                    )
                }
            }
        }
    }
}

fn fingerprint(config: &TlsConfig) -> io::Result<Fingerprint> {
    let of = |path: &Path| -> io::Result<(u64, Option<SystemTime>)> {
        let metadata = std::fs::metadata(path)?;
        Ok((metadata.len(), metadata.modified().ok()))
    };
    Ok([of(&config.cert_file)?, of(&config.key_file)?])
}

/// A rustls server configuration (HTTP/1.1 over ALPN) from PEM files.
pub fn load(cert_file: &Path, key_file: &Path) -> anyhow::Result<Arc<ServerConfig>> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_file)
        .and_then(|certificates| certificates.collect())
        .with_context(|| {
            format!(
                "tls.cert_file {}: not a PEM certificate chain",
                cert_file.display()
            )
        })?;
    anyhow::ensure!(
        !chain.is_empty(),
        "tls.cert_file {}: no certificate in it",
        cert_file.display()
    );
    let key = PrivateKeyDer::from_pem_file(key_file)
        .with_context(|| format!("tls.key_file {}: not a PEM private key", key_file.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .context("tls.cert_file and tls.key_file do not make a certificate and its key")?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
