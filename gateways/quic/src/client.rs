//! A native WebTransport client of Herald, on wtransport's client: what
//! the tests and the load generator connect with. It opens the control
//! stream, writes framed commands on it, and reads what arrives (control
//! stream, message streams, datagrams) only when asked for the next frame,
//! each tagged with where it came from: a caller that stops asking stops
//! reading, and QUIC's flow control holds the server back, as with a slow
//! page. No task and no queue of its own sits in between.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use base64::Engine;
use bytes::{Bytes, BytesMut};
use herald_broker::protocol::{decode_event, ServerEvent};
use herald_broker::Encoding;
use tokio::io::{AsyncRead, ReadBuf};
use wtransport::datagram::Datagram;
use wtransport::error::ConnectionError;
use wtransport::tls::Sha256Digest;
use wtransport::{ClientConfig, Connection, Endpoint, RecvStream, SendStream};

use crate::framing::{put_frame, FrameReader};
use crate::CertificateHash;

/// Where a frame arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Via {
    Control,
    /// A message stream, numbered in the order the server opened them.
    Stream(usize),
    Datagram,
}

/// Why a client could not connect or send.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid certificate hash: {0}")]
    Hash(String),
    #[error("cannot open a client endpoint: {0}")]
    Endpoint(#[from] std::io::Error),
    #[error("cannot connect: {0}")]
    Connect(#[from] wtransport::error::ConnectingError),
    #[error("the session failed: {0}")]
    Connection(#[from] wtransport::error::ConnectionError),
    #[error("cannot open the control stream: {0}")]
    Open(#[from] wtransport::error::StreamOpeningError),
    #[error("the control stream failed: {0}")]
    Write(#[from] wtransport::error::StreamWriteError),
}

type Next<T> = Pin<Box<dyn Future<Output = Result<T, ConnectionError>> + Send>>;

/// One session with Herald's WebTransport gateway.
pub struct QuicClient {
    connection: Connection,
    control: SendStream,
    encoding: Encoding,
    /// The control stream's receiving side, then every message stream.
    incoming: Vec<Incoming>,
    /// The next message stream the server opens; `None` once it can open
    /// no more.
    accepting: Option<Next<RecvStream>>,
    /// The next datagram; `None` once the session is over.
    datagram: Option<Next<Datagram>>,
    scratch: Box<[u8]>,
}

impl std::fmt::Debug for QuicClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuicClient")
            .field("encoding", &self.encoding)
            .field("streams", &self.incoming.len())
            .finish_non_exhaustive()
    }
}

/// A stream the client reads frames from.
struct Incoming {
    via: Via,
    stream: RecvStream,
    frames: FrameReader,
    finished: bool,
}

impl QuicClient {
    /// Connects to `url` (with `?encoding=msgpack` for MessagePack),
    /// trusting the certificates whose hashes `GET /v1/quic` published,
    /// from an endpoint (UDP socket) of its own, as a browser does.
    pub async fn connect(url: &str, hashes: &[CertificateHash]) -> Result<QuicClient, ClientError> {
        let digests = hashes
            .iter()
            .map(|hash| {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(&hash.value)
                    .map_err(|error| ClientError::Hash(error.to_string()))?;
                let bytes: [u8; 32] = bytes
                    .try_into()
                    .map_err(|_| ClientError::Hash("not 32 bytes".into()))?;
                Ok(Sha256Digest::new(bytes))
            })
            .collect::<Result<Vec<_>, ClientError>>()?;
        let config = ClientConfig::builder()
            .with_bind_socket(client_socket()?)
            .with_server_certificate_hashes(digests)
            // As Chromium pings a QUIC connection with open streams (its
            // `kPingTimeoutSecs`): idle sessions cost the server what
            // browsers' would.
            .keep_alive_interval(Some(Duration::from_secs(15)))
            .build();
        let connection = Endpoint::client(config)?.connect(url).await?;
        let (control, control_in) = connection.open_bi().await?.await?;
        let encoding = match url.contains("encoding=msgpack") {
            true => Encoding::MsgPack,
            false => Encoding::Json,
        };
        Ok(QuicClient {
            accepting: Some(next_stream(&connection)),
            datagram: Some(next_datagram(&connection)),
            connection,
            control,
            encoding,
            incoming: vec![Incoming::new(Via::Control, control_in)],
            scratch: vec![0; 16 * 1024].into_boxed_slice(),
        })
    }

    /// Sends one command, framed.
    pub async fn send(&mut self, command: &[u8]) -> Result<(), ClientError> {
        let mut frame = BytesMut::new();
        put_frame(&mut frame, command);
        self.send_raw(&frame).await
    }

    /// Sends a JSON command (in MessagePack on a MessagePack session).
    pub async fn send_json(&mut self, command: &serde_json::Value) -> Result<(), ClientError> {
        let bytes = match self.encoding {
            Encoding::MsgPack => rmp_serde::to_vec_named(command).expect("JSON values serialize"),
            _ => serde_json::to_vec(command).expect("JSON values serialize"),
        };
        self.send(&bytes).await
    }

    /// Writes bytes on the control stream as they are: for tests of
    /// malformed framing.
    pub async fn send_raw(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        Ok(self.control.write_all(bytes).await?)
    }

    /// The next frame received, and where; `None` once the session is
    /// over and every frame was taken.
    pub async fn next_frame(&mut self) -> Option<(Via, Bytes)> {
        std::future::poll_fn(|cx| self.poll_frame(cx)).await
    }

    /// The next event received, decoded.
    pub async fn next_event(&mut self) -> Option<(Via, ServerEvent)> {
        let (via, frame) = self.next_frame().await?;
        let event = decode_event(self.encoding, &frame)
            .unwrap_or_else(|error| panic!("the server sent an undecodable event ({error}): {frame:?}"));
        Some((via, event))
    }

    pub fn connection(&self) -> &Connection {
        &self.connection
    }

    /// Closes the session with `code` and `reason`.
    pub fn close(self, code: u32, reason: &str) {
        self.connection.close(code.into(), reason.as_bytes());
    }

    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<(Via, Bytes)>> {
        loop {
            // Whole frames already read go first, stream by stream.
            for incoming in &mut self.incoming {
                if let Ok(Some(frame)) = incoming.frames.next_frame() {
                    return Poll::Ready(Some((incoming.via, frame)));
                }
            }
            let mut progressed = false;
            if let Some(accepting) = &mut self.accepting {
                if let Poll::Ready(accepted) = accepting.as_mut().poll(cx) {
                    self.accepting = match accepted {
                        Ok(stream) => {
                            let via = Via::Stream(self.incoming.len() - 1);
                            self.incoming.push(Incoming::new(via, stream));
                            progressed = true;
                            Some(next_stream(&self.connection))
                        }
                        Err(_) => None,
                    };
                }
            }
            if let Some(datagram) = &mut self.datagram {
                if let Poll::Ready(received) = datagram.as_mut().poll(cx) {
                    match received {
                        Ok(datagram) => {
                            self.datagram = Some(next_datagram(&self.connection));
                            return Poll::Ready(Some((Via::Datagram, datagram.payload())));
                        }
                        Err(_) => self.datagram = None,
                    }
                }
            }
            for incoming in self.incoming.iter_mut().filter(|incoming| !incoming.finished) {
                let mut buffer = ReadBuf::new(&mut self.scratch);
                match Pin::new(&mut incoming.stream).poll_read(cx, &mut buffer) {
                    Poll::Ready(Ok(())) if !buffer.filled().is_empty() => {
                        incoming.frames.extend(buffer.filled());
                        progressed = true;
                    }
                    Poll::Ready(_) => incoming.finished = true,
                    Poll::Pending => {}
                }
            }
            if !progressed {
                let over = self.accepting.is_none() && self.incoming.iter().all(|incoming| incoming.finished);
                return match over {
                    true => Poll::Ready(None),
                    false => Poll::Pending,
                };
            }
        }
    }
}

impl Incoming {
    fn new(via: Via, stream: RecvStream) -> Incoming {
        Incoming {
            via,
            stream,
            frames: FrameReader::new(usize::MAX >> 1),
            finished: false,
        }
    }
}

/// The client's UDP socket on loopback-or-any IPv4, with 1 MiB buffers:
/// a load generator's sessions share a busy machine, and every packet the
/// kernel drops for a full buffer costs the server a retransmission.
fn client_socket() -> std::io::Result<std::net::UdpSocket> {
    let socket = socket2::Socket::new(
        socket2::Domain::IPV4,
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    let _ = socket.set_recv_buffer_size(1 << 20);
    let _ = socket.set_send_buffer_size(1 << 20);
    socket.bind(&std::net::SocketAddr::from(([0, 0, 0, 0], 0)).into())?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

fn next_stream(connection: &Connection) -> Next<RecvStream> {
    let connection = connection.clone();
    Box::pin(async move { connection.accept_uni().await })
}

fn next_datagram(connection: &Connection) -> Next<Datagram> {
    let connection = connection.clone();
    Box::pin(async move { connection.receive_datagram().await })
}
