//! What WebTransport costs against WebSocket (`herald-bench quic`, `make
//! bench-quic`): the same fan-out to subscribers on Herald's WebSocket
//! gateway and on its WebTransport gateway, one publisher on WebSocket in
//! both, fresh servers for each, alternating (`rounds`). Each WebTransport
//! subscriber has its own QUIC endpoint (UDP socket), as a browser has.

use crate::rounds::{self, RoundRecord, RoundSize};
use crate::servers::Binaries;

const TRANSPORTS: [&str; 2] = ["herald-ws-json", "herald-wt-json"];
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

/// The table of medians, WebTransport's ratios to WebSocket.
pub fn markdown(records: &[RoundRecord]) -> String {
    rounds::markdown(records, &TRANSPORTS, "transport", true)
}
