//! TLS for the `herald-wss-json` target: the self-signed certificate its
//! Herald presents (made once per run, written where that Herald reads
//! it), and the client side that trusts it. What a browser on an `https`
//! page uses is WSS, and WebTransport is always encrypted: comparing the
//! two over the same kind of channel needs this target.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, LazyLock};
use std::task::{Context, Poll};

use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// The certificate for 127.0.0.1, and a client configuration trusting it.
struct BenchCertificate {
    cert_pem: String,
    key_pem: String,
    connector: TlsConnector,
}

static CERTIFICATE: LazyLock<BenchCertificate> = LazyLock::new(|| {
    let made = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
        .expect("rcgen makes a self-signed certificate");
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from(made.cert.der().to_vec()))
        .expect("the certificate is a usable trust anchor");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    BenchCertificate {
        cert_pem: made.cert.pem(),
        key_pem: made.signing_key.serialize_pem(),
        connector: TlsConnector::from(Arc::new(client)),
    }
});

/// Writes the certificate and its key into `dir`; returns their paths
/// (for `tls.cert_file` and `tls.key_file`).
pub fn write_files(dir: &Path) -> io::Result<(PathBuf, PathBuf)> {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, &CERTIFICATE.cert_pem)?;
    std::fs::write(&key, &CERTIFICATE.key_pem)?;
    Ok((cert, key))
}

/// The TLS handshake on `tcp`, to the Herald at `server`.
pub async fn connect(tcp: TcpStream, server: SocketAddr) -> io::Result<TlsStream<TcpStream>> {
    let name = ServerName::IpAddress(server.ip().into());
    CERTIFICATE.connector.connect(name, tcp).await
}

/// A WebSocket client's byte stream: plain TCP, or TLS over it.
#[derive(Debug)]
pub enum ClientStream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for ClientStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(tcp) => Pin::new(tcp).poll_read(cx, buf),
            ClientStream::Tls(tls) => Pin::new(tls.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ClientStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ClientStream::Plain(tcp) => Pin::new(tcp).poll_write(cx, buf),
            ClientStream::Tls(tls) => Pin::new(tls.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(tcp) => Pin::new(tcp).poll_flush(cx),
            ClientStream::Tls(tls) => Pin::new(tls.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(tcp) => Pin::new(tcp).poll_shutdown(cx),
            ClientStream::Tls(tls) => Pin::new(tls.as_mut()).poll_shutdown(cx),
        }
    }
}
