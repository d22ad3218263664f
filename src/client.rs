//! The few HTTP requests the `herald` command makes to a running server
//! (`herald drain`): one request on one connection, over TLS when the URL
//! says `https`. Roots: the system's, the certificates in `tls.cert_file`
//! (a chain's issuers) and `HERALD_CA_FILE` if set.

use std::sync::Arc;

use anyhow::{bail, Context};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::Config;

/// `POST <url><path>` with `Authorization: Bearer <key>`; the answer's
/// body, or an error with its status and body.
pub async fn post(url: &str, path: &str, key: &str, config: &Config) -> anyhow::Result<String> {
    let (tls, authority) = match url.split_once("://") {
        Some(("http", rest)) => (false, rest),
        Some(("https", rest)) => (true, rest),
        _ => bail!("{url}: expected http://host:port or https://host:port"),
    };
    let authority = authority.trim_end_matches('/');
    let stream = TcpStream::connect(authority)
        .await
        .with_context(|| format!("cannot connect to {authority}"))?;
    let request = hyper::Request::post(path)
        .header(hyper::header::HOST, authority)
        .header(hyper::header::AUTHORIZATION, format!("Bearer {key}"))
        .body(Empty::<Bytes>::new())?;
    if !tls {
        return send(stream, request).await;
    }
    let host = authority.rsplit_once(':').map_or(authority, |(host, _)| host);
    let host = host.trim_start_matches('[').trim_end_matches(']').to_owned();
    let name = ServerName::try_from(host).context("the URL's host is not a valid TLS name")?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client_config(config)?));
    let stream = connector.connect(name, stream).await.context("TLS handshake")?;
    send(stream, request).await
}

async fn send<S>(stream: S, request: hyper::Request<Empty<Bytes>>) -> anyhow::Result<String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let answer = sender.send_request(request).await?;
    let status = answer.status();
    let body = answer.into_body().collect().await?.to_bytes();
    let body = String::from_utf8_lossy(&body).into_owned();
    if !status.is_success() {
        bail!("{status}: {body}");
    }
    Ok(body)
}

fn client_config(config: &Config) -> anyhow::Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for certificate in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(certificate);
    }
    let mut files = Vec::new();
    if config.tls.is_enabled() {
        files.push(config.tls.cert_file.clone());
    }
    if let Some(file) = std::env::var_os("HERALD_CA_FILE") {
        files.push(file.into());
    }
    for file in files {
        for certificate in CertificateDer::pem_file_iter(&file)
            .with_context(|| format!("{}: not PEM certificates", file.display()))?
        {
            let _ = roots.add(certificate?);
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth())
}
