//! Minimal clients for every target, sharing one shape: connect, subscribe,
//! receive payloads; or publish payloads. Each is as thin as its protocol
//! allows, so that what the numbers compare is the servers.
//!
//! Payloads are text: `ts=<micros> n=<sequence> <padding>`. Herald carries
//! it as a JSON string in `data`; NATS carries the bytes as they are. The
//! receiver finds `ts=` and `n=` by scanning, in every encoding.
//!
//! Herald's one-way transports (SSE, long polling) subscribe over plain
//! HTTP/1.1 written here by hand, as thin as the other clients; their
//! publisher is a Herald WebSocket connection, so only the delivery side
//! differs from the WebSocket targets.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};

use anyhow::{bail, Context};
use bytes::{Buf, BytesMut};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use herald_quic::client::QuicClient;
use herald_quic::QuicEndpoint;

use crate::http_subscriber::HttpSubscriber;
use crate::tls::ClientStream;

/// What a run is measured against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Target {
    /// Herald's WebSocket gateway, JSON frames, several events per frame
    /// (`herald.json.batch`, as the JavaScript client asks).
    HeraldJson,
    /// Herald's WebSocket gateway, MessagePack frames, several events per
    /// frame (`herald.msgpack.batch`).
    HeraldMsgPack,
    /// nats-server, NATS protocol over TCP.
    NatsTcp,
    /// nats-server, NATS protocol over its WebSocket listener.
    NatsWebSocket,
    /// Socket.IO 4 on Node.js (WebSocket transport), rooms as subjects.
    SocketIo,
    /// Pushpin (WebSocket, channels as subjects) in front of a minimal
    /// origin app; publishing through its HTTP control API.
    Pushpin,
    /// Herald's Server-Sent Events gateway (one stream per subscriber).
    HeraldSse,
    /// Herald's long-polling gateway (a poll loop per subscriber).
    HeraldLongPoll,
    /// Herald's WebSocket gateway, JSON frames, every connection with a
    /// user token (JWT): what permissions checked at subscribe cost. Not
    /// in the standard set; `make bench-auth` compares it with
    /// `herald-ws-json`.
    HeraldJsonToken,
    /// Herald's WebTransport gateway (HTTP/3 over QUIC), JSON frames, one
    /// QUIC endpoint per subscriber, as browsers have. Not in the standard
    /// set; `make bench-quic` compares it with `herald-ws-json`.
    HeraldWebTransport,
    /// Herald's WebSocket gateway, JSON frames, one event per frame (the
    /// `herald.json` subprotocol). Not in the standard set; `make
    /// bench-batch` compares it with `herald-ws-json`.
    HeraldJsonSingle,
    /// Herald's WebSocket gateway over TLS (WSS, rustls on both ends),
    /// JSON frames, several events per frame: what a browser on an `https`
    /// page uses. Not in the standard set; `make bench-quic` compares it
    /// with `herald-ws-json` and WebTransport, which is always encrypted.
    HeraldJsonTls,
    /// Herald's NATS listener, with the same NATS client as `nats-tcp`
    /// (the publisher presents the bench's API key in CONNECT). Not in the
    /// standard set: `make bench-nats` compares the listener with
    /// nats-server using async-nats; this target is for single runs, such
    /// as what an idle NATS connection costs (`herald-bench idle --target
    /// herald-nats`).
    HeraldNats,
}

/// The HS256 secret every Herald the load generator starts accepts tokens
/// signed with.
pub const BENCH_JWT_SECRET: &str = "herald-bench-shared-secret-0123456789";

/// The API key of the load generator's publishers (and its churn client):
/// a backend's key carrying its own command rate, so that a publisher
/// sending flat out is not closed for flooding while every other client
/// keeps the WebSocket gateway's default limit.
pub const BENCH_API_KEY: &str = "herald-bench-publisher-key-0123456789";

/// The `auth.api_keys` every Herald the load generator starts accepts, as
/// an environment value: [`BENCH_API_KEY`], allowed everything, with a
/// command rate no publisher here reaches.
pub const BENCH_API_KEYS_ENV: &str = r#"[{key="herald-bench-publisher-key-0123456789", publish=[">"], subscribe=[">"], max_commands_per_second=100000000}]"#;

/// A day-long user token allowing everything, signed with
/// [`BENCH_JWT_SECRET`].
static BENCH_TOKEN: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    let expires = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("the clock is past 1970")
        .as_secs()
        + 24 * 60 * 60;
    let claims = serde_json::json!({
        "sub": "bench",
        "exp": expires,
        "herald": {"pub": {"allow": [">"]}, "sub": {"allow": [">"], "deny": ["private.>"]}},
    });
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(BENCH_JWT_SECRET.as_bytes()),
    )
    .expect("HS256 signing cannot fail")
});

impl Target {
    pub const ALL: [Target; 8] = [
        Target::HeraldJson,
        Target::HeraldMsgPack,
        Target::HeraldSse,
        Target::HeraldLongPoll,
        Target::NatsTcp,
        Target::NatsWebSocket,
        Target::SocketIo,
        Target::Pushpin,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Target::HeraldJson => "herald-ws-json",
            Target::HeraldMsgPack => "herald-ws-msgpack",
            Target::NatsTcp => "nats-tcp",
            Target::NatsWebSocket => "nats-ws",
            Target::SocketIo => "socketio",
            Target::Pushpin => "pushpin",
            Target::HeraldSse => "herald-sse",
            Target::HeraldLongPoll => "herald-longpoll",
            Target::HeraldJsonToken => "herald-ws-json-token",
            Target::HeraldWebTransport => "herald-wt-json",
            Target::HeraldJsonSingle => "herald-ws-json-single",
            Target::HeraldNats => "herald-nats",
            Target::HeraldJsonTls => "herald-wss-json",
        }
    }

    /// Whether this target is one of Herald's own gateways.
    pub fn is_herald(self) -> bool {
        matches!(
            self,
            Target::HeraldJson
                | Target::HeraldMsgPack
                | Target::HeraldSse
                | Target::HeraldLongPoll
                | Target::HeraldJsonToken
                | Target::HeraldWebTransport
                | Target::HeraldJsonSingle
                | Target::HeraldNats
                | Target::HeraldJsonTls
        )
    }

    /// How long a subscription takes to hold after the server confirmed it.
    /// Pushpin applies a GRIP subscription after it has passed the origin's
    /// reply (our confirmation) on, so a publish right after can miss a
    /// subscriber: the smoke run's fixed-rate check lost the first message
    /// now and then without this pause. Every other server confirms a
    /// subscription once it holds.
    pub fn subscription_settle_time(self) -> std::time::Duration {
        match self {
            Target::Pushpin => std::time::Duration::from_millis(300),
            _ => std::time::Duration::ZERO,
        }
    }

    /// Whether `scenario` applies. A one-way transport has no
    /// subscribe/unsubscribe on an open connection, so no churn; long
    /// polling is measured for fan-out to pollers and idle waiting polls.
    pub fn runs(self, scenario: &str) -> bool {
        !matches!(
            (self, scenario),
            (Target::HeraldSse, "churn") | (Target::HeraldLongPoll, "churn" | "latency")
        )
    }

    /// The largest fan-out this target is run at, where smaller than the
    /// standard set's: Socket.IO's single Node thread and Pushpin's
    /// per-connection delivery pace fall so far behind a flat-out publisher
    /// at 10 000 subscribers that one run takes minutes.
    ///
    /// Long polling is measured with 100 pollers: each delivery there is an
    /// HTTP request and response.
    pub fn max_fanout_subscribers(self) -> Option<usize> {
        match self {
            Target::SocketIo | Target::Pushpin => Some(1_000),
            Target::HeraldLongPoll => Some(100),
            _ => None,
        }
    }

    pub fn parse(name: &str) -> anyhow::Result<Target> {
        Target::ALL
            .into_iter()
            .chain([
                Target::HeraldJsonToken,
                Target::HeraldWebTransport,
                Target::HeraldJsonSingle,
                Target::HeraldNats,
                Target::HeraldJsonTls,
            ])
            .find(|target| target.name() == name)
            .with_context(|| format!("unknown target {name:?}"))
    }
}

/// Builds a payload of `size` bytes carrying its send time and sequence.
pub fn payload(sent_micros: u64, sequence: u64, size: usize) -> String {
    let head = format!("ts={sent_micros} n={sequence} ");
    let padding = size.saturating_sub(head.len() + 2); // the JSON quotes
    format!("{head}{}", "x".repeat(padding))
}

/// `(ts, n)` from a frame that contains a payload; `None` for other frames.
pub fn stamp_of(frame: &[u8]) -> Option<(u64, u64)> {
    let ts = number_after(frame, b"ts=")?;
    let n = number_after(frame, b" n=")?;
    Some((ts, n))
}

/// The number after `key`, which ends with `=`.
fn number_after(frame: &[u8], key: &[u8]) -> Option<u64> {
    // A vectorised search for the `=`: the stamp lies after a Herald
    // event's header fields, where a NATS payload starts with it, and the
    // client must not pay more per event for that.
    let start = memchr::memchr_iter(b'=', frame).find(|at| frame[..=*at].ends_with(key))? + 1;
    let digits = frame[start..].iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&frame[start..start + digits])
        .ok()?
        .parse()
        .ok()
}

/// The `Content-Length` of an HTTP response head, if it has one.
pub(crate) fn content_length(head: &str) -> Option<usize> {
    head.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.eq_ignore_ascii_case("content-length")
            .then(|| value.trim().parse().ok())?
    })
}

/// What a subscriber receives.
#[derive(Debug)]
pub enum Received {
    /// A message carrying a load-generator payload ([`payload`]): its
    /// stamp, read where it arrived, without copying the message.
    Message {
        sent_micros: u64,
        sequence: u64,
    },
    /// Herald told the subscriber it missed messages.
    Gap,
    /// The answer to [`Connection::request_sync`].
    Pong,
    /// Anything else (acks, pings, server info).
    Other,
    Closed,
}

type WebSocket = WebSocketStream<ClientStream>;

/// One connection to a target, able to subscribe, receive and publish.
#[derive(Debug)]
pub enum Connection {
    Herald {
        socket: WebSocket,
        msgpack: bool,
        /// Events of a frame not handed out yet (a batching subprotocol
        /// packs several into one).
        unread: VecDeque<Received>,
    },
    NatsTcp {
        stream: TcpStream,
        parser: NatsParser,
    },
    NatsWebSocket {
        socket: WebSocket,
        parser: NatsParser,
    },
    SocketIo {
        socket: WebSocket,
    },
    /// A client WebSocket through Pushpin.
    Pushpin {
        socket: WebSocket,
    },
    /// A Herald SSE stream (opened by `subscribe`).
    HeraldSse(Box<HttpSubscriber>),
    /// A Herald long-poll loop (started by `subscribe`).
    HeraldLongPoll(Box<HttpSubscriber>),
    /// Pushpin's HTTP control API, which answers one request at a time on a
    /// connection (a pipelined request is refused), so the publisher holds
    /// at most one request in flight.
    PushpinPublisher(Box<PushpinPublisher>),
    /// A Herald WebTransport session.
    HeraldWebTransport(Box<QuicClient>),
}

/// Every WebSocket the load generator opens reads at most 16 KiB at a time.
/// tungstenite zeroes its whole read buffer before each read (128 KiB by
/// default): at one small event per read that memset was 15% of the
/// machine's samples in a fixed-rate run to 1 000 subscribers, spent by the
/// load generator on the cores the servers measured here share. 16 KiB is
/// what the NATS client below reads at most, too.
pub(crate) fn websocket_config() -> WebSocketConfig {
    WebSocketConfig::default().read_buffer_size(READ_CHUNK)
}

/// The most one read of a subscriber's socket takes.
const READ_CHUNK: usize = 16 * 1024;

/// Opens a TCP connection from `source` (a 127.0.0.x address, so that many
/// thousands of connections do not exhaust one address's ports).
async fn tcp_from(source: Option<IpAddr>, server: SocketAddr) -> anyhow::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    // Close with a reset: tens of thousands of closed connections per run
    // left in TIME_WAIT make the next run's binds crawl (the kernel searches
    // ever longer for a free port).
    socket.set_zero_linger()?;
    if let Some(source) = source {
        socket.bind(SocketAddr::new(source, 0))?;
    }
    Ok(socket.connect(server).await?)
}

impl Connection {
    pub async fn open(
        target: Target,
        server: SocketAddr,
        source: Option<IpAddr>,
    ) -> anyhow::Result<Connection> {
        Connection::open_as(target, server, source, false).await
    }

    /// Like [`Connection::open`]; a Herald WebSocket connection `as_backend`
    /// presents [`BENCH_API_KEY`] (a publisher, the churn client).
    pub async fn open_as(
        target: Target,
        server: SocketAddr,
        source: Option<IpAddr>,
        as_backend: bool,
    ) -> anyhow::Result<Connection> {
        if target == Target::HeraldWebTransport {
            let endpoint = quic_endpoint(server).await?;
            let client = QuicClient::connect(&endpoint.url, &endpoint.certificate_hashes).await?;
            return Ok(Connection::HeraldWebTransport(Box::new(client)));
        }
        let stream = tcp_from(source, server).await?;
        stream.set_nodelay(true)?;
        match target {
            Target::HeraldJson
            | Target::HeraldMsgPack
            | Target::HeraldJsonToken
            | Target::HeraldJsonSingle
            | Target::HeraldJsonTls => {
                let msgpack = target == Target::HeraldMsgPack;
                let (scheme, stream) = match target {
                    Target::HeraldJsonTls => (
                        "wss",
                        ClientStream::Tls(Box::new(crate::tls::connect(stream, server).await?)),
                    ),
                    _ => ("ws", ClientStream::Plain(stream)),
                };
                let url = match target {
                    _ if as_backend => format!("{scheme}://{server}/ws?token={BENCH_API_KEY}"),
                    Target::HeraldJsonToken => format!("{scheme}://{server}/ws?token={}", *BENCH_TOKEN),
                    _ => format!("{scheme}://{server}/ws"),
                };
                let mut request = url.into_client_request()?;
                let protocol = match target {
                    Target::HeraldMsgPack => "herald.msgpack.batch",
                    Target::HeraldJsonSingle => "herald.json",
                    _ => "herald.json.batch",
                };
                request
                    .headers_mut()
                    .insert("sec-websocket-protocol", HeaderValue::from_static(protocol));
                let (socket, response) =
                    tokio_tungstenite::client_async_with_config(request, stream, Some(websocket_config()))
                        .await?;
                if response.headers().get("sec-websocket-protocol")
                    != Some(&HeaderValue::from_static(protocol))
                {
                    bail!("the server did not choose the {protocol} subprotocol");
                }
                Ok(Connection::Herald {
                    socket,
                    msgpack,
                    unread: VecDeque::new(),
                })
            }
            Target::NatsTcp | Target::HeraldNats => {
                let mut connection = Connection::NatsTcp {
                    stream,
                    parser: NatsParser::default(),
                };
                let connect = if as_backend && target == Target::HeraldNats {
                    format!(
                        "CONNECT {{\"verbose\":false,\"pedantic\":false,\"echo\":false,\"auth_token\":\"{BENCH_API_KEY}\"}}\r\n"
                    )
                } else {
                    NATS_CONNECT.to_owned()
                };
                connection.send_raw(connect.as_bytes()).await?;
                Ok(connection)
            }
            Target::SocketIo => {
                let url = format!("ws://{server}/socket.io/?EIO=4&transport=websocket");
                let (socket, _) = tokio_tungstenite::client_async_with_config(
                    url,
                    ClientStream::Plain(stream),
                    Some(websocket_config()),
                )
                .await?;
                let mut connection = Connection::SocketIo { socket };
                // Engine.IO "open", then join the default namespace.
                connection.expect_text_prefix("0").await?;
                connection.send_raw(b"40").await?;
                connection.expect_text_prefix("40").await?;
                Ok(connection)
            }
            Target::Pushpin => {
                let (socket, _) = tokio_tungstenite::client_async_with_config(
                    format!("ws://{server}/ws"),
                    ClientStream::Plain(stream),
                    Some(websocket_config()),
                )
                .await?;
                Ok(Connection::Pushpin { socket })
            }
            Target::HeraldSse => Ok(Connection::HeraldSse(Box::new(HttpSubscriber::new(
                stream, server,
            )))),
            Target::HeraldLongPoll => Ok(Connection::HeraldLongPoll(Box::new(HttpSubscriber::new(
                stream, server,
            )))),
            Target::HeraldWebTransport => unreachable!("opened above"),
            Target::NatsWebSocket => {
                let (socket, _) = tokio_tungstenite::client_async_with_config(
                    format!("ws://{server}/"),
                    ClientStream::Plain(stream),
                    Some(websocket_config()),
                )
                .await?;
                let mut connection = Connection::NatsWebSocket {
                    socket,
                    parser: NatsParser::default(),
                };
                connection.send_raw(NATS_CONNECT.as_bytes()).await?;
                Ok(connection)
            }
        }
    }

    /// A connection to publish on: the one subscribers use, except for
    /// Pushpin, which takes publishes on its control API.
    pub async fn open_publisher(target: Target, server: &crate::Server) -> anyhow::Result<Connection> {
        match (target, server.publish_address) {
            (Target::Pushpin, Some(control)) => {
                let stream = tcp_from(None, control).await?;
                stream.set_nodelay(true)?;
                Ok(Connection::PushpinPublisher(Box::new(PushpinPublisher::new(
                    stream, control,
                ))))
            }
            (Target::Pushpin, None) => bail!("Pushpin started without a control address"),
            // One-way transports, and WebTransport: the publisher speaks
            // WebSocket JSON, so that only the delivery side differs.
            (Target::HeraldSse | Target::HeraldLongPoll | Target::HeraldWebTransport, _) => {
                Connection::open_as(Target::HeraldJson, server.address, None, true).await
            }
            _ => Connection::open_as(target, server.address, None, true).await,
        }
    }

    /// Reads text frames until one starts with `prefix` (Socket.IO, Pushpin).
    async fn expect_text_prefix(&mut self, prefix: &str) -> anyhow::Result<()> {
        let (Connection::SocketIo { socket } | Connection::Pushpin { socket }) = self else {
            bail!("not a Socket.IO or Pushpin connection")
        };
        loop {
            match socket.next().await {
                Some(Ok(Message::Text(text))) if text.starts_with(prefix) => return Ok(()),
                Some(Ok(Message::Text(text))) if text.as_str() == "2" => {
                    socket.send(Message::text("3")).await?
                }
                Some(Ok(_)) => {}
                _ => bail!("connection closed while waiting for {prefix:?}"),
            }
        }
    }

    async fn send_raw(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        match self {
            Connection::PushpinPublisher(_) => bail!("Pushpin's control API takes only publishes"),
            Connection::HeraldSse(_) | Connection::HeraldLongPoll(_) => {
                bail!("SSE and long-poll subscribers send no commands")
            }
            Connection::SocketIo { socket } | Connection::Pushpin { socket } => {
                socket
                    .send(Message::text(String::from_utf8(bytes.to_vec())?))
                    .await?
            }
            Connection::NatsTcp { stream, .. } => stream.write_all(bytes).await?,
            Connection::NatsWebSocket { socket, .. } => socket.send(Message::binary(bytes.to_vec())).await?,
            Connection::HeraldWebTransport(client) => client.send(bytes).await?,
            Connection::Herald { socket, msgpack, .. } => {
                let frame = if *msgpack {
                    let value: serde_json::Value = serde_json::from_slice(bytes)?;
                    Message::binary(rmp_serde::to_vec_named(&value)?)
                } else {
                    Message::text(String::from_utf8(bytes.to_vec())?)
                };
                socket.send(frame).await?;
            }
        }
        Ok(())
    }

    /// Subscribes and, where the protocol confirms, waits for it.
    pub async fn subscribe(&mut self, subject: &str, sid: u64) -> anyhow::Result<()> {
        match self {
            Connection::HeraldSse(subscriber) => subscriber.open_stream(subject).await,
            Connection::HeraldLongPoll(subscriber) => subscriber.start_polling(subject).await,
            Connection::SocketIo { .. } => {
                // Event with acknowledgement id 0; the server acks with "430[]".
                self.send_raw(format!(r#"420["sub","{subject}"]"#).as_bytes())
                    .await?;
                self.expect_text_prefix("430").await
            }
            Connection::Pushpin { .. } | Connection::PushpinPublisher(_) => {
                self.send_raw(format!("sub {subject}").as_bytes()).await?;
                self.expect_text_prefix(&format!("ok {subject}")).await
            }
            Connection::Herald { .. } | Connection::HeraldWebTransport(_) => {
                let command = format!(r#"{{"op":"sub","id":{sid},"subject":"{subject}"}}"#);
                self.send_raw(command.as_bytes()).await?;
                loop {
                    match self.receive_frame().await? {
                        Received::Other => return Ok(()),
                        Received::Closed => bail!("closed while subscribing"),
                        _ => {}
                    }
                }
            }
            _ => {
                // PING after SUB: the PONG proves the SUB was processed.
                self.send_raw(format!("SUB {subject} {sid}\r\nPING\r\n").as_bytes())
                    .await?;
                self.await_sync().await
            }
        }
    }

    pub async fn unsubscribe(&mut self, subject: &str, sid: u64) -> anyhow::Result<()> {
        match self {
            Connection::SocketIo { .. } => {
                self.send_raw(format!(r#"42["unsub","{subject}"]"#).as_bytes())
                    .await
            }
            Connection::Herald { .. } | Connection::HeraldWebTransport(_) => {
                self.send_raw(format!(r#"{{"op":"unsub","subject":"{subject}"}}"#).as_bytes())
                    .await
            }
            Connection::Pushpin { .. } | Connection::PushpinPublisher(_) => {
                self.send_raw(format!("unsub {subject}").as_bytes()).await
            }
            Connection::HeraldSse(_) | Connection::HeraldLongPoll(_) => {
                bail!("a one-way transport unsubscribes by closing")
            }
            _ => self.send_raw(format!("UNSUB {sid}\r\n").as_bytes()).await,
        }
    }

    /// Asks the server to answer once it has processed everything sent
    /// before: NATS `PING`, Herald `ping`, a Socket.IO event with an ack.
    /// Servers handle a connection's input in order, so the answer proves
    /// the earlier publishes were taken (routed and queued), not delivered.
    pub async fn request_sync(&mut self) -> anyhow::Result<()> {
        match self {
            Connection::PushpinPublisher(publisher) => publisher.send_pending().await,
            Connection::SocketIo { .. } => self.send_raw(br#"421["sync"]"#).await,
            Connection::Herald { .. } | Connection::HeraldWebTransport(_) => {
                self.send_raw(br#"{"op":"ping","id":1}"#).await
            }
            _ => self.send_raw(b"PING\r\n").await,
        }
    }

    /// Reads until the answer to one [`request_sync`](Self::request_sync).
    pub async fn await_sync(&mut self) -> anyhow::Result<()> {
        if let Connection::PushpinPublisher(publisher) = self {
            return publisher.await_answer().await;
        }
        loop {
            match self.receive_frame().await? {
                Received::Pong => return Ok(()),
                Received::Closed => bail!("closed before the server answered a sync"),
                _ => {}
            }
        }
    }

    /// Whether publishes wait in the client for the next
    /// [`request_sync`](Self::request_sync) (Pushpin: one HTTP request
    /// carries them all) rather than going out at once.
    pub fn holds_publishes(&self) -> bool {
        matches!(self, Connection::PushpinPublisher(_))
    }

    /// Publishes without waiting for any acknowledgement.
    pub async fn publish(&mut self, subject: &str, payload: &str) -> anyhow::Result<()> {
        match self {
            Connection::PushpinPublisher(publisher) => {
                publisher.queue(subject, payload);
                Ok(())
            }
            Connection::Pushpin { .. } => bail!("Pushpin clients publish through the control API"),
            Connection::SocketIo { .. } => {
                self.send_raw(format!(r#"42["pub","{subject}","{payload}"]"#).as_bytes())
                    .await
            }
            Connection::Herald { .. } | Connection::HeraldWebTransport(_) => {
                let command = format!(r#"{{"op":"pub","subject":"{subject}","data":"{payload}"}}"#);
                self.send_raw(command.as_bytes()).await
            }
            _ => {
                let command = format!("PUB {subject} {}\r\n{payload}\r\n", payload.len());
                self.send_raw(command.as_bytes()).await
            }
        }
    }

    /// Flushes buffered writes, waiting for the server where it can say so.
    pub async fn flush(&mut self) -> anyhow::Result<()> {
        match self {
            Connection::NatsTcp { stream, .. } => stream.flush().await?,
            // Requests (and QUIC writes) are written whole.
            Connection::PushpinPublisher(_)
            | Connection::HeraldSse(_)
            | Connection::HeraldLongPoll(_)
            | Connection::HeraldWebTransport(_) => {}
            Connection::NatsWebSocket { socket, .. }
            | Connection::Herald { socket, .. }
            | Connection::SocketIo { socket }
            | Connection::Pushpin { socket } => socket.flush().await?,
        }
        Ok(())
    }

    /// The next thing the server sends.
    pub async fn receive(&mut self) -> anyhow::Result<Received> {
        self.receive_frame().await
    }

    async fn receive_frame(&mut self) -> anyhow::Result<Received> {
        match self {
            Connection::PushpinPublisher(_) => bail!("Pushpin's control API sends no events"),
            Connection::HeraldSse(subscriber) => subscriber.next_sse_event().await,
            Connection::HeraldLongPoll(subscriber) => subscriber.next_polled_event().await,
            Connection::HeraldWebTransport(client) => match client.next_frame().await {
                Some((_via, frame)) => Ok(classify_herald(&frame)),
                None => Ok(Received::Closed),
            },
            Connection::Pushpin { socket } => match socket.next().await {
                Some(Ok(Message::Text(text))) if text.starts_with("ts=") => Ok(stamped(text.as_bytes())),
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => Ok(Received::Closed),
                Some(Ok(_)) => Ok(Received::Other),
            },
            Connection::SocketIo { socket } => match socket.next().await {
                Some(Ok(Message::Text(text))) => {
                    if text.as_str() == "2" {
                        // Engine.IO ping: answer, or the server drops us.
                        socket.send(Message::text("3")).await?;
                        Ok(Received::Other)
                    } else if text.starts_with(r#"42["msg""#) {
                        Ok(stamped(text.as_bytes()))
                    } else if text.starts_with("431") {
                        Ok(Received::Pong)
                    } else {
                        Ok(Received::Other)
                    }
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => Ok(Received::Closed),
                Some(Ok(_)) => Ok(Received::Other),
            },
            Connection::Herald { socket, unread, .. } => loop {
                if let Some(received) = unread.pop_front() {
                    return Ok(received);
                }
                match socket.next().await {
                    Some(Ok(Message::Text(text))) => {
                        unread.extend(json_lines(text.as_bytes()).map(classify_herald))
                    }
                    Some(Ok(Message::Binary(binary))) => {
                        for value in msgpack_values(&binary)? {
                            unread.push_back(classify_herald(value));
                        }
                    }
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return Ok(Received::Closed),
                    Some(Ok(_)) => return Ok(Received::Other),
                }
            },
            Connection::NatsTcp { stream, parser } => loop {
                if let Some(received) = parser.next_event() {
                    if parser.take_ping() {
                        stream.write_all(b"PONG\r\n").await?;
                    }
                    return Ok(received);
                }
                if parser.read_from(stream).await? == 0 {
                    return Ok(Received::Closed);
                }
            },
            Connection::NatsWebSocket { socket, parser } => loop {
                if let Some(received) = parser.next_event() {
                    if parser.take_ping() {
                        socket.send(Message::binary(b"PONG\r\n".to_vec())).await?;
                    }
                    return Ok(received);
                }
                match socket.next().await {
                    Some(Ok(Message::Binary(binary))) => parser.feed(&binary),
                    Some(Ok(Message::Text(text))) => parser.feed(text.as_bytes()),
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return Ok(Received::Closed),
                    Some(Ok(_)) => {}
                }
            },
        }
    }
}

/// What Herald's `GET /v1/quic` says, asked once per server.
async fn quic_endpoint(server: SocketAddr) -> anyhow::Result<QuicEndpoint> {
    static KNOWN: std::sync::Mutex<Vec<(SocketAddr, QuicEndpoint)>> = std::sync::Mutex::new(Vec::new());
    if let Some((_, endpoint)) = KNOWN.lock().unwrap().iter().find(|(known, _)| *known == server) {
        return Ok(endpoint.clone());
    }
    let mut stream = TcpStream::connect(server).await?;
    let request = format!("GET /v1/quic HTTP/1.1\r\nHost: {server}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    let body = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|at| &response[at + 4..])
        .context("no HTTP body from /v1/quic")?;
    let endpoint: QuicEndpoint = serde_json::from_slice(body)
        .with_context(|| format!("GET /v1/quic: {}", String::from_utf8_lossy(&response)))?;
    KNOWN.lock().unwrap().push((server, endpoint.clone()));
    Ok(endpoint)
}

/// The events of a Herald JSON text frame: one per line (one line
/// without a batching subprotocol).
fn json_lines(text: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut start = 0;
    memchr::memchr_iter(b'\n', text)
        .chain([text.len()])
        .map(move |end| {
            let line = &text[start..end];
            start = end + 1;
            line
        })
}

/// The events of a Herald MessagePack binary frame: values back to back,
/// each found by walking its markers. Deserializing each into
/// `IgnoredAny` instead (rmp-serde copies and UTF-8-checks every string)
/// was a third of the load generator's samples in a MessagePack fan-out.
fn msgpack_values(mut frame: &[u8]) -> anyhow::Result<Vec<&[u8]>> {
    let mut values = Vec::new();
    while !frame.is_empty() {
        let length = herald_broker::msgpack_value_len(frame).context("a MessagePack value")?;
        let (value, rest) = frame.split_at(length);
        values.push(value);
        frame = rest;
    }
    Ok(values)
}

/// A message with the stamp found in `bytes`; without one, not a
/// message of this run.
pub(crate) fn stamped(bytes: &[u8]) -> Received {
    match stamp_of(bytes) {
        Some((sent_micros, sequence)) => Received::Message {
            sent_micros,
            sequence,
        },
        None => Received::Other,
    }
}

pub(crate) fn classify_herald(frame: &[u8]) -> Received {
    // Both encodings carry the op first, as a string: `{"op":"msg"` in
    // JSON, a map header, the bytes `op` then `msg` in MessagePack.
    let head = &frame[..frame.len().min(16)];
    let op_is = |op: &[u8]| head.windows(op.len()).any(|window| window == op);
    if op_is(b"msg") {
        stamped(frame)
    } else if op_is(b"gap") {
        Received::Gap
    } else if op_is(b"pong") {
        Received::Pong
    } else {
        Received::Other
    }
}

/// A publisher on Pushpin's HTTP control API (`POST /publish/`), one
/// request in flight at a time. Pushpin answers each with
/// `Connection: close`, so every request opens a new connection.
#[derive(Debug)]
pub struct PushpinPublisher {
    /// `None` once Pushpin closed it.
    stream: Option<TcpStream>,
    control: SocketAddr,
    host: String,
    /// The `items` of the next request, comma-separated JSON objects.
    pending: String,
    /// A request was sent and its response not read yet.
    in_flight: bool,
    /// Requests answered but not yet reported by `await_answer`.
    answered: u32,
    input: BytesMut,
}

impl PushpinPublisher {
    fn new(stream: TcpStream, control: SocketAddr) -> PushpinPublisher {
        PushpinPublisher {
            stream: Some(stream),
            control,
            host: control.to_string(),
            pending: String::new(),
            in_flight: false,
            answered: 0,
            input: BytesMut::with_capacity(4096),
        }
    }

    fn queue(&mut self, channel: &str, content: &str) {
        if !self.pending.is_empty() {
            self.pending.push(',');
        }
        let item = serde_json::json!({
            "channel": channel,
            "formats": { "ws-message": { "content": content } },
        });
        self.pending.push_str(&item.to_string());
    }

    /// Sends what is queued as one request, once the previous one is
    /// answered. Nothing queued still counts as one (empty) answer.
    async fn send_pending(&mut self) -> anyhow::Result<()> {
        if self.pending.is_empty() {
            self.answered += 1;
            return Ok(());
        }
        if self.in_flight {
            self.read_response().await?;
            self.answered += 1;
        }
        let body = format!(r#"{{"items":[{}]}}"#, self.pending);
        self.pending.clear();
        let head = format!(
            "POST /publish/ HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            self.host,
            body.len()
        );
        let stream = match &mut self.stream {
            Some(stream) => stream,
            None => {
                let stream = TcpStream::connect(self.control).await?;
                stream.set_nodelay(true)?;
                self.input.clear();
                self.stream.insert(stream)
            }
        };
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(body.as_bytes()).await?;
        self.in_flight = true;
        Ok(())
    }

    async fn await_answer(&mut self) -> anyhow::Result<()> {
        if self.answered > 0 {
            self.answered -= 1;
            return Ok(());
        }
        if !self.in_flight {
            bail!("no publish request in flight");
        }
        self.read_response().await
    }

    /// Reads one response; anything but 200 is an error.
    async fn read_response(&mut self) -> anyhow::Result<()> {
        let stream = self.stream.as_mut().context("no control connection")?;
        let head_end = loop {
            if let Some(at) = self.input.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            if stream.read_buf(&mut self.input).await? == 0 {
                bail!("Pushpin closed the control connection");
            }
        };
        let head = std::str::from_utf8(&self.input[..head_end])?.to_ascii_lowercase();
        let status_ok = head.starts_with("http/1.1 200") || head.starts_with("http/1.0 200");
        let length: usize = head
            .lines()
            .find_map(|line| line.strip_prefix("content-length:"))
            .map_or(Ok(0), |value| value.trim().parse())?;
        while self.input.len() < head_end + length {
            if stream.read_buf(&mut self.input).await? == 0 {
                bail!("Pushpin closed the control connection");
            }
        }
        let body = String::from_utf8_lossy(&self.input[head_end..head_end + length]).into_owned();
        self.input.advance(head_end + length);
        self.in_flight = false;
        if head.contains("\r\nconnection: close") {
            self.stream = None;
        }
        if !status_ok {
            bail!(
                "Pushpin refused a publish: {} {body}",
                head.lines().next().unwrap_or_default()
            );
        }
        Ok(())
    }
}

const NATS_CONNECT: &str = "CONNECT {\"verbose\":false,\"pedantic\":false,\"echo\":false}\r\n";

/// Incremental parser of the server side of the NATS protocol: `MSG`,
/// `PING`, `PONG`, `INFO`, `+OK`, `-ERR`.
#[derive(Debug, Default)]
pub struct NatsParser {
    buffer: BytesMut,
    pings_owed: u32,
}

impl NatsParser {
    pub fn feed(&mut self, bytes: &[u8]) {
        self.buffer.extend_from_slice(bytes);
    }

    /// Reads what the socket has (up to [`READ_CHUNK`]) straight into the
    /// buffer, without zeroing it first; 0 at the end of the stream.
    async fn read_from(&mut self, stream: &mut TcpStream) -> std::io::Result<usize> {
        self.buffer.reserve(READ_CHUNK);
        let mut limited = (&mut *stream).take(READ_CHUNK as u64);
        limited.read_buf(&mut self.buffer).await
    }

    fn take_ping(&mut self) -> bool {
        let owed = self.pings_owed > 0;
        self.pings_owed = 0;
        owed
    }

    /// The next complete event in the buffer, if any.
    pub fn next_event(&mut self) -> Option<Received> {
        loop {
            let line_end = self.buffer.windows(2).position(|w| w == b"\r\n")?;
            let line = &self.buffer[..line_end];
            if line.starts_with(b"MSG ") {
                // MSG <subject> <sid> [reply-to] <#bytes>
                let length: usize = std::str::from_utf8(line).ok()?.rsplit(' ').next()?.parse().ok()?;
                let total = line_end + 2 + length + 2;
                if self.buffer.len() < total {
                    return None;
                }
                let received = stamped(&self.buffer[line_end + 2..line_end + 2 + length]);
                self.buffer.advance(total);
                return Some(received);
            }
            let is_ping = line == b"PING";
            let is_pong = line == b"PONG";
            let is_error = line.starts_with(b"-ERR");
            self.buffer.advance(line_end + 2);
            if is_ping {
                self.pings_owed += 1;
                return Some(Received::Other);
            }
            if is_pong {
                return Some(Received::Pong);
            }
            if is_error {
                return Some(Received::Closed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_stamps_read_back_in_every_encoding() {
        let text = payload(1_700_000_000_000_000, 42, 128);
        assert_eq!(text.len() + 2, 128);
        let json = format!(r#"{{"op":"msg","subject":"s","pos":"p","data":"{text}"}}"#);
        assert_eq!(stamp_of(json.as_bytes()), Some((1_700_000_000_000_000, 42)));
        let msgpack = rmp_serde::to_vec_named(&serde_json::json!({"op":"msg","data": text})).unwrap();
        assert_eq!(stamp_of(&msgpack), Some((1_700_000_000_000_000, 42)));
    }

    /// A batched frame's events, as the server packs them.
    #[test]
    fn batched_frames_split_into_their_events() {
        let events: Vec<&[u8]> = json_lines(b"{\"op\":\"msg\"}\n{\"op\":\"pong\"}").collect();
        assert_eq!(events, [&b"{\"op\":\"msg\"}"[..], b"{\"op\":\"pong\"}"]);
        assert_eq!(json_lines(b"{}").collect::<Vec<_>>(), [b"{}"]);
        // As the server writes them: `op` first.
        #[derive(serde::Serialize)]
        struct Event {
            op: &'static str,
            data: &'static str,
        }
        let first = rmp_serde::to_vec_named(&Event {
            op: "msg",
            data: "ts=1 n=2",
        })
        .unwrap();
        let second = rmp_serde::to_vec_named(&Event { op: "pong", data: "" }).unwrap();
        let frame = [first.clone(), second.clone()].concat();
        assert_eq!(msgpack_values(&frame).unwrap(), [&first[..], &second[..]]);
        assert!(matches!(
            classify_herald(&first),
            Received::Message {
                sent_micros: 1,
                sequence: 2
            }
        ));
        assert!(matches!(classify_herald(&second), Received::Pong));
        assert!(msgpack_values(&frame[..frame.len() - 1]).is_err(), "a cut value");
    }

    #[test]
    fn nats_parser_handles_split_and_batched_input() {
        let mut parser = NatsParser::default();
        parser.feed(b"INFO {}\r\nMSG a.b 1 9\r\nts=7 ");
        assert!(parser.next_event().is_none());
        parser.feed(b"n=42\r\nPING\r\nMSG a 1 0\r\n\r\n");
        assert!(matches!(
            parser.next_event(),
            Some(Received::Message {
                sent_micros: 7,
                sequence: 42
            })
        ));
        assert!(matches!(parser.next_event(), Some(Received::Other)));
        assert!(parser.take_ping());
        // No stamp: not one of the run's messages.
        assert!(matches!(parser.next_event(), Some(Received::Other)));
        assert!(parser.next_event().is_none());
    }
}
