//! Shared harness: a broker on a manual clock and a way to read what a
//! session's client would receive, decoded from the real wire frames.
#![allow(dead_code)] // each test binary uses a different part of the harness

use std::collections::VecDeque;
use std::sync::Arc;

use herald_broker::protocol::decode_event;
use herald_broker::{
    AllowAll, Broker, BrokerConfig, Encoding, ManualClock, Outbound, Payload, ServerEvent, Session,
};

pub const EPOCH: u32 = 7;
/// Where the manual clock starts: a plausible Unix time, in milliseconds.
pub const START_MILLIS: u64 = 1_767_225_600_000;

pub fn broker(config: BrokerConfig) -> (Arc<Broker>, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::starting_at(START_MILLIS));
    (Broker::with_clock(config, clock.clone(), EPOCH), clock)
}

pub fn json(text: &str) -> Payload {
    Payload::from_json(text.to_owned().into()).expect("test payloads are valid JSON")
}

pub fn session(broker: &Arc<Broker>) -> Session {
    Session::new(broker, Arc::new(AllowAll))
}

/// Everything queued for the session's client, as the client decodes it.
pub fn received(session: &Session, encoding: Encoding) -> Vec<ServerEvent> {
    let mut batch = VecDeque::new();
    match session.outbox().try_take_batch(&mut batch) {
        None | Some(Err(_)) => Vec::new(),
        Some(Ok(())) => batch
            .iter()
            .map(|event| decode_event(encoding, &event.encode(encoding)).expect("server frames decode"))
            .collect(),
    }
}

pub fn received_json(session: &Session) -> Vec<ServerEvent> {
    received(session, Encoding::Json)
}

/// The `data` of every `msg` event, in order.
pub fn data_of(events: &[ServerEvent]) -> Vec<serde_json::Value> {
    events
        .iter()
        .filter_map(|event| match event {
            ServerEvent::Msg { data, .. } => Some(data.clone()),
            _ => None,
        })
        .collect()
}

pub fn msg_positions(events: &[ServerEvent]) -> Vec<String> {
    events
        .iter()
        .filter_map(|event| match event {
            ServerEvent::Msg { pos, .. } => Some(pos.clone()),
            _ => None,
        })
        .collect()
}

pub fn take_raw(session: &Session) -> VecDeque<Outbound> {
    let mut batch = VecDeque::new();
    let _ = session.outbox().try_take_batch(&mut batch);
    batch
}
