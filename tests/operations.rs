//! Operating Herald: `/metrics` after a known workload (exact counts,
//! parsed by a real Prometheus text parser), the admin API behind the
//! admin key, `/readyz` and draining with a thousand clients, JSON logs.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use futures_util::StreamExt;
use herald::Config;
use herald_broker::protocol::ServerEvent;
use herald_broker::Secret;
use serde_json::{json, Value};
use support::{publish, Client, Server, SseClient, PATIENCE, PUBLISHER_KEY};
use tokio_tungstenite::tungstenite::Message;

const ADMIN_KEY: &str = "test-admin-key-0123456789";

fn with_admin(config: &mut Config) {
    config.admin.key = Secret(ADMIN_KEY.into());
}

/// `/metrics`, parsed; every sample line must have been understood.
async fn scrape(server: &Server) -> Metrics {
    let response = reqwest::Client::new()
        .get(server.url("/metrics"))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let text = response.text().await.unwrap();
    let lines = text.lines().map(|line| Ok(line.to_owned()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("the Prometheus text format");
    let sample_lines = text
        .lines()
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .count();
    let parsed: usize = scrape
        .samples
        .iter()
        .map(|sample| match &sample.value {
            prometheus_parse::Value::Histogram(buckets) => buckets.len(),
            _ => 1,
        })
        .sum();
    assert_eq!(parsed, sample_lines, "every sample line parsed:\n{text}");
    Metrics { scrape, text }
}

struct Metrics {
    scrape: prometheus_parse::Scrape,
    text: String,
}

impl Metrics {
    /// The value of the one sample of `name` with exactly `labels`.
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let found: Vec<f64> = self
            .scrape
            .samples
            .iter()
            .filter(|sample| sample.metric == name)
            .filter(|sample| {
                labels.len() == sample.labels.len()
                    && labels
                        .iter()
                        .all(|(key, value)| sample.labels.get(key) == Some(value))
            })
            .map(|sample| match sample.value {
                prometheus_parse::Value::Counter(value)
                | prometheus_parse::Value::Gauge(value)
                | prometheus_parse::Value::Untyped(value) => value,
                _ => panic!("{name} is not a number"),
            })
            .collect();
        assert_eq!(found.len(), 1, "one sample {name}{labels:?} in:\n{}", self.text);
        found[0]
    }

    /// The sum over every label of `name`.
    fn total(&self, name: &str) -> f64 {
        self.scrape
            .samples
            .iter()
            .filter(|sample| sample.metric == name)
            .map(|sample| match sample.value {
                prometheus_parse::Value::Counter(value) | prometheus_parse::Value::Gauge(value) => value,
                _ => 0.0,
            })
            .sum()
    }
}

/// Reads events until `count` messages arrived; returns their payloads.
async fn messages(client: &mut Client, count: usize) -> Vec<Value> {
    let mut received = Vec::new();
    while received.len() < count {
        if let ServerEvent::Msg { data, .. } = client.next_event().await {
            received.push(data);
        }
    }
    received
}

#[tokio::test]
async fn metrics_count_a_known_workload_exactly() {
    let server = Server::start(with_admin).await;
    let mut first = Client::connect(&server).await;
    let mut second = Client::connect(&server).await;
    first.subscribe("ops.room", None).await;
    second.subscribe("ops.room", None).await;
    let mut sse = SseClient::connect(&server, "subject=ops.room", None).await;
    let mut publisher =
        Client::connect_with(&server, herald_broker::Encoding::Json, Some(PUBLISHER_KEY)).await;

    // 5 over HTTP, 2 over WebSocket, 1 refused (an anonymous publish).
    for n in 0..5 {
        publish(&server, "ops.room", json!(n)).await;
    }
    for n in 5..7 {
        publisher
            .send(json!({"op": "pub", "id": n, "subject": "ops.room", "data": n}))
            .await;
        assert!(matches!(publisher.next_event().await, ServerEvent::Ack { .. }));
    }
    first
        .send(json!({"op": "pub", "id": 9, "subject": "ops.room", "data": "no"}))
        .await;
    let (expected, mut first_got) = ((0..7).map(Value::from).collect::<Vec<_>>(), Vec::new());
    loop {
        match first.next_event().await {
            ServerEvent::Msg { data, .. } => first_got.push(data),
            ServerEvent::Err { code, .. } => assert_eq!(code, "forbidden"),
            other => panic!("{other:?}"),
        }
        if first_got.len() == 7 {
            break;
        }
    }
    assert_eq!(first_got, expected);
    assert_eq!(messages(&mut second, 7).await, expected);
    for _ in 0..7 {
        sse.next_event().await.expect("a message on SSE");
    }
    // One frame that is not JSON, counted as an invalid command.
    second.send_raw(Message::text("{nope")).await;
    assert!(matches!(second.next_event().await, ServerEvent::Err { .. }));

    // A resume from before what history keeps: one gap.
    let early = publish(&server, "ops.short", json!("first")).await;
    for n in 0..4 {
        publish(&server, "ops.short", json!(n)).await;
    }
    server.broker.clear_history("ops.short");
    let mut resumer = Client::connect(&server).await;
    resumer.subscribe("ops.short", Some(&early)).await;
    assert!(matches!(resumer.next_event().await, ServerEvent::Gap { .. }));

    // One client leaves; a bad token is refused.
    futures_util::SinkExt::close(&mut resumer.socket).await.unwrap();
    let mut refused = Client::connect_with(
        &server,
        herald_broker::Encoding::Json,
        Some("not-a-key-0123456789"),
    )
    .await;
    assert_eq!(refused.refusal().await, ("invalid_credential".into(), 4401));
    // Reading on sends the answer to the server's close.
    assert!(refused.socket.next().await.is_none());
    tokio::time::sleep(Duration::from_millis(200)).await;

    let metrics = scrape(&server).await;
    let get = |name: &str, labels: &[(&str, &str)]| metrics.get(name, labels);
    assert_eq!(
        get("herald_messages_published_total", &[("transport", "http")]),
        10.0
    );
    assert_eq!(
        get("herald_messages_published_total", &[("transport", "websocket")]),
        2.0
    );
    assert_eq!(get("herald_messages_routed_total", &[]), 12.0);
    assert_eq!(
        get("herald_messages_delivered_total", &[("transport", "websocket")]),
        14.0,
        "7 messages × 2 WebSocket subscribers"
    );
    assert_eq!(
        get("herald_messages_delivered_total", &[("transport", "sse")]),
        7.0
    );
    let commands = |op, outcome| {
        get(
            "herald_commands_total",
            &[("transport", "websocket"), ("op", op), ("outcome", outcome)],
        )
    };
    assert_eq!(commands("pub", "ok"), 2.0);
    assert_eq!(commands("pub", "forbidden"), 1.0);
    assert_eq!(commands("sub", "ok"), 3.0);
    assert_eq!(commands("invalid", "malformed_frame"), 1.0);
    assert_eq!(
        get(
            "herald_commands_total",
            &[("transport", "http"), ("op", "pub"), ("outcome", "ok")]
        ),
        10.0
    );
    assert_eq!(get("herald_gaps_total", &[("reason", "resume")]), 1.0);
    assert_eq!(get("herald_gaps_total", &[("reason", "queue_full")]), 0.0);
    assert_eq!(
        get("herald_disconnects_total", &[("reason", "client_closed")]),
        1.0
    );
    assert_eq!(get("herald_disconnects_total", &[("reason", "refused")]), 1.0);
    assert_eq!(metrics.total("herald_disconnects_total"), 2.0);
    assert_eq!(get("herald_connections", &[("transport", "websocket")]), 3.0);
    assert_eq!(get("herald_connections", &[("transport", "sse")]), 1.0);
    assert_eq!(get("herald_subscriptions", &[]), 3.0);
    assert_eq!(get("herald_history_subjects", &[]), 2.0);
    assert!(get("herald_history_bytes", &[]) > 0.0);
    assert_eq!(
        get("herald_publish_to_enqueue_seconds_count", &[]),
        7.0,
        "the 7 messages that matched a subscription (not the 5 on ops.short)"
    );
    assert_eq!(get("herald_ready", &[]), 1.0);
    assert_eq!(get("herald_draining", &[]), 0.0);
    let latency = metrics
        .scrape
        .samples
        .iter()
        .find(|sample| sample.metric == "herald_publish_to_enqueue_seconds")
        .expect("the latency histogram");
    let prometheus_parse::Value::Histogram(buckets) = &latency.value else {
        panic!("a histogram")
    };
    assert_eq!(
        buckets.last().unwrap().count,
        7.0,
        "+Inf holds every one observed"
    );
    assert!(get("herald_queue_depth_messages_count", &[]) >= 1.0);
    server.shutdown().await;
}

#[tokio::test]
async fn the_admin_api_takes_the_admin_key_and_lists_disconnects_and_clears() {
    let secret = "an-hs256-secret-of-at-least-32-bytes!!";
    let server = Server::start(|config| {
        with_admin(config);
        config.auth.jwt_hs256_secret = Some(Secret(secret.into()));
    })
    .await;
    let http = reqwest::Client::new();
    // No key, another key, a user's token: refused.
    for credential in [None, Some(PUBLISHER_KEY)] {
        let mut request = http.get(server.url("/v1/admin/subjects"));
        if let Some(credential) = credential {
            request = request.bearer_auth(credential);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 401, "{credential:?}");
        let body: Value = response.json().await.unwrap();
        assert!(["unauthorized", "invalid_credential"].contains(&body["code"].as_str().unwrap()));
    }
    let metrics = http.get(server.url("/metrics")).send().await.unwrap();
    assert_eq!(metrics.status(), 401, "metrics take the key by default");

    // Alice twice (WebSocket and SSE), Bob once.
    let token = |user: &str| {
        support::hs256(
            &json!({"sub": user, "exp": support::now() + 600, "herald": {"sub": {"allow": ["room.>"]}}}),
            secret.as_bytes(),
        )
    };
    let (alice, bob) = (token("alice"), token("bob"));
    let mut alice_ws = Client::connect_with(&server, herald_broker::Encoding::Json, Some(&alice)).await;
    alice_ws.subscribe("room.a", None).await;
    let mut alice_sse = SseClient::request_with(
        &server,
        "subject=room.a",
        &[("authorization", &format!("Bearer {alice}"))],
    )
    .await;
    assert_eq!(alice_sse.status(), 200);
    let mut bob_ws = Client::connect_with(&server, herald_broker::Encoding::Json, Some(&bob)).await;
    bob_ws.subscribe("room.>", None).await;
    for n in 0..3 {
        publish(&server, "room.a", json!(n)).await;
    }
    messages(&mut alice_ws, 3).await;

    let admin = |request: reqwest::RequestBuilder| async move {
        let response = request.bearer_auth(ADMIN_KEY).send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json::<Value>().await.unwrap())
    };
    let (status, subjects) = admin(http.get(server.url("/v1/admin/subjects"))).await;
    assert_eq!(status, 200, "{subjects}");
    let listed: HashMap<&str, &Value> = subjects["subjects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|info| (info["subject"].as_str().unwrap(), info))
        .collect();
    assert_eq!(listed["room.a"]["subscribers"], 2, "{subjects}");
    assert_eq!(listed["room.a"]["history_messages"], 3);
    assert!(listed["room.a"]["history_bytes"].as_u64().unwrap() > 0);
    assert_eq!(listed["room.>"]["subscribers"], 1);

    let (_, all) = admin(http.get(server.url("/v1/admin/connections"))).await;
    assert_eq!(all["total"], 3, "{all}");
    let (_, alices) = admin(http.get(server.url("/v1/admin/connections?user=alice"))).await;
    let transports: Vec<&str> = alices["connections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|connection| connection["transport"].as_str().unwrap())
        .collect();
    assert_eq!(transports, ["websocket", "sse"], "{alices}");
    assert!(alices["connections"][0]["subscriptions"] == 1);

    let (status, removed) = admin(http.delete(server.url("/v1/admin/users/alice/connections"))).await;
    assert_eq!((status, &removed["disconnected"]), (200, &json!(2)), "{removed}");
    assert_eq!(alice_ws.refusal().await, ("removed".into(), 4403));
    let ended = tokio::time::timeout(PATIENCE, async {
        while let Some(chunk) = alice_sse.chunk().await.unwrap() {
            if String::from_utf8_lossy(&chunk).contains("removed") {
                return true;
            }
        }
        false
    })
    .await
    .unwrap();
    assert!(ended, "the SSE stream ends with the reason");
    let (_, alices) = admin(http.get(server.url("/v1/admin/connections?user=alice"))).await;
    assert_eq!(alices["total"], 0);
    let (_, bobs) = admin(http.get(server.url("/v1/admin/connections?user=bob"))).await;
    assert_eq!(bobs["total"], 1, "Bob stays");

    let (status, cleared) = admin(http.delete(server.url("/v1/admin/history?subject=room.a"))).await;
    assert_eq!((status, &cleared["cleared"]), (200, &json!(3)), "{cleared}");
    let history = support::get_json(&server, "/v1/history?subject=room.a", Some(PUBLISHER_KEY)).await;
    assert_eq!(history["messages"], json!([]), "{history}");
    let (status, bad) = admin(http.delete(server.url("/v1/admin/history?subject=room.*"))).await;
    assert_eq!((status, bad["code"].as_str()), (400, Some("invalid_subject")));
    let (status, bad) = admin(http.get(server.url("/v1/admin/connections?limit=0"))).await;
    assert_eq!((status, bad["code"].as_str()), (400, Some("invalid_query")));
    drop(bob_ws);
    server.shutdown().await;
}

#[tokio::test]
async fn without_an_admin_key_the_admin_api_is_off_and_sys_subjects_are_closed() {
    let server = Server::dev().await;
    let response = reqwest::Client::new()
        .get(server.url("/v1/admin/subjects"))
        .bearer_auth("anything-at-all-0123456789")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], "admin_disabled");
    // Development mode allows every subject: not the operators' ones.
    let mut client = Client::connect(&server).await;
    client
        .send(json!({"op": "sub", "id": 1, "subject": "$sys.stats"}))
        .await;
    match client.next_event().await {
        ServerEvent::Err { code, .. } => assert_eq!(code, "forbidden"),
        other => panic!("{other:?}"),
    }
    client.send(json!({"op": "sub", "id": 2, "subject": ">"})).await;
    assert!(matches!(client.next_event().await, ServerEvent::Ack { .. }));
    server.shutdown().await;
}

#[tokio::test]
async fn the_admin_key_watches_sys_stats_over_websocket() {
    let server = Server::start(|config| {
        with_admin(config);
        config.admin.stats_interval = Duration::from_millis(200);
    })
    .await;
    let mut watcher = Client::connect(&server).await;
    watcher
        .send(json!({"op": "auth", "id": 1, "token": ADMIN_KEY}))
        .await;
    assert!(matches!(
        watcher.next_event().await,
        ServerEvent::Ack { id: Some(1), .. }
    ));
    watcher.subscribe("$sys.stats", None).await;
    let mut subscriber = Client::connect(&server).await;
    subscriber.subscribe("feed.x", None).await;
    publish(&server, "feed.x", json!(1)).await;
    // Within a few ticks, a stats message that has seen the publish.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    // Earlier ticks delivered to the watcher count as deliveries too.
    let mut earlier_ticks = 0;
    let stats = loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "stats within the patience"
        );
        if let ServerEvent::Msg { subject, data, .. } = watcher.next_event().await {
            assert_eq!(subject, "$sys.stats");
            if data["published"] == 1 {
                break data;
            }
            earlier_ticks += 1;
        }
    };
    assert_eq!(stats["delivered"], 1 + earlier_ticks, "{stats}");
    assert_eq!(stats["connections"]["websocket"], 2, "{stats}");
    assert_eq!(stats["top_subjects"][0]["subject"], "feed.x", "{stats}");
    // The admin key may not publish or read anything else.
    watcher
        .send(json!({"op": "pub", "id": 3, "subject": "feed.x", "data": 1}))
        .await;
    loop {
        match watcher.next_event().await {
            ServerEvent::Err {
                id: Some(3), code, ..
            } => break assert_eq!(code, "forbidden"),
            ServerEvent::Msg { .. } => continue,
            other => panic!("{other:?}"),
        }
    }
    server.shutdown().await;
}

/// Drain with a thousand WebSocket clients: `/readyz` answers 503 at once,
/// new clients are refused, and every client is closed with
/// `server_draining` (1012), spread evenly over the window; then the server
/// exits by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_spreads_a_thousand_closes_over_its_window() {
    const CLIENTS: usize = 1000;
    const WINDOW: Duration = Duration::from_secs(5);
    support::raise_open_file_limit();
    let mut server = Server::start(|config| {
        with_admin(config);
        config.server.drain_window = WINDOW;
        config.server.max_connections_per_ip = 2 * CLIENTS;
    })
    .await;
    let (closed_tx, mut closed_rx) = tokio::sync::mpsc::unbounded_channel();
    let mut sockets = Vec::new();
    for _ in 0..CLIENTS {
        let mut client = Client::connect(&server).await;
        client.subscribe("drain.x", None).await;
        sockets.push(client);
    }
    for mut client in sockets {
        let closed = closed_tx.clone();
        tokio::spawn(async move {
            let mut err = None;
            while let Some(Ok(frame)) = client.socket.next().await {
                match frame {
                    Message::Text(text) => {
                        let event: Value = serde_json::from_str(&text).unwrap();
                        err = event["code"].as_str().map(str::to_owned);
                    }
                    Message::Close(frame) => {
                        let code = frame.map(|frame| u16::from(frame.code));
                        let _ = closed.send((tokio::time::Instant::now(), code, err.take()));
                        return;
                    }
                    _ => {}
                }
            }
            let _ = closed.send((tokio::time::Instant::now(), None, err));
        });
    }
    drop(closed_tx);
    let http = reqwest::Client::new();
    assert_eq!(
        http.get(server.url("/readyz")).send().await.unwrap().status(),
        200
    );
    let started = tokio::time::Instant::now();
    let answer = http
        .post(server.url("/v1/admin/drain"))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 202);
    let ready = http.get(server.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503, "not ready at once");
    assert_eq!(ready.json::<Value>().await.unwrap()["status"], "draining");
    let mut late = Client::connect(&server).await;
    assert_eq!(late.refusal().await, ("server_draining".into(), 4503));

    let mut closes = Vec::new();
    while let Some(close) = tokio::time::timeout(WINDOW + PATIENCE, closed_rx.recv())
        .await
        .unwrap()
    {
        closes.push(close);
    }
    assert_eq!(closes.len(), CLIENTS);
    assert!(
        closes
            .iter()
            .all(|(_, code, err)| *code == Some(1012) && err.as_deref() == Some("server_draining")),
        "every client told to reconnect: {:?}",
        closes.iter().find(|(_, code, _)| *code != Some(1012))
    );
    let mut per_tenth = [0usize; 10];
    for (at, _, _) in &closes {
        let tenth = ((*at - started).as_secs_f64() / WINDOW.as_secs_f64() * 10.0) as usize;
        per_tenth[tenth.min(9)] += 1;
    }
    eprintln!("closes per tenth of the {WINDOW:?} window: {per_tenth:?}");
    // Evenly: a tenth of them in each tenth, give or take the time the
    // request took to arrive and the last closes to travel.
    assert!(
        per_tenth
            .iter()
            .all(|count| (CLIENTS * 8 / 100..=CLIENTS * 12 / 100).contains(count)),
        "{per_tenth:?}"
    );
    assert!(
        server.exited_within(PATIENCE).await,
        "the server exits once drained"
    );
    let disconnects = server.disconnects.count("server_draining");
    assert_eq!(disconnects, CLIENTS as u64);
}

/// The real binary: SIGUSR1 drains it (`/readyz` 503 at once, a client
/// told `server_draining`), and it exits cleanly after the window.
#[tokio::test]
async fn sigusr1_drains_the_real_binary() {
    let (mut child, address, _) = support::serve(
        &["--dev"],
        &[
            ("HERALD_SERVER__DRAIN_WINDOW", "1s"),
            ("HERALD_SERVER__SHUTDOWN_GRACE", "2s"),
        ],
    );
    let url = |path: &str| format!("http://{address}{path}");
    let (mut socket, _) = tokio_tungstenite::connect_async(url("/ws").replace("http", "ws"))
        .await
        .unwrap();
    futures_util::SinkExt::send(
        &mut socket,
        Message::text(json!({"op": "sub", "id": 1, "subject": "x"}).to_string()),
    )
    .await
    .unwrap();
    let ready = reqwest::get(url("/readyz")).await.unwrap();
    assert_eq!(ready.status(), 200);
    let sent = std::process::Command::new("kill")
        .args(["-USR1", &child.0.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
    loop {
        let status = reqwest::get(url("/readyz")).await.unwrap().status();
        if status == 503 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "503 within a second of the signal"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut told = None;
    while let Some(Ok(frame)) = tokio::time::timeout(PATIENCE, socket.next()).await.unwrap() {
        if let Message::Text(text) = frame {
            let event: Value = serde_json::from_str(&text).unwrap();
            if event["op"] == "err" {
                told = event["code"].as_str().map(str::to_owned);
            }
        }
    }
    assert_eq!(told.as_deref(), Some("server_draining"));
    let status = child.exits_within(PATIENCE).await;
    assert!(status.success(), "{status}");
}

/// `--log-format json`: one JSON object per line, a refused client and a
/// drain among them with their fields.
#[tokio::test]
async fn json_logs_carry_each_notable_event_with_its_fields() {
    use std::io::BufRead;
    let mut child = support::Running(
        std::process::Command::new(support::HERALD)
            .args(["serve", "--listen", "127.0.0.1:0", "--log-format", "json"])
            .env("RUST_LOG", "info")
            .env("HERALD_NATS__LISTEN", "127.0.0.1:0")
            .env("HERALD_QUIC__LISTEN", "127.0.0.1:0")
            .env("HERALD_SERVER__DRAIN_WINDOW", "100ms")
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let stderr = child.0.stderr.take().unwrap();
    let (lines, log) = std::sync::mpsc::channel::<Value>();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            let parsed = serde_json::from_str(&line).unwrap_or_else(|error| panic!("{error}: {line}"));
            let _ = lines.send(parsed);
        }
    });
    let next = |wanted: &str| loop {
        let line = log
            .recv_timeout(PATIENCE)
            .expect("the log line within the patience");
        for key in ["timestamp", "level", "message", "target"] {
            assert!(line.get(key).is_some(), "{key} in {line}");
        }
        if line["message"] == wanted {
            return line;
        }
    };
    let listening = next("listening");
    let address = listening["address"].as_str().unwrap().to_owned();
    // No credential: refused (this server allows no anonymous access).
    let (mut socket, _) =
        tokio_tungstenite::connect_async(format!("ws://{address}/ws?token=nonsense-0123456789"))
            .await
            .unwrap();
    while let Some(Ok(_)) = socket.next().await {}
    let refused = next("client refused");
    assert_eq!(refused["transport"], "websocket", "{refused}");
    assert_eq!(refused["code"], "invalid_credential", "{refused}");
    assert_eq!(refused["level"], "INFO");
    // A flood of refusals is not a flood of lines: ten a second at most,
    // and the next line counts what was left out.
    let refuse = || async {
        let url = format!("ws://{address}/ws?token=nonsense-0123456789");
        let (mut socket, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        while let Some(Ok(_)) = socket.next().await {}
    };
    for _ in 0..40 {
        refuse().await;
    }
    tokio::time::sleep(Duration::from_millis(1100)).await;
    refuse().await;
    let (mut lines, mut accounted) = (1, 1);
    while accounted < 42 {
        let line = next("client refused");
        lines += 1;
        accounted += 1 + line["suppressed"].as_u64().unwrap();
    }
    assert_eq!(accounted, 42, "every refusal logged or counted once");
    assert!(lines <= 21, "{lines} lines for 42 refusals in about a second");
    let sent = std::process::Command::new("kill")
        .args(["-USR1", &child.0.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let draining = next("draining: closing connections with server_draining, spread over the window");
    assert_eq!(draining["connections"], 0, "{draining}");
    assert_eq!(draining["level"], "WARN");
    next("stopped");
}

/// Every metric the Grafana dashboard in `docs/` queries is one `/metrics`
/// serves (the cluster's appear in cluster mode: `tests/cluster.rs`).
#[tokio::test]
async fn the_grafana_dashboard_queries_only_metrics_that_exist() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/grafana/herald-dashboard.json");
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut queried = std::collections::BTreeSet::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            for (start, _) in expr.match_indices("herald_") {
                let name: String = expr[start..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                queried.insert(name);
            }
        }
    }
    assert!(queried.len() >= 15, "{queried:?}");
    let server = Server::start(with_admin).await;
    let metrics = scrape(&server).await;
    for name in &queried {
        if name.starts_with("herald_cluster_") {
            continue;
        }
        let family = name.strip_suffix("_bucket").unwrap_or(name);
        let declared = format!("# TYPE {family} ");
        assert!(
            metrics.text.lines().any(|line| line.starts_with(&declared)),
            "{name} is queried by the dashboard but not served"
        );
    }
    server.shutdown().await;
}

/// NATS clients count like the others: connections, commands with their
/// codes, messages published and delivered.
#[tokio::test]
async fn nats_clients_are_counted_by_transport() {
    let server = Server::start(with_admin).await;
    let url = format!("nats://{}", server.nats_address.unwrap());
    let connect = |key: &'static str| {
        let url = url.clone();
        async move {
            async_nats::ConnectOptions::new()
                .token(key.into())
                .connect(url)
                .await
                .unwrap()
        }
    };
    let publisher = connect(PUBLISHER_KEY).await;
    let news_only = connect(support::NEWS_ONLY_KEY).await;
    let mut subscriber = publisher.subscribe("nats.room").await.unwrap();
    publisher.flush().await.unwrap();
    for n in 0..3 {
        publisher
            .publish("nats.room", n.to_string().into())
            .await
            .unwrap();
    }
    // Refused: this key publishes only under news.>.
    news_only.publish("nats.room", "no".into()).await.unwrap();
    news_only.flush().await.unwrap();
    for _ in 0..3 {
        tokio::time::timeout(PATIENCE, subscriber.next())
            .await
            .unwrap()
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let metrics = scrape(&server).await;
    let nats = |op, outcome| {
        metrics.get(
            "herald_commands_total",
            &[("transport", "nats"), ("op", op), ("outcome", outcome)],
        )
    };
    assert_eq!(nats("pub", "ok"), 3.0);
    assert_eq!(nats("pub", "forbidden"), 1.0);
    assert_eq!(nats("sub", "ok"), 1.0);
    assert_eq!(
        metrics.get("herald_messages_published_total", &[("transport", "nats")]),
        3.0
    );
    assert_eq!(
        metrics.get("herald_messages_delivered_total", &[("transport", "nats")]),
        3.0
    );
    assert_eq!(metrics.get("herald_connections", &[("transport", "nats")]), 2.0);
    server.shutdown().await;
}

/// `[admin] listen`: the operators' routes on a listener of their own, and
/// off the main one.
#[tokio::test]
async fn the_admin_listener_serves_the_operators_routes_and_the_main_one_does_not() {
    use std::io::BufRead;
    let mut child = support::Running(
        std::process::Command::new(support::HERALD)
            .args(["serve", "--listen", "127.0.0.1:0", "--dev"])
            .env("RUST_LOG", "info")
            .env("HERALD_NATS__LISTEN", "127.0.0.1:0")
            .env("HERALD_QUIC__LISTEN", "127.0.0.1:0")
            .env("HERALD_ADMIN__LISTEN", "127.0.0.1:0")
            .env("HERALD_ADMIN__KEY", ADMIN_KEY)
            .env("HERALD_ADMIN__PUBLIC_METRICS", "true")
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let stderr = std::io::BufReader::new(child.0.stderr.take().unwrap());
    let (mut main, mut admin) = (None, None);
    for line in stderr.lines().map_while(Result::ok) {
        let address = line
            .split("address=")
            .nth(1)
            .map(|rest| rest.split_whitespace().next().unwrap().to_owned());
        if line.contains("listening for operators") {
            admin = address;
        } else if line.contains("listening") && main.is_none() {
            main = address;
        }
        if main.is_some() && admin.is_some() {
            break;
        }
    }
    let (main, admin) = (main.unwrap(), admin.unwrap());
    let get = |address: &str, path: &str| reqwest::get(format!("http://{address}{path}"));
    let metrics = get(&admin, "/metrics").await.unwrap();
    assert_eq!(metrics.status(), 200, "public on the admin listener");
    assert!(metrics.text().await.unwrap().contains("herald_build_info"));
    assert_eq!(get(&admin, "/readyz").await.unwrap().status(), 200);
    assert_eq!(get(&admin, "/dashboard").await.unwrap().status(), 200);
    let subjects = reqwest::Client::new()
        .get(format!("http://{admin}/v1/admin/subjects"))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(subjects.status(), 200);
    // The dashboard's feed: /ws on the admin listener, the admin key.
    let (mut socket, _) = tokio_tungstenite::connect_async(format!("ws://{admin}/ws"))
        .await
        .unwrap();
    for command in [
        json!({"op": "auth", "id": 1, "token": ADMIN_KEY}),
        json!({"op": "sub", "id": 2, "subject": "$sys.stats"}),
    ] {
        futures_util::SinkExt::send(&mut socket, Message::text(command.to_string()))
            .await
            .unwrap();
    }
    let stats = loop {
        let frame = tokio::time::timeout(PATIENCE, socket.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let event: Value = serde_json::from_str(frame.to_text().unwrap()).unwrap();
        if event["op"] == "msg" {
            break event;
        }
        assert_eq!(event["op"], "ack", "{event}");
    };
    assert_eq!(stats["subject"], "$sys.stats");
    // The main listener serves clients, not operators.
    for path in ["/metrics", "/dashboard", "/v1/admin/subjects"] {
        assert_eq!(get(&main, path).await.unwrap().status(), 404, "{path}");
    }
    assert_eq!(get(&main, "/readyz").await.unwrap().status(), 200);
}

/// A waiting long poll's delivery counts once, under `longpoll`: the
/// queue it waits on is not counted again under another transport.
#[tokio::test]
async fn a_long_poll_delivery_is_counted_once() {
    let server = Server::start(with_admin).await;
    let now: Value = reqwest::get(server.url("/poll?subject=lp.x&wait=0"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let url = server.url(&format!(
        "/poll?subject=lp.x&wait=5&cursor={}",
        now["cursor"].as_str().unwrap()
    ));
    let waiting =
        tokio::spawn(async move { reqwest::get(url).await.unwrap().json::<Value>().await.unwrap() });
    tokio::time::sleep(Duration::from_millis(300)).await;
    publish(&server, "lp.x", json!("one")).await;
    let answer = waiting.await.unwrap();
    assert_eq!(answer["events"].as_array().unwrap().len(), 1, "{answer}");
    let metrics = scrape(&server).await;
    assert_eq!(
        metrics.get("herald_messages_delivered_total", &[("transport", "longpoll")]),
        1.0
    );
    assert_eq!(
        metrics.total("herald_messages_delivered_total"),
        1.0,
        "counted once"
    );
    server.shutdown().await;
}

/// `server.write_delay`: a writer gathers what arrives within the delay
/// into one write. 60 messages published a few milliseconds apart reach a
/// WebSocket and an SSE subscriber, in order, in a handful of writes with a
/// 50 ms delay, and in about one write each without one.
#[tokio::test]
async fn a_write_delay_gathers_deliveries_into_fewer_writes() {
    const MESSAGES: usize = 60;
    let mut writes = Vec::new();
    for delay in [Duration::from_millis(50), Duration::ZERO] {
        let server = Server::start(|config| {
            with_admin(config);
            config.server.write_delay = delay;
        })
        .await;
        let mut subscriber = Client::connect(&server).await;
        subscriber.subscribe("gather.s", None).await;
        let mut stream = SseClient::connect(&server, "subject=gather.s", None).await;
        let before = scrape(&server).await;
        for n in 0..MESSAGES {
            publish(&server, "gather.s", json!(n)).await;
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
        let expected: Vec<Value> = (0..MESSAGES).map(|n| json!(n)).collect();
        assert_eq!(messages(&mut subscriber, MESSAGES).await, expected);
        let mut over_sse = Vec::new();
        while over_sse.len() < MESSAGES {
            let event = tokio::time::timeout(PATIENCE, stream.next_event())
                .await
                .unwrap()
                .unwrap();
            if event.event == "msg" {
                over_sse.push(event.json()["data"].clone());
            }
        }
        assert_eq!(over_sse, expected);
        let after = scrape(&server).await;
        let wrote = |transport| {
            after.get("herald_writes_total", &[("transport", transport)])
                - before.get("herald_writes_total", &[("transport", transport)])
        };
        writes.push((delay, wrote("websocket"), wrote("sse")));
        server.shutdown().await;
    }
    println!("writes for {MESSAGES} messages (delay, websocket, sse): {writes:?}");
    let (_, websocket, sse) = writes[0];
    assert!(
        websocket * 4.0 <= MESSAGES as f64 && sse * 4.0 <= MESSAGES as f64,
        "with a 50 ms delay, at least four messages a write: {writes:?}"
    );
    let (_, websocket, sse) = writes[1];
    assert!(
        websocket * 2.0 >= MESSAGES as f64 && sse * 2.0 >= MESSAGES as f64,
        "without a delay, about one write per message: {writes:?}"
    );
}
