//! The same async-nats workload against nats-server and against Herald's
//! NATS listener, in one run (`herald-bench nats`, `make bench-nats`).
//!
//! - **fan-out**: one publisher → N subscribers (each its own connection)
//!   on one subject, 128-byte messages. The publisher sends in chunks and
//!   flushes after each, and keeps at most a window of messages ahead of
//!   the slowest delivery count (the same pacing for both servers), so the
//!   figure is what the server delivers, not what it drops.
//! - **publish**: one pipelined publisher and no subscriber: messages
//!   accepted per second, up to the final flush's PONG.
//!
//! Both servers run fresh for every round, rounds alternate the order, and
//! the report takes medians; a ratio compares Herald to nats-server
//! measured in the same round.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use futures_util::StreamExt;
use serde::Serialize;

use crate::clients::Target;
use crate::servers::{Binaries, CpuMark, Server};

/// One measurement.
#[derive(Debug, Clone, Serialize)]
pub struct NatsRecord {
    /// `nats-server` or `herald`.
    pub server: &'static str,
    pub round: usize,
    /// `fanout` or `publish`.
    pub scenario: &'static str,
    pub subscribers: usize,
    pub messages: u64,
    /// Deliveries (fan-out) or accepted publishes, per second.
    pub per_second: f64,
    /// Deliveries that arrived out of those expected.
    pub delivered_share: f64,
    /// The server's CPU time (from `/proc`) per delivery or accepted
    /// publish, in µs, from the first publish to the end of the
    /// measurement: what the server spent, whatever the clients left it.
    pub server_cpu_us: Option<f64>,
    /// The load generator's own CPU time (both clients, this process) per
    /// delivery or accepted publish, in µs: on a machine the clients share
    /// with the server, what one server makes its clients spend is part of
    /// its rate.
    pub client_cpu_us: Option<f64>,
    /// Fan-out: how often the publisher waited for the subscribers to come
    /// back within its window (a server that takes publishes faster than
    /// it delivers them makes it wait more often).
    pub publisher_waits: u64,
}

/// How big a run is.
#[derive(Debug, Clone)]
pub struct NatsSize {
    pub subscribers: Vec<usize>,
    /// Deliveries each fan-out aims at (messages = this / subscribers).
    pub deliveries: u64,
    pub publishes: u64,
    pub rounds: usize,
}

impl NatsSize {
    pub fn standard() -> NatsSize {
        NatsSize {
            subscribers: vec![1, 100, 1_000],
            deliveries: 2_000_000,
            publishes: 1_000_000,
            rounds: 3,
        }
    }

    pub fn smoke() -> NatsSize {
        NatsSize {
            subscribers: vec![1, 10],
            deliveries: 2_000,
            publishes: 2_000,
            rounds: 1,
        }
    }
}

const PAYLOAD: usize = 128;
const SUBJECT: &str = "bench.fanout";

/// Runs every round; `each` sees every record as it is made.
pub async fn run(
    binaries: &Binaries,
    size: NatsSize,
    mut each: impl FnMut(&NatsRecord),
) -> anyhow::Result<Vec<NatsRecord>> {
    anyhow::ensure!(binaries.can_run(Target::NatsTcp), "nats-server is not installed");
    let mut records = Vec::new();
    for round in 0..size.rounds {
        let order: [&'static str; 2] = if round % 2 == 0 {
            ["nats-server", "herald"]
        } else {
            ["herald", "nats-server"]
        };
        for server in order {
            let (running, address) = match server {
                "herald" => Server::herald_with_nats(binaries).await?,
                _ => {
                    let running = Server::start(Target::NatsTcp, binaries).await?;
                    let address = running.address;
                    (running, address)
                }
            };
            let url = format!("nats://{address}");
            let mut measured = Vec::new();
            for &subscribers in &size.subscribers {
                let messages = (size.deliveries / subscribers as u64).max(100);
                measured.push(fanout(&running, &url, subscribers, messages).await);
            }
            measured.push(publish(&running, &url, size.publishes).await);
            running.stop().await;
            for result in measured {
                let measured = result.with_context(|| format!("{server}, round {round}"))?;
                let record = NatsRecord {
                    server,
                    round,
                    scenario: measured.scenario,
                    subscribers: measured.subscribers,
                    messages: measured.messages,
                    per_second: measured.per_second,
                    delivered_share: measured.delivered_share,
                    server_cpu_us: measured
                        .server_cpu_seconds
                        .map(|cpu| cpu * 1e6 / measured.counted.max(1) as f64),
                    client_cpu_us: measured
                        .client_cpu_seconds
                        .map(|cpu| cpu * 1e6 / measured.counted.max(1) as f64),
                    publisher_waits: measured.publisher_waits,
                };
                each(&record);
                records.push(record);
            }
        }
    }
    Ok(records)
}

struct Measured {
    scenario: &'static str,
    subscribers: usize,
    messages: u64,
    per_second: f64,
    delivered_share: f64,
    /// Deliveries that arrived, or publishes accepted.
    counted: u64,
    server_cpu_seconds: Option<f64>,
    client_cpu_seconds: Option<f64>,
    publisher_waits: u64,
}

/// Counts deliveries and holds the publisher back until they catch up,
/// woken by the delivery that does: a timer would add its own granularity
/// (a millisecond) to every pause, and so count against the server that
/// makes the publisher pause more often.
#[derive(Default)]
struct Pace {
    delivered: AtomicU64,
    /// Times async-nats reported a subscription's channel full (it drops
    /// what arrives then): a broken run, not a server's loss.
    client_drops: AtomicU64,
    /// What the publisher waits for; zero when it does not wait.
    wanted: AtomicU64,
    caught_up: tokio::sync::Notify,
}

impl Pace {
    fn delivered(&self) -> u64 {
        self.delivered.load(Ordering::SeqCst)
    }

    fn count_delivery(&self) {
        let now = self.delivered.fetch_add(1, Ordering::SeqCst) + 1;
        let wanted = self.wanted.load(Ordering::SeqCst);
        if wanted != 0 && now >= wanted && self.wanted.swap(0, Ordering::SeqCst) != 0 {
            self.caught_up.notify_one();
        }
    }

    /// Returns whether it had to wait.
    async fn wait_for(&self, deliveries: u64) -> bool {
        if self.delivered() >= deliveries {
            return false;
        }
        while self.delivered() < deliveries {
            self.wanted.store(deliveries, Ordering::SeqCst);
            // A delivery may have passed the mark before it was set.
            if self.delivered() >= deliveries {
                break;
            }
            // A lost wake-up costs 5 ms, not the run.
            let _ = tokio::time::timeout(Duration::from_millis(5), self.caught_up.notified()).await;
        }
        self.wanted.store(0, Ordering::SeqCst);
        true
    }
}

/// How far the publisher may run ahead of its subscribers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Pacing {
    /// Messages ahead of what every subscriber has, on average: about a
    /// million deliveries in flight.
    window: u64,
    /// Messages published between two looks at the subscribers.
    chunk: u64,
}

impl Pacing {
    fn for_subscribers(subscribers: usize) -> Pacing {
        let window = (1_000_000 / subscribers.max(1) as u64).clamp(16, 65_536);
        Pacing {
            window,
            chunk: window.min(1_024) / 2,
        }
    }

    /// How many messages each subscriber's channel in async-nats holds.
    /// async-nats drops what arrives while it is full (a slow consumer on
    /// the client's side), so it must hold more than the publisher can
    /// have in flight, a window and a chunk: its default, 65 536, is less
    /// than that with one subscriber, and the drops (a few hundred a run)
    /// held the publisher back on its timer, counted against the server.
    fn subscription_capacity(self) -> usize {
        (2 * (self.window + self.chunk) as usize).max(65_536)
    }
}

async fn fanout(server: &Server, url: &str, subscribers: usize, messages: u64) -> anyhow::Result<Measured> {
    let pace = Arc::new(Pace::default());
    let last_delivery = Arc::new(std::sync::Mutex::new(Instant::now()));
    let pacing = Pacing::for_subscribers(subscribers);
    let Pacing { window, chunk } = pacing;
    let mut clients = Vec::with_capacity(subscribers);
    let mut tasks = Vec::with_capacity(subscribers);
    for _ in 0..subscribers {
        let drops = pace.clone();
        let client = async_nats::ConnectOptions::new()
            .subscription_capacity(pacing.subscription_capacity())
            .event_callback(move |event| {
                let drops = drops.clone();
                async move {
                    if let async_nats::Event::SlowConsumer(_) = event {
                        drops.client_drops.fetch_add(1, Ordering::SeqCst);
                    }
                }
            })
            .connect(url)
            .await
            .context("a subscriber connects")?;
        let mut subscription = client.subscribe(SUBJECT).await?;
        client.flush().await?;
        let (pace, last_delivery) = (pace.clone(), last_delivery.clone());
        tasks.push(tokio::spawn(async move {
            let mut mine = 0;
            while let Some(_message) = subscription.next().await {
                mine += 1;
                pace.count_delivery();
                if mine == messages {
                    *last_delivery.lock().expect("not poisoned") = Instant::now();
                    break;
                }
            }
        }));
        clients.push(client);
    }
    let publisher = async_nats::connect(url).await.context("the publisher connects")?;
    let payload = Bytes::from(vec![b'x'; PAYLOAD]);
    let expected = messages * subscribers as u64;
    let cpu_before = CpuMark::now(server);
    let started = Instant::now();
    let mut sent = 0;
    let mut publisher_waits = 0;
    while sent < messages {
        let this_chunk = chunk.max(1).min(messages - sent);
        for _ in 0..this_chunk {
            publisher.publish(SUBJECT, payload.clone()).await?;
        }
        publisher.flush().await?;
        sent += this_chunk;
        if pace
            .wait_for(sent.saturating_sub(window) * subscribers as u64)
            .await
        {
            publisher_waits += 1;
        }
    }
    // Drain: whatever has not arrived 2 s after the last publish counts as
    // not delivered.
    let drain = Instant::now() + Duration::from_secs(2);
    while pace.delivered() < expected && Instant::now() < drain {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let got = pace.delivered();
    let cpu = cpu_before.spent(server);
    let client_drops = pace.client_drops.load(Ordering::SeqCst);
    anyhow::ensure!(
        client_drops == 0,
        "async-nats dropped messages in the load generator ({client_drops} slow-consumer events): \
         the run would count the client's drops against the server"
    );
    let end = if got >= expected {
        *last_delivery.lock().expect("not poisoned")
    } else {
        Instant::now()
    };
    for task in tasks {
        task.abort();
    }
    drop(clients);
    let seconds = end.duration_since(started).as_secs_f64();
    Ok(Measured {
        scenario: "fanout",
        subscribers,
        messages,
        per_second: got as f64 / seconds,
        delivered_share: got as f64 / expected as f64,
        counted: got,
        server_cpu_seconds: cpu.server,
        client_cpu_seconds: cpu.client,
        publisher_waits,
    })
}

async fn publish(server: &Server, url: &str, messages: u64) -> anyhow::Result<Measured> {
    let publisher = async_nats::connect(url).await.context("the publisher connects")?;
    let payload = Bytes::from(vec![b'x'; PAYLOAD]);
    let cpu_before = CpuMark::now(server);
    let started = Instant::now();
    for _ in 0..messages {
        publisher.publish("bench.ingest", payload.clone()).await?;
    }
    // The PONG comes after the server has taken every PUB before it.
    publisher.flush().await?;
    let seconds = started.elapsed().as_secs_f64();
    let cpu = cpu_before.spent(server);
    Ok(Measured {
        scenario: "publish",
        subscribers: 0,
        messages,
        per_second: messages as f64 / seconds,
        delivered_share: 1.0,
        counted: messages,
        server_cpu_seconds: cpu.server,
        client_cpu_seconds: cpu.client,
        publisher_waits: 0,
    })
}

/// The table of medians and ratios, for `docs/benchmarks.md`.
pub fn markdown(records: &[NatsRecord]) -> String {
    let median_of =
        |server: &str, scenario: &str, subscribers: usize, value: fn(&NatsRecord) -> Option<f64>| {
            let mut values: Vec<f64> = records
                .iter()
                .filter(|r| r.server == server && r.scenario == scenario && r.subscribers == subscribers)
                .filter_map(value)
                .collect();
            values.sort_by(f64::total_cmp);
            (!values.is_empty()).then(|| values[values.len() / 2])
        };
    let share = |server: &str, scenario: &str, subscribers: usize| -> f64 {
        records
            .iter()
            .filter(|r| r.server == server && r.scenario == scenario && r.subscribers == subscribers)
            .map(|r| r.delivered_share)
            .fold(1.0, f64::min)
    };
    let mut rows: Vec<(&'static str, usize)> = records.iter().map(|r| (r.scenario, r.subscribers)).collect();
    rows.sort();
    rows.dedup();
    let mut out = String::from(
        "| workload | nats-server | Herald's NATS listener | ratio | server CPU per delivery or publish (nats-server / Herald) | CPU ratio | clients' CPU (nats-server / Herald) | publisher waits (nats-server / Herald) | lowest delivered share (nats-server / Herald) |\n|---|---|---|---|---|---|---|---|---|\n",
    );
    let rate = |r: &NatsRecord| Some(r.per_second);
    let cpu = |r: &NatsRecord| r.server_cpu_us;
    let client_cpu = |r: &NatsRecord| r.client_cpu_us;
    let waits = |r: &NatsRecord| Some(r.publisher_waits as f64);
    for (scenario, subscribers) in rows {
        let (Some(peer), Some(herald)) = (
            median_of("nats-server", scenario, subscribers, rate),
            median_of("herald", scenario, subscribers, rate),
        ) else {
            continue;
        };
        let workload = match scenario {
            "fanout" => format!("1 → {subscribers} subscribers, deliveries/s"),
            _ => "1 pipelined publisher, publishes/s".to_owned(),
        };
        let (cpu_figures, cpu_ratio) = match (
            median_of("nats-server", scenario, subscribers, cpu),
            median_of("herald", scenario, subscribers, cpu),
        ) {
            // Too short a run reads no CPU time at all (/proc counts in 10 ms).
            (Some(peer), Some(herald)) if peer > 0.0 => (
                format!("{peer:.2} µs / {herald:.2} µs"),
                format!("{:.2}×", herald / peer),
            ),
            _ => ("-".to_owned(), "-".to_owned()),
        };
        let client_figures = match (
            median_of("nats-server", scenario, subscribers, client_cpu),
            median_of("herald", scenario, subscribers, client_cpu),
        ) {
            (Some(peer), Some(herald)) => format!("{peer:.2} µs / {herald:.2} µs"),
            _ => "-".to_owned(),
        };
        let wait_figures = match scenario {
            "fanout" => format!(
                "{:.0} / {:.0}",
                median_of("nats-server", scenario, subscribers, waits).unwrap_or(0.0),
                median_of("herald", scenario, subscribers, waits).unwrap_or(0.0)
            ),
            _ => "-".to_owned(),
        };
        out.push_str(&format!(
            "| {workload} | {:.3} M | {:.3} M | {:.2}× | {cpu_figures} | {cpu_ratio} | {client_figures} | {wait_figures} | {:.3} / {:.3} |\n",
            peer / 1e6,
            herald / 1e6,
            herald / peer,
            share("nats-server", scenario, subscribers),
            share("herald", scenario, subscribers),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_subscriber_s_channel_holds_all_the_publisher_can_have_in_flight() {
        for subscribers in [1, 2, 15, 100, 1_000, 10_000, 100_000] {
            let pacing = Pacing::for_subscribers(subscribers);
            assert!(
                pacing.subscription_capacity() as u64 > pacing.window + pacing.chunk,
                "{subscribers} subscribers: {pacing:?}"
            );
            // Never below async-nats's own default: with many subscribers
            // one may lag well behind the average the window bounds.
            assert!(pacing.subscription_capacity() >= 65_536);
        }
    }
}
