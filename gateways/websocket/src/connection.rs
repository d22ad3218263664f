//! One WebSocket connection: a reader and a writer running side by side in
//! one task, sharing nothing but the session's outbox.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{close_code, CloseFrame, Message, Utf8Bytes, WebSocket};
use bytes::Bytes;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use herald_broker::{decode_command, CloseReason, Encoding, Outbound, Outbox, Reply, Session, SessionError};
use tokio::time::{timeout, Instant};

use crate::WebSocketGateway;

/// How a connection's reading side ended.
#[derive(Debug, PartialEq, Eq)]
enum ReadEnd {
    /// The client closed, the socket failed, or it went silent: nothing more
    /// can be written usefully.
    Gone(&'static str),
    /// The server decided to close (shutdown, abuse); the writer still owes
    /// the client a final `err` and a close frame.
    Closing,
}

/// How long the writer may take to deliver the final frames once closing.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

pub(crate) async fn serve(
    socket: WebSocket,
    mut session: Session,
    encoding: Encoding,
    gateway: Arc<WebSocketGateway>,
) {
    let outbox = session.outbox().clone();
    let (sink, stream) = socket.split();
    let session_id = session.id();
    let reader = read_frames(stream, &mut session, encoding, &gateway);
    let writer = write_batches(sink, &outbox, encoding, &gateway);
    tokio::pin!(reader, writer);
    let reason = tokio::select! {
        written = &mut writer => written,
        read = &mut reader => match read {
            ReadEnd::Gone(why) => why,
            ReadEnd::Closing => timeout(CLOSE_GRACE, writer).await.unwrap_or("close_timeout"),
        },
    };
    tracing::debug!(session = session_id, reason, "websocket closed");
}

/// Reads frames until the client leaves or the server closes the session.
async fn read_frames(
    mut stream: SplitStream<WebSocket>,
    session: &mut Session,
    encoding: Encoding,
    gateway: &WebSocketGateway,
) -> ReadEnd {
    let config = &gateway.config;
    let mut window_start = Instant::now();
    let mut commands_in_window = 0u32;
    loop {
        let next = tokio::select! {
            next = timeout(config.idle_timeout, stream.next()) => next,
            () = gateway.shutdown.cancelled() => {
                session.outbox().close(CloseReason::Shutdown);
                return ReadEnd::Closing;
            }
        };
        let frame = match next {
            Err(_elapsed) => return ReadEnd::Gone("idle_timeout"),
            Ok(None) => return ReadEnd::Gone("client_closed"),
            Ok(Some(Err(_))) => return ReadEnd::Gone("read_error"),
            Ok(Some(Ok(frame))) => frame,
        };
        let data = match frame {
            Message::Text(text) => Bytes::from(text),
            Message::Binary(binary) => binary,
            Message::Ping(_) | Message::Pong(_) => continue,
            Message::Close(_) => return ReadEnd::Gone("client_closed"),
        };
        if window_start.elapsed() >= Duration::from_secs(1) {
            window_start = Instant::now();
            commands_in_window = 0;
        }
        commands_in_window += 1;
        if commands_in_window > config.max_commands_per_second {
            session.outbox().close(CloseReason::ProtocolViolation(format!(
                "more than {} commands in one second",
                config.max_commands_per_second
            )));
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

fn handle_frame(session: &mut Session, encoding: Encoding, data: Bytes, max_frame_bytes: usize) {
    if data.len() > max_frame_bytes {
        session.outbox().push_reply(Reply::Error {
            id: None,
            code: "frame_too_large",
            message: format!("frame is {} bytes; the limit is {max_frame_bytes}", data.len()),
        });
        return;
    }
    match decode_command(encoding, &data) {
        Ok(command) => session.handle(command),
        Err(error) => session.reject(error.id, &SessionError::Decode(error)),
    }
}

/// Writes what the outbox yields, a batch at a time, and pings on schedule.
/// Returns why it stopped.
async fn write_batches(
    mut sink: SplitSink<WebSocket, Message>,
    outbox: &Outbox,
    encoding: Encoding,
    gateway: &WebSocketGateway,
) -> &'static str {
    let config = &gateway.config;
    let mut batch = VecDeque::new();
    let mut heartbeat = tokio::time::interval_at(
        Instant::now() + config.heartbeat_interval,
        config.heartbeat_interval,
    );
    loop {
        let next = tokio::select! {
            next = outbox.next_batch(&mut batch) => next,
            _ = heartbeat.tick() => {
                if timeout(config.write_timeout, sink.send(Message::Ping(Bytes::new()))).await.map_or(true, |r| r.is_err()) {
                    return "write_error";
                }
                continue;
            }
        };
        let closing = next.err();
        let written = timeout(config.write_timeout, async {
            for event in batch.drain(..) {
                sink.feed(frame(&event, encoding)).await?;
            }
            if let Some(reason) = &closing {
                sink.feed(Message::Close(Some(CloseFrame {
                    code: close_code_for(reason),
                    reason: Utf8Bytes::from(reason.code()),
                })))
                .await?;
            }
            sink.flush().await
        })
        .await;
        match (written, closing) {
            (Err(_elapsed), _) => {
                outbox.close(CloseReason::SlowConsumer);
                return "write_timeout";
            }
            (Ok(Err(_)), _) => return "write_error",
            (Ok(Ok(())), Some(reason)) => return reason.code(),
            (Ok(Ok(())), None) => {}
        }
    }
}

fn frame(event: &Outbound, encoding: Encoding) -> Message {
    let bytes = event.encode(encoding);
    match encoding {
        Encoding::Json => match Utf8Bytes::try_from(bytes) {
            Ok(text) => Message::Text(text),
            // JSON from serde_json is always UTF-8; if that ever broke, the
            // client gets the bytes rather than nothing.
            Err(_) => Message::Binary(event.encode(encoding)),
        },
        Encoding::MsgPack => Message::Binary(bytes),
    }
}

/// The WebSocket close code for each close reason.
fn close_code_for(reason: &CloseReason) -> u16 {
    match reason {
        CloseReason::Shutdown => close_code::AWAY,
        CloseReason::SlowConsumer | CloseReason::ReplyBacklog | CloseReason::ProtocolViolation(_) => {
            close_code::POLICY
        }
    }
}
