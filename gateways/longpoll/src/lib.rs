//! # herald-longpoll
//!
//! Herald's long-polling gateway, for networks where neither WebSocket nor
//! Server-Sent Events get through:
//! `GET /poll?subject=<pattern>&cursor=<token>&wait=<seconds>` (subject
//! repeatable) answers at once with everything after the cursor, or holds
//! up to `wait` and answers with what arrived, or with nothing. Every answer
//! is `{"cursor": <token>, "events": [...]}`: the events are the protocol's
//! `gap` and `msg` events, and the cursor is where the next poll continues.
//!
//! The cursor is the whole state: any request with it, on any connection
//! or node, continues exactly there. No session is built and nothing
//! outlives the request; the core's [`Poll`] reads the cut without taking
//! the publish lock and, while a poll waits, registers a small queue for its
//! patterns.
//!
//! One-way: clients publish through the HTTP API.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use bytes::{BufMut, Bytes, BytesMut};
use herald_broker::stats::GapReason;
use herald_broker::{Encoding, Outbound, Poll, PollPage, Stats, Transport};
use herald_gateway::reads::read_history;
use herald_gateway::{Cookies, GatewayContext, HttpError, QueryParams};
use serde::Deserialize;

/// The `[longpoll]` section of the configuration, with its comments.
pub const DEFAULT_CONFIG: &str = include_str!("longpoll.default.toml");

/// The `[longpoll]` section.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LongPollConfig {
    /// Serve `GET /poll`.
    pub enabled: bool,
    /// The wait of a poll that names none.
    #[serde(with = "herald_broker::units::duration")]
    pub default_wait: Duration,
    /// The longest wait a poll may ask for.
    #[serde(with = "herald_broker::units::duration")]
    pub max_wait: Duration,
}

impl Default for LongPollConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            default_wait: Duration::from_secs(25),
            max_wait: Duration::from_secs(60),
        }
    }
}

impl LongPollConfig {
    /// Checks the settings; the message names the key.
    pub fn validate(&self) -> Result<(), String> {
        if self.default_wait > self.max_wait {
            return Err("longpoll.default_wait must not exceed longpoll.max_wait".into());
        }
        Ok(())
    }
}

#[derive(Debug)]
struct Gateway {
    context: GatewayContext,
    config: LongPollConfig,
}

/// The gateway's routes: `GET /poll`.
pub fn router(context: GatewayContext, config: LongPollConfig) -> Router {
    Router::new()
        .route("/poll", get(poll))
        .with_state(Arc::new(Gateway { context, config }))
}

async fn poll(
    State(gateway): State<Arc<Gateway>>,
    query: QueryParams,
    headers: HeaderMap,
) -> Result<Response, HttpError> {
    let context = &gateway.context;
    let stats = context.broker.stats().clone();
    let _open = stats.open_request(Transport::LongPoll);
    let access = context.admit(&headers, &query, Cookies::Read)?;
    let wait = wait_of(&query, &gateway.config)?;
    let poll = Poll::new(
        &context.broker,
        &*access,
        &query.all("subject"),
        query.one("cursor"),
    )?;
    let (poll, page) = read_history(poll.reads_wildcards(), move || {
        let page = poll.read();
        (poll, page)
    })
    .await;
    if !page.is_empty() || wait.is_zero() {
        return Ok(answer(&page, &stats));
    }
    let mut watch = poll.watch(page.cursor);
    let arrived = tokio::select! {
        page = watch.next_page() => Some(page),
        () = tokio::time::sleep(wait) => None,
        () = context.shutdown.cancelled() => None,
    };
    let page = arrived.unwrap_or_else(|| watch.settle());
    Ok(answer(&page, &stats))
}

/// The `wait` a request asks for, in seconds (fractions allowed), capped.
fn wait_of(query: &QueryParams, config: &LongPollConfig) -> Result<Duration, HttpError> {
    let Some(text) = query.one("wait") else {
        return Ok(config.default_wait);
    };
    let seconds: f64 = text
        .parse()
        .ok()
        .filter(|seconds: &f64| seconds.is_finite() && *seconds >= 0.0)
        .ok_or_else(|| {
            HttpError::bad_request(
                "invalid_query",
                format!("wait={text:?}: expected a number of seconds, such as 25 or 0.5"),
            )
        })?;
    Ok(Duration::from_secs_f64(
        seconds.min(config.max_wait.as_secs_f64()),
    ))
}

/// `{"cursor":..,"events":[gaps.., messages..]}`, each event the frame a
/// WebSocket client would receive (a message's encoded once and shared).
fn answer(page: &PollPage, stats: &Stats) -> Response {
    stats.delivered(Transport::LongPoll, page.messages.len() as u64);
    stats.gaps(GapReason::Resume, page.gaps.len() as u64);
    let frames: Vec<Bytes> = page
        .gaps
        .iter()
        .map(|gap| Outbound::Gap(Box::new(gap.clone())).encode(Encoding::Json))
        .chain(page.messages.iter().map(|message| message.frame(Encoding::Json)))
        .collect();
    let mut body = BytesMut::with_capacity(frames.iter().map(Bytes::len).sum::<usize>() + frames.len() + 48);
    body.put_slice(br#"{"cursor":""#);
    body.put_slice(page.cursor.token().as_str().as_bytes());
    body.put_slice(br#"","events":["#);
    for (index, frame) in frames.iter().enumerate() {
        if index > 0 {
            body.put_u8(b',');
        }
        body.put_slice(frame);
    }
    body.put_slice(b"]}");
    let mut response = body.freeze().into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_are_read_in_seconds_and_capped() {
        let config = LongPollConfig::default();
        let wait = |text: &str| wait_of(&QueryParams::parse(Some(text)), &config);
        assert_eq!(wait("").unwrap(), Duration::from_secs(25));
        assert_eq!(wait("wait=0").unwrap(), Duration::ZERO);
        assert_eq!(wait("wait=0.5").unwrap(), Duration::from_millis(500));
        assert_eq!(wait("wait=3600").unwrap(), Duration::from_secs(60));
        for bad in ["wait=soon", "wait=-1", "wait=NaN", "wait=inf"] {
            assert_eq!(wait(bad).unwrap_err().code, "invalid_query", "{bad}");
        }
    }
}
