//! The WebSocket itself: the opening handshake, and the two sides of an
//! upgraded connection.
//!
//! Reading is tungstenite's: it parses and unmasks client frames, enforces
//! the size limits and UTF-8, and answers pings and closes. Writing is
//! Herald's own: a server's frames are not masked, so a message's frame
//! (header and payload) is the same bytes for every recipient. It is made
//! once per message ([`Message::transport_frame`]) and copied into
//! each connection's write buffer; one flush writes the buffer with one
//! system call. Per recipient that is a copy, and nothing else: no frame
//! encoding, no reference counting, no lock shared with the reader.
//!
//! A client that asked for a batching subprotocol (`herald.json.batch`,
//! `herald.msgpack.batch`) gets the events of one write packed into as few
//! frames as fit: JSON events one per line, MessagePack values back to
//! back. Per recipient that is still a copy of each event; the client
//! handles one frame where it handled many.
//!
//! What tungstenite writes (pongs, the reply to a client's close) goes to
//! a small buffer the writer sends ahead of its own frames at its next
//! flush.
//!
//! [`Message::transport_frame`]: herald_broker::Message::transport_frame

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};

use axum::extract::FromRequestParts;
use axum::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use axum::http::request::Parts;
use axum::http::{Method, StatusCode, Version};
use axum::response::{IntoResponse, Response};
use bytes::BytesMut;
use herald_broker::Encoding;
use herald_gateway::HttpError;
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf, ReadHalf, WriteHalf};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::WebSocketStream;
use tokio_util::io::poll_read_buf;

use crate::{JSON_BATCH_PROTOCOL, JSON_PROTOCOL, MSGPACK_BATCH_PROTOCOL, MSGPACK_PROTOCOL};

type Io = TokioIo<Upgraded>;

/// A valid WebSocket opening request (RFC 6455 §4.2.1, HTTP/1.1): what is
/// needed to answer it and take the connection over.
#[derive(Debug)]
pub(crate) struct Upgrade {
    accept: HeaderValue,
    protocol: Option<&'static str>,
    on_upgrade: OnUpgrade,
}

impl<S: Send + Sync> FromRequestParts<S> for Upgrade {
    type Rejection = HttpError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let bad = |message: &str| HttpError::bad_request("invalid_upgrade", message.to_owned());
        if parts.version != Version::HTTP_11 || parts.method != Method::GET {
            return Err(bad("a WebSocket opens with an HTTP/1.1 GET"));
        }
        if !header_has_token(&parts.headers, header::CONNECTION, "upgrade")
            || !header_has_token(&parts.headers, header::UPGRADE, "websocket")
        {
            return Err(bad("expected Connection: upgrade and Upgrade: websocket"));
        }
        if parts
            .headers
            .get(header::SEC_WEBSOCKET_VERSION)
            .map(HeaderValue::as_bytes)
            != Some(b"13")
        {
            return Err(HttpError::new(
                StatusCode::UPGRADE_REQUIRED,
                "invalid_upgrade",
                "Sec-WebSocket-Version must be 13",
            ));
        }
        let key = parts
            .headers
            .get(header::SEC_WEBSOCKET_KEY)
            .ok_or_else(|| bad("Sec-WebSocket-Key is missing"))?;
        let accept = HeaderValue::from_str(&derive_accept_key(key.as_bytes()))
            .expect("base64 is a valid header value");
        let offered = |wanted: &str| header_has_token(&parts.headers, header::SEC_WEBSOCKET_PROTOCOL, wanted);
        // The server's preference, whatever the client's order: MessagePack
        // over JSON, each batched over one event per frame.
        let protocol = [
            MSGPACK_BATCH_PROTOCOL,
            MSGPACK_PROTOCOL,
            JSON_BATCH_PROTOCOL,
            JSON_PROTOCOL,
        ]
        .into_iter()
        .find(|protocol| offered(protocol));
        let on_upgrade = parts
            .extensions
            .remove::<OnUpgrade>()
            .ok_or_else(|| bad("this connection cannot be upgraded"))?;
        Ok(Upgrade {
            accept,
            protocol,
            on_upgrade,
        })
    }
}

/// How a connection's events are framed, as the client chose by
/// subprotocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Framing {
    /// JSON text frames (also without a subprotocol) or MessagePack binary
    /// frames.
    pub(crate) encoding: Encoding,
    /// Several events per frame (the `.batch` subprotocols).
    pub(crate) batched: bool,
}

impl Framing {
    /// What separates two events packed into one frame: a line break
    /// between JSON events (each is one line), nothing between MessagePack
    /// values (each says where it ends). `None`: one event per frame.
    pub(crate) fn separator(self) -> Option<&'static [u8]> {
        match (self.batched, self.encoding) {
            (false, _) => None,
            (true, Encoding::MsgPack) => Some(b""),
            (true, _) => Some(b"\n"),
        }
    }
}

impl Upgrade {
    /// The framing the client chose by subprotocol (JSON, one event per
    /// frame, without one).
    pub(crate) fn framing(&self) -> Framing {
        let encoding = match self.protocol {
            Some(MSGPACK_PROTOCOL | MSGPACK_BATCH_PROTOCOL) => Encoding::MsgPack,
            _ => Encoding::Json,
        };
        let batched = matches!(self.protocol, Some(MSGPACK_BATCH_PROTOCOL | JSON_BATCH_PROTOCOL));
        Framing { encoding, batched }
    }

    /// Answers 101 and runs `serve` with the connection once hyper hands
    /// it over.
    pub(crate) fn on_upgrade<F>(
        self,
        config: WebSocketConfig,
        serve: impl FnOnce(Box<Socket>) -> F + Send + 'static,
    ) -> Response
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let Upgrade {
            accept,
            protocol,
            on_upgrade,
        } = self;
        tokio::spawn(async move {
            let Ok(upgraded) = on_upgrade.await else {
                return;
            };
            serve(Box::new(Socket::new(TokioIo::new(upgraded), config).await)).await;
        });
        let mut response = (
            StatusCode::SWITCHING_PROTOCOLS,
            [
                (header::CONNECTION, HeaderValue::from_static("upgrade")),
                (header::UPGRADE, HeaderValue::from_static("websocket")),
                (header::SEC_WEBSOCKET_ACCEPT, accept),
            ],
        )
            .into_response();
        if let Some(protocol) = protocol {
            response
                .headers_mut()
                .insert(header::SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(protocol));
        }
        response
    }
}

/// Whether `name`'s comma-separated values include `token`, ignoring case.
fn header_has_token(headers: &HeaderMap, name: HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|value| {
        value
            .as_bytes()
            .split(|byte| *byte == b',')
            .any(|part| part.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
    })
}

/// An upgraded connection: tungstenite reads, [`FrameWriter`] writes.
pub(crate) struct Socket {
    pub(crate) reader: WebSocketStream<ReadSide>,
    pub(crate) writer: FrameWriter,
}

impl std::fmt::Debug for Socket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Socket").finish_non_exhaustive()
    }
}

impl Socket {
    async fn new(io: Io, config: WebSocketConfig) -> Socket {
        let (read, write) = tokio::io::split(io);
        let control = Arc::new(Mutex::new(Vec::new()));
        let reader = WebSocketStream::from_raw_socket(
            ReadSide {
                read,
                control: control.clone(),
                bulk: BytesMut::new(),
                busy: false,
            },
            Role::Server,
            Some(config),
        )
        .await;
        Socket {
            reader,
            writer: FrameWriter {
                write,
                out: Vec::new(),
                control,
                packing: None,
            },
        }
    }
}

/// What tungstenite sees: the connection's read half, and for its writes
/// (pongs, close replies) the control buffer.
///
/// tungstenite reads at most its read buffer's size per call, and keeps
/// that buffer for the connection's life: small (`READ_BUFFER`), so an
/// idle connection holds little. A client sending more than that at once
/// (a pipelining publisher) is read in bulk here instead, `BULK_READ` bytes
/// per system call, into a buffer freed once tungstenite has taken it all.
pub(crate) struct ReadSide<R = ReadHalf<Io>> {
    read: R,
    control: Arc<Mutex<Vec<u8>>>,
    bulk: BytesMut,
    /// The last read filled what was asked: more is probably waiting.
    busy: bool,
}

/// tungstenite's read buffer: a command fits.
pub(crate) const READ_BUFFER: usize = 256;
/// What one system call reads from a busy connection.
const BULK_READ: usize = 16 * 1024;

impl<R: AsyncRead + Unpin> AsyncRead for ReadSide<R> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.bulk.is_empty() && this.busy {
            this.bulk.reserve(BULK_READ);
            match poll_read_buf(Pin::new(&mut this.read), cx, &mut this.bulk) {
                Poll::Ready(read) => this.busy = read? == BULK_READ,
                Poll::Pending => {
                    // Nothing more after all: wait without the buffer.
                    this.bulk = BytesMut::new();
                    this.busy = false;
                    return Poll::Pending;
                }
            }
        }
        if !this.bulk.is_empty() {
            let taken = buf.remaining().min(this.bulk.len());
            buf.put_slice(&this.bulk.split_to(taken));
            if this.bulk.is_empty() {
                this.bulk = BytesMut::new();
            }
            return Poll::Ready(Ok(()));
        }
        let wanted = buf.remaining();
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.read).poll_read(cx, buf))?;
        this.busy = wanted > 0 && buf.filled().len() - before == wanted;
        Poll::Ready(Ok(()))
    }
}

impl<R: Unpin> AsyncWrite for ReadSide<R> {
    fn poll_write(self: Pin<&mut Self>, _cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        // Bounded by the replies a connection may have unread: each ping
        // counts as one (Outbox::push_transport_reply).
        lock(&self.control).extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

fn lock(control: &Mutex<Vec<u8>>) -> std::sync::MutexGuard<'_, Vec<u8>> {
    // Appending bytes cannot leave the buffer half-changed.
    control.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A write buffer larger than this is written out before more is added,
/// and not kept once flushed: an idle connection holds none.
const WRITE_CHUNK: usize = 64 * 1024;

/// Largest payload of a frame events are packed into: its length fits the
/// two-byte form of the header reserved for it. An event larger than this
/// gets a frame of its own.
const MAX_PACKED: usize = 0xffff;
/// The header reserved for a frame being packed: a two-byte length.
const PACKED_HEADER: usize = 4;

/// Herald's side of the connection: frames gathered in a buffer, written
/// out on flush.
pub(crate) struct FrameWriter<W = WriteHalf<Io>> {
    write: W,
    out: Vec<u8>,
    control: Arc<Mutex<Vec<u8>>>,
    /// The frame events are being packed into: where its header starts in
    /// `out`, and its opcode. Its length is written when it is closed.
    packing: Option<(usize, u8)>,
}

impl<W: AsyncWrite + Unpin> FrameWriter<W> {
    /// Adds a complete frame; [`FrameWriter::write_if_full`] next.
    pub(crate) fn append_encoded(&mut self, frame: &[u8]) {
        self.close_packed();
        self.out.extend_from_slice(frame);
    }

    /// Adds `event` to the frame being packed when it is of the same
    /// `opcode` and has room, after `separator`; otherwise closes that frame
    /// and starts another. [`FrameWriter::write_if_full`] next.
    pub(crate) fn append_packed(&mut self, opcode: u8, separator: &[u8], event: &[u8]) {
        if let Some((start, packing)) = self.packing {
            let length = self.out.len() - start - PACKED_HEADER;
            if packing == opcode && length + separator.len() + event.len() <= MAX_PACKED {
                self.out.extend_from_slice(separator);
                self.out.extend_from_slice(event);
                return;
            }
            self.close_packed();
        }
        if event.len() > MAX_PACKED {
            put_header(&mut self.out, opcode, event.len());
        } else {
            self.packing = Some((self.out.len(), opcode));
            self.out.extend_from_slice(&[0; PACKED_HEADER]);
        }
        self.out.extend_from_slice(event);
    }

    /// Writes the header of the frame being packed, now that its length is
    /// known; a short frame's header is two bytes, not the four reserved.
    fn close_packed(&mut self) {
        let Some((start, opcode)) = self.packing.take() else {
            return;
        };
        let length = self.out.len() - start - PACKED_HEADER;
        self.out[start] = 0x80 | opcode;
        if length <= 125 {
            self.out[start + 1] = length as u8;
            self.out.copy_within(start + PACKED_HEADER.., start + 2);
            self.out.truncate(self.out.len() - 2);
        } else {
            self.out[start + 1] = 126;
            self.out[start + 2..start + PACKED_HEADER].copy_from_slice(&(length as u16).to_be_bytes());
        }
    }

    /// Adds a frame of `opcode` around `payload`.
    pub(crate) async fn push(&mut self, opcode: u8, payload: &[u8]) -> io::Result<()> {
        self.close_packed();
        put_header(&mut self.out, opcode, payload.len());
        self.out.extend_from_slice(payload);
        self.write_if_full().await
    }

    /// Writes the buffer out once it holds `WRITE_CHUNK` bytes.
    pub(crate) async fn write_if_full(&mut self) -> io::Result<()> {
        if self.out.len() >= WRITE_CHUNK {
            self.close_packed();
            self.write.write_all(&self.out).await?;
            self.out.clear();
        }
        Ok(())
    }

    /// Writes out tungstenite's answers, then every frame added.
    pub(crate) async fn flush(&mut self) -> io::Result<()> {
        self.close_packed();
        let control = std::mem::take(&mut *lock(&self.control));
        if !control.is_empty() {
            self.write.write_all(&control).await?;
        }
        if !self.out.is_empty() {
            self.write.write_all(&self.out).await?;
            if self.out.capacity() > WRITE_CHUNK {
                self.out = Vec::new();
            } else {
                self.out.clear();
            }
        }
        self.write.flush().await
    }

    /// Adds a close frame with `code` and `reason` (at most 123 bytes).
    pub(crate) async fn push_close(&mut self, code: u16, reason: &str) -> io::Result<()> {
        let mut end = reason.len().min(123);
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        let mut payload = Vec::with_capacity(2 + end);
        payload.extend_from_slice(&code.to_be_bytes());
        payload.extend_from_slice(&reason.as_bytes()[..end]);
        self.push(OPCODE_CLOSE, &payload).await
    }
}

pub(crate) const OPCODE_TEXT: u8 = 0x1;
pub(crate) const OPCODE_BINARY: u8 = 0x2;
pub(crate) const OPCODE_CLOSE: u8 = 0x8;
pub(crate) const OPCODE_PING: u8 = 0x9;

/// A final, unmasked frame's header (RFC 6455 §5.2).
fn put_header(out: &mut Vec<u8>, opcode: u8, length: usize) {
    out.push(0x80 | opcode);
    match length {
        0..=125 => out.push(length as u8),
        126..=0xffff => {
            out.push(126);
            out.extend_from_slice(&(length as u16).to_be_bytes());
        }
        _ => {
            out.push(127);
            out.extend_from_slice(&(length as u64).to_be_bytes());
        }
    }
}

/// A complete frame of `opcode` around `payload`.
pub(crate) fn encode_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(payload.len() + 10);
    put_header(&mut frame, opcode, payload.len());
    frame.extend_from_slice(payload);
    frame
}

/// The opcode and payload of a frame [`encode_frame`] made (final and
/// unmasked, as a server's frames are), read back from its header.
pub(crate) fn split_frame(frame: &[u8]) -> (u8, &[u8]) {
    let header = match frame[1] {
        126 => 4,
        127 => 10,
        _ => 2,
    };
    (frame[0] & 0x0f, &frame[header..])
}

#[cfg(test)]
mod tests {
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Control, Data, OpCode};
    use tokio_tungstenite::tungstenite::protocol::frame::FrameHeader;

    use super::*;

    /// A client that filled the small read is read in bulk, and a bulk
    /// read that finds nothing waits without holding its buffer.
    #[tokio::test]
    async fn a_busy_client_is_read_in_bulk_and_an_idle_one_holds_no_buffer() {
        use tokio::io::AsyncReadExt;
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let mut side = ReadSide {
            read: server,
            control: Arc::default(),
            bulk: BytesMut::new(),
            busy: false,
        };
        client.write_all(&[7u8; 1000]).await.unwrap();
        let mut small = [0u8; READ_BUFFER];
        assert_eq!(side.read(&mut small).await.unwrap(), READ_BUFFER);
        assert!(side.busy, "a full small read means more is waiting");
        // The next read takes everything left in one go, then hands it out.
        assert_eq!(side.read(&mut small).await.unwrap(), READ_BUFFER);
        assert_eq!(side.bulk.len(), 1000 - 2 * READ_BUFFER);
        let mut rest = vec![0u8; 4096];
        assert_eq!(side.read(&mut rest).await.unwrap(), 1000 - 2 * READ_BUFFER);
        assert_eq!(side.bulk.capacity(), 0, "a drained bulk buffer is freed");
        // Busy again, then nothing comes: the wait holds no buffer.
        side.busy = true;
        let waiting = tokio::time::timeout(std::time::Duration::from_millis(20), side.read(&mut small)).await;
        assert!(waiting.is_err(), "nothing to read");
        assert_eq!(side.bulk.capacity(), 0, "an idle connection holds no bulk buffer");
        assert!(!side.busy);
    }

    /// Every frame in `bytes`, as tungstenite reads them: opcode and payload.
    fn frames_in(bytes: &[u8]) -> Vec<(OpCode, Vec<u8>)> {
        let mut cursor = std::io::Cursor::new(bytes);
        let mut frames = Vec::new();
        while (cursor.position() as usize) < bytes.len() {
            let (header, length) = FrameHeader::parse(&mut cursor).unwrap().expect("a whole header");
            assert!(header.is_final && header.mask.is_none());
            let start = cursor.position() as usize;
            let end = start + length as usize;
            assert!(end <= bytes.len(), "a whole payload");
            frames.push((header.opcode, bytes[start..end].to_vec()));
            cursor.set_position(end as u64);
        }
        frames
    }

    fn writer() -> FrameWriter<Vec<u8>> {
        FrameWriter {
            write: Vec::new(),
            out: Vec::new(),
            control: Arc::default(),
            packing: None,
        }
    }

    const TEXT: OpCode = OpCode::Data(Data::Text);
    const BINARY: OpCode = OpCode::Data(Data::Binary);

    /// Packed events share frames as long as they are of one type and fit
    /// `MAX_PACKED`; every header is the shortest for its length; a larger
    /// event has a frame of its own; a control frame or a flush ends the
    /// frame being packed, and order is kept throughout.
    #[tokio::test]
    async fn events_are_packed_into_frames_of_the_shortest_header() {
        let mut writer = writer();
        for event in [&b"{\"a\":1}"[..], b"{\"b\":2}", b"{\"c\":3}"] {
            writer.append_packed(OPCODE_TEXT, b"\n", event);
        }
        writer.push(OPCODE_PING, b"").await.unwrap();
        writer.append_packed(OPCODE_TEXT, b"\n", &[b'd'; 200]);
        writer.append_packed(OPCODE_BINARY, b"", b"\x81\xa1x\x01");
        writer.append_packed(OPCODE_BINARY, b"", b"\x80");
        writer.flush().await.unwrap();
        let frames = frames_in(&writer.write);
        let expected: Vec<(OpCode, Vec<u8>)> = vec![
            (TEXT, b"{\"a\":1}\n{\"b\":2}\n{\"c\":3}".to_vec()),
            (OpCode::Control(Control::Ping), vec![]),
            (TEXT, vec![b'd'; 200]),
            (BINARY, b"\x81\xa1x\x01\x80".to_vec()),
        ];
        assert_eq!(frames, expected);
        // Shortest headers: 2 bytes for up to 125, 4 for the 200-byte frame.
        assert_eq!(writer.write.len(), (2 + 23) + 2 + (4 + 200) + (2 + 5));

        // Frames fill up to MAX_PACKED, never splitting an event; a larger
        // event goes alone; the buffer is written out in whole frames.
        let mut writer = writer_with_events(&[30_000, 30_000, 30_000, 70_000, 10]).await;
        writer.flush().await.unwrap();
        let sizes: Vec<usize> = frames_in(&writer.write)
            .iter()
            .map(|(_, payload)| payload.len())
            .collect();
        assert_eq!(sizes, [60_001, 30_000, 70_000, 10]);
        assert!(sizes.iter().all(|size| *size <= MAX_PACKED || *size == 70_000));
    }

    /// Events of `sizes` bytes, each its size's digit repeated, packed with
    /// `write_if_full` after each, as the connection's writer does; what
    /// was written out so far is whole frames.
    async fn writer_with_events(sizes: &[usize]) -> FrameWriter<Vec<u8>> {
        let mut writer = writer();
        for (index, size) in sizes.iter().enumerate() {
            writer.append_packed(OPCODE_TEXT, b"\n", &vec![b'0' + index as u8; *size]);
            writer.write_if_full().await.unwrap();
            frames_in(&writer.write);
        }
        writer
    }

    /// Our headers are what tungstenite parses, at each length boundary.
    #[test]
    fn frames_parse_as_tungstenite_reads_them() {
        for length in [0, 1, 125, 126, 127, 0xffff, 0x1_0000, 300_000] {
            let payload = vec![b'x'; length];
            let frame = encode_frame(OPCODE_TEXT, &payload);
            let mut cursor = std::io::Cursor::new(&frame[..]);
            let (header, parsed_length) = FrameHeader::parse(&mut cursor).unwrap().unwrap();
            assert!(header.is_final);
            assert_eq!(header.opcode, OpCode::Data(Data::Text));
            assert_eq!(header.mask, None, "servers do not mask");
            assert_eq!(parsed_length, length as u64);
            assert_eq!(cursor.position() as usize + length, frame.len());
        }
    }

    #[test]
    fn a_frame_s_opcode_and_payload_are_read_back_from_its_header() {
        for length in [0, 1, 125, 126, 127, 0xffff, 0x1_0000, 70_000] {
            let payload: Vec<u8> = (0..length).map(|i| i as u8).collect();
            for opcode in [OPCODE_TEXT, OPCODE_BINARY] {
                let frame = encode_frame(opcode, &payload);
                let (read_opcode, read_payload) = split_frame(&frame);
                assert_eq!(read_opcode, opcode, "{length} bytes");
                assert_eq!(read_payload, &payload[..], "{length} bytes");
            }
        }
    }
}
