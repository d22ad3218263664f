//! One WebSocket connection: a reader and the kit's writer driver running
//! side by side in one task, sharing nothing but the session's outbox.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{close_code, CloseFrame, Message, Utf8Bytes, WebSocket};
use bytes::Bytes;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use herald_broker::{CloseReason, Encoding, Session};
use herald_gateway::frames::handle_frame;
use herald_gateway::{drive, CommandRateLimiter, DisconnectReason, EventWriter, WriterConfig};
use tokio::time::timeout;

use crate::Gateway;

/// How a connection's reading side ended.
#[derive(Debug, PartialEq, Eq)]
enum ReadEnd {
    /// The client closed or the socket failed: nothing more can be written
    /// usefully.
    Gone(DisconnectReason),
    /// The server closed the session (idle, flooding, oversized frame, a
    /// reply backlog); the writer still owes the client a final `err` and a
    /// close frame.
    Closing,
}

/// How long the writer may take to deliver the final frames once closing.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

pub(crate) async fn serve(
    socket: WebSocket,
    mut session: Session,
    encoding: Encoding,
    gateway: Arc<Gateway>,
) {
    let outbox = session.outbox().clone();
    let (sink, stream) = socket.split();
    let mut writer = WebSocketWriter { sink, encoding };
    let config = &gateway.config;
    let writer_config = WriterConfig {
        heartbeat_interval: config.heartbeat_interval,
        write_timeout: config.write_timeout,
        max_duration: None,
    };
    let session_id = session.id();
    let reader = read_frames(stream, &mut session, encoding, config);
    let writing = drive(&mut writer, &outbox, encoding, &writer_config, &gateway.context);
    tokio::pin!(reader, writing);
    let reason = tokio::select! {
        reason = &mut writing => reason,
        read = &mut reader => match read {
            ReadEnd::Gone(reason) => reason,
            ReadEnd::Closing => timeout(CLOSE_GRACE, writing).await.unwrap_or(DisconnectReason::CloseTimeout),
        },
    };
    gateway.context.disconnected("websocket", session_id, &reason);
}

/// Reads frames until the client leaves or the session is closed.
async fn read_frames(
    mut stream: SplitStream<WebSocket>,
    session: &mut Session,
    encoding: Encoding,
    config: &crate::WebSocketConfig,
) -> ReadEnd {
    let mut limiter = CommandRateLimiter::new(config.max_commands_per_second);
    loop {
        // Backpressure: a client pipelining commands waits while its answers
        // are unread, and the write timeout judges a client that never reads.
        session.outbox().reply_room().await;
        let frame = match timeout(config.idle_timeout, stream.next()).await {
            Err(_elapsed) => {
                session.outbox().close(CloseReason::IdleTimeout);
                return ReadEnd::Closing;
            }
            Ok(None) => return ReadEnd::Gone(DisconnectReason::ClientClosed),
            Ok(Some(Err(error))) => {
                if !is_frame_too_large(error) {
                    return ReadEnd::Gone(DisconnectReason::ReadError);
                }
                session.outbox().close(CloseReason::FrameTooLarge {
                    max: config.hard_frame_limit_bytes,
                });
                return ReadEnd::Closing;
            }
            Ok(Some(Ok(frame))) => frame,
        };
        let data = match frame {
            Message::Text(text) => Bytes::from(text),
            Message::Binary(binary) => binary,
            Message::Ping(_) | Message::Pong(_) => continue,
            Message::Close(_) => return ReadEnd::Gone(DisconnectReason::ClientClosed),
        };
        if let Err(reason) = limiter.admit() {
            session.outbox().close(reason);
            return ReadEnd::Closing;
        }
        handle_frame(session, encoding, data, config.max_frame_bytes);
        if session.outbox().is_closed() {
            // The session closed itself (a reply backlog): let the writer
            // deliver the reason.
            return ReadEnd::Closing;
        }
    }
}

fn is_frame_too_large(error: axum::Error) -> bool {
    use tokio_tungstenite::tungstenite::Error;
    matches!(
        error.into_inner().downcast_ref::<Error>(),
        Some(Error::Capacity(_))
    )
}

/// Writes events as WebSocket frames: text for JSON, binary for MessagePack.
struct WebSocketWriter {
    sink: SplitSink<WebSocket, Message>,
    encoding: Encoding,
}

impl EventWriter for WebSocketWriter {
    async fn feed(&mut self, frame: Bytes) -> io::Result<()> {
        let message = match self.encoding {
            Encoding::MsgPack => Message::Binary(frame),
            // JSON from the encoder is always UTF-8; if that ever broke, the
            // client gets the bytes as a binary frame rather than nothing.
            _ => match Utf8Bytes::try_from(frame.clone()) {
                Ok(text) => Message::Text(text),
                Err(_) => Message::Binary(frame),
            },
        };
        self.sink.feed(message).await.map_err(io::Error::other)
    }

    async fn flush(&mut self) -> io::Result<()> {
        self.sink.flush().await.map_err(io::Error::other)
    }

    async fn heartbeat(&mut self) -> io::Result<()> {
        self.sink
            .send(Message::Ping(Bytes::new()))
            .await
            .map_err(io::Error::other)
    }

    async fn close(&mut self, reason: &CloseReason) -> io::Result<()> {
        let frame = CloseFrame {
            code: close_code_for(reason),
            reason: Utf8Bytes::from(reason.code()),
        };
        self.sink
            .feed(Message::Close(Some(frame)))
            .await
            .map_err(io::Error::other)
    }
}

/// The WebSocket close code for each close reason.
fn close_code_for(reason: &CloseReason) -> u16 {
    match reason {
        CloseReason::Shutdown | CloseReason::IdleTimeout | CloseReason::StreamExpired => close_code::AWAY,
        CloseReason::FrameTooLarge { .. } => close_code::SIZE,
        CloseReason::SlowConsumer | CloseReason::ReplyBacklog | CloseReason::ProtocolViolation(_) => {
            close_code::POLICY
        }
    }
}
