//! One WebSocket connection: a reader and the kit's writer driver running
//! side by side in one task, sharing nothing but the session's outbox.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use herald_broker::{Access, CloseReason, Encoding, Outbound, Reply, Session, Transport};
use herald_gateway::expiry::{self, TokenClock};
use herald_gateway::frames::{handle_frame, Handled};
use herald_gateway::{
    drive, refusal, CommandRateLimiter, DisconnectReason, EventWriter, GatewayContext, HttpError,
    WriterConfig,
};
use tokio::time::{timeout, Instant};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use herald_gateway::credentials::Admission;

use crate::socket::{self, FrameWriter, Framing, ReadSide, Socket};
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
    mut socket: Box<Socket>,
    admission: Admission,
    framing: Framing,
    gateway: Arc<Gateway>,
) {
    let encoding = framing.encoding;
    let (access, auth_id) = match admission {
        Admission::Admitted(access) => (access, None),
        Admission::AwaitingAuth => match Box::pin(first_auth(&mut socket.reader, &gateway)).await {
            Ok(admitted) => admitted,
            Err(error) => return Box::pin(refuse(socket, &error, encoding, &gateway.context)).await,
        },
        Admission::Refused(error) => {
            return Box::pin(refuse(socket, &error, encoding, &gateway.context)).await
        }
    };
    let mut session = Session::on(Transport::WebSocket, &gateway.context.broker, access);
    if auth_id.is_some() {
        session.outbox().push_reply(Reply::Ack {
            id: auth_id,
            position: None,
        });
    }
    let outbox = session.outbox().clone();
    let Socket { reader, writer } = &mut *socket;
    let mut writer = WebSocketWriter {
        writer,
        encoding,
        separator: framing.separator(),
    };
    let config = &gateway.config;
    let writer_config = WriterConfig {
        heartbeat_interval: config.heartbeat_interval,
        write_timeout: config.write_timeout,
        max_duration: None,
        // The reader watches the token: it can take a `refresh`.
        access_expires_at_millis: None,
        write_delay: gateway.context.write_delay,
    };
    let session_id = session.id();
    let reason = {
        let mut reader = Box::pin(read_frames(reader, &mut session, config, &gateway.context));
        let mut writing = Box::pin(drive(
            &mut writer,
            &outbox,
            encoding,
            &writer_config,
            &gateway.context,
        ));
        tokio::select! {
            reason = &mut writing => reason,
            read = &mut reader => match read {
                ReadEnd::Gone(reason) => reason,
                ReadEnd::Closing => timeout(CLOSE_GRACE, writing).await.unwrap_or(DisconnectReason::CloseTimeout),
            },
        }
    };
    if reason == DisconnectReason::ClientClosed {
        // The client's close gets its reply (tungstenite made it).
        let _ = timeout(CLOSE_GRACE, writer.writer.flush()).await;
    }
    gateway.context.disconnected("websocket", session_id, &reason);
}

/// Reads the first command of a connection that must authenticate: an
/// `auth` with a token the server accepts, within `auth_timeout`. Returns
/// the access and the command's id, or why the connection is refused.
async fn first_auth(
    stream: &mut WebSocketStream<ReadSide>,
    gateway: &Gateway,
) -> Result<(Arc<dyn Access>, Option<u64>), HttpError> {
    let deadline = Instant::now() + gateway.config.auth_timeout;
    loop {
        let frame = match tokio::time::timeout_at(deadline, stream.next()).await {
            Err(_elapsed) => return Err(expiry::auth_timed_out()),
            Ok(Some(Ok(frame))) => frame,
            Ok(_) => return Err(expiry::ended_before_auth()),
        };
        let (data, encoding) = match frame {
            Message::Text(text) => (Bytes::from(text), Encoding::Json),
            Message::Binary(binary) => (binary, Encoding::MsgPack),
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
            Message::Close(_) => return Err(expiry::ended_before_auth()),
        };
        return expiry::first_auth(&gateway.context, encoding, &data, gateway.config.max_frame_bytes);
    }
}

/// Tells a connected client why it is refused, in an `err` event, and
/// closes with the refusal's application code (herald_gateway::refusal).
async fn refuse(mut socket: Box<Socket>, error: &HttpError, encoding: Encoding, context: &GatewayContext) {
    let Socket {
        reader: stream,
        writer,
    } = &mut *socket;
    let event = Outbound::Reply(Box::new(Reply::Error {
        id: None,
        code: error.code,
        message: error.message.clone(),
    }))
    .encode(encoding);
    let _ = timeout(CLOSE_GRACE, async {
        writer.push(opcode_for(encoding, &event), &event).await?;
        writer
            .push_close(refusal::close_code(error.status), error.code)
            .await?;
        writer.flush().await?;
        // Wait for the client's close, so the close frame is not lost to a reset.
        while let Some(Ok(frame)) = stream.next().await {
            if let Message::Close(_) = frame {
                break;
            }
        }
        io::Result::Ok(())
    })
    .await;
    context.refused("websocket", error.code);
}

/// The frame type of an event: binary for MessagePack; text for JSON,
/// which the encoder always writes as UTF-8 (if that ever broke, the client
/// gets the bytes as a binary frame rather than invalid text).
fn opcode_for(encoding: Encoding, event: &[u8]) -> u8 {
    match encoding {
        Encoding::MsgPack => socket::OPCODE_BINARY,
        _ if std::str::from_utf8(event).is_ok() => socket::OPCODE_TEXT,
        _ => socket::OPCODE_BINARY,
    }
}

/// Reads frames until the client leaves or the session is closed.
async fn read_frames(
    stream: &mut WebSocketStream<ReadSide>,
    session: &mut Session,
    config: &crate::WebSocketConfig,
    context: &GatewayContext,
) -> ReadEnd {
    let mut limiter = CommandRateLimiter::new(config.max_commands_per_second);
    limiter.fit(session.max_commands_per_second());
    let mut token = TokenClock::new(session, context.refresh_grace);
    loop {
        // Backpressure: a client pipelining commands waits while its answers
        // are unread, and the write timeout judges a client that never reads.
        session.outbox().reply_room().await;
        let next = tokio::select! {
            next = timeout(config.idle_timeout, stream.next()) => next,
            () = token.ring() => {
                if token.expired(session) {
                    return ReadEnd::Closing;
                }
                continue;
            }
        };
        let frame = match next {
            Err(_elapsed) => {
                session.outbox().close(CloseReason::IdleTimeout);
                return ReadEnd::Closing;
            }
            Ok(None) => return ReadEnd::Gone(DisconnectReason::ClientClosed),
            Ok(Some(Err(error))) => match close_reason_for(error, config) {
                Some(reason) => {
                    session.outbox().close(reason);
                    return ReadEnd::Closing;
                }
                None => return ReadEnd::Gone(DisconnectReason::ReadError),
            },
            Ok(Some(Ok(frame))) => frame,
        };
        if let Message::Close(_) = frame {
            // tungstenite queued its reply; have it written to the buffer
            // the writer sends.
            let _ = stream.flush().await;
            return ReadEnd::Gone(DisconnectReason::ClientClosed);
        }
        // Control frames count too: each ping costs the server a pong.
        if let Err(reason) = limiter.admit() {
            session.outbox().close(reason);
            return ReadEnd::Closing;
        }
        // The frame's type says how its command is encoded, whatever the
        // connection's event encoding.
        let (data, command_encoding) = match frame {
            Message::Text(text) => (Bytes::from(text), Encoding::Json),
            Message::Binary(binary) => (binary, Encoding::MsgPack),
            Message::Ping(_) => {
                // tungstenite queued the pong: have it written to the
                // buffer the writer sends. Counting it as a reply bounds
                // that buffer (backpressure above) and has the writer flush.
                if stream.flush().await.is_err() {
                    return ReadEnd::Gone(DisconnectReason::ReadError);
                }
                session.outbox().push_transport_reply();
                continue;
            }
            Message::Pong(_) | Message::Close(_) | Message::Frame(_) => continue,
        };
        let handled = handle_frame(
            session,
            command_encoding,
            data,
            config.max_frame_bytes,
            &context.auth,
        );
        if handled == Handled::AccessReplaced {
            token = TokenClock::new(session, context.refresh_grace);
            limiter.fit(session.max_commands_per_second());
        }
        if session.outbox().is_closed() {
            // The session closed itself (a reply backlog): let the writer
            // deliver the reason.
            return ReadEnd::Closing;
        }
    }
}

/// The close reason owed to a client whose frame could not be read; `None`
/// when the connection itself failed and nobody is left to tell.
fn close_reason_for(
    error: tokio_tungstenite::tungstenite::Error,
    config: &crate::WebSocketConfig,
) -> Option<CloseReason> {
    use tokio_tungstenite::tungstenite::error::ProtocolError;
    use tokio_tungstenite::tungstenite::Error;
    match error {
        Error::Capacity(_) => Some(CloseReason::FrameTooLarge {
            max: config.hard_frame_limit_bytes,
        }),
        Error::Utf8(_) => Some(CloseReason::InvalidUtf8),
        Error::Protocol(ProtocolError::ResetWithoutClosingHandshake) => None,
        Error::Protocol(violation) => Some(CloseReason::InvalidFrame(violation.to_string())),
        _ => None,
    }
}

/// Writes events as WebSocket frames: text for JSON, binary for
/// MessagePack; one event per frame, or packed into as few frames as fit.
/// A message's frame is made once and copied to every recipient's buffer.
struct WebSocketWriter<'a> {
    writer: &'a mut FrameWriter,
    encoding: Encoding,
    /// What separates packed events; `None`: one event per frame.
    separator: Option<&'static [u8]>,
}

impl EventWriter for WebSocketWriter<'_> {
    async fn feed(&mut self, frame: Bytes) -> io::Result<()> {
        let opcode = opcode_for(self.encoding, &frame);
        match self.separator {
            Some(separator) => {
                self.writer.append_packed(opcode, separator, &frame);
                self.writer.write_if_full().await
            }
            None => self.writer.push(opcode, &frame).await,
        }
    }

    async fn write_event(&mut self, event: &Outbound, encoding: Encoding) -> io::Result<()> {
        let Some(message) = event.message() else {
            return self.feed(event.encode(encoding)).await;
        };
        // The complete frame, made once per message: a recipient reads its
        // opcode and event back from its header.
        let frame = message.transport_frame(encoding, |message| {
            message.with_frame(encoding, |payload| {
                Bytes::from(socket::encode_frame(opcode_for(encoding, payload), payload))
            })
        });
        match self.separator {
            Some(separator) => {
                let (opcode, payload) = socket::split_frame(frame);
                self.writer.append_packed(opcode, separator, payload);
            }
            None => self.writer.append_encoded(frame),
        }
        self.writer.write_if_full().await
    }

    async fn flush(&mut self) -> io::Result<()> {
        self.writer.flush().await
    }

    async fn heartbeat(&mut self) -> io::Result<()> {
        self.writer.push(socket::OPCODE_PING, &[]).await?;
        self.writer.flush().await
    }

    async fn close(&mut self, reason: &CloseReason) -> io::Result<()> {
        self.writer
            .push_close(refusal::close_code_of(reason), reason.code())
            .await
    }
}

#[cfg(test)]
mod tests {
    /// The size of the future an async fn of four or five arguments returns.
    fn future_size<A, B, C, D, F>(_: impl Fn(A, B, C, D) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    fn future_size5<A, B, C, D, E, F>(_: impl Fn(A, B, C, D, E) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// An idle connection's memory is mostly its task: the connection's
    /// future, its reader's and its writer's (boxed apart, so that none is
    /// sized by another's largest state), and the socket. Together they
    /// stay under 3 KB of the 6 KB an idle connection may cost
    /// (docs/benchmarks.md, memory per idle connection).
    #[test]
    fn an_idle_connection_s_futures_stay_small() {
        let serve = future_size(super::serve);
        let writer = future_size5(herald_gateway::drive::<super::WebSocketWriter<'static>>);
        let reader = future_size(super::read_frames);
        let socket = std::mem::size_of::<crate::socket::Socket>();
        let total = serve + writer + reader + socket;
        assert!(
            total <= 3 * 1024,
            "serve {serve} + writer {writer} + reader {reader} + socket {socket} = {total} bytes"
        );
    }
}
