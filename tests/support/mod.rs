//! Test harness: the real server on an ephemeral port, real WebSocket and
//! HTTP clients.
#![allow(dead_code)] // each test binary uses its own part of the harness

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use herald::config::{Anonymous, ApiKeySection, Config};
use herald_broker::protocol::{decode_event, Encoding, ServerEvent};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const PUBLISHER_KEY: &str = "test-publisher-key-0123456789";
pub const NEWS_ONLY_KEY: &str = "test-news-only-key-0123456789";

/// How long a test waits for any one event before failing.
pub const PATIENCE: Duration = Duration::from_secs(10);

pub struct Server {
    pub address: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl Server {
    /// Starts Herald with the defaults, two API keys, and `adjust` applied.
    pub async fn start(adjust: impl FnOnce(&mut Config)) -> Server {
        let mut config = Config::default_config();
        config.auth.api_keys = vec![
            ApiKeySection {
                key: PUBLISHER_KEY.into(),
                publish: vec![">".into()],
                subscribe: vec![">".into()],
            },
            ApiKeySection {
                key: NEWS_ONLY_KEY.into(),
                publish: vec!["news.>".into()],
                subscribe: vec!["news.>".into()],
            },
        ];
        adjust(&mut config);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(herald::run(listener, config, async move {
            let _ = stopped.await;
        }));
        Server {
            address,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub async fn dev() -> Server {
        Server::start(|config| config.auth.anonymous = Anonymous::Publish).await
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
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

    /// Sends a command given as JSON, in this client's encoding.
    pub async fn send(&mut self, command: Value) {
        let frame = match self.encoding {
            Encoding::Json => Message::text(command.to_string()),
            Encoding::MsgPack => Message::binary(rmp_serde::to_vec_named(&command).unwrap()),
        };
        self.socket.send(frame).await.expect("send");
    }

    pub async fn send_raw(&mut self, frame: Message) {
        self.socket.send(frame).await.expect("send");
    }

    /// The next protocol event, skipping pings.
    pub async fn next_event(&mut self) -> ServerEvent {
        loop {
            let frame = tokio::time::timeout(PATIENCE, self.socket.next())
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

    /// Reads until the server closes; returns the close code and reason.
    pub async fn close_frame(&mut self) -> (u16, String) {
        loop {
            let frame = tokio::time::timeout(PATIENCE, self.socket.next())
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

/// Publishes over the HTTP API with the publisher key; returns the position.
pub async fn publish(server: &Server, subject: &str, data: Value) -> String {
    let response = reqwest::Client::new()
        .post(server.url("/v1/publish"))
        .bearer_auth(PUBLISHER_KEY)
        .json(&serde_json::json!({"subject": subject, "data": data}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    body["pos"].as_str().unwrap().to_owned()
}

/// Lets this process hold many sockets (both ends of each connection).
pub fn raise_open_file_limit() {
    let _ = rlimit::increase_nofile_limit(65_536);
}
