//! TLS on the HTTP listener with a test CA: a WSS subscriber, an HTTPS
//! publisher, WebTransport on the same files; certificate files replaced
//! while connections are open (picked up by the watcher, or on SIGHUP in
//! the real binary) without dropping them.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls_pki_types::{CertificateDer, ServerName};
use serde_json::{json, Value};
use support::{Server, PATIENCE, PUBLISHER_KEY};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

/// A certificate authority for the test, and what it issues.
struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
    der: CertificateDer<'static>,
}

/// One issued server certificate: its PEM files' contents and DER.
struct Leaf {
    cert_pem: String,
    key_pem: String,
    der: CertificateDer<'static>,
}

impl TestCa {
    fn new() -> TestCa {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "Herald test CA");
        let certificate = params.self_signed(&key).unwrap();
        TestCa {
            pem: certificate.pem(),
            der: certificate.der().clone(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A certificate for 127.0.0.1 and localhost, valid ten days (short
    /// enough for WebTransport's hash pinning too).
    fn issue(&self, name: &str) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".into()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now + time::Duration::days(10);
        let certificate = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            cert_pem: certificate.pem(),
            key_pem: key.serialize_pem(),
            der: certificate.der().clone(),
        }
    }

    fn client_config(&self) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.der.clone()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        Arc::new(
            rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth(),
        )
    }

    fn https(&self) -> reqwest::Client {
        reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(self.pem.as_bytes()).unwrap())
            .build()
            .unwrap()
    }
}

/// Writes `leaf` where the server reads it: each file replaced at once
/// (written beside, then renamed), the key first.
fn install(leaf: &Leaf, cert: &Path, key: &Path) {
    for (path, text) in [(key, &leaf.key_pem), (cert, &leaf.cert_pem)] {
        let beside = path.with_extension("new");
        std::fs::write(&beside, text).unwrap();
        std::fs::rename(&beside, path).unwrap();
    }
}

/// A TLS connection to `address`: the certificate it presented, and the
/// stream.
async fn handshake(
    ca: &TestCa,
    address: SocketAddr,
) -> (
    CertificateDer<'static>,
    tokio_rustls::client::TlsStream<TcpStream>,
) {
    let tcp = TcpStream::connect(address).await.unwrap();
    let name = ServerName::IpAddress(address.ip().into());
    let stream = tokio_rustls::TlsConnector::from(ca.client_config())
        .connect(name, tcp)
        .await
        .expect("the handshake succeeds against the test CA");
    let presented = stream.get_ref().1.peer_certificates().unwrap()[0].clone();
    (presented, stream)
}

/// Waits until a new connection is presented `expected`.
async fn presents(ca: &TestCa, address: SocketAddr, expected: &CertificateDer<'_>) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if handshake(ca, address).await.0 == *expected {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the new certificate within the patience"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

type Wss = tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<TcpStream>>;

async fn wss_subscribe(ca: &TestCa, address: SocketAddr, subject: &str) -> (CertificateDer<'static>, Wss) {
    let (presented, stream) = handshake(ca, address).await;
    let url = format!("wss://{address}/ws");
    let (mut socket, _) = tokio_tungstenite::client_async(url, stream).await.unwrap();
    let sub = json!({"op": "sub", "id": 1, "subject": subject}).to_string();
    socket.send(Message::text(sub)).await.unwrap();
    assert_eq!(next_json(&mut socket).await["op"], "ack");
    (presented, socket)
}

async fn next_json(socket: &mut Wss) -> Value {
    loop {
        let frame = tokio::time::timeout(PATIENCE, socket.next())
            .await
            .expect("a frame within the patience")
            .unwrap()
            .unwrap();
        if let Message::Text(text) = frame {
            return serde_json::from_str(&text).unwrap();
        }
    }
}

async fn https_publish(ca: &TestCa, address: SocketAddr, subject: &str, data: Value) {
    let response = ca
        .https()
        .post(format!("https://{address}/v1/publish"))
        .bearer_auth(PUBLISHER_KEY)
        .json(&json!({"subject": subject, "data": data}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

fn files(dir: &Path) -> (PathBuf, PathBuf) {
    (dir.join("cert.pem"), dir.join("key.pem"))
}

fn sha256_base64(der: &[u8]) -> String {
    use base64::Engine;
    use sha2::Digest;
    base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(der))
}

async fn quic_connect(
    url: &str,
    leaf: &CertificateDer<'_>,
) -> Result<herald_quic::client::QuicClient, String> {
    let pinned = [herald_quic::CertificateHash {
        algorithm: "sha-256".into(),
        value: sha256_base64(leaf),
    }];
    herald_quic::client::QuicClient::connect(url, &pinned)
        .await
        .map_err(|error| error.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wss_and_https_work_and_a_replaced_certificate_is_picked_up_without_dropping_connections() {
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = files(dir.path());
    let first = ca.issue("first");
    install(&first, &cert, &key);
    let server = Server::start(|config| {
        config.tls.cert_file = cert.clone();
        config.tls.key_file = key.clone();
        config.tls.watch_interval = Duration::from_millis(100);
    })
    .await;
    let address = server.address;

    // Plain HTTP on the TLS port gets no answer it can read.
    let plain = reqwest::Client::new().get(server.url("/healthz")).send().await;
    assert!(plain.is_err(), "plain HTTP is not served on a TLS listener");

    let (presented, mut old) = wss_subscribe(&ca, address, "secure.x").await;
    assert_eq!(presented, first.der);
    https_publish(&ca, address, "secure.x", json!("before")).await;
    assert_eq!(next_json(&mut old).await["data"], "before");

    // WebTransport presents the same files.
    let endpoint: herald_quic::QuicEndpoint = ca
        .https()
        .get(format!("https://{address}/v1/quic"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(endpoint.certificate_hashes.is_empty(), "{endpoint:?}");
    let mut quic_old = quic_connect(&endpoint.url, &first.der)
        .await
        .expect("the first certificate");
    quic_old
        .send_json(&json!({"op": "sub", "id": 1, "subject": "secure.x"}))
        .await
        .unwrap();
    assert!(matches!(
        quic_old.next_event().await,
        Some((_, herald_broker::protocol::ServerEvent::Ack { .. }))
    ));

    // Renewed: new connections get the new certificate, open ones go on.
    let second = ca.issue("second");
    install(&second, &cert, &key);
    presents(&ca, address, &second.der).await;
    let (presented, mut new) = wss_subscribe(&ca, address, "secure.x").await;
    assert_eq!(presented, second.der);
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let mut quic_new = loop {
        match quic_connect(&endpoint.url, &second.der).await {
            Ok(client) => break client,
            Err(error) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "WebTransport reloads too: {error}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    assert!(
        quic_connect(&endpoint.url, &first.der).await.is_err(),
        "the old certificate is no longer presented"
    );
    quic_new.send_json(&json!({"op": "ping", "id": 7})).await.unwrap();
    assert!(quic_new.next_event().await.is_some());
    https_publish(&ca, address, "secure.x", json!("after")).await;
    assert_eq!(
        next_json(&mut old).await["data"],
        "after",
        "the old WSS connection stayed"
    );
    assert_eq!(next_json(&mut new).await["data"], "after");
    let delivered = loop {
        match quic_old.next_event().await {
            Some((_, herald_broker::protocol::ServerEvent::Msg { data, .. })) if data == "after" => {
                break data
            }
            Some(_) => continue,
            None => panic!("the old WebTransport session was dropped"),
        }
    };
    assert_eq!(delivered, "after");

    // A broken file is refused; the current certificate stays.
    std::fs::write(&cert, "not a certificate").unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(handshake(&ca, address).await.0, second.der);
    https_publish(&ca, address, "secure.x", json!("still")).await;
    assert_eq!(next_json(&mut old).await["data"], "still");
    server.shutdown().await;
}

/// The real binary: SIGHUP reloads the files (the watcher is set to wait an
/// hour), and `herald drain` reaches the admin API over HTTPS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_certificate_and_herald_drain_speaks_https() {
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = files(dir.path());
    let first = ca.issue("first");
    install(&first, &cert, &key);
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &ca.pem).unwrap();
    let config = dir.path().join("herald.toml");
    std::fs::write(
        &config,
        format!(
            "[tls]\ncert_file = {:?}\nkey_file = {:?}\nwatch_interval = \"1h\"\n\n[admin]\nkey = \"test-admin-key-0123456789\"\n\n[server]\ndrain_window = \"300ms\"\n\n[auth]\nanonymous_subscribe = [\">\"]\n\n[[auth.api_keys]]\nkey = {PUBLISHER_KEY:?}\npublish = [\">\"]\nsubscribe = [\">\"]\n",
            cert.display().to_string(),
            key.display().to_string()
        ),
    )
    .unwrap();
    let config_arg = config.display().to_string();
    let (mut child, address, _) = support::serve(&["--config", &config_arg], &[]);
    let address: SocketAddr = address.parse().unwrap();
    let (presented, mut old) = wss_subscribe(&ca, address, "secure.y").await;
    assert_eq!(presented, first.der);

    let second = ca.issue("second");
    install(&second, &cert, &key);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        handshake(&ca, address).await.0,
        first.der,
        "no reload before the signal"
    );
    let hup = std::process::Command::new("kill")
        .args(["-HUP", &child.0.id().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    presents(&ca, address, &second.der).await;
    https_publish(&ca, address, "secure.y", json!("after")).await;
    assert_eq!(
        next_json(&mut old).await["data"],
        "after",
        "the old connection stayed"
    );

    let drained = tokio::process::Command::new(support::HERALD)
        .args([
            "drain",
            "--config",
            &config_arg,
            "--url",
            &format!("https://{address}"),
        ])
        .env("HERALD_CA_FILE", &ca_file)
        .output()
        .await
        .unwrap();
    assert!(
        drained.status.success(),
        "herald drain: {}",
        String::from_utf8_lossy(&drained.stderr)
    );
    assert!(String::from_utf8_lossy(&drained.stdout).contains("draining"));
    let close = next_json(&mut old).await;
    assert_eq!(close["code"], "server_draining", "{close}");
    let status = child.exits_within(PATIENCE).await;
    assert!(status.success(), "a drained server exits cleanly: {status}");
}

#[test]
fn a_missing_or_mismatched_key_fails_the_start_with_a_clear_message() {
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = files(dir.path());
    let first = ca.issue("first");
    let other = ca.issue("other");
    std::fs::write(&cert, &first.cert_pem).unwrap();
    std::fs::write(&key, &other.key_pem).unwrap();
    let config = |cert: &Path, key: &Path| {
        let mut config = herald::Config::default_config();
        config.tls.cert_file = cert.to_owned();
        config.tls.key_file = key.to_owned();
        config
    };
    let error = herald::Herald::new(config(&cert, &key)).unwrap_err();
    assert!(
        format!("{error:#}").contains("do not make a certificate and its key"),
        "{error:#}"
    );
    let error = herald::Herald::new(config(&cert, &dir.path().join("absent.pem"))).unwrap_err();
    assert!(format!("{error:#}").contains("tls.key_file"), "{error:#}");
    let mut half = herald::Config::default_config();
    half.tls.cert_file = cert.clone();
    assert!(half.validate().is_err(), "a certificate without a key is refused");
}
