//! What WebTransport costs against WebSocket (`herald-bench quic`, `make
//! bench-quic`): the same fan-out to subscribers on Herald's WebSocket
//! gateway, plain and over TLS, and on its WebTransport gateway, the
//! publisher on WebSocket (over TLS with the WSS subscribers), fresh
//! servers for each, alternating (`rounds`). Each WebTransport subscriber
//! has its own QUIC endpoint (UDP socket), as a browser has. QUIC always
//! encrypts, so WSS is the like-for-like channel; plain WebSocket is the
//! line the issue's aims are drawn against.

use crate::rounds::{self, RoundRecord, RoundSize};
use crate::servers::Binaries;

const TRANSPORTS: [&str; 3] = ["herald-ws-json", "herald-wss-json", "herald-wt-json"];
const PAYLOAD: usize = 128;

/// Runs every round; `each` sees every record as it is made.
pub async fn run(
    binaries: &Binaries,
    size: RoundSize,
    each: impl FnMut(&RoundRecord),
) -> anyhow::Result<Vec<RoundRecord>> {
    let measure = async |transport, rate, seconds| {
        rounds::fanout_on_fresh_server(binaries, transport, size.subscribers, rate, seconds, PAYLOAD).await
    };
    rounds::run(&TRANSPORTS, size, measure, each).await
}

/// The tables of medians: every transport's ratios to plain WebSocket,
/// then WebTransport's to WSS (both encrypted).
pub fn markdown(records: &[RoundRecord]) -> String {
    let encrypted = &TRANSPORTS[1..];
    format!(
        "{}\n{}",
        rounds::markdown(records, &TRANSPORTS, "transport", true),
        rounds::markdown(records, encrypted, "transport", true)
    )
}
