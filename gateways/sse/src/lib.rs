//! # herald-sse
//!
//! Herald's Server-Sent Events gateway: `GET /sse?subject=<pattern>`
//! (repeatable) streams `text/event-stream` events, one per protocol event:
//! `event:` is its `op`, `data:` the same JSON a WebSocket client receives,
//! and `id:` the position for events that have one (messages, and the
//! `ack` that opens every stream). A browser's `EventSource` reconnects by
//! itself with `Last-Event-ID`, and the stream resumes there: nothing lost
//! inside the history window, an explicit `gap` event outside it. Clients
//! that cannot set that header resume with `?since=<pos>`.
//!
//! It is the adapter between an HTTP response body and a broker
//! [`Session`]: one stream is one session subscribed to all its patterns at
//! one cut, so one resume token covers them all. The kit's writer driver
//! fills the body, a batch per chunk; a message's event-stream frame is
//! encoded once per message and shared by every stream.
//!
//! One-way: clients publish through the HTTP API.

use std::convert::Infallible;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use bytes::{Bytes, BytesMut};
use herald_broker::{Acknowledge, CloseReason, Encoding, Outbound, Session, Transport};
use herald_gateway::reads::read_history;
use herald_gateway::refusal;
use herald_gateway::{
    drive, Cookies, DisconnectReason, EventWriter, GatewayContext, HttpError, QueryParams, WriterConfig,
};
use serde::Deserialize;
use tokio::sync::mpsc;

/// The `[sse]` section of the configuration, with its comments.
pub const DEFAULT_CONFIG: &str = include_str!("sse.default.toml");

/// The `[sse]` section.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SseConfig {
    /// Serve `GET /sse`.
    pub enabled: bool,
    /// How often a comment line keeps an idle stream alive.
    #[serde(with = "herald_broker::units::duration")]
    pub heartbeat_interval: Duration,
    /// The reconnection delay advised to clients (`retry:`).
    #[serde(with = "herald_broker::units::duration")]
    pub retry: Duration,
    /// A write that takes longer closes the stream as a slow consumer.
    #[serde(with = "herald_broker::units::duration")]
    pub write_timeout: Duration,
    /// Streams are closed with `stream_expired` after this long; zero: never.
    #[serde(with = "herald_broker::units::duration")]
    pub max_stream_duration: Duration,
}

impl Default for SseConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            heartbeat_interval: Duration::from_secs(15),
            retry: Duration::from_secs(2),
            write_timeout: Duration::from_secs(10),
            max_stream_duration: Duration::ZERO,
        }
    }
}

impl SseConfig {
    /// Checks the settings; the message names the key.
    pub fn validate(&self) -> Result<(), String> {
        if self.heartbeat_interval.is_zero() || self.write_timeout.is_zero() {
            return Err("sse.heartbeat_interval and sse.write_timeout must be positive".into());
        }
        Ok(())
    }
}

#[derive(Debug)]
struct Gateway {
    context: GatewayContext,
    config: SseConfig,
}

/// The gateway's routes: `GET /sse`.
pub fn router(context: GatewayContext, config: SseConfig) -> Router {
    Router::new()
        .route("/sse", get(stream))
        .with_state(Arc::new(Gateway { context, config }))
}

/// The header a reconnecting `EventSource` sends.
const LAST_EVENT_ID: &str = "last-event-id";

async fn stream(State(gateway): State<Arc<Gateway>>, query: QueryParams, headers: HeaderMap) -> Response {
    let from_event_source = headers
        .get(header::ACCEPT)
        .and_then(|accept| accept.to_str().ok())
        .is_some_and(|accept| accept.contains("text/event-stream"));
    match open_stream(&gateway, &query, &headers).await {
        Ok(response) => response,
        // An EventSource cannot read a refusal's status or body: it gets
        // the `err` event in a stream instead (herald_gateway::refusal).
        Err(error) if from_event_source => refusal_stream(&error, gateway.config.retry),
        Err(error) => error.into_response(),
    }
}

/// A stream that only says why the request is refused. `retry:` keeps a
/// browser's automatic reconnection from repeating a refusal that will not
/// change (a bad token, a foreign origin) more than once a day.
fn refusal_stream(error: &HttpError, retry: std::time::Duration) -> Response {
    let retry = if refusal::may_retry(error) {
        retry
    } else {
        std::time::Duration::from_secs(24 * 60 * 60)
    };
    let body = format!(
        "retry: {}\n\nevent: err\ndata: {}\n\n",
        retry.as_millis(),
        refusal::err_event_json(error)
    );
    let mut response = body.into_response();
    stream_headers(response.headers_mut());
    response
}

fn stream_headers(headers: &mut HeaderMap) {
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // nginx buffers responses unless told not to.
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
}

async fn open_stream(
    gateway: &Arc<Gateway>,
    query: &QueryParams,
    headers: &HeaderMap,
) -> Result<Response, HttpError> {
    let context = &gateway.context;
    let access = context.admit(headers, query, Cookies::Read)?;
    // The header is newer than the URL: a browser reconnecting keeps the
    // `since` it first opened the stream with.
    let last_event_id = headers
        .get(LAST_EVENT_ID)
        .and_then(|value| value.to_str().ok())
        .filter(|value| !value.is_empty());
    let since = last_event_id.or_else(|| query.one("since")).map(str::to_owned);
    let subjects: Vec<String> = query.all("subject").into_iter().map(str::to_owned).collect();
    // `presence=1`: also who joins and leaves (`$presence.<subject>` messages).
    let presence = matches!(query.one("presence"), Some("1" | "true"));
    // A resume on wildcards reads history across subjects: off the workers.
    let wide = since.is_some()
        && subjects
            .iter()
            .any(|subject| herald_broker::names_wildcards(subject));
    let mut session = Session::on(Transport::Sse, &context.broker, access);
    let session = read_history(wide, move || {
        session.subscribe_with_presence(
            &subjects,
            since.as_deref(),
            Acknowledge::Always { id: None },
            presence,
        )?;
        Ok::<_, HttpError>(session)
    })
    .await?;

    // One chunk in flight: a client that stops reading holds the writer
    // back within one batch, and the write timeout sees it.
    let (sender, mut receiver) = mpsc::channel::<Bytes>(1);
    let mut writer = StreamWriter {
        buffer: BytesMut::new(),
        sender,
    };
    writer
        .buffer
        .extend_from_slice(format!("retry: {}\n\n", gateway.config.retry.as_millis()).as_bytes());
    let writer_config = WriterConfig {
        heartbeat_interval: gateway.config.heartbeat_interval,
        write_timeout: gateway.config.write_timeout,
        max_duration: Some(gateway.config.max_stream_duration).filter(|duration| !duration.is_zero()),
        access_expires_at_millis: session.access_expires_at_millis(),
        write_delay: gateway.context.write_delay,
    };
    let task_gateway = gateway.clone();
    context.connections.spawn(async move {
        let context = &task_gateway.context;
        let client_gone = writer.sender.clone();
        let outbox = session.outbox().clone();
        let reason = tokio::select! {
            reason = drive(&mut writer, &outbox, Encoding::EventStream, &writer_config, context) => reason,
            () = client_gone.closed() => DisconnectReason::ClientClosed,
        };
        context.disconnected("sse", session.id(), &reason);
    });

    let body = futures_util::stream::poll_fn(move |cx| {
        receiver.poll_recv(cx).map(|chunk| chunk.map(Ok::<_, Infallible>))
    });
    let mut response = Body::from_stream(body).into_response();
    stream_headers(response.headers_mut());
    Ok(response)
}

/// Writes events into the response body: each batch one chunk, the
/// events copied into it (a message's frame borrowed from the message, so
/// a recipient takes no reference count on it).
struct StreamWriter {
    buffer: BytesMut,
    sender: mpsc::Sender<Bytes>,
}

impl StreamWriter {
    async fn send(&mut self, chunk: Bytes) -> io::Result<()> {
        self.sender
            .send(chunk)
            .await
            .map_err(|_| io::Error::from(io::ErrorKind::BrokenPipe))
    }
}

impl EventWriter for StreamWriter {
    async fn feed(&mut self, frame: Bytes) -> io::Result<()> {
        self.buffer.extend_from_slice(&frame);
        Ok(())
    }

    async fn write_event(&mut self, event: &Outbound, encoding: Encoding) -> io::Result<()> {
        match event.message() {
            Some(message) => message.with_frame(encoding, |frame| self.buffer.extend_from_slice(frame)),
            None => self.buffer.extend_from_slice(&event.encode(encoding)),
        }
        Ok(())
    }

    async fn flush(&mut self) -> io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let chunk = self.buffer.split().freeze();
        self.send(chunk).await
    }

    async fn heartbeat(&mut self) -> io::Result<()> {
        self.send(Bytes::from_static(b":\n\n")).await
    }

    async fn close(&mut self, _reason: &CloseReason) -> io::Result<()> {
        // The final `err` event was fed with the last batch; ending the body
        // ends the stream.
        Ok(())
    }
}
