//! The writer driver: the one loop every streaming transport runs to get
//! events from a connection's outbox onto its wire.
//!
//! It waits for the outbox, takes everything queued in one swap, encodes
//! each event (a message's frame is encoded once and shared), feeds them to
//! the transport's [`EventWriter`] and flushes once per batch. Between
//! batches it sends heartbeats. It also ends the connection for the server:
//! on shutdown or when a stream reaches its longest duration it closes the
//! outbox with that reason and delivers the final `err`; a write that makes
//! no progress for `write_timeout` closes it as a slow consumer.

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::time::Duration;

use bytes::Bytes;
use herald_broker::{CloseReason, Encoding, Outbound, Outbox};
use tokio::time::{timeout, Instant};

use crate::context::GatewayContext;
use crate::disconnect::DisconnectReason;

/// The timers a writer runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriterConfig {
    /// How often to send a heartbeat when nothing else is written.
    pub heartbeat_interval: Duration,
    /// A batch (or heartbeat) that takes longer to write closes the
    /// connection as a slow consumer.
    pub write_timeout: Duration,
    /// Close the connection, with `stream_expired`, after this long.
    pub max_duration: Option<Duration>,
    /// Close the connection, with `token_expired`, at this time
    /// (milliseconds since the Unix epoch): when its token expires.
    pub access_expires_at_millis: Option<u64>,
    /// How long the writer gathers after the first event arrives before it
    /// writes (`server.write_delay`): under load, one write carries many
    /// events instead of one each. A connection that has not written for
    /// this long, replies, the close and a queue half full are written at
    /// once. Zero: write as soon as anything is queued.
    pub write_delay: Duration,
}

/// How one transport writes: the only part of the writer that differs
/// between transports.
pub trait EventWriter: Send {
    /// Adds one encoded event to what the next flush writes.
    fn feed(&mut self, frame: Bytes) -> impl Future<Output = io::Result<()>> + Send;
    /// Adds one event to what the next flush writes: by default its frame
    /// in the connection's encoding, encoded once and shared with every
    /// other recipient. A transport whose frames differ per connection
    /// (NATS's `MSG` names the subscription) writes its own.
    fn write_event(
        &mut self,
        event: &Outbound,
        encoding: Encoding,
    ) -> impl Future<Output = io::Result<()>> + Send {
        self.feed(event.encode(encoding))
    }
    /// Writes out everything fed since the last flush.
    fn flush(&mut self) -> impl Future<Output = io::Result<()>> + Send;
    /// Keeps an idle connection alive (a WebSocket ping, an SSE comment).
    fn heartbeat(&mut self) -> impl Future<Output = io::Result<()>> + Send;
    /// Whether the next heartbeat has anything to do. A transport that
    /// needs none to stay alive, and only says something after it wrote
    /// (WebTransport's marks), says no while idle: the driver then does not
    /// wake the connection for its heartbeat timer.
    fn wants_heartbeat(&self) -> bool {
        true
    }
    /// Ends the connection after the final events were fed (a WebSocket
    /// close frame carrying the reason; nothing for a plain stream).
    fn close(&mut self, reason: &CloseReason) -> impl Future<Output = io::Result<()>> + Send;
}

/// Runs until the connection ends; returns why. Shutdown (from `context`)
/// and `max_duration` close the outbox with a reason the client receives.
pub async fn drive<W: EventWriter>(
    writer: &mut W,
    outbox: &Outbox,
    encoding: Encoding,
    config: &WriterConfig,
    context: &GatewayContext,
) -> DisconnectReason {
    let mut batch = VecDeque::new();
    let mut heartbeat = tokio::time::interval_at(
        Instant::now() + config.heartbeat_interval,
        config.heartbeat_interval,
    );
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The stream's longest duration or its token's expiry, whichever
    // comes first: one timer.
    let stream_end = config
        .max_duration
        .map(|duration| (Instant::now() + duration, CloseReason::StreamExpired));
    let token_end = config
        .access_expires_at_millis
        .map(|at| (Instant::now() + until_unix_millis(at), CloseReason::TokenExpired));
    let (end, end_reason) = match (stream_end, token_end) {
        (Some(stream), Some(token)) if token.0 < stream.0 => (Some(token.0), token.1),
        (Some((at, reason)), _) | (None, Some((at, reason))) => (Some(at), reason),
        (None, None) => (None, CloseReason::StreamExpired),
    };
    let mut closing = false;
    // When the last batch was written: a connection that wrote within the
    // delay is busy, and gathers.
    let mut last_write: Option<Instant> = None;
    loop {
        let next = tokio::select! {
            next = gather(outbox, &mut batch, config.write_delay, last_write) => next,
            () = context.shutdown.cancelled(), if !closing => {
                closing = true;
                outbox.close(CloseReason::Shutdown);
                continue;
            }
            () = sleep_until(end), if !closing => {
                closing = true;
                outbox.close(end_reason.clone());
                continue;
            }
            // Once closed, nothing may come between the final `err` and
            // the end of the connection, heartbeats included.
            _ = heartbeat.tick(), if !outbox.is_closed() && writer.wants_heartbeat() => {
                match timeout(config.write_timeout, writer.heartbeat()).await {
                    Ok(Ok(())) => continue,
                    Ok(Err(_)) => return DisconnectReason::WriteError,
                    Err(_elapsed) => return slow_consumer(outbox, context),
                }
            }
        };
        let closing_reason = next.err();
        let written = timeout(config.write_timeout, async {
            for event in batch.drain(..) {
                writer.write_event(&event, encoding).await?;
            }
            if let Some(reason) = &closing_reason {
                writer.close(reason).await?;
            }
            writer.flush().await
        })
        .await;
        match (written, closing_reason) {
            (Err(_elapsed), _) => return slow_consumer(outbox, context),
            (Ok(Err(_)), _) => return DisconnectReason::WriteError,
            (Ok(Ok(())), Some(reason)) => return DisconnectReason::Closed(reason),
            (Ok(Ok(())), None) => {
                outbox.count_write();
                last_write = Some(Instant::now());
            }
        }
    }
}

/// Takes the next batch: once something is queued, waits up to `delay`
/// for more unless the queue says it should go now, or the connection last
/// wrote longer than `delay` ago (as Nagle's algorithm sends at once on an
/// idle connection: at a rate slower than one write per delay nothing
/// would join the batch, and waiting would only add latency and a timer).
/// Cancel-safe: nothing is taken until the end.
async fn gather(
    outbox: &Outbox,
    batch: &mut VecDeque<Outbound>,
    delay: Duration,
    last_write: Option<Instant>,
) -> Result<(), CloseReason> {
    if !delay.is_zero() {
        outbox.ready().await;
        let now = Instant::now();
        let busy = last_write.is_some_and(|written| now.duration_since(written) < delay);
        if !busy {
            return outbox.next_batch(batch).await;
        }
        let deadline = now + delay;
        while !outbox.is_urgent() {
            if tokio::time::timeout_at(deadline, outbox.nudged()).await.is_err() {
                break;
            }
        }
    }
    outbox.next_batch(batch).await
}

fn slow_consumer(outbox: &Outbox, context: &GatewayContext) -> DisconnectReason {
    // A queue that overflowed under the disconnect policy was counted when
    // it closed; its final write timing out is the same slow consumer.
    if outbox.close_reason() != Some(CloseReason::SlowConsumer) {
        context.broker.count_slow_consumer();
    }
    outbox.close(CloseReason::SlowConsumer);
    DisconnectReason::WriteTimeout
}

/// How long until `at` (milliseconds since the Unix epoch); zero if past.
fn until_unix_millis(at: u64) -> Duration {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    Duration::from_millis(at).saturating_sub(now)
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use herald_broker::{
        Acknowledge, AllowAll, Authenticator, Broker, BrokerConfig, Payload, Permissions, Session,
    };

    use super::*;

    /// Records what the driver asks of it; `stall` makes flushes hang.
    #[derive(Default)]
    struct Recorder {
        fed: Vec<String>,
        flushes: usize,
        /// When each flush happened, and how many events it wrote.
        flushed: Vec<(Instant, usize)>,
        heartbeats: usize,
        closed_with: Option<&'static str>,
        stall: bool,
        /// Says no heartbeat is due.
        quiet: bool,
    }

    impl Recorder {
        /// Each flush as (milliseconds after `start`, events written).
        fn flushes_since(&self, start: Instant) -> Vec<(u128, usize)> {
            self.flushed
                .iter()
                .map(|(at, events)| ((*at - start).as_millis(), *events))
                .collect()
        }
    }

    impl EventWriter for Recorder {
        async fn feed(&mut self, frame: Bytes) -> io::Result<()> {
            self.fed.push(String::from_utf8(frame.to_vec()).unwrap());
            Ok(())
        }

        async fn flush(&mut self) -> io::Result<()> {
            if self.stall {
                std::future::pending::<()>().await;
            }
            self.flushes += 1;
            let before: usize = self.flushed.iter().map(|(_, events)| events).sum();
            self.flushed.push((Instant::now(), self.fed.len() - before));
            Ok(())
        }

        async fn heartbeat(&mut self) -> io::Result<()> {
            self.heartbeats += 1;
            Ok(())
        }

        async fn close(&mut self, reason: &CloseReason) -> io::Result<()> {
            self.closed_with = Some(reason.code());
            Ok(())
        }

        fn wants_heartbeat(&self) -> bool {
            !self.quiet
        }
    }

    fn setup() -> (GatewayContext, Session) {
        let broker = Broker::new(BrokerConfig::default());
        let auth = Arc::new(Authenticator::new(Vec::new(), Permissions::default()));
        let mut session = Session::new(&broker, Arc::new(AllowAll));
        session.subscribe(&["s"], None, Acknowledge::Never).unwrap();
        (GatewayContext::new(broker, auth), session)
    }

    fn publish(context: &GatewayContext, n: u32) {
        let payload = Payload::from_json(n.to_string().into()).unwrap();
        context.broker.publish("s", payload).unwrap();
    }

    const CONFIG: WriterConfig = WriterConfig {
        heartbeat_interval: Duration::from_secs(10),
        write_timeout: Duration::from_secs(2),
        max_duration: None,
        access_expires_at_millis: None,
        write_delay: Duration::ZERO,
    };

    #[tokio::test(start_paused = true)]
    async fn one_flush_per_batch_heartbeats_between_and_the_reason_last() {
        let (context, session) = setup();
        for n in 0..3 {
            publish(&context, n);
        }
        let mut writer = Recorder::default();
        let driving = drive(&mut writer, session.outbox(), Encoding::Json, &CONFIG, &context);
        let stop = async {
            tokio::time::sleep(Duration::from_secs(25)).await;
            context.shutdown.cancel();
        };
        let (reason, ()) = tokio::join!(driving, stop);
        assert_eq!(reason, DisconnectReason::Closed(CloseReason::Shutdown));
        assert_eq!(
            writer.fed.len(),
            4,
            "three messages and the final err: {:?}",
            writer.fed
        );
        assert!(writer.fed[3].contains(r#""code":"shutdown""#));
        assert_eq!(
            writer.flushes, 3,
            "the three messages in one flush, then the final err, then the close"
        );
        assert_eq!(writer.heartbeats, 2, "at 10 s and 20 s");
        assert_eq!(writer.closed_with, Some("shutdown"));
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_writer_with_no_heartbeat_due_is_not_woken() {
        // (times polled, heartbeats) over `seconds` with nothing to write,
        // then shutdown.
        async fn idle(quiet: bool, seconds: u64) -> (usize, usize) {
            let (context, session) = setup();
            let mut writer = Recorder {
                quiet,
                ..Recorder::default()
            };
            let mut polls = 0;
            {
                let mut driving = std::pin::pin!(drive(
                    &mut writer,
                    session.outbox(),
                    Encoding::Json,
                    &CONFIG,
                    &context
                ));
                // Its own task: `join!` would poll the driver whenever the
                // stopper's timer woke.
                tokio::spawn({
                    let shutdown = context.shutdown.clone();
                    async move {
                        tokio::time::sleep(Duration::from_secs(seconds)).await;
                        shutdown.cancel();
                    }
                });
                let reason = std::future::poll_fn(|cx| {
                    polls += 1;
                    driving.as_mut().poll(cx)
                })
                .await;
                assert_eq!(reason, DisconnectReason::Closed(CloseReason::Shutdown));
            }
            (polls, writer.heartbeats)
        }
        let (loud_brief, _) = idle(false, 5).await;
        let (loud_long, loud_heartbeats) = idle(false, 65).await;
        assert_eq!(loud_heartbeats, 6, "every 10 s");
        assert_eq!(loud_long, loud_brief + 6, "each heartbeat is a wakeup");
        let (quiet_brief, _) = idle(true, 5).await;
        let (quiet_long, quiet_heartbeats) = idle(true, 65).await;
        assert_eq!(quiet_heartbeats, 0);
        assert_eq!(
            quiet_long, quiet_brief,
            "a minute idle woke a writer with no heartbeat due"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_delay_gathers_what_arrives_within_it_unless_the_connection_was_idle() {
        let (context, session) = setup();
        let mut writer = Recorder::default();
        let config = WriterConfig {
            write_delay: Duration::from_millis(20),
            ..CONFIG
        };
        let start = Instant::now();
        let driving = drive(&mut writer, session.outbox(), Encoding::Json, &config, &context);
        let publishing = async {
            for at in [0, 5, 10, 15, 80] {
                tokio::time::sleep_until(start + Duration::from_millis(at)).await;
                publish(&context, at as u32);
            }
            tokio::time::sleep_until(start + Duration::from_millis(200)).await;
            context.shutdown.cancel();
        };
        let (reason, ()) = tokio::join!(driving, publishing);
        assert_eq!(reason, DisconnectReason::Closed(CloseReason::Shutdown));
        let flushes = writer.flushes_since(start);
        assert_eq!(
            &flushes[..3],
            &[(0, 1), (25, 3), (80, 1)],
            "the first message at once (the connection was idle), the next three within 20 ms \
             of the write in one write 20 ms after the first of them, the last at once again \
             (more than 20 ms after the last write)"
        );
        for (event, data) in writer.fed.iter().zip([0, 5, 10, 15, 80]) {
            assert!(event.ends_with(&format!(r#""data":{data}}}"#)), "{event}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn replies_and_a_half_full_queue_are_written_without_the_delay() {
        let (context, session) = setup();
        let mut writer = Recorder::default();
        let config = WriterConfig {
            write_delay: Duration::from_secs(1),
            ..CONFIG
        };
        let start = Instant::now();
        let half = session.outbox().limits().max_messages.div_ceil(2);
        let driving = drive(&mut writer, session.outbox(), Encoding::Json, &config, &context);
        let publishing = async {
            session
                .outbox()
                .push_reply(herald_broker::Reply::Pong { id: Some(1) });
            tokio::time::sleep_until(start + Duration::from_millis(10)).await;
            publish(&context, 0);
            // The writer is now gathering: the rest must wake it.
            tokio::time::sleep_until(start + Duration::from_millis(15)).await;
            for n in 1..half {
                publish(&context, n as u32);
            }
            tokio::time::sleep_until(start + Duration::from_millis(20)).await;
            publish(&context, 0);
            tokio::time::sleep_until(start + Duration::from_secs(3)).await;
            context.shutdown.cancel();
        };
        let (reason, ()) = tokio::join!(driving, publishing);
        assert_eq!(reason, DisconnectReason::Closed(CloseReason::Shutdown));
        let flushes = writer.flushes_since(start);
        assert_eq!(
            &flushes[..3],
            &[(0, 1), (15, half), (1020, 1)],
            "the pong at once, half a queue at once, a lone message after the delay"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_write_is_a_counted_slow_consumer() {
        let (context, session) = setup();
        publish(&context, 1);
        let mut writer = Recorder {
            stall: true,
            ..Recorder::default()
        };
        let reason = drive(&mut writer, session.outbox(), Encoding::Json, &CONFIG, &context).await;
        assert_eq!(reason, DisconnectReason::WriteTimeout);
        assert_eq!(context.broker.metrics().slow_consumers, 1);
        assert_eq!(session.outbox().close_reason(), Some(CloseReason::SlowConsumer));
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_consumer_already_closed_by_its_queue_is_counted_once() {
        let (context, session) = setup();
        // The disconnect policy closed the queue (and counted it); then the
        // final err cannot be written either.
        session.outbox().close(CloseReason::SlowConsumer);
        context.broker.count_slow_consumer();
        let mut writer = Recorder {
            stall: true,
            ..Recorder::default()
        };
        let reason = drive(&mut writer, session.outbox(), Encoding::Json, &CONFIG, &context).await;
        assert_eq!(reason, DisconnectReason::WriteTimeout);
        assert_eq!(context.broker.metrics().slow_consumers, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_ends_at_its_longest_duration() {
        let (context, session) = setup();
        let mut writer = Recorder::default();
        let config = WriterConfig {
            max_duration: Some(Duration::from_secs(30)),
            ..CONFIG
        };
        let started = Instant::now();
        let reason = drive(&mut writer, session.outbox(), Encoding::Json, &config, &context).await;
        assert_eq!(reason, DisconnectReason::Closed(CloseReason::StreamExpired));
        assert_eq!(started.elapsed(), Duration::from_secs(30));
        assert!(writer.fed.last().unwrap().contains("stream_expired"));
    }
}
