//! The HTTP listener: which connections are accepted, how long each may
//! take, and how each ends.
//!
//! What a client without a key can make the server hold here is bounded:
//!
//! - **connections**: at most `server.max_connections` in all and
//!   `server.max_connections_per_ip` from one address (one /64 for IPv6);
//!   a connection over either is answered `503 too_many_connections` and
//!   closed, with a warning logged at most once per [`REFUSAL_LOG_INTERVAL`];
//! - **time to send a request**: `server.header_read_timeout` for the
//!   request line and headers, which hyper also applies to a keep-alive
//!   connection waiting for its next request (and to a connection that
//!   never sends anything);
//! - **stalled writes**: a write that makes no progress for
//!   `server.write_timeout` fails and the connection closes. Upgraded
//!   WebSockets inherit it; their own, shorter `websocket.write_timeout`
//!   normally acts first.
//!
//! Each connection ends with a lingering close: the server shuts its
//! sending side, then reads and discards what the client still sends for a
//! short while before closing. Closing a socket with unread data makes the
//! kernel send a reset, which can destroy the last thing the server wrote
//! before the client reads it: a 1009 close frame after an oversized frame,
//! a 413 after a too-large body.
//!
//! Shutdown stops accepting, lets requests in flight finish (a request is
//! in flight from its complete head to its handler's answer: a publish
//! whose body is still arriving is answered), closes idle keep-alive
//! connections at once, and closes a connection still sending a head after
//! [`HEAD_GRACE`]: a half-sent request cannot hold shutdown for its whole
//! grace period.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::tls::Tls;

/// At most one refusal warning per interval; the next one says how many
/// connections were refused meanwhile.
pub const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);
/// How long a connection that is still sending a request's head when
/// shutdown starts may take to finish it.
const HEAD_GRACE: Duration = Duration::from_millis(500);
/// Refused connections being answered at once, at most; beyond, a refused
/// connection is closed without an answer, so refusing cannot itself hold
/// more than this many descriptors.
const MAX_REFUSALS_IN_FLIGHT: usize = 256;
/// How long a closing connection is drained, at most.
const LINGER_TIME: Duration = Duration::from_secs(2);
/// A closing connection that sends nothing for this long is done: what was
/// in flight has arrived.
const LINGER_QUIET: Duration = Duration::from_millis(200);
/// How much a closing connection is drained, at most.
const LINGER_BYTES: usize = 256 * 1024;

/// The limits of [`serve`], from the `[server]` section.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenerLimits {
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    pub header_read_timeout: Duration,
    pub write_timeout: Duration,
}

/// File descriptors kept for everything but client connections (the
/// listener, logs, history files, the runtime).
const RESERVED_FILE_DESCRIPTORS: u64 = 128;

impl ListenerLimits {
    /// These limits with `max_connections` lowered to what the process's
    /// open-file limit allows, after raising that limit as far as the
    /// system lets it: running out of descriptors would refuse connections
    /// with no answer at all, and stall everything else that opens a file.
    pub fn fitted_to_open_file_limit(mut self) -> ListenerLimits {
        let Ok(limit) = rlimit::increase_nofile_limit(u64::MAX) else {
            return self;
        };
        let room = limit.saturating_sub(RESERVED_FILE_DESCRIPTORS).max(1);
        if (self.max_connections as u64) > room {
            tracing::warn!(
                max_connections = self.max_connections,
                open_file_limit = limit,
                lowered_to = room,
                "server.max_connections does not fit the open-file limit (ulimit -n); lowered"
            );
            self.max_connections = room as usize;
        }
        self
    }
}

/// Accepts and serves connections until `shutdown`, then waits for the
/// requests in flight (streams end on the same signal) and for every
/// connection to be closed, and returns.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ListenerLimits,
    tls: Option<Arc<Tls>>,
    shutdown: CancellationToken,
) {
    let gate = Arc::new(Gate::new(limits.max_connections, limits.max_connections_per_ip));
    let connections = TaskTracker::new();
    let mut refusals = RefusalLog::default();
    let refusals_in_flight = Arc::new(AtomicUsize::new(0));
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors or memory: the caps are meant
                    // to prevent it; back off rather than spin.
                    refusals.accept_failed(&error);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        let admission = match gate.admit(peer.ip()) {
            Ok(admission) => admission,
            Err(refusal) => {
                refusals.refused(refusal, peer, limits);
                if refusals_in_flight.load(Ordering::Relaxed) < MAX_REFUSALS_IN_FLIGHT {
                    let in_flight = InFlight::enter(&refusals_in_flight);
                    tokio::spawn(async move {
                        refuse(stream, refusal).await;
                        drop(in_flight);
                    });
                }
                continue;
            }
        };
        // Without TCP_NODELAY a small frame can wait for the client's delayed
        // ACK: tens of milliseconds added to the latency tail.
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, "cannot set TCP_NODELAY");
        }
        let connection = Connection::new(stream, limits.write_timeout, admission);
        let service = CountRequests {
            inner: TowerToHyperService::new(app.clone()),
            in_flight: Arc::default(),
        };
        let shutdown = shutdown.clone();
        connections.spawn(serve_connection(
            connection,
            service,
            tls.clone(),
            limits,
            shutdown,
            peer,
        ));
    }
    connections.close();
    connections.wait().await;
    // Upgraded connections (served elsewhere) and lingering closes hold
    // their place until their socket is closed: the process exits only
    // once the last close frame has been delivered, not reset away.
    while gate.open_connections() > 0 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One accepted connection's task: HTTP, in TLS when configured.
async fn serve_connection(
    connection: Connection,
    service: CountRequests<TowerToHyperService<Router>>,
    tls: Option<Arc<Tls>>,
    limits: ListenerLimits,
    shutdown: CancellationToken,
    peer: SocketAddr,
) {
    match tls {
        None => serve_http(TokioIo::new(connection), service, limits, shutdown, peer).await,
        // Boxed apart: a TLS connection's states (the handshake, rustls's
        // own) are three times a plain one's, and every plain connection's
        // task, an SSE stream or a waiting poll, would be sized by them.
        Some(tls) => Box::pin(serve_tls(&tls, connection, service, limits, shutdown, peer)).await,
    }
}

async fn serve_tls(
    tls: &Tls,
    connection: Connection,
    service: CountRequests<TowerToHyperService<Router>>,
    limits: ListenerLimits,
    shutdown: CancellationToken,
    peer: SocketAddr,
) {
    // The handshake counts against the time allowed for a head: a client
    // that opens TLS and stalls is closed like one that stalls before its
    // request line.
    let handshake = tokio::select! {
        handshake = tokio::time::timeout(limits.header_read_timeout, tls.acceptor().accept(connection)) => handshake,
        () = shutdown.cancelled() => return,
    };
    match handshake {
        Ok(Ok(stream)) => serve_http(TokioIo::new(stream), service, limits, shutdown, peer).await,
        Ok(Err(error)) => tracing::debug!(%peer, %error, "TLS handshake failed"),
        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
    }
}

/// Serves HTTP/1.1 (and upgrades) on one connection until it ends; on
/// shutdown, lets the request in flight finish.
async fn serve_http<I>(
    io: I,
    service: CountRequests<TowerToHyperService<Router>>,
    limits: ListenerLimits,
    shutdown: CancellationToken,
    peer: SocketAddr,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let in_flight = service.in_flight.clone();
    let serving = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .serve_connection(io, service)
        .with_upgrades();
    tokio::pin!(serving);
    let result = tokio::select! {
        result = serving.as_mut() => result,
        () = shutdown.cancelled() => {
            serving.as_mut().graceful_shutdown();
            loop {
                tokio::select! {
                    result = serving.as_mut() => break result,
                    () = tokio::time::sleep(HEAD_GRACE) => {
                        // Nothing in flight: the client is still
                        // sending a head (an idle connection would
                        // have closed at once).
                        if in_flight.load(Ordering::Acquire) == 0 {
                            return;
                        }
                    }
                }
            }
        }
    };
    if let Err(error) = result {
        tracing::debug!(%peer, %error, "HTTP connection ended with an error");
    }
}

/// The connection's service, counting its requests in flight: from a
/// complete head to the handler's answer.
#[derive(Debug)]
struct CountRequests<S> {
    inner: S,
    in_flight: Arc<AtomicUsize>,
}

impl<S, R> hyper::service::Service<R> for CountRequests<S>
where
    S: hyper::service::Service<R>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn call(&self, request: R) -> Self::Future {
        let in_flight = InFlight::enter(&self.in_flight);
        let answer = self.inner.call(request);
        Box::pin(async move {
            let answer = answer.await;
            drop(in_flight);
            answer
        })
    }
}

/// One request in flight, counted until dropped.
struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    fn enter(count: &Arc<AtomicUsize>) -> InFlight {
        count.fetch_add(1, Ordering::AcqRel);
        InFlight(count.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Which cap a connection was refused by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    Total,
    PerAddress,
}

/// Counts connections, in all and per source address.
#[derive(Debug)]
struct Gate {
    max_total: usize,
    max_per_address: usize,
    counts: Mutex<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    per_address: HashMap<IpAddr, usize>,
}

impl Gate {
    fn new(max_total: usize, max_per_address: usize) -> Gate {
        Gate {
            max_total,
            max_per_address,
            counts: Mutex::new(Counts::default()),
        }
    }

    fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Admission, Refusal> {
        let address = address_group(ip);
        let mut counts = self
            .counts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if counts.total >= self.max_total {
            return Err(Refusal::Total);
        }
        let from_address = counts.per_address.entry(address).or_insert(0);
        if *from_address >= self.max_per_address {
            return Err(Refusal::PerAddress);
        }
        *from_address += 1;
        counts.total += 1;
        Ok(Admission {
            gate: self.clone(),
            address,
        })
    }

    fn open_connections(&self) -> usize {
        self.counts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .total
    }

    fn release(&self, address: IpAddr) {
        let mut counts = self
            .counts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        counts.total -= 1;
        if let Some(from_address) = counts.per_address.get_mut(&address) {
            *from_address -= 1;
            if *from_address == 0 {
                counts.per_address.remove(&address);
            }
        }
    }
}

/// The unit a per-address cap counts: the address for IPv4, its /64 for
/// IPv6 (one host commonly holds a whole /64).
fn address_group(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        },
    }
}

/// A connection's place under the caps, given back when it is dropped.
#[derive(Debug)]
struct Admission {
    gate: Arc<Gate>,
    address: IpAddr,
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.gate.release(self.address);
    }
}

/// Answers a connection over a cap with a 503 and closes it.
async fn refuse(mut stream: TcpStream, refusal: Refusal) {
    let message = match refusal {
        Refusal::Total => "the server holds its maximum of connections; retry later",
        Refusal::PerAddress => "too many connections from this address; retry later",
    };
    let body = format!(r#"{{"code":"too_many_connections","message":"{message}"}}"#);
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    // A fresh socket's send buffer takes this at once; a client that does
    // not read it loses nothing it was promised.
    let written = tokio::time::timeout(Duration::from_secs(1), stream.write_all(response.as_bytes())).await;
    if matches!(written, Ok(Ok(()))) {
        linger(stream).await;
    }
}

/// Shuts the sending side, then drains what the client still sends until
/// it closes too or goes quiet for [`LINGER_QUIET`], within [`LINGER_TIME`]
/// and [`LINGER_BYTES`], before the socket is closed.
async fn linger(mut stream: TcpStream) {
    let _ = stream.shutdown().await;
    let mut discard = [0u8; 4096];
    let mut drained = 0;
    let _ = tokio::time::timeout(LINGER_TIME, async {
        while drained < LINGER_BYTES {
            match tokio::time::timeout(LINGER_QUIET, stream.read(&mut discard)).await {
                Ok(Ok(0) | Err(_)) | Err(_) => return,
                Ok(Ok(read)) => drained += read,
            }
        }
    })
    .await;
}

/// Logs refusals and accept failures, at most once per interval each.
#[derive(Debug, Default)]
struct RefusalLog {
    refused: u64,
    last_refusal_log: Option<Instant>,
    last_accept_log: Option<Instant>,
}

impl RefusalLog {
    fn refused(&mut self, refusal: Refusal, peer: SocketAddr, limits: ListenerLimits) {
        self.refused += 1;
        if !due(&mut self.last_refusal_log) {
            return;
        }
        let refused = std::mem::take(&mut self.refused);
        match refusal {
            Refusal::Total => tracing::warn!(
                max_connections = limits.max_connections,
                refused,
                "refusing connections: the server holds server.max_connections"
            ),
            Refusal::PerAddress => tracing::warn!(
                max_connections_per_ip = limits.max_connections_per_ip,
                %peer,
                refused,
                "refusing connections: an address holds server.max_connections_per_ip"
            ),
        }
    }

    fn accept_failed(&mut self, error: &io::Error) {
        if due(&mut self.last_accept_log) {
            tracing::warn!(%error, "cannot accept connections");
        }
    }
}

/// Whether a rate-limited log line may be written now (and records it).
fn due(last: &mut Option<Instant>) -> bool {
    let now = Instant::now();
    if last.is_some_and(|last| now.duration_since(last) < REFUSAL_LOG_INTERVAL) {
        return false;
    }
    *last = Some(now);
    true
}

/// One accepted connection: a TCP stream whose stalled writes time out and
/// which lingers when dropped.
#[derive(Debug)]
struct Connection {
    /// Taken on drop, to linger.
    stream: Option<TcpStream>,
    write_timeout: Duration,
    /// Armed while a write waits for the socket.
    write_deadline: Pin<Box<Sleep>>,
    write_pending: bool,
    /// Held until the connection has finished lingering.
    admission: Option<Admission>,
}

impl Connection {
    fn new(stream: TcpStream, write_timeout: Duration, admission: Admission) -> Connection {
        Connection {
            stream: Some(stream),
            write_timeout,
            write_deadline: Box::pin(tokio::time::sleep(write_timeout)),
            write_pending: false,
            admission: Some(admission),
        }
    }

    fn stream(&mut self) -> Pin<&mut TcpStream> {
        Pin::new(self.stream.as_mut().expect("the stream is only taken on drop"))
    }

    /// Runs one write operation under the write timeout: `Pending` starts
    /// the clock (if it is not already running), progress stops it.
    fn timed<T>(
        &mut self,
        cx: &mut Context<'_>,
        operation: impl FnOnce(Pin<&mut TcpStream>, &mut Context<'_>) -> Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        match operation(self.stream(), cx) {
            Poll::Ready(result) => {
                self.write_pending = false;
                Poll::Ready(result)
            }
            Poll::Pending => {
                if !self.write_pending {
                    self.write_pending = true;
                    let deadline = Instant::now() + self.write_timeout;
                    self.write_deadline.as_mut().reset(deadline);
                }
                match self.write_deadline.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "a write made no progress for server.write_timeout",
                    ))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

impl AsyncRead for Connection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.stream().poll_read(cx, buf)
    }
}

impl AsyncWrite for Connection {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.timed(cx, |stream, cx| stream.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.timed(cx, |stream, cx| stream.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.as_ref().is_some_and(TcpStream::is_write_vectored)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.timed(cx, |stream, cx| stream.poll_flush(cx))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.timed(cx, |stream, cx| stream.poll_shutdown(cx))
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        let (Some(stream), admission) = (self.stream.take(), self.admission.take()) else {
            return;
        };
        // Outside a runtime (it is shutting down) the socket just closes.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                linger(stream).await;
                drop(admission);
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_caps_count_per_address_and_in_all_and_give_back_on_drop() {
        let gate = Arc::new(Gate::new(3, 2));
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let first = gate.admit(a).unwrap();
        let _second = gate.admit(a).unwrap();
        assert_eq!(gate.admit(a).unwrap_err(), Refusal::PerAddress);
        let _third = gate.admit(b).unwrap();
        assert_eq!(gate.admit(b).unwrap_err(), Refusal::Total);
        drop(first);
        assert!(gate.admit(a).is_ok(), "a released place is free again");
    }

    #[tokio::test(start_paused = true)]
    async fn refusals_are_logged_once_per_interval() {
        let mut last = None;
        assert!(due(&mut last), "the first refusal is logged");
        assert!(!due(&mut last));
        tokio::time::advance(REFUSAL_LOG_INTERVAL).await;
        assert!(due(&mut last), "and the first after each interval");
        assert!(!due(&mut last));
    }

    fn future_size6<A, B, C, D, E, G, F>(_: impl Fn(A, B, C, D, E, G) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// An SSE stream or a waiting poll holds its connection's task for as
    /// long as it lasts: a plain connection's task is not sized by TLS's
    /// states (it was 5.4 KB with them inline, 1.4 KB without;
    /// docs/benchmarks.md, memory per idle connection).
    #[test]
    fn a_plain_connection_s_task_is_not_sized_by_tls() {
        let task = future_size6(serve_connection);
        assert!(task <= 1536, "a connection's task is {task} bytes");
    }

    #[test]
    fn ipv6_addresses_count_by_their_64_bit_prefix() {
        let one: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let same_prefix: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let other_prefix: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(address_group(one), address_group(same_prefix));
        assert_ne!(address_group(one), address_group(other_prefix));
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(address_group(mapped), "192.0.2.7".parse::<IpAddr>().unwrap());
    }
}
