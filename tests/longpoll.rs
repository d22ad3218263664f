//! The long-poll gateway against the real server: answers from the cursor,
//! waits that end on a publish, stateless cursors under a steady stream,
//! gaps, bad requests, shutdown.

mod support;

use std::time::Duration;

use herald_broker::Position;
use serde_json::{json, Value};
use support::Server;

/// `GET /poll?<query>`; the status and the JSON body.
async fn poll(http: &reqwest::Client, server: &Server, query: &str) -> (u16, Value) {
    let response = tokio::time::timeout(
        Duration::from_secs(90),
        http.get(server.url(&format!("/poll?{query}"))).send(),
    )
    .await
    .expect("a poll is answered within its wait")
    .unwrap();
    let status = response.status().as_u16();
    if status == 200 {
        assert_eq!(response.headers()["cache-control"], "no-store");
        assert_eq!(response.headers()["content-type"], "application/json");
    }
    (status, response.json().await.unwrap())
}

/// Returns once a poll is waiting on the server (its watch counts as a
/// subscription); fails the test, rather than hanging it, if none does.
async fn waiting_poll_registered(server: &Server) {
    tokio::time::timeout(support::PATIENCE, async {
        while server.broker.metrics().subscriptions == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the poll waits on the server");
}

fn data_of(body: &Value) -> Vec<Value> {
    body["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|event| event["op"] == "msg")
        .map(|event| event["data"].clone())
        .collect()
}

#[tokio::test]
async fn a_poll_answers_at_once_with_what_came_after_its_cursor() {
    let server = Server::dev().await;
    let http = reqwest::Client::new();
    let start = support::publish(&server, "feed.a", json!(0)).await;
    support::publish(&server, "feed.b", json!(1)).await;
    support::publish(&server, "elsewhere", json!("x")).await;
    let last = support::publish(&server, "feed.a", json!(2)).await;
    let (status, body) = poll(&http, &server, &format!("subject=feed.*&cursor={start}&wait=30")).await;
    assert_eq!(status, 200);
    assert_eq!(data_of(&body), vec![json!(1), json!(2)]);
    let events = body["events"].as_array().unwrap();
    assert_eq!(events[1]["pos"], last.as_str());
    assert_eq!(
        body["cursor"],
        last.as_str(),
        "the next poll continues after the last message"
    );
    // Asked again with the new cursor and no wait: nothing, nothing twice.
    let (_, again) = poll(&http, &server, &format!("subject=feed.*&cursor={last}&wait=0")).await;
    assert_eq!(again["events"], json!([]));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poll_waits_for_the_next_message_and_answers_with_it() {
    let server = Server::dev().await;
    let http = reqwest::Client::new();
    let waiting = {
        let (http, url) = (http.clone(), server.url("/poll?subject=chat.*&wait=60"));
        tokio::spawn(async move { http.get(url).send().await.unwrap().json::<Value>().await.unwrap() })
    };
    // The poll is registered when the broker counts its subscription.
    waiting_poll_registered(&server).await;
    support::publish(&server, "other", json!("not this")).await;
    let pos = support::publish(&server, "chat.room", json!({"text": "hi"})).await;
    let body = tokio::time::timeout(support::PATIENCE, waiting)
        .await
        .expect("answered on the publish, long before the 60 s wait")
        .unwrap();
    assert_eq!(data_of(&body), vec![json!({"text": "hi"})]);
    assert_eq!(body["cursor"], pos.as_str());
    assert_eq!(
        server.broker.metrics().subscriptions,
        0,
        "nothing outlives the request"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn an_empty_answer_still_moves_the_cursor_past_what_does_not_match() {
    let server = Server::dev().await;
    let http = reqwest::Client::new();
    let start = support::publish(&server, "quiet", json!(0)).await;
    let noise = support::publish(&server, "noise", json!(1)).await;
    let (_, body) = poll(&http, &server, &format!("subject=quiet&cursor={start}&wait=0.2")).await;
    assert_eq!(body["events"], json!([]));
    assert_eq!(body["cursor"], noise.as_str());
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_messages_a_second_for_ten_seconds_reach_a_polling_client_once_each() {
    let server = Server::dev().await;
    const SECONDS: u64 = 10;
    const PER_TICK: u64 = 10;
    const TICKS_PER_SECOND: u64 = 100;
    const TOTAL: u64 = SECONDS * TICKS_PER_SECOND * PER_TICK;
    let start = server.broker.last_position().token().to_string();
    let publisher = {
        let url = server.url("/v1/publish");
        tokio::spawn(async move {
            let http = reqwest::Client::new();
            let mut ticks = tokio::time::interval(Duration::from_millis(1000 / TICKS_PER_SECOND));
            for tick in 0..SECONDS * TICKS_PER_SECOND {
                ticks.tick().await;
                let messages: Vec<Value> = (0..PER_TICK)
                    .map(|i| {
                        let n = tick * PER_TICK + i;
                        json!({"subject": format!("load.{}", n % 4), "data": {"n": n}})
                    })
                    .collect();
                let response = http
                    .post(&url)
                    .json(&json!({"messages": messages}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), 200);
            }
        })
    };
    // Two HTTP clients, alternating: the cursor is all the state there is.
    let clients = [reqwest::Client::new(), reqwest::Client::new()];
    let mut cursor = start;
    let mut received = Vec::with_capacity(TOTAL as usize);
    let mut polls = 0usize;
    while (received.len() as u64) < TOTAL {
        polls += 1;
        assert!(polls < 100_000, "polling makes progress");
        let (status, body) = poll(
            &clients[polls % 2],
            &server,
            &format!("subject=load.*&cursor={cursor}&wait=5"),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        assert!(
            body["events"]
                .as_array()
                .unwrap()
                .iter()
                .all(|event| event["op"] == "msg"),
            "no gap at this rate: {body}"
        );
        received.extend(data_of(&body).iter().map(|data| data["n"].as_u64().unwrap()));
        cursor = body["cursor"].as_str().unwrap().to_owned();
    }
    publisher.await.unwrap();
    assert_eq!(received, (0..TOTAL).collect::<Vec<_>>(), "all, once, in order");
    assert!(polls > 10, "the client polled many times ({polls})");
    server.shutdown().await;
}

#[tokio::test]
async fn a_cursor_outside_the_window_gets_an_explicit_gap() {
    let server = Server::start(|config| {
        herald::open_for_development(config);
        config.broker.history.max_messages_per_subject = 3;
    })
    .await;
    let http = reqwest::Client::new();
    let first = support::publish(&server, "g", json!(0)).await;
    for n in 1..=10 {
        support::publish(&server, "g", json!(n)).await;
    }
    let (status, body) = poll(&http, &server, &format!("subject=g&cursor={first}")).await;
    assert_eq!(status, 200);
    let gap = &body["events"][0];
    assert_eq!(
        (gap["op"].as_str(), gap["subject"].as_str()),
        (Some("gap"), Some("g"))
    );
    let sequence = |field: &str| {
        Position::from_token(gap[field].as_str().unwrap())
            .unwrap()
            .sequence
    };
    assert_eq!((sequence("from"), sequence("to")), (2, 8));
    assert_eq!(data_of(&body), vec![json!(8), json!(9), json!(10)]);
    server.shutdown().await;
}

#[tokio::test]
async fn bad_requests_are_400_with_the_json_error_body() {
    let server = Server::start(|config| config.auth.anonymous_subscribe.clear()).await;
    let http = reqwest::Client::new();
    let token = format!("token={}", support::NEWS_ONLY_KEY);
    let cases: Vec<(String, u16, &str)> = vec![
        (
            format!("{token}&subject=news.a&cursor=garbage"),
            400,
            "invalid_token",
        ),
        (format!("{token}&subject=news..a"), 400, "invalid_subject"),
        (format!("{token}&subject=news.a&wait=soon"), 400, "invalid_query"),
        (token.clone(), 400, "missing_field"),
        (format!("{token}&subject=chat.a"), 403, "forbidden"),
        ("subject=news.a".to_owned(), 401, "unauthorized"),
    ];
    for (query, status, code) in cases {
        let (got, body) = poll(&http, &server, &query).await;
        assert_eq!(
            (got, body["code"].as_str()),
            (status, Some(code)),
            "{query}: {body}"
        );
        assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    let (status, _) = poll(&http, &server, &format!("{token}&subject=news.>&wait=0")).await;
    assert_eq!(status, 200);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_poll_is_answered_at_once_on_shutdown() {
    let server = Server::dev().await;
    let waiting = {
        let url = server.url("/poll?subject=any.>&wait=60");
        tokio::spawn(async move { reqwest::get(url).await.unwrap() })
    };
    waiting_poll_registered(&server).await;
    server.shutdown().await;
    let response = tokio::time::timeout(support::PATIENCE, waiting)
        .await
        .expect("answered during shutdown, not after its wait")
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["events"], json!([]));
    assert!(body["cursor"].is_string());
}
