//! One WebTransport session: admission, the control stream's reader, and
//! the kit's writer driver with the `writer` module's `QuicWriter`.

use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use bytes::{Bytes, BytesMut};
use herald_broker::{Access, CloseReason, Encoding, Outbound, Reply, Session, Transport};
use herald_gateway::credentials::Admission;
use herald_gateway::expiry::{self, TokenClock};
use herald_gateway::frames::{decode_frame, handle_command, Handled};
use herald_gateway::{
    drive, refusal, CommandRateLimiter, DisconnectReason, GatewayContext, HttpError, QueryParams,
    WriterConfig,
};
use tokio::time::timeout;
use wtransport::endpoint::IncomingSession;
use wtransport::quinn::{ConnectionError as QuicConnectionError, ReadError};
use wtransport::{Connection, RecvStream, SendStream, VarInt};

use crate::framing::{put_frame, FrameReader};
use crate::writer::{QuicWriter, RouteChange, Routes};
use crate::QuicConfig;

const TRANSPORT: &str = "webtransport";

/// How long the final frames of a session may take once it is closing.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// The stream error code for a stream the server does not take (a second
/// control stream, a client's unidirectional stream).
pub const STREAM_REFUSED: u32 = 0x10;

#[derive(Debug)]
pub(crate) struct Gateway {
    pub(crate) context: GatewayContext,
    pub(crate) config: QuicConfig,
    pub(crate) sessions: AtomicUsize,
}

pub(crate) async fn serve(incoming: IncomingSession, gateway: &Gateway) {
    let config = &gateway.config;
    let context = &gateway.context;
    // The handshake's futures are boxed apart: a running session's task
    // holds none of their states (docs/benchmarks.md, memory per idle
    // connection). Taken apart at once: a struct kept whole and moved
    // out of piece by piece stays in the task's state.
    let Some(Established {
        connection,
        control,
        commands,
        access,
        auth_id,
        encoding,
    }) = Box::pin(establish(incoming, gateway)).await
    else {
        return;
    };
    let mut session = Session::on(Transport::WebTransport, &context.broker, access);
    if auth_id.is_some() {
        session.outbox().push_reply(Reply::Ack {
            id: auth_id,
            position: None,
        });
    }
    let outbox = session.outbox().clone();
    let routes = Arc::new(Routes::default());
    let mut writer = QuicWriter::new(connection.clone(), control, config, routes.clone(), encoding);
    let writer_config = WriterConfig {
        // QUIC keeps the session alive itself (keep_alive_interval); the
        // writer's timer marks the message streams.
        heartbeat_interval: crate::writer::MARK_INTERVAL,
        write_timeout: config.write_timeout,
        max_duration: None,
        // The reader watches the token: it can take a `refresh`.
        access_expires_at_millis: None,
        write_delay: context.write_delay,
    };
    let session_id = session.id();
    let reason = {
        // Boxed apart too, so that neither is sized by the other's
        // largest state.
        let mut reading = Box::pin(read_commands(
            &connection,
            commands,
            &mut session,
            &routes,
            encoding,
            config,
            context,
        ));
        let mut writing = Box::pin(drive(&mut writer, &outbox, encoding, &writer_config, context));
        tokio::select! {
            reason = &mut writing => reason,
            read = &mut reading => match read {
                ReadEnd::Gone(reason) => reason,
                ReadEnd::Closing => timeout(CLOSE_GRACE, writing).await.unwrap_or(DisconnectReason::CloseTimeout),
            },
        }
    };
    // The session's close says why the server ended it (also when the
    // final `err` could not be written: a slow consumer's write timed out).
    match outbox.close_reason() {
        Some(close) => connection.close(
            VarInt::from_u32(refusal::close_code_of(&close).into()),
            close.code().as_bytes(),
        ),
        None => connection.close(VarInt::from_u32(0), b""),
    }
    context.disconnected(TRANSPORT, session_id, &reason);
}

/// What a session starts from once its handshake and admission are done.
struct Established {
    connection: Connection,
    control: SendStream,
    commands: Commands,
    access: Arc<dyn Access>,
    /// The `auth` command's id, when the session authenticated with one.
    auth_id: Option<u64>,
    encoding: Encoding,
}

/// The QUIC handshake, the WebTransport request, the control stream and
/// admission (a credential, or an `auth` first). `None` when the session
/// was refused or did not get that far; counted either way.
async fn establish(incoming: IncomingSession, gateway: &Gateway) -> Option<Established> {
    let config = &gateway.config;
    let context = &gateway.context;
    let disconnected = |reason: DisconnectReason| {
        context.disconnected(TRANSPORT, 0, &reason);
        None
    };
    let request = match timeout(config.handshake_timeout, incoming).await {
        Ok(Ok(request)) => request,
        Ok(Err(error)) => {
            tracing::debug!(%error, "WebTransport handshake failed");
            return disconnected(DisconnectReason::ReadError);
        }
        Err(_elapsed) => return disconnected(DisconnectReason::ReadError),
    };
    let (path, query) = match request.path().split_once('?') {
        Some((path, query)) => (path, QueryParams::parse(Some(query))),
        None => (request.path(), QueryParams::default()),
    };
    if path != config.path {
        request.not_found().await;
        return disconnected(DisconnectReason::Refused);
    }
    let headers = header_map(request.headers());
    let encoding = match query.one("encoding") {
        None | Some("json") => Ok(Encoding::Json),
        Some("msgpack") => Ok(Encoding::MsgPack),
        Some(other) => Err(HttpError::new(
            StatusCode::BAD_REQUEST,
            "invalid_encoding",
            format!("?encoding={other}: use json or msgpack"),
        )),
    };
    let admission = match &encoding {
        Ok(_) => context.admission(&headers, &query),
        Err(error) => Admission::Refused(error.clone()),
    };
    let encoding = encoding.unwrap_or(Encoding::Json);
    let connection = match request.accept().await {
        Ok(connection) => connection,
        Err(error) => {
            tracing::debug!(%error, "WebTransport session not established");
            return disconnected(DisconnectReason::ReadError);
        }
    };
    // Everything the client says goes on its first bidirectional stream.
    let (control, commands) = match timeout(config.auth_timeout, connection.accept_bi()).await {
        Ok(Ok(streams)) => streams,
        Ok(Err(_)) => return disconnected(DisconnectReason::ClientClosed),
        Err(_elapsed) => {
            connection.close(
                VarInt::from_u32(refusal::close_code_of(&CloseReason::IdleTimeout).into()),
                b"no control stream",
            );
            return disconnected(DisconnectReason::Refused);
        }
    };
    let mut commands = Commands {
        stream: commands,
        reader: FrameReader::new(config.hard_frame_limit_bytes),
    };
    let admitted = match admission {
        Admission::Admitted(access) => Ok((access, None)),
        Admission::AwaitingAuth => match timeout(config.auth_timeout, commands.next()).await {
            Err(_elapsed) => Err(expiry::auth_timed_out()),
            Ok(Ok(frame)) => expiry::first_auth(context, encoding, &frame, config.max_frame_bytes),
            Ok(_) => Err(expiry::ended_before_auth()),
        },
        Admission::Refused(error) => Err(error),
    };
    match admitted {
        Ok((access, auth_id)) => Some(Established {
            connection,
            control,
            commands,
            access,
            auth_id,
            encoding,
        }),
        Err(error) => {
            refuse(&connection, control, &error, encoding, context).await;
            None
        }
    }
}

/// The request's headers as an HTTP header map (pseudo-headers left out).
fn header_map(headers: &std::collections::HashMap<String, String>) -> HeaderMap {
    headers
        .iter()
        .filter(|(name, _)| !name.starts_with(':'))
        .filter_map(|(name, value)| {
            Some((
                HeaderName::from_bytes(name.as_bytes()).ok()?,
                HeaderValue::from_str(value).ok()?,
            ))
        })
        .collect()
}

/// Tells a client why it is refused, in an `err` on its control stream,
/// then closes the session with the refusal's application code.
async fn refuse(
    connection: &Connection,
    mut control: SendStream,
    error: &HttpError,
    encoding: Encoding,
    context: &GatewayContext,
) {
    let event = Outbound::Reply(Box::new(Reply::Error {
        id: None,
        code: error.code,
        message: error.message.clone(),
    }))
    .encode(encoding);
    let mut frame = BytesMut::new();
    put_frame(&mut frame, &event);
    let _ = timeout(CLOSE_GRACE, async {
        control.write_all(&frame).await?;
        control.finish().await
    })
    .await;
    connection.close(
        VarInt::from_u32(u32::from(refusal::close_code(error.status))),
        error.code.as_bytes(),
    );
    context.refused(TRANSPORT, error.code);
}

/// Frames from the control stream.
struct Commands {
    stream: RecvStream,
    reader: FrameReader,
}

/// Why the control stream gave no frame.
enum CommandsEnd {
    /// The client finished its control stream.
    Finished,
    TooLarge,
    Failed(ReadError),
}

impl Commands {
    /// The next command frame. Cancel-safe: what the stream delivered is
    /// in `reader` before the next await.
    async fn next(&mut self) -> Result<Bytes, CommandsEnd> {
        loop {
            match self.reader.next_frame() {
                Ok(Some(frame)) => return Ok(frame),
                Ok(None) => {}
                Err(_too_large) => return Err(CommandsEnd::TooLarge),
            }
            // quinn's own buffers, no read buffer held by an idle session.
            match self.stream.quic_stream_mut().read_chunk(64 * 1024, true).await {
                Ok(Some(chunk)) => self.reader.extend(&chunk.bytes),
                Ok(None) => return Err(CommandsEnd::Finished),
                Err(error) => return Err(CommandsEnd::Failed(error)),
            }
        }
    }
}

/// How a session's reading side ended.
enum ReadEnd {
    Gone(DisconnectReason),
    /// The server closed the session; the writer owes the client a final
    /// `err` and the close.
    Closing,
}

/// Reads commands until the client leaves or the session is closed;
/// refuses every stream but the control stream, and takes datagrams only
/// to count them against the command rate.
async fn read_commands(
    connection: &Connection,
    mut commands: Commands,
    session: &mut Session,
    routes: &Routes,
    encoding: Encoding,
    config: &QuicConfig,
    context: &GatewayContext,
) -> ReadEnd {
    let mut limiter = CommandRateLimiter::new(config.max_commands_per_second);
    limiter.fit(session.max_commands_per_second());
    let mut token = TokenClock::new(session, context.refresh_grace);
    loop {
        // Backpressure: a client pipelining commands waits while its
        // answers are unread; the write timeout judges one that never reads.
        session.outbox().reply_room().await;
        let next = tokio::select! {
            next = commands.next() => next,
            () = token.ring() => {
                if token.expired(session) {
                    return ReadEnd::Closing;
                }
                continue;
            }
            stream = connection.accept_bi() => {
                if let Ok((mut send, receive)) = stream {
                    let _ = send.reset(VarInt::from_u32(STREAM_REFUSED));
                    receive.stop(VarInt::from_u32(STREAM_REFUSED));
                }
                continue;
            }
            stream = connection.accept_uni() => {
                if let Ok(receive) = stream {
                    receive.stop(VarInt::from_u32(STREAM_REFUSED));
                }
                continue;
            }
            datagram = connection.receive_datagram() => {
                if datagram.is_ok() {
                    if let Err(reason) = limiter.admit() {
                        session.outbox().close(reason);
                        return ReadEnd::Closing;
                    }
                }
                continue;
            }
        };
        let frame = match next {
            Ok(frame) => frame,
            Err(CommandsEnd::Finished) => return ReadEnd::Gone(DisconnectReason::ClientClosed),
            Err(CommandsEnd::TooLarge) => {
                session.outbox().close(CloseReason::FrameTooLarge {
                    max: config.hard_frame_limit_bytes,
                });
                return ReadEnd::Closing;
            }
            Err(CommandsEnd::Failed(error)) => return ReadEnd::Gone(read_failure(error)),
        };
        if let Err(reason) = limiter.admit() {
            session.outbox().close(reason);
            return ReadEnd::Closing;
        }
        let Some(command) = decode_frame(session, encoding, &frame, config.max_frame_bytes) else {
            continue;
        };
        let route = RouteChange::of(&command);
        if handle_command(session, command, &context.auth) == Handled::AccessReplaced {
            token = TokenClock::new(session, context.refresh_grace);
            limiter.fit(session.max_commands_per_second());
        }
        if let Some(change) = route {
            routes.apply(change, session);
        }
        if session.outbox().is_closed() {
            return ReadEnd::Closing;
        }
    }
}

/// Why reading the control stream failed.
fn read_failure(error: ReadError) -> DisconnectReason {
    match error {
        ReadError::ConnectionLost(QuicConnectionError::TimedOut) => {
            DisconnectReason::Closed(CloseReason::IdleTimeout)
        }
        ReadError::ConnectionLost(
            QuicConnectionError::ApplicationClosed(_) | QuicConnectionError::LocallyClosed,
        ) => DisconnectReason::ClientClosed,
        _ => DisconnectReason::ReadError,
    }
}

#[cfg(test)]
mod tests {
    fn future_size2<A, B, F>(_: impl Fn(A, B) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    fn future_size5<A, B, C, D, E, F>(_: impl Fn(A, B, C, D, E) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    fn future_size7<A, B, C, D, E, G, H, F>(_: impl Fn(A, B, C, D, E, G, H) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// Herald's part of an idle session is mostly its task: the session's
    /// future, its reader's and its writer's (boxed apart, the handshake's
    /// too, so that none is sized by another's largest state), and the
    /// writer: together under 3.5 KB (6 KB when the session's future held
    /// the handshake's and the reader's and writer's inline). quinn's and
    /// wtransport's part is the rest of the ~70 KB a session costs
    /// (docs/benchmarks.md, memory per idle connection).
    #[test]
    fn an_idle_session_s_futures_stay_small() {
        let serve = future_size2(super::serve);
        let writer = future_size5(herald_gateway::drive::<super::QuicWriter>);
        let reader = future_size7(super::read_commands);
        let quic_writer = std::mem::size_of::<super::QuicWriter>();
        let total = serve + writer + reader + quic_writer;
        assert!(
            total <= 3584,
            "serve {serve} + writer {writer} + reader {reader} + QuicWriter {quic_writer} = {total} bytes"
        );
    }
}
