//! The SSE gateway against the real server, read as `EventSource` reads
//! it: order, ids, resume with `Last-Event-ID` after the server ends the
//! stream, gaps outside the window, heartbeats, bad requests, slow readers.

mod support;

use std::time::Duration;

use herald_broker::{OverflowPolicy, Position};
use serde_json::{json, Value};
use support::{Server, SseClient, SseEvent};

fn sequence_of(pos: &str) -> u64 {
    Position::from_token(pos).expect("server tokens decode").sequence
}

/// Reads the stream's opening: the retry advice, then the `ack` whose id
/// is the position to resume from.
async fn opening(client: &mut SseClient) -> String {
    let advice = client.next().await.expect("retry advice");
    assert!(advice.retry.is_some(), "{advice:?}");
    let ack = client.next_event().await.expect("the ack");
    assert_eq!(ack.event, "ack");
    let id = ack.id.clone().expect("the ack carries the position as its id");
    assert_eq!(ack.json(), json!({"op": "ack", "pos": id}));
    id
}

#[tokio::test]
async fn events_arrive_in_order_once_with_their_positions_as_ids() {
    let server = Server::dev().await;
    let mut client = SseClient::connect(&server, "subject=room.*&subject=news.a&subject=room.a", None).await;
    opening(&mut client).await;
    let subjects = ["room.a", "news.a", "other", "room.b", "news.b"];
    let mut expected = Vec::new();
    for n in 0..20u64 {
        let subject = subjects[n as usize % subjects.len()];
        let pos = support::publish(&server, subject, json!({"n": n, "text": "two\nlines"})).await;
        if !["other", "news.b"].contains(&subject) {
            expected.push((subject, n, pos));
        }
    }
    for (subject, n, pos) in expected {
        let event = client.next_event().await.expect("a message");
        assert_eq!(event.event, "msg");
        assert_eq!(event.id.as_deref(), Some(pos.as_str()), "id: is the position");
        let body = event.json();
        assert_eq!(body["subject"], subject);
        assert_eq!(body["pos"], pos.as_str());
        assert_eq!(body["data"], json!({"n": n, "text": "two\nlines"}));
        assert!(
            body["ts"].as_u64().is_some_and(|ts| ts > 1_600_000_000_000),
            "{body}"
        );
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_the_server_ends_resumes_with_last_event_id_and_loses_nothing() {
    let server = Server::start(|config| {
        herald::open_for_development(config);
        config.sse.max_stream_duration = Duration::from_millis(300);
    })
    .await;
    const MESSAGES: u64 = 150;
    // The first stream opens before anything is published, as a page does;
    // every later one resumes from the last id it saw.
    let mut client = SseClient::connect(&server, "subject=feed.>", None).await;
    let publisher = {
        let url = server.url("/v1/publish");
        tokio::spawn(async move {
            let http = reqwest::Client::new();
            for n in 0..MESSAGES {
                let subject = if n % 3 == 0 { "feed.a" } else { "feed.b.c" };
                let response = http
                    .post(&url)
                    .json(&json!({"subject": subject, "data": {"n": n}}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), 200);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    let mut received = Vec::new();
    let mut last_event_id: Option<String> = None;
    let mut streams = 1;
    loop {
        while let Some(event) = client.next().await {
            if let Some(id) = &event.id {
                last_event_id = Some(id.clone());
            }
            match event.event.as_str() {
                "msg" => received.push(event.json()["data"]["n"].as_u64().unwrap()),
                "err" => assert_eq!(event.json()["code"], "stream_expired"),
                "ack" | "" => {}
                other => panic!("unexpected {other}: {event:?}"),
            }
        }
        if received.len() as u64 >= MESSAGES {
            break;
        }
        streams += 1;
        assert!(streams < 100, "reconnecting makes progress: {received:?}");
        client = SseClient::connect(&server, "subject=feed.>", last_event_id.as_deref()).await;
    }
    publisher.await.unwrap();
    assert_eq!(
        received,
        (0..MESSAGES).collect::<Vec<_>>(),
        "every message once, in order"
    );
    assert!(
        streams >= 3,
        "the server ended the stream mid-way ({streams} streams)"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn a_resume_outside_the_window_gets_a_gap_event_first() {
    let server = Server::start(|config| {
        herald::open_for_development(config);
        config.broker.history.max_messages_per_subject = 5;
    })
    .await;
    let first = support::publish(&server, "g", json!(0)).await;
    for n in 1..=20 {
        support::publish(&server, "g", json!(n)).await;
    }
    // The header, and the query for clients that cannot set it.
    for (query, header) in [
        ("subject=g".to_owned(), Some(first.as_str())),
        (format!("subject=g&since={first}"), None),
    ] {
        let mut client = SseClient::connect(&server, &query, header).await;
        assert_eq!(
            opening(&mut client).await,
            first,
            "a resume acks where it resumes from"
        );
        let gap = client.next_event().await.unwrap();
        assert_eq!((gap.event.as_str(), gap.id.as_ref()), ("gap", None), "{gap:?}");
        let body = gap.json();
        assert_eq!(body["subject"], "g");
        assert_eq!(sequence_of(body["from"].as_str().unwrap()), 2);
        assert_eq!(sequence_of(body["to"].as_str().unwrap()), 16);
        for n in 16..=20 {
            let event = client.next_event().await.unwrap();
            assert_eq!(event.json()["data"], json!(n));
        }
    }
    server.shutdown().await;
}

#[tokio::test]
async fn heartbeats_keep_an_idle_stream_alive() {
    let server = Server::start(|config| config.sse.heartbeat_interval = Duration::from_millis(100)).await;
    let mut client = SseClient::connect(&server, "subject=quiet", None).await;
    opening(&mut client).await;
    for _ in 0..3 {
        let event = client.next().await.expect("the stream stays open");
        assert_eq!(
            event,
            SseEvent {
                comment: true,
                ..SseEvent::default()
            }
        );
    }
    server.shutdown().await;
}

#[tokio::test]
async fn shutdown_ends_every_stream_with_its_reason() {
    let server = Server::dev().await;
    let mut client = SseClient::connect(&server, "subject=any.>", None).await;
    opening(&mut client).await;
    server.shutdown().await;
    let last = client.next_event().await.expect("the reason");
    assert_eq!(
        (last.event.as_str(), last.json()["code"].clone()),
        ("err", json!("shutdown"))
    );
    assert_eq!(client.next().await, None, "then the stream ends");
}

#[tokio::test]
async fn bad_requests_are_refused_with_the_json_error_body() {
    let server = Server::start(|config| config.auth.anonymous_subscribe.clear()).await;
    let token = format!("token={}", support::NEWS_ONLY_KEY);
    let cases: Vec<(String, Option<&str>, u16, &str)> = vec![
        (token.clone(), None, 400, "missing_field"),
        (format!("{token}&subject=a..b"), None, 400, "invalid_subject"),
        (format!("{token}&subject=$SYS.x"), None, 400, "reserved_subject"),
        (
            format!("{token}&subject=news.a"),
            Some("garbage"),
            400,
            "invalid_token",
        ),
        (
            format!("{token}&subject=news.a&since=garbage"),
            None,
            400,
            "invalid_token",
        ),
        (format!("{token}&subject=chat.a"), None, 403, "forbidden"),
        ("subject=news.a".to_owned(), None, 401, "unauthorized"),
        (
            "subject=news.a&token=wrong".to_owned(),
            None,
            401,
            "invalid_credential",
        ),
    ];
    for (query, last_event_id, status, code) in cases {
        let headers: Vec<(&str, &str)> = last_event_id
            .map(|id| ("last-event-id", id))
            .into_iter()
            .collect();
        // A plain HTTP client reads the status and the JSON body...
        let mut plain = reqwest::Client::new().get(server.url(&format!("/sse?{query}")));
        for (name, value) in &headers {
            plain = plain.header(*name, *value);
        }
        let response = plain.send().await.unwrap();
        assert_eq!(response.status(), status, "{query}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["code"], code, "{query}: {body}");
        assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
        // ...an EventSource, which can read neither, the same code in an
        // `err` event of a stream, with the close code 4000 + status.
        let response = SseClient::request_with(&server, &query, &headers).await;
        assert_eq!(response.status(), 200, "{query}");
        let mut stream = SseClient::from_response(response);
        let event = stream.next_event().await.expect("the refusal");
        assert_eq!(event.event, "err", "{query}");
        let body = event.json();
        assert_eq!(
            (body["code"].as_str(), body["close"].as_u64()),
            (Some(code), Some(4000 + u64::from(status))),
            "{query}"
        );
        assert_eq!(stream.next_event().await, None, "{query}: then the stream ends");
    }
    // The same key may stream what it may read.
    let mut client = SseClient::connect(&server, &format!("{token}&subject=news.>"), None).await;
    opening(&mut client).await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_stops_reading_is_closed_as_a_slow_consumer_and_told() {
    let server = Server::start(|config| {
        herald::open_for_development(config);
        config.broker.overflow_policy = OverflowPolicy::Disconnect;
        config.sse.write_timeout = Duration::from_secs(60);
    })
    .await;
    let mut stalled = SseClient::connect(&server, "subject=flood", None).await;
    let mut reader = SseClient::connect(&server, "subject=flood", None).await;
    opening(&mut reader).await;
    const BATCHES: u64 = 20;
    const PER_BATCH: u64 = 500;
    let body = "x".repeat(1000);
    for batch in 0..BATCHES {
        let messages: Vec<(String, Value)> = (0..PER_BATCH)
            .map(|i| {
                (
                    "flood".to_owned(),
                    json!({"n": batch * PER_BATCH + i, "body": body}),
                )
            })
            .collect();
        support::publish_batch(&server, &messages).await;
        // The reading client keeps up and gets everything.
        for i in 0..PER_BATCH {
            let event = reader.next_event().await.unwrap();
            assert_eq!(event.json()["data"]["n"], batch * PER_BATCH + i);
        }
    }
    assert_eq!(
        server.broker.metrics().slow_consumers,
        1,
        "the stalled reader, and only it"
    );
    // Reading again: what was on its way, then the reason, then the end.
    let mut messages = 0;
    let reason = loop {
        let event = stalled.next_event().await.expect("the reason before the end");
        match event.event.as_str() {
            "msg" => messages += 1,
            "err" => break event.json()["code"].clone(),
            "ack" => {}
            other => panic!("{other}: {event:?}"),
        }
    };
    assert_eq!(reason, json!("slow_consumer"));
    assert!(messages < BATCHES * PER_BATCH);
    assert_eq!(stalled.next().await, None);
    server.shutdown().await;
}
