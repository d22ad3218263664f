//! Herald's one-way transports as the load generator reads them: an SSE
//! stream (chunked `text/event-stream`) or a long-poll loop (keep-alive
//! requests carrying the cursor), over HTTP/1.1 written by hand, as thin as
//! the other clients.

use std::net::SocketAddr;

use anyhow::{bail, Context};
use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::clients::{classify_herald, stamped, Received};

/// A Herald subscriber over plain HTTP/1.1: an SSE stream, or a long-poll
/// loop on one keep-alive connection. Reading is cancel-safe: the buffers
/// live here, and a poll in flight is remembered, not sent twice.
#[derive(Debug)]
pub struct HttpSubscriber {
    stream: TcpStream,
    host: String,
    input: BytesMut,
    /// SSE: the body so far, de-chunked; events end with a blank line.
    body: BytesMut,
    /// SSE: bytes of the current chunk still to come; `None` between chunks.
    chunk_left: Option<usize>,
    /// Long polling: the subject, the cursor, events not yet handed out,
    /// and whether a poll is waiting for its answer.
    subject: String,
    cursor: String,
    events: std::collections::VecDeque<Vec<u8>>,
    poll_in_flight: bool,
}

/// How long a benchmark poll may wait on the server.
const POLL_WAIT_SECONDS: u32 = 25;

impl HttpSubscriber {
    pub(crate) fn new(stream: TcpStream, server: SocketAddr) -> HttpSubscriber {
        HttpSubscriber {
            stream,
            host: server.to_string(),
            input: BytesMut::with_capacity(16 * 1024),
            body: BytesMut::new(),
            chunk_left: None,
            subject: String::new(),
            cursor: String::new(),
            events: std::collections::VecDeque::new(),
            poll_in_flight: false,
        }
    }

    async fn get(&mut self, path: &str) -> anyhow::Result<()> {
        let request = format!("GET {path} HTTP/1.1\r\nHost: {}\r\n\r\n", self.host);
        Ok(self.stream.write_all(request.as_bytes()).await?)
    }

    /// Reads a response head; returns its status and content length.
    async fn read_head(&mut self) -> anyhow::Result<(u16, Option<usize>)> {
        let end = loop {
            if let Some(at) = self.input.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            if self.stream.read_buf(&mut self.input).await? == 0 {
                bail!("Herald closed the connection");
            }
        };
        let head = std::str::from_utf8(&self.input[..end])?.to_ascii_lowercase();
        let status = head.get(9..12).context("a status line")?.parse()?;
        let length = head
            .lines()
            .find_map(|line| line.strip_prefix("content-length:"))
            .map(|value| value.trim().parse())
            .transpose()?;
        self.input.advance(end);
        Ok((status, length))
    }

    pub(crate) async fn open_stream(&mut self, subject: &str) -> anyhow::Result<()> {
        self.get(&format!("/sse?subject={subject}")).await?;
        let (status, _) = self.read_head().await?;
        anyhow::ensure!(status == 200, "SSE stream refused: {status}");
        // The first event is the ack: the subscription is in place.
        loop {
            if let Received::Other = self.next_sse_event().await? {
                return Ok(());
            }
        }
    }

    /// The next event of the stream (chunked transfer encoding).
    pub(crate) async fn next_sse_event(&mut self) -> anyhow::Result<Received> {
        loop {
            // A vectorised search, as for the other transports' events.
            let body = &self.body[..];
            if let Some(end) = memchr::memchr_iter(b'\n', body).find(|at| body.get(at + 1) == Some(&b'\n')) {
                let event = self.body.split_to(end + 2);
                return Ok(classify_sse(&event));
            }
            match self.chunk_left {
                Some(left) if !self.input.is_empty() => {
                    let take = left.min(self.input.len());
                    self.body.extend_from_slice(&self.input.split_to(take));
                    self.chunk_left = Some(left - take).filter(|left| *left > 0);
                    if self.chunk_left.is_none() {
                        self.skip_chunk_end().await?;
                    }
                    continue;
                }
                None => {
                    if let Some(at) = self.input.windows(2).position(|w| w == b"\r\n") {
                        let size = usize::from_str_radix(std::str::from_utf8(&self.input[..at])?.trim(), 16)?;
                        self.input.advance(at + 2);
                        if size == 0 {
                            return Ok(Received::Closed);
                        }
                        self.chunk_left = Some(size);
                        continue;
                    }
                }
                Some(_) => {}
            }
            if self.stream.read_buf(&mut self.input).await? == 0 {
                return Ok(Received::Closed);
            }
        }
    }

    /// The `\r\n` after a chunk's data.
    async fn skip_chunk_end(&mut self) -> anyhow::Result<()> {
        while self.input.len() < 2 {
            if self.stream.read_buf(&mut self.input).await? == 0 {
                bail!("Herald closed the stream mid-chunk");
            }
        }
        self.input.advance(2);
        Ok(())
    }

    pub(crate) async fn start_polling(&mut self, subject: &str) -> anyhow::Result<()> {
        self.subject = subject.to_owned();
        // wait=0: the cursor of "now", before anything is published.
        self.get(&format!("/poll?subject={subject}&wait=0")).await?;
        self.poll_in_flight = true;
        self.read_answer().await?;
        // Then wait, as an idle long-poll client does.
        self.send_poll().await
    }

    async fn send_poll(&mut self) -> anyhow::Result<()> {
        let path = format!(
            "/poll?subject={}&cursor={}&wait={POLL_WAIT_SECONDS}",
            self.subject, self.cursor
        );
        self.get(&path).await?;
        self.poll_in_flight = true;
        Ok(())
    }

    async fn read_answer(&mut self) -> anyhow::Result<()> {
        let (status, length) = self.read_head().await?;
        let length = length.context("a poll answer has a length")?;
        while self.input.len() < length {
            if self.stream.read_buf(&mut self.input).await? == 0 {
                bail!("Herald closed the connection mid-answer");
            }
        }
        let body = self.input.split_to(length);
        self.poll_in_flight = false;
        anyhow::ensure!(
            status == 200,
            "poll refused: {status} {}",
            String::from_utf8_lossy(&body)
        );
        #[derive(serde::Deserialize)]
        struct Answer<'a> {
            cursor: String,
            #[serde(borrow)]
            events: Vec<&'a serde_json::value::RawValue>,
        }
        let answer: Answer<'_> = serde_json::from_slice(&body)?;
        self.cursor = answer.cursor;
        self.events
            .extend(answer.events.iter().map(|event| event.get().as_bytes().to_vec()));
        Ok(())
    }

    pub(crate) async fn next_polled_event(&mut self) -> anyhow::Result<Received> {
        loop {
            if let Some(event) = self.events.pop_front() {
                return Ok(classify_herald(&event));
            }
            if !self.poll_in_flight {
                self.send_poll().await?;
            }
            self.read_answer().await?;
        }
    }
}

fn classify_sse(event: &[u8]) -> Received {
    match event
        .split(|&b| b == b'\n')
        .find_map(|line| line.strip_prefix(b"event: "))
    {
        Some(b"msg") => stamped(event),
        Some(b"gap") => Received::Gap,
        Some(b"err") => Received::Closed,
        _ => Received::Other,
    }
}
