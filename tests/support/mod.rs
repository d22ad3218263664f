//! Test harness: the real server on an ephemeral port, real WebSocket and
//! HTTP clients.
#![allow(dead_code)] // each test binary uses its own part of the harness

pub mod nats_server;
pub mod proxy;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use herald::{Config, Herald};
use herald_broker::protocol::{decode_event, Encoding, ServerEvent};
use herald_broker::{ApiKeyConfig, Broker};
use herald_gateway::DisconnectCounters;
use serde_json::Value;
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Seconds since the Unix epoch.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// One base64url part of a JWT.
pub fn encode_part(value: &Value) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(value.to_string())
}

/// An HS256 JWT, built by hand (HMAC over the base64url parts),
/// independently of Herald's verifier.
pub fn hs256(claims: &Value, secret: &[u8]) -> String {
    use base64::Engine;
    use hmac::Mac;
    let signing_input = format!(
        "{}.{}",
        encode_part(&serde_json::json!({"alg": "HS256", "typ": "JWT"})),
        encode_part(claims)
    );
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret).unwrap();
    mac.update(signing_input.as_bytes());
    format!(
        "{signing_input}.{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
    )
}

pub const PUBLISHER_KEY: &str = "test-publisher-key-0123456789";
pub const NEWS_ONLY_KEY: &str = "test-news-only-key-0123456789";

/// How long a test waits for any one event before failing.
pub const PATIENCE: Duration = Duration::from_secs(10);

pub struct Server {
    pub address: SocketAddr,
    /// Where NATS clients connect (an ephemeral port too).
    pub nats_address: Option<SocketAddr>,
    /// What `GET /v1/quic` says: the WebTransport URL (an ephemeral UDP
    /// port) and the generated certificate's hash.
    pub quic: Option<Arc<herald_quic::QuicEndpoint>>,
    /// The server's broker, to read its counters.
    pub broker: Arc<Broker>,
    /// How many connections ended, per reason.
    pub disconnects: Arc<DisconnectCounters>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl Server {
    /// Starts Herald with the defaults, two API keys, anonymous
    /// subscribing to every subject (what most tests of delivery use), and
    /// `adjust` applied.
    pub async fn start(adjust: impl FnOnce(&mut Config)) -> Server {
        Server::start_default(|config| {
            config.auth.anonymous_subscribe = vec![">".into()];
            adjust(config);
        })
        .await
    }

    /// Starts Herald with the defaults as shipped, two API keys, and
    /// `adjust` applied.
    pub async fn start_default(adjust: impl FnOnce(&mut Config)) -> Server {
        let mut config = Config::default_config();
        config.auth.api_keys = vec![
            ApiKeyConfig {
                key: PUBLISHER_KEY.into(),
                publish: vec![">".into()],
                subscribe: vec![">".into()],
                max_commands_per_second: None,
            },
            ApiKeyConfig {
                key: NEWS_ONLY_KEY.into(),
                publish: vec!["news.>".into()],
                subscribe: vec!["news.>".into()],
                max_commands_per_second: None,
            },
        ];
        config.nats.listen = "127.0.0.1:0".parse().unwrap();
        config.quic.listen = "127.0.0.1:0".parse().unwrap();
        adjust(&mut config);
        let mut herald = Herald::new(config).expect("a valid test configuration");
        let nats_address = herald.bind_nats().await.expect("a NATS port");
        let quic = herald.bind_quic().await.expect("a UDP port");
        let (broker, disconnects) = (herald.broker().clone(), herald.disconnects().clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(herald.run(listener, async move {
            let _ = stopped.await;
        }));
        Server {
            address,
            nats_address,
            quic,
            broker,
            disconnects,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub async fn dev() -> Server {
        Server::start(herald::open_for_development).await
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }

    /// Waits for `run` to return on its own (after a drain); false if it
    /// has not within `within`.
    pub async fn exited_within(&mut self, within: Duration) -> bool {
        let task = self.task.take().expect("not waited for yet");
        match tokio::time::timeout(within, task).await {
            Ok(result) => {
                result.unwrap().unwrap();
                true
            }
            Err(_) => false,
        }
    }

    /// Triggers graceful shutdown and waits for `run` to return.
    pub async fn shutdown(mut self) {
        let _ = self.stop.take().unwrap().send(());
        let task = self.task.take().unwrap();
        tokio::time::timeout(Duration::from_secs(15), task)
            .await
            .expect("shutdown within its grace period")
            .unwrap()
            .unwrap();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

pub type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A WebSocket client speaking the protocol in one encoding.
pub struct Client {
    pub socket: Socket,
    pub encoding: Encoding,
}

impl Client {
    pub async fn connect(server: &Server) -> Client {
        Client::connect_with(server, Encoding::Json, None).await
    }

    pub async fn connect_with(server: &Server, encoding: Encoding, token: Option<&str>) -> Client {
        let url = match token {
            Some(token) => format!("ws://{}/ws?token={token}", server.address),
            None => format!("ws://{}/ws", server.address),
        };
        let mut request = url.into_client_request().unwrap();
        if encoding == Encoding::MsgPack {
            request.headers_mut().insert(
                "sec-websocket-protocol",
                HeaderValue::from_static("herald.msgpack"),
            );
        }
        let (socket, response) = tokio_tungstenite::connect_async(request)
            .await
            .expect("websocket connects");
        if encoding == Encoding::MsgPack {
            assert_eq!(response.headers()["sec-websocket-protocol"], "herald.msgpack");
        }
        Client { socket, encoding }
    }

    /// Connects offering the subprotocols `offered` (comma-separated);
    /// asserts the server chose `chosen`, whose encoding the client speaks.
    pub async fn connect_offering(server: &Server, offered: &str, chosen: &str) -> Client {
        let mut request = format!("ws://{}/ws", server.address)
            .into_client_request()
            .unwrap();
        request
            .headers_mut()
            .insert("sec-websocket-protocol", HeaderValue::from_str(offered).unwrap());
        let (socket, response) = tokio_tungstenite::connect_async(request)
            .await
            .expect("websocket connects");
        assert_eq!(response.headers()["sec-websocket-protocol"], chosen);
        let encoding = if chosen.starts_with("herald.msgpack") {
            Encoding::MsgPack
        } else {
            Encoding::Json
        };
        Client { socket, encoding }
    }

    /// Connects to `path` (with its query) with extra request headers.
    pub async fn connect_to(server: &Server, path: &str, headers: &[(&str, &str)]) -> Client {
        let mut request = format!("ws://{}{path}", server.address)
            .into_client_request()
            .unwrap();
        for (name, value) in headers {
            request.headers_mut().insert(
                tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        let (socket, _) = tokio_tungstenite::connect_async(request)
            .await
            .expect("the upgrade is accepted, refusals come after it");
        Client {
            socket,
            encoding: Encoding::Json,
        }
    }

    /// Reads a refusal to its end: the `err` event's code, then the close
    /// frame's code and reason (which must repeat the `err` code).
    pub async fn refusal(&mut self) -> (String, u16) {
        let ServerEvent::Err { id: None, code, .. } = self.next_event().await else {
            panic!("a refusal starts with an err event without id");
        };
        let (close, reason) = self.close_frame().await;
        assert_eq!(reason, code, "the close reason repeats the err code");
        (code, close)
    }

    /// Sends a command given as JSON, in this client's encoding.
    pub async fn send(&mut self, command: Value) {
        let frame = match self.encoding {
            Encoding::MsgPack => Message::binary(rmp_serde::to_vec_named(&command).unwrap()),
            _ => Message::text(command.to_string()),
        };
        self.socket.send(frame).await.expect("send");
    }

    pub async fn send_raw(&mut self, frame: Message) {
        self.socket.send(frame).await.expect("send");
    }

    /// The next protocol event, skipping pings.
    pub async fn next_event(&mut self) -> ServerEvent {
        // One deadline for the event, not per frame: heartbeats alone must
        // not keep a test waiting for ever.
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let frame = tokio::time::timeout_at(deadline, self.socket.next())
                .await
                .expect("an event within the test's patience")
                .expect("socket open")
                .expect("socket healthy");
            match frame {
                Message::Text(text) => {
                    return decode_event(Encoding::Json, text.as_bytes()).expect("valid event")
                }
                Message::Binary(binary) => {
                    return decode_event(Encoding::MsgPack, &binary).expect("valid event")
                }
                Message::Ping(_) | Message::Pong(_) => continue,
                other => panic!("expected an event, got {other:?}"),
            }
        }
    }

    /// Subscribes and waits for the ack.
    pub async fn subscribe(&mut self, subject: &str, since: Option<&str>) {
        let mut command = serde_json::json!({"op": "sub", "id": 1, "subject": subject});
        if let Some(since) = since {
            command["since"] = since.into();
        }
        self.send(command).await;
        match self.next_event().await {
            ServerEvent::Ack { id: Some(1), .. } => {}
            other => panic!("expected the sub ack, got {other:?}"),
        }
    }

    /// Reads the raw connection to its end, bypassing the WebSocket client
    /// (which would answer pings with pongs, and fail writing them to a
    /// closed connection before handing over what the server sent last).
    /// Returns every server frame as (opcode, payload).
    pub async fn raw_frames_to_the_end(&mut self) -> Vec<(u8, Vec<u8>)> {
        let MaybeTlsStream::Plain(tcp) = self.socket.get_mut() else {
            panic!("plain TCP")
        };
        let mut bytes = Vec::new();
        tokio::time::timeout(PATIENCE, tokio::io::AsyncReadExt::read_to_end(tcp, &mut bytes))
            .await
            .expect("the server closed the connection within the test's patience")
            .expect("read");
        let mut frames = Vec::new();
        let mut rest = &bytes[..];
        while rest.len() >= 2 {
            // Server frames are unmasked; lengths up to 64 KiB here.
            let opcode = rest[0] & 0x0f;
            let (length, header) = match rest[1] & 0x7f {
                126 => (u16::from_be_bytes([rest[2], rest[3]]) as usize, 4),
                127 => panic!("no test frame is that large"),
                length => (length as usize, 2),
            };
            frames.push((opcode, rest[header..header + length].to_vec()));
            rest = &rest[header + length..];
        }
        frames
    }

    /// Reads until the server closes; returns the close code and reason.
    pub async fn close_frame(&mut self) -> (u16, String) {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let frame = tokio::time::timeout_at(deadline, self.socket.next())
                .await
                .expect("closed within the test's patience");
            match frame {
                Some(Ok(Message::Close(Some(frame)))) => {
                    return (frame.code.into(), frame.reason.to_string())
                }
                Some(Ok(Message::Close(None))) | None => return (0, String::new()),
                Some(Ok(_)) => continue,
                Some(Err(error)) => panic!("socket failed before a close frame: {error}"),
            }
        }
    }
}

/// GETs `path` from the server, with `credential` as the bearer if given,
/// and reads the JSON body (whatever the status).
pub async fn get_json(server: &Server, path: &str, credential: Option<&str>) -> Value {
    let mut request = reqwest::Client::new().get(server.url(path));
    if let Some(credential) = credential {
        request = request.bearer_auth(credential);
    }
    request.send().await.unwrap().json().await.unwrap()
}

/// Publishes over the HTTP API with the publisher key; returns the position.
pub async fn publish(server: &Server, subject: &str, data: Value) -> String {
    publish_to(&server.address.to_string(), Some(PUBLISHER_KEY), subject, data).await
}

/// Publishes to the server at `address`, with `key` if given; must succeed;
/// returns the position.
pub async fn publish_to(address: &str, key: Option<&str>, subject: &str, data: Value) -> String {
    let mut request = reqwest::Client::new()
        .post(format!("http://{address}/v1/publish"))
        .json(&serde_json::json!({"subject": subject, "data": data}));
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    body["pos"].as_str().unwrap().to_owned()
}

/// `/metrics` as text (for a server with `admin.public_metrics`).
pub async fn scrape_text(server: &Server) -> String {
    let response = reqwest::get(server.url("/metrics")).await.unwrap();
    assert_eq!(response.status(), 200);
    response.text().await.unwrap()
}

/// The value of the sample written exactly `name{labels}` in `text`.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map(|value| value.parse().unwrap())
}

/// Lets this process hold many sockets (both ends of each connection).
pub fn raise_open_file_limit() {
    let _ = rlimit::increase_nofile_limit(65_536);
}

/// One Server-Sent Event as a client parses it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SseEvent {
    pub id: Option<String>,
    /// `event:`; empty for a comment-only block (a heartbeat).
    pub event: String,
    pub data: String,
    pub retry: Option<u64>,
    pub comment: bool,
}

impl SseEvent {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.data).expect("event data is JSON")
    }
}

/// A streaming `text/event-stream` reader, as `EventSource` reads one.
pub struct SseClient {
    response: reqwest::Response,
    buffer: String,
}

impl SseClient {
    /// `GET /sse?<query>`, with `Last-Event-ID` when given; must be a 200
    /// event stream.
    pub async fn connect(server: &Server, query: &str, last_event_id: Option<&str>) -> SseClient {
        let response = SseClient::request(server, query, last_event_id).await;
        assert_eq!(response.status(), 200, "{query}");
        let headers = response.headers();
        assert_eq!(headers["content-type"], "text/event-stream");
        assert_eq!(headers["cache-control"], "no-cache");
        assert_eq!(headers["x-accel-buffering"], "no");
        SseClient {
            response,
            buffer: String::new(),
        }
    }

    pub async fn request(server: &Server, query: &str, last_event_id: Option<&str>) -> reqwest::Response {
        let headers: Vec<(&str, &str)> = last_event_id
            .map(|id| ("last-event-id", id))
            .into_iter()
            .collect();
        SseClient::request_with(server, query, &headers).await
    }

    /// `GET /sse?<query>` as `EventSource` sends it (`Accept:
    /// text/event-stream`), with extra headers.
    pub async fn request_with(server: &Server, query: &str, headers: &[(&str, &str)]) -> reqwest::Response {
        let mut request = reqwest::Client::new()
            .get(server.url(&format!("/sse?{query}")))
            .header("accept", "text/event-stream");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        tokio::time::timeout(PATIENCE, request.send())
            .await
            .expect("the server answers")
            .unwrap()
    }

    /// A stream from a response already checked.
    pub fn from_response(response: reqwest::Response) -> SseClient {
        SseClient {
            response,
            buffer: String::new(),
        }
    }

    /// The next event, or `None` once the server ended the stream.
    pub async fn next(&mut self) -> Option<SseEvent> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                return Some(parse_sse_block(&block));
            }
            let chunk = tokio::time::timeout(PATIENCE, self.response.chunk())
                .await
                .expect("an event within the test's patience")
                .ok()??;
            self.buffer
                .push_str(std::str::from_utf8(&chunk).expect("UTF-8 stream"));
        }
    }

    /// The next event that is not a heartbeat or retry advice.
    pub async fn next_event(&mut self) -> Option<SseEvent> {
        let waiting = async {
            loop {
                let event = self.next().await?;
                if !event.event.is_empty() {
                    return Some(event);
                }
            }
        };
        // Heartbeats alone must not keep a test waiting for ever.
        tokio::time::timeout(PATIENCE, waiting)
            .await
            .expect("an event within the test's patience")
    }
}

fn parse_sse_block(block: &str) -> SseEvent {
    let mut event = SseEvent::default();
    let mut data = Vec::new();
    for line in block.lines() {
        if line.starts_with(':') {
            event.comment = true;
        } else if let Some((field, value)) = line.split_once(": ").or_else(|| line.split_once(':')) {
            match field {
                "id" => event.id = Some(value.to_owned()),
                "event" => event.event = value.to_owned(),
                "data" => data.push(value),
                "retry" => event.retry = value.parse().ok(),
                other => panic!("unknown field {other:?} in {block:?}"),
            }
        }
    }
    event.data = data.join("\n");
    event
}

/// POSTs `body`, as is, to the HTTP API's publish endpoint with the
/// publisher key.
pub async fn post_publish_body(client: &reqwest::Client, server: &Server, body: String) -> reqwest::Response {
    client
        .post(server.url("/v1/publish"))
        .bearer_auth(PUBLISHER_KEY)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap()
}

/// Publishes a batch over the HTTP API with the publisher key; returns the
/// positions.
pub async fn publish_batch(server: &Server, messages: &[(String, Value)]) -> Vec<String> {
    let messages: Vec<Value> = messages
        .iter()
        .map(|(subject, data)| serde_json::json!({"subject": subject, "data": data}))
        .collect();
    let response = reqwest::Client::new()
        .post(server.url("/v1/publish"))
        .bearer_auth(PUBLISHER_KEY)
        .json(&serde_json::json!({ "messages": messages }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    body["positions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap().to_owned())
        .collect()
}

/// Reads one HTTP/1.1 response from a raw connection: its status and body
/// (by `content-length`).
pub async fn read_raw_response(tcp: &mut TcpStream) -> (u16, Vec<u8>) {
    use tokio::io::AsyncReadExt;
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(PATIENCE, tcp.read(&mut byte))
            .await
            .expect("a response within the test's patience")
            .expect("read");
        assert_eq!(
            read,
            1,
            "the connection closed before a response: {:?}",
            String::from_utf8_lossy(&head)
        );
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).expect("an ASCII head");
    let status = head[9..12].parse().expect("a status code");
    let length = head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse::<usize>().unwrap())
        })
        .unwrap_or(0);
    let mut body = vec![0; length];
    tcp.read_exact(&mut body).await.expect("the whole body");
    (status, body)
}

/// Whether the server closes `tcp` within `within` (reading and discarding
/// anything it still sends).
pub async fn closed_within(tcp: &mut TcpStream, within: Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let mut sink = [0u8; 4096];
    tokio::time::timeout(within, async {
        loop {
            match tcp.read(&mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

/// The `herald` binary of this build.
pub const HERALD: &str = env!("CARGO_BIN_EXE_herald");

/// The server process, killed if the test ends before it exits by itself.
pub struct Running(pub std::process::Child);

impl Running {
    /// Waits for the process to exit by itself; its status. Fails the test
    /// if it is still running after `within`.
    pub async fn exits_within(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = std::time::Instant::now() + within;
        loop {
            if let Some(status) = self.0.try_wait().unwrap() {
                return status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the server exits within {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Starts `herald serve` on an ephemeral port with `arguments` and
/// `environment`; returns the process, its address, and its log up to the
/// line that names the address.
pub fn serve(arguments: &[&str], environment: &[(&str, &str)]) -> (Running, String, Vec<String>) {
    let mut child = Running(
        std::process::Command::new(HERALD)
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(arguments)
            .env("RUST_LOG", "info")
            .env("HERALD_NATS__LISTEN", "127.0.0.1:0")
            .env("HERALD_QUIC__LISTEN", "127.0.0.1:0")
            .envs(environment.iter().copied())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    // The log is read on its own thread, so waiting for a line can time out;
    // it keeps draining after nobody listens, so the server never writes
    // into a closed pipe.
    let (lines, log) = std::sync::mpsc::channel();
    let stderr = child.0.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufRead::lines(std::io::BufReader::new(stderr)).map_while(Result::ok) {
            let _ = lines.send(line);
        }
    });
    let mut seen = Vec::new();
    loop {
        let line = log
            .recv_timeout(Duration::from_secs(30))
            .expect("the server logs its address within 30 s");
        if let Some(rest) = line.split("address=").nth(1) {
            let address = rest.split_whitespace().next().unwrap().to_owned();
            seen.push(line);
            return (child, address, seen);
        }
        seen.push(line);
    }
}

/// A raw NATS connection to the server's NATS listener: what the server
/// writes, line by line, where a client library would hide it.
pub struct RawNats {
    reader: tokio::io::BufReader<tokio::net::tcp::OwnedReadHalf>,
    writer: tokio::net::tcp::OwnedWriteHalf,
}

impl RawNats {
    pub async fn connect(server: &Server, connect: &str) -> RawNats {
        let tcp = tokio::net::TcpStream::connect(server.nats_address.unwrap())
            .await
            .unwrap();
        let (read, writer) = tcp.into_split();
        let mut raw = RawNats {
            reader: tokio::io::BufReader::new(read),
            writer,
        };
        let info = raw.line().await;
        assert!(info.starts_with("INFO {"), "{info}");
        if !connect.is_empty() {
            raw.send(&format!("CONNECT {connect}\r\n")).await;
        }
        raw
    }

    pub async fn send(&mut self, bytes: &str) {
        tokio::io::AsyncWriteExt::write_all(&mut self.writer, bytes.as_bytes())
            .await
            .unwrap();
    }

    pub async fn line(&mut self) -> String {
        let mut line = String::new();
        tokio::time::timeout(
            PATIENCE,
            tokio::io::AsyncBufReadExt::read_line(&mut self.reader, &mut line),
        )
        .await
        .expect("a line in time")
        .unwrap();
        line
    }

    /// The next `n` bytes, whatever they hold.
    pub async fn exactly(&mut self, n: usize) -> Vec<u8> {
        let mut bytes = vec![0; n];
        tokio::time::timeout(
            PATIENCE,
            tokio::io::AsyncReadExt::read_exact(&mut self.reader, &mut bytes),
        )
        .await
        .expect("the bytes in time")
        .unwrap();
        bytes
    }

    /// Everything until the server closes.
    pub async fn rest(&mut self) -> String {
        let mut rest = Vec::new();
        tokio::time::timeout(
            PATIENCE,
            tokio::io::AsyncReadExt::read_to_end(&mut self.reader, &mut rest),
        )
        .await
        .expect("the server closes in time")
        .unwrap();
        String::from_utf8_lossy(&rest).into_owned()
    }
}
