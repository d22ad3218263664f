//! The endpoint's TLS identity: a configured certificate chain, or for
//! development a generated ECDSA P-256 certificate short-lived enough for
//! browsers to trust by its hash, renewed at half its validity.

use std::time::Duration;

use base64::Engine;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use wtransport::quinn::{AckFrequencyConfig, IdleTimeout, TransportConfig, VarInt};
use wtransport::tls::self_signed::time::OffsetDateTime;
use wtransport::{Identity, ServerConfig};

use crate::{QuicConfig, QuicError};

/// A certificate's SHA-256, as `serverCertificateHashes` takes it
/// (`value` is base64 here; the page decodes it to bytes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertificateHash {
    pub algorithm: String,
    pub value: String,
}

/// The identity the endpoint presents now.
#[derive(Debug)]
pub(crate) struct Current {
    identity: Identity,
    /// When a generated certificate is due for renewal; `None` for files.
    renew_at: Option<Instant>,
}

impl Current {
    pub(crate) async fn load(config: &QuicConfig) -> Result<Current, QuicError> {
        if config.uses_files() {
            let identity = Identity::load_pemfiles(&config.cert_file, &config.key_file)
                .await
                .map_err(|error| QuicError::Certificate(error.to_string()))?;
            return Ok(Current {
                identity,
                renew_at: None,
            });
        }
        let mut current = Current {
            identity: generate(config)?,
            renew_at: None,
        };
        current.renew_at = Some(Instant::now() + config.self_signed_validity / 2);
        Ok(current)
    }

    pub(crate) fn identity(&self) -> &Identity {
        &self.identity
    }

    /// Hashes pages may pin: only a generated certificate's.
    pub(crate) fn hashes(&self) -> Vec<CertificateHash> {
        match self.renew_at {
            Some(_) => hashes_of(&self.identity),
            None => Vec::new(),
        }
    }

    pub(crate) async fn rotation_due(&self) {
        match self.renew_at {
            Some(at) => tokio::time::sleep_until(at).await,
            None => std::future::pending().await,
        }
    }

    pub(crate) fn renew(&mut self, config: &QuicConfig) -> Result<(), QuicError> {
        self.identity = generate(config)?;
        self.renew_at = Some(Instant::now() + config.self_signed_validity / 2);
        Ok(())
    }
}

pub(crate) fn hashes_of(identity: &Identity) -> Vec<CertificateHash> {
    identity
        .certificate_chain()
        .as_slice()
        .first()
        .map(|certificate| CertificateHash {
            algorithm: "sha-256".into(),
            value: base64::engine::general_purpose::STANDARD.encode(certificate.hash().as_ref()),
        })
        .into_iter()
        .collect()
}

/// A self-signed ECDSA P-256 certificate for the loopback names, the
/// listen address and the public URL's host, valid for
/// `self_signed_validity` in all (browsers count the whole period),
/// starting a little in the past for clocks slightly behind.
fn generate(config: &QuicConfig) -> Result<Identity, QuicError> {
    let mut names = vec!["localhost".to_string(), "127.0.0.1".into(), "::1".into()];
    if !config.listen.ip().is_unspecified() {
        names.push(config.listen.ip().to_string());
    }
    if let Some(host) = url_host(&config.public_url) {
        names.push(host.to_string());
    }
    names.sort();
    names.dedup();
    let backdate = (config.self_signed_validity / 10).min(Duration::from_secs(60));
    let not_before = OffsetDateTime::now_utc() - backdate;
    let not_after = not_before + config.self_signed_validity;
    Identity::self_signed_builder()
        .subject_alt_names(names)
        .validity_period(not_before, not_after)
        .build()
        .map_err(|error| QuicError::Certificate(error.to_string()))
}

/// The host of `https://host:port/path` (brackets removed from IPv6).
fn url_host(url: &str) -> Option<&str> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split(['/', '?']).next()?;
    let host = match authority.strip_prefix('[') {
        Some(bracketed) => bracketed.split(']').next()?,
        None => authority.rsplit_once(':').map_or(authority, |(host, _port)| host),
    };
    (!host.is_empty()).then_some(host)
}

/// The endpoint's QUIC settings with `identity`, on `socket` (bound by
/// the caller); without one, for swapping the identity of a running
/// endpoint (the bind address is then ignored).
pub(crate) fn server_config(
    config: &QuicConfig,
    identity: &Identity,
    socket: Option<std::net::UdpSocket>,
) -> Result<ServerConfig, QuicError> {
    let mut transport = TransportConfig::default();
    let idle = IdleTimeout::try_from(config.idle_timeout)
        .map_err(|_| QuicError::Config("quic.idle_timeout is too long".into()))?;
    transport.max_idle_timeout(Some(idle));
    transport.keep_alive_interval(Some(config.keep_alive_interval));
    // The client opens the session's CONNECT stream and one control
    // stream; HTTP/3 needs three unidirectional streams of its own. A
    // little room above that, and no more: every stream costs memory.
    transport.max_concurrent_bidi_streams(VarInt::from_u32(4));
    transport.max_concurrent_uni_streams(VarInt::from_u32(4));
    // What a session may make the server hold: unacknowledged bytes
    // queued for it (quinn's default is 10 MB per connection), and bytes
    // it sends ahead of the server reading them.
    transport.send_window(config.send_window_bytes as u64);
    transport.stream_receive_window(VarInt::from_u32(64 * 1024));
    transport.receive_window(VarInt::from_u32(256 * 1024));
    transport.datagram_send_buffer_size(config.datagram_buffer_bytes);
    // Every session's acknowledgements arrive on the one socket; a peer
    // that supports the ACK frequency extension (quinn does) is asked to
    // acknowledge every tenth packet (or after 25 ms) instead of every
    // other one, as TCP's delayed ACKs would.
    let mut ack_frequency = AckFrequencyConfig::default();
    ack_frequency
        .ack_eliciting_threshold(VarInt::from_u32(9))
        .max_ack_delay(Some(Duration::from_millis(25)));
    transport.ack_frequency_config(Some(ack_frequency));
    transport.datagram_receive_buffer_size(Some(16 * 1024));
    let builder = match socket {
        Some(socket) => ServerConfig::builder().with_bind_socket(socket),
        None => ServerConfig::builder().with_bind_address(config.listen),
    };
    Ok(builder
        .with_custom_transport(identity.clone_identity(), transport)
        .build())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_read_from_public_urls() {
        assert_eq!(url_host("https://rt.example.com:443/wt"), Some("rt.example.com"));
        assert_eq!(url_host("https://rt.example.com/wt"), Some("rt.example.com"));
        assert_eq!(url_host("https://[2001:db8::1]:7401/wt"), Some("2001:db8::1"));
        assert_eq!(url_host(""), None);
    }

    #[test]
    fn a_generated_certificate_is_hashed_and_renewed() {
        let config = QuicConfig::default();
        let mut current = Current {
            identity: generate(&config).unwrap(),
            renew_at: Some(Instant::now()),
        };
        let first = current.hashes();
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].algorithm, "sha-256");
        let raw = base64::engine::general_purpose::STANDARD
            .decode(&first[0].value)
            .unwrap();
        assert_eq!(raw.len(), 32);
        current.renew(&config).unwrap();
        assert_ne!(current.hashes(), first, "a renewed certificate is a new one");
    }
}
