//! The HTTP listener's connections, each with a bound on stalled writes.
//!
//! hyper has no write timeout of its own: a client that stops reading a
//! response (a history page, an SSE stream) would hold its connection and
//! the response's memory for as long as it likes. Every accepted connection
//! is wrapped so that a write making no progress for `server.write_timeout`
//! fails, and hyper closes the connection. Upgraded WebSockets inherit it;
//! their own, shorter `websocket.write_timeout` normally acts first.

use std::pin::Pin;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_io_timeout::TimeoutStream;

/// A TCP listener whose connections time out stalled writes.
#[derive(Debug)]
pub struct TimeoutListener {
    inner: TcpListener,
    write_timeout: Duration,
}

impl TimeoutListener {
    pub fn new(inner: TcpListener, write_timeout: Duration) -> TimeoutListener {
        TimeoutListener { inner, write_timeout }
    }
}

impl axum::serve::Listener for TimeoutListener {
    type Io = Pin<Box<TimeoutStream<TcpStream>>>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let (stream, address) = axum::serve::Listener::accept(&mut self.inner).await;
        // Without TCP_NODELAY a small frame can wait for the client's delayed
        // ACK: tens of milliseconds added to the latency tail.
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, "cannot set TCP_NODELAY");
        }
        let mut stream = TimeoutStream::new(stream);
        stream.set_write_timeout(Some(self.write_timeout));
        (Box::pin(stream), address)
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}
