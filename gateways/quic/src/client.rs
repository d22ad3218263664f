//! A native WebTransport client of Herald, on wtransport's client: what
//! the tests and the load generator connect with. It opens the control
//! stream, writes framed commands on it, and merges what arrives (control
//! stream, message streams, datagrams) into one bounded queue of frames,
//! each tagged with where it came from. When nobody takes frames from the
//! queue, the client stops reading its streams, as a slow page would.

use std::time::Duration;

use base64::Engine;
use bytes::{Bytes, BytesMut};
use herald_broker::protocol::{decode_event, ServerEvent};
use herald_broker::Encoding;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
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

/// Frames received and not yet taken, at most.
const QUEUE: usize = 64;

/// One session with Herald's WebTransport gateway.
#[derive(Debug)]
pub struct QuicClient {
    connection: Connection,
    control: SendStream,
    encoding: Encoding,
    received: mpsc::Receiver<(Via, Bytes)>,
    readers: JoinSet<()>,
}

impl QuicClient {
    /// Connects to `url` (with `?encoding=msgpack` for MessagePack),
    /// trusting the certificates whose hashes `GET /v1/quic` published.
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
            .with_bind_default()
            .with_server_certificate_hashes(digests)
            .keep_alive_interval(Some(Duration::from_secs(5)))
            .build();
        let connection = Endpoint::client(config)?.connect(url).await?;
        let (control, control_in) = connection.open_bi().await?.await?;
        let encoding = match url.contains("encoding=msgpack") {
            true => Encoding::MsgPack,
            false => Encoding::Json,
        };
        let (sender, received) = mpsc::channel(QUEUE);
        let mut readers = JoinSet::new();
        readers.spawn(read_frames(control_in, Via::Control, sender.clone()));
        readers.spawn(accept_streams(connection.clone(), sender));
        Ok(QuicClient {
            connection,
            control,
            encoding,
            received,
            readers,
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
        self.received.recv().await
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
    pub fn close(mut self, code: u32, reason: &str) {
        self.connection.close(code.into(), reason.as_bytes());
        self.readers.abort_all();
    }
}

/// Accepts the server's message streams and reads datagrams.
async fn accept_streams(connection: Connection, sender: mpsc::Sender<(Via, Bytes)>) {
    let mut streams = JoinSet::new();
    let mut opened = 0;
    loop {
        tokio::select! {
            stream = connection.accept_uni() => match stream {
                Ok(stream) => {
                    streams.spawn(read_frames(stream, Via::Stream(opened), sender.clone()));
                    opened += 1;
                }
                Err(_) => break,
            },
            datagram = connection.receive_datagram() => match datagram {
                Ok(datagram) => {
                    if sender.send((Via::Datagram, datagram.payload())).await.is_err() {
                        break;
                    }
                }
                Err(_) => break,
            },
        }
    }
    // What the streams still hold is delivered before the queue ends.
    while streams.join_next().await.is_some() {}
}

async fn read_frames(mut stream: RecvStream, via: Via, sender: mpsc::Sender<(Via, Bytes)>) {
    let mut reader = FrameReader::new(usize::MAX >> 1);
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        while let Ok(Some(frame)) = reader.next_frame() {
            if sender.send((via, frame)).await.is_err() {
                return;
            }
        }
        match stream.read(&mut buffer).await {
            Ok(Some(read)) => reader.extend(&buffer[..read]),
            _ => return,
        }
    }
}
