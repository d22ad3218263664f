//! Cluster mode through a real nats-server with JetStream: several Herald
//! nodes share one order and one history; a client resumes on any node;
//! faults of NATS and of a node lose nothing that was acknowledged.

mod support;

use std::collections::HashSet;
use std::time::Duration;

use futures_util::StreamExt;
use herald::Config;
use herald_broker::protocol::ServerEvent;
use serde_json::{json, Value};
use support::nats_server::NatsServer;
use support::{publish, Client, RawNats, Server, PATIENCE, PUBLISHER_KEY};

/// One clustered node on `nats`, named `name`.
async fn node(nats: &str, name: &str) -> Server {
    node_with(nats, name, |_| {}).await
}

async fn node_with(nats: &str, name: &str, adjust: impl FnOnce(&mut Config)) -> Server {
    let (nats, name) = (nats.to_owned(), name.to_owned());
    let server = Server::start(move |config| {
        config.cluster.nats_url = nats;
        config.cluster.node_name = name;
        adjust(config);
    })
    .await;
    wait_ready(&server).await;
    server
}

/// A node started while its NATS is down (restart it with
/// `nats.restart()`), with public metrics.
async fn node_while_nats_is_down() -> (NatsServer, Server) {
    let mut nats = NatsServer::start();
    let url = nats.url();
    nats.kill();
    let node = Server::start(move |config| {
        config.cluster.nats_url = url;
        config.cluster.reconnect_max_delay = Duration::from_millis(200);
        config.admin.public_metrics = true;
    })
    .await;
    (nats, node)
}

/// A raw NATS connection to `node`'s NATS listener with the publisher key.
async fn raw_publisher(node: &Server) -> RawNats {
    RawNats::connect(node, &format!(r#"{{"auth_token":"{PUBLISHER_KEY}"}}"#)).await
}

/// Waits until `/readyz` says the node is connected and caught up.
async fn wait_ready(server: &Server) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let response = reqwest::get(server.url("/readyz")).await.unwrap();
        if response.status() == 200 {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "node ready within the patience"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until `server` has applied the position `token` names: a client
/// failing over to a node only just behind would be told `not_caught_up`.
async fn wait_applied(server: &Server, token: &str) {
    let wanted = decode(token).sequence;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let health = support::get_json(server, "/healthz", None).await;
        if health["cluster"]["applied"].as_u64().unwrap_or(0) >= wanted {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{token} applied within the patience: {health}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The bridge's state as `/healthz` reports it.
async fn bridge_state(server: &Server) -> String {
    let health = support::get_json(server, "/healthz", None).await;
    assert_eq!(health["status"], "ok", "liveness holds whatever the bridge does");
    health["cluster"]["state"].as_str().unwrap().to_owned()
}

async fn wait_state(server: &Server, wanted: &str) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let state = bridge_state(server).await;
        if state == wanted {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "bridge state {wanted} within the patience (still {state})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A received message: subject, position, payload.
type Received = (String, String, Value);

/// The next `n` messages, skipping nothing else: any other event fails.
async fn messages(client: &mut Client, n: usize) -> Vec<Received> {
    let mut received = Vec::with_capacity(n);
    while received.len() < n {
        match client.next_event().await {
            ServerEvent::Msg {
                subject, pos, data, ..
            } => received.push((subject, pos, data)),
            other => panic!("expected a message, got {other:?}"),
        }
    }
    received
}

/// Positions compare as their tokens' bytes (epoch, then sequence, big
/// endian): strictly increasing means in order and none twice.
fn assert_strictly_increasing(received: &[Received]) {
    for pair in received.windows(2) {
        assert!(
            decode(&pair[0].1) < decode(&pair[1].1),
            "positions out of order or repeated: {:?} then {:?}",
            pair[0],
            pair[1]
        );
    }
}

fn decode(token: &str) -> herald_broker::Position {
    herald_broker::Position::from_token(token).unwrap()
}

async fn nats_client(nats: &NatsServer) -> async_nats::Client {
    async_nats::connect(nats.url()).await.unwrap()
}

/// Publishes over HTTP; the status and the body (position or error).
async fn try_publish(server: &Server, subject: &str, data: Value) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(server.url("/v1/publish"))
        .bearer_auth(PUBLISHER_KEY)
        .json(&json!({"subject": subject, "data": data}))
        .timeout(Duration::from_secs(10))
        .send()
        .await;
    match response {
        Ok(response) => (
            response.status().as_u16(),
            response.json().await.unwrap_or(Value::Null),
        ),
        Err(_) => (0, Value::Null),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_message_published_on_any_node_reaches_every_node_once_in_order() {
    let nats = NatsServer::start();
    let a = node(&nats.url(), "a").await;
    let b = node(&nats.url(), "b").await;
    let mut on_a = Client::connect(&a).await;
    on_a.subscribe("chat.>", None).await;
    let mut on_b = Client::connect(&b).await;
    on_b.subscribe("chat.>", None).await;
    // A NATS client on the cluster sees Herald's messages under the prefix.
    let direct = nats_client(&nats).await;
    let mut tap = direct.subscribe("herald.chat.>").await.unwrap();
    let jetstream = async_nats::jetstream::new(direct.clone());
    // A request on the same connection: answered only after the server has
    // processed the SUB before it (a flush only writes it out).
    jetstream.get_stream("HERALD").await.unwrap();

    // Over HTTP on B, over NATS directly, and over WebSocket on A, interleaved.
    let mut publisher = Client::connect_with(&a, herald_broker::Encoding::Json, Some(PUBLISHER_KEY)).await;
    let mut expected = Vec::new();
    for n in 0..30 {
        let subject = if n % 2 == 0 { "chat.even" } else { "chat.odd" };
        match n % 3 {
            0 => {
                publish(&b, subject, json!({"n": n})).await;
            }
            1 => {
                // As a backend that wants to know it was stored: a
                // JetStream publish, acknowledged before the next one.
                let body = json!({"n": n}).to_string();
                let nats_subject = format!("herald.{subject}");
                let stored = jetstream.publish(nats_subject, body.into()).await.unwrap();
                stored.await.unwrap();
            }
            _ => {
                publisher
                    .send(json!({"op": "pub", "id": n, "subject": subject, "data": {"n": n}}))
                    .await;
                match publisher.next_event().await {
                    ServerEvent::Ack {
                        id: Some(id),
                        pos: Some(_),
                    } if id == n => {}
                    other => panic!("expected the publish ack with a position, got {other:?}"),
                }
            }
        }
        expected.push((subject.to_owned(), json!({"n": n})));
    }

    let got_a = messages(&mut on_a, 30).await;
    let got_b = messages(&mut on_b, 30).await;
    assert_strictly_increasing(&got_a);
    // Every node: the same messages, the same order, the same positions.
    assert_eq!(got_a, got_b);
    let payloads: Vec<(String, Value)> = got_a.iter().map(|(s, _, d)| (s.clone(), d.clone())).collect();
    assert_eq!(
        payloads, expected,
        "each publisher's order kept, nothing lost or doubled"
    );
    // And nothing more: no message came back around a second time.
    on_a.send(json!({"op": "ping", "id": 99})).await;
    assert!(matches!(
        on_a.next_event().await,
        ServerEvent::Pong { id: Some(99) }
    ));

    let mut tapped = Vec::new();
    while tapped.len() < 30 {
        let message = tokio::time::timeout(PATIENCE, tap.next())
            .await
            .unwrap_or_else(|_| panic!("tapped so far: {tapped:?}"))
            .unwrap();
        tapped.push(serde_json::from_slice::<Value>(&message.payload).unwrap());
    }
    // Core NATS orders each publisher's messages, not messages of different
    // publishers: each source's sequence, none missing or twice.
    let numbers: Vec<u64> = tapped.iter().map(|data| data["n"].as_u64().unwrap()).collect();
    for source in 0..3 {
        let from_source: Vec<u64> = numbers.iter().copied().filter(|n| n % 3 == source).collect();
        let published: Vec<u64> = (0..30).filter(|n| n % 3 == source).collect();
        assert_eq!(
            from_source, published,
            "NATS clients see Herald's messages as published"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_resumes_on_another_node_with_nothing_lost() {
    let nats = NatsServer::start();
    let a = node(&nats.url(), "a").await;
    let b = node(&nats.url(), "b").await;
    let c = node(&nats.url(), "c").await;
    let mut client = Client::connect(&a).await;
    client.subscribe("room.*", None).await;
    for n in 0..10 {
        publish(&b, "room.1", json!(n)).await;
    }
    let first = messages(&mut client, 10).await;
    let last = first.last().unwrap().1.clone();
    drop(client);

    // Missed while away: published on A and B.
    for n in 10..20 {
        let server = if n % 2 == 0 { &a } else { &b };
        publish(server, "room.2", json!(n)).await;
    }
    wait_applied(&c, &last).await;
    let mut resumed = Client::connect(&c).await;
    resumed.subscribe("room.*", Some(&last)).await;
    let missed = messages(&mut resumed, 10).await;
    let values: Vec<Value> = missed.iter().map(|(_, _, data)| data.clone()).collect();
    assert_eq!(values, (10..20).map(Value::from).collect::<Vec<_>>());
    assert!(decode(&missed[0].1) > decode(&last));
    // Then live, from any node.
    publish(&a, "room.1", json!("live")).await;
    let live = messages(&mut resumed, 1).await;
    assert_eq!(live[0].2, json!("live"));
    let all: Vec<Received> = first.into_iter().chain(missed).chain(live).collect();
    assert_strictly_increasing(&all);

    // The history API agrees on every node.
    for server in [&a, &b, &c] {
        wait_applied(server, &all.last().unwrap().1).await;
        let page = support::get_json(server, "/v1/history?subject=room.2", Some(PUBLISHER_KEY)).await;
        assert_eq!(page["messages"].as_array().unwrap().len(), 10, "{page}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nats_restarting_under_load_loses_nothing_acknowledged() {
    let mut nats = NatsServer::start();
    let a = node(&nats.url(), "a").await;
    let b = node(&nats.url(), "b").await;
    let mut on_a = Client::connect(&a).await;
    on_a.subscribe("load.>", None).await;
    let mut on_b = Client::connect(&b).await;
    on_b.subscribe("load.>", None).await;

    // Publish continuously on B while NATS goes away and comes back.
    let b_address = b.address;
    let publisher = tokio::spawn(async move {
        let url = format!("http://{b_address}/v1/publish");
        let client = reqwest::Client::new();
        let (mut acknowledged, mut refused) = (Vec::new(), 0);
        for n in 0..400u64 {
            let response = client
                .post(&url)
                .bearer_auth(PUBLISHER_KEY)
                .json(&json!({"subject": "load.x", "data": n}))
                .send()
                .await
                .unwrap();
            match response.status().as_u16() {
                200 => acknowledged.push(n),
                503 => {
                    let body: Value = response.json().await.unwrap();
                    assert_eq!(body["code"], "cluster_unavailable", "{body}");
                    refused += 1;
                }
                other => panic!("unexpected status {other}"),
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        (acknowledged, refused)
    });
    tokio::time::sleep(Duration::from_millis(400)).await;
    nats.kill();
    wait_state(&a, "disconnected").await;
    // Cut off, the node still serves its clients: they stay connected and
    // are answered.
    on_a.send(json!({"op": "ping", "id": 7})).await;
    let mut received_on_a = Vec::new();
    loop {
        match on_a.next_event().await {
            ServerEvent::Pong { id: Some(7) } => break,
            ServerEvent::Msg {
                subject, pos, data, ..
            } => received_on_a.push((subject, pos, data)),
            other => panic!("unexpected {other:?}"),
        }
    }
    let (status, body) = try_publish(&a, "load.y", json!("while cut off")).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (503, Some("cluster_unavailable")),
        "{body}"
    );
    let ready = reqwest::get(a.url("/readyz")).await.unwrap();
    assert_eq!(ready.status(), 503, "not ready while cut off");

    tokio::time::sleep(Duration::from_millis(500)).await;
    nats.restart();
    wait_state(&a, "connected").await;
    wait_state(&b, "connected").await;
    let (acknowledged, refused) = publisher.await.unwrap();
    assert!(refused > 0, "the outage was seen by the publisher");
    assert!(acknowledged.len() > 100, "publishing went on around the outage");

    // Every acknowledged message arrives, once, in order, on both nodes; a
    // refused one may have been stored all the same (its answer was lost).
    // A last message marks the end.
    publish(&a, "load.x", json!("end")).await;
    for (client, mut got) in [(&mut on_a, received_on_a), (&mut on_b, Vec::new())] {
        loop {
            let message = messages(client, 1).await.remove(0);
            if message.2 == json!("end") {
                break;
            }
            got.push(message);
        }
        assert_strictly_increasing(&got);
        let values: Vec<u64> = got.iter().map(|(_, _, data)| data.as_u64().unwrap()).collect();
        let unique: HashSet<u64> = values.iter().copied().collect();
        assert_eq!(unique.len(), values.len(), "none twice");
        for n in &acknowledged {
            assert!(unique.contains(n), "acknowledged message {n} delivered");
        }
        let mut sorted = values.clone();
        sorted.sort_unstable();
        assert_eq!(values, sorted, "in publish order");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_killed_mid_run_loses_nothing_acknowledged() {
    let nats = NatsServer::start();
    let url = nats.url();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("herald.toml");
    std::fs::write(
        &config,
        format!(
            "[auth]\nanonymous_subscribe = [\">\"]\n[[auth.api_keys]]\nkey = \"{PUBLISHER_KEY}\"\n\
             publish = [\">\"]\nsubscribe = [\">\"]\n[cluster]\nnats_url = \"{url}\"\nnode_name = \"doomed\"\n"
        ),
    )
    .unwrap();
    let (mut doomed, address, _) = support::serve(&["--config", config.to_str().unwrap()], &[]);
    let survivor = node(&url, "survivor").await;
    let doomed_url = format!("http://{address}");
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !reqwest::get(format!("{doomed_url}/readyz"))
        .await
        .is_ok_and(|response| response.status() == 200)
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the doomed node gets ready"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let (mut socket, _) = tokio_tungstenite::connect_async(format!("ws://{address}/ws"))
        .await
        .unwrap();
    use futures_util::SinkExt;
    socket
        .send(tokio_tungstenite::tungstenite::Message::text(
            json!({"op": "sub", "id": 1, "subject": "orders.>"}).to_string(),
        ))
        .await
        .unwrap();
    // Publish on the doomed node itself, then kill it mid-run.
    let client = reqwest::Client::new();
    let mut acknowledged = Vec::new();
    for n in 0..40u64 {
        let response = client
            .post(format!("{doomed_url}/v1/publish"))
            .bearer_auth(PUBLISHER_KEY)
            .json(&json!({"subject": "orders.new", "data": n}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        acknowledged.push(n);
    }
    // The client read part of the stream, not all of it.
    let mut last = None;
    let mut seen = Vec::new();
    while seen.len() < 15 {
        let frame = tokio::time::timeout(PATIENCE, socket.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let tokio_tungstenite::tungstenite::Message::Text(text) = frame else {
            continue;
        };
        let event: Value = serde_json::from_str(&text).unwrap();
        if event["op"] == "msg" {
            seen.push(event["data"].as_u64().unwrap());
            last = Some(event["pos"].as_str().unwrap().to_owned());
        }
    }
    doomed.0.kill().unwrap();
    doomed.0.wait().unwrap();

    // Its client fails over to the survivor with its last position.
    wait_applied(&survivor, last.as_deref().unwrap()).await;
    let mut resumed = Client::connect(&survivor).await;
    resumed.subscribe("orders.>", last.as_deref()).await;
    let rest = messages(&mut resumed, acknowledged.len() - seen.len()).await;
    let mut all = seen.clone();
    all.extend(rest.iter().map(|(_, _, data)| data.as_u64().unwrap()));
    assert_eq!(all, acknowledged, "every acknowledged publish, once, in order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_message_crosses_regions_joined_by_a_leaf_node_connection() {
    // Region "east" holds the stream (JetStream domain "east"); region
    // "west" is a NATS server of its own, joined to east as a leaf node.
    let east = NatsServer::with_domain("east", "leafnodes { listen: \"127.0.0.1:-1\" }");
    let leaf = east.leaf_port.expect("east listens for leaf nodes");
    let west = NatsServer::with_config(&format!(
        "leafnodes {{ remotes: [ {{ url: \"nats-leaf://127.0.0.1:{leaf}\" }} ] }}"
    ));
    let in_region = |config: &mut Config| config.cluster.jetstream_domain = "east".into();
    let east_node = node_with(&east.url(), "east-1", in_region).await;
    let west_node = node_with(&west.url(), "west-1", in_region).await;

    let mut in_west = Client::connect(&west_node).await;
    in_west.subscribe("news.>", None).await;
    let mut in_east = Client::connect(&east_node).await;
    in_east.subscribe("news.>", None).await;
    publish(&east_node, "news.east", json!("from east")).await;
    publish(&west_node, "news.west", json!("from west")).await;
    let west_got = messages(&mut in_west, 2).await;
    let east_got = messages(&mut in_east, 2).await;
    assert_eq!(west_got, east_got, "one order in both regions");
    let values: Vec<&Value> = west_got.iter().map(|(_, _, data)| data).collect();
    assert_eq!(values, [&json!("from east"), &json!("from west")]);

    // A client from the west resumes in the east with its token.
    let last = west_got[0].1.clone();
    wait_applied(&east_node, &last).await;
    let mut moved = Client::connect(&east_node).await;
    moved.subscribe("news.>", Some(&last)).await;
    assert_eq!(messages(&mut moved, 1).await[0].2, json!("from west"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn batches_nats_publishes_and_one_way_transports_work_across_nodes() {
    let nats = NatsServer::start();
    let a = node(&nats.url(), "a").await;
    let b = node(&nats.url(), "b").await;
    let mut on_a = Client::connect(&a).await;
    on_a.subscribe("feed.>", None).await;

    // A batch on B: checked whole, each message ordered, positions increasing.
    let batch: Vec<(String, Value)> = (0..5).map(|n| ("feed.batch".to_owned(), json!(n))).collect();
    let positions = support::publish_batch(&b, &batch).await;
    assert!(
        positions
            .windows(2)
            .all(|pair| decode(&pair[0]) < decode(&pair[1])),
        "{positions:?}"
    );
    // A NATS client on node B's own NATS listener publishes into the cluster.
    let on_b_nats = async_nats::ConnectOptions::with_token(PUBLISHER_KEY.into())
        .connect(b.nats_address.unwrap().to_string())
        .await
        .unwrap();
    on_b_nats.publish("feed.nats", "5".into()).await.unwrap();
    on_b_nats.flush().await.unwrap();
    let got = messages(&mut on_a, 6).await;
    let values: Vec<Value> = got.iter().map(|(_, _, data)| data.clone()).collect();
    assert_eq!(values, (0..6).map(Value::from).collect::<Vec<_>>());
    let batch_positions: Vec<&String> = got[..5].iter().map(|(_, pos, _)| pos).collect();
    assert_eq!(
        batch_positions,
        positions.iter().collect::<Vec<_>>(),
        "every node agrees on each position"
    );

    // A long-poll cursor from A continues on B (which may not have
    // applied everything yet: a poll waits for it); SSE's Last-Event-ID too.
    let (mut cursor_now, mut polled) = (got[2].1.clone(), Vec::new());
    while polled.len() < 3 {
        let body: Value = reqwest::get(b.url(&format!("/poll?subject=feed.>&cursor={cursor_now}&wait=5")))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        for event in body["events"].as_array().unwrap() {
            polled.push(event["data"].clone());
        }
        cursor_now = body["cursor"].as_str().unwrap().to_owned();
    }
    assert_eq!(polled, [json!(3), json!(4), json!(5)]);
    let cursor = &got[2].1;
    let mut sse = support::SseClient::connect(&b, "subject=feed.>", Some(cursor)).await;
    let mut resumed = Vec::new();
    while resumed.len() < 3 {
        let event = sse.next_event().await.expect("the stream stays open");
        if event.event == "msg" {
            resumed.push(event.json()["data"].clone());
        }
    }
    assert_eq!(resumed, [json!(3), json!(4), json!(5)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn under_the_sent_policy_a_publish_is_answered_without_a_position() {
    let nats = NatsServer::start();
    let sent = node_with(&nats.url(), "sent", |config| {
        config.cluster.publish_ack = herald_cluster::PublishAck::Sent;
    })
    .await;
    let mut reader = Client::connect(&sent).await;
    reader.subscribe("s.>", None).await;
    let (status, body) = try_publish(&sent, "s.x", json!("quick")).await;
    assert_eq!((status, &body), (200, &json!({"pos": null})));
    let got = messages(&mut reader, 1).await;
    assert_eq!(
        got[0].2,
        json!("quick"),
        "delivered all the same, with its position"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flooding_publisher_is_told_cluster_busy_and_nothing_is_lost_silently() {
    let nats = NatsServer::start();
    let node = node_with(&nats.url(), "small", |config| {
        config.cluster.max_pending_publishes = 8;
        config.websocket.max_commands_per_second = 1_000_000;
        config.broker.queue.max_messages = 100_000;
    })
    .await;
    let mut reader = Client::connect(&node).await;
    reader.subscribe("flood", None).await;
    let mut publisher = Client::connect_with(&node, herald_broker::Encoding::Json, Some(PUBLISHER_KEY)).await;
    const SENT: u64 = 2_000;
    for n in 0..SENT {
        publisher
            .send(json!({"op": "pub", "id": n, "subject": "flood", "data": n}))
            .await;
    }
    let (mut acknowledged, mut busy) = (Vec::new(), 0);
    for _ in 0..SENT {
        match publisher.next_event().await {
            ServerEvent::Ack {
                id: Some(n),
                pos: Some(_),
            } => acknowledged.push(n),
            ServerEvent::Err { code, .. } if code == "cluster_busy" => busy += 1,
            other => panic!("an ack or cluster_busy for every publish, got {other:?}"),
        }
    }
    assert!(
        busy > 0,
        "eight pending publishes at most: a flood is refused in part"
    );
    assert_eq!(acknowledged.len() as u64 + busy, SENT);
    // What was acknowledged is delivered, in order; nothing else is.
    publish(&node, "flood", json!("end")).await;
    let mut delivered = Vec::new();
    loop {
        let (_, _, data) = messages(&mut reader, 1).await.remove(0);
        if data == json!("end") {
            break;
        }
        delivered.push(data.as_u64().unwrap());
    }
    acknowledged.sort_unstable();
    assert_eq!(delivered, acknowledged);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_cut_off_from_nats_catches_up_and_reports_what_the_stream_discarded() {
    let nats = NatsServer::start();
    // History and stream keep 5 messages per subject: a partition longer
    // than that loses messages, which must be reported, not hidden.
    let small = |config: &mut Config| {
        config.broker.history.max_messages_per_subject = 5;
        config.cluster.stream_messages_per_subject = 5;
        config.cluster.reconnect_max_delay = Duration::from_millis(200);
    };
    let a = node_with(&nats.url(), "a", small).await;
    let proxy = support::proxy::Proxy::start(format!("127.0.0.1:{}", nats.port).parse().unwrap()).await;
    let b = node_with(&format!("nats://{}", proxy.address), "b", small).await;
    let mut on_b = Client::connect(&b).await;
    on_b.subscribe("p.>", None).await;
    publish(&a, "p.x", json!("before")).await;
    let before = messages(&mut on_b, 1).await.remove(0);

    proxy.cut();
    wait_state(&b, "disconnected").await;
    let ready = reqwest::get(b.url("/readyz")).await.unwrap();
    assert_eq!(ready.status(), 503, "a cut-off node is not ready");
    // Meanwhile A goes on: p.x overflows the stream, p.y does not.
    let mut expected_x = Vec::new();
    for n in 0..20 {
        expected_x.push(json!(n));
        publish(&a, "p.x", json!(n)).await;
    }
    publish(&a, "p.y", json!("kept")).await;
    // B's own clients are still served while it is cut off.
    on_b.send(json!({"op": "ping", "id": 5})).await;
    assert!(matches!(
        on_b.next_event().await,
        ServerEvent::Pong { id: Some(5) }
    ));
    // A client failing over to B with a position B has not received yet is
    // told to retry, not misread (HTTP: 503).
    let newest = publish(&a, "p.y", json!("newest")).await;
    let mut early = Client::connect(&b).await;
    early
        .send(json!({"op": "sub", "id": 1, "subject": "p.>", "since": newest}))
        .await;
    match early.next_event().await {
        ServerEvent::Err { code, .. } => assert_eq!(code, "not_caught_up"),
        other => panic!("expected not_caught_up, got {other:?}"),
    }
    let response = reqwest::get(b.url(&format!("/poll?subject=p.>&cursor={newest}&wait=0")))
        .await
        .unwrap();
    assert_eq!(response.status(), 503);

    proxy.restore();
    wait_state(&b, "connected").await;
    // First the gap for what the stream no longer holds, then everything it
    // does, in order.
    let ServerEvent::Gap {
        subject, from, to, ..
    } = on_b.next_event().await
    else {
        panic!("a gap first");
    };
    assert_eq!(subject, "p.>");
    assert_eq!(
        decode(&from).sequence,
        decode(&before.1).sequence + 1,
        "right after the last delivered"
    );
    let rest = messages(&mut on_b, 7).await;
    assert_eq!(
        decode(&to).sequence + 1,
        decode(&rest[0].1).sequence,
        "up to the first still held"
    );
    let values: Vec<Value> = rest.iter().map(|(_, _, data)| data.clone()).collect();
    let mut wanted: Vec<Value> = expected_x[15..].to_vec();
    wanted.push(json!("kept"));
    wanted.push(json!("newest"));
    assert_eq!(values, wanted);
    let health = support::get_json(&b, "/healthz", None).await;
    assert_eq!(health["cluster"]["lost"], 15, "{health}");
    assert_eq!(health["cluster"]["lag"], 0, "caught up: {health}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_started_while_nats_is_down_serves_and_joins_when_it_comes() {
    let (mut nats, node) = node_while_nats_is_down().await;
    assert_eq!(bridge_state(&node).await, "connecting");
    assert_eq!(reqwest::get(node.url("/readyz")).await.unwrap().status(), 503);
    let metrics = support::scrape_text(&node).await;
    assert_eq!(
        support::sample(&metrics, r#"herald_cluster_state{state="connecting"}"#),
        Some(1.0)
    );
    assert_eq!(
        support::sample(&metrics, r#"herald_cluster_state{state="connected"}"#),
        Some(0.0)
    );
    assert_eq!(support::sample(&metrics, "herald_ready"), Some(0.0));
    // Clients are served: they subscribe, and publishing says why it cannot.
    let mut client = Client::connect(&node).await;
    client.subscribe("early.>", None).await;
    let (status, body) = try_publish(&node, "early.x", json!(1)).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (503, Some("cluster_unavailable")),
        "{body}"
    );

    nats.restart();
    wait_ready(&node).await;
    publish(&node, "early.x", json!(2)).await;
    assert_eq!(messages(&mut client, 1).await[0].2, json!(2));
    let metrics = support::scrape_text(&node).await;
    assert_eq!(
        support::sample(&metrics, r#"herald_cluster_state{state="connected"}"#),
        Some(1.0)
    );
    assert_eq!(
        support::sample(&metrics, "herald_cluster_lag_messages"),
        Some(0.0)
    );
    assert_eq!(support::sample(&metrics, "herald_ready"), Some(1.0));
}

/// A NATS publisher faster than the cluster takes its publishes is read
/// more slowly, as a fast producer is on nats-server: with only eight
/// publishes allowed to wait for JetStream, every one of 2 000 pipelined
/// arrives, in order, none refused and no `-ERR`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_nats_publisher_faster_than_the_cluster_is_held_back_and_loses_nothing() {
    let nats = NatsServer::start();
    let node = node_with(&nats.url(), "small", |config| {
        config.cluster.max_pending_publishes = 8;
        config.broker.queue.max_messages = 100_000;
        config.admin.public_metrics = true;
    })
    .await;
    let mut reader = Client::connect(&node).await;
    reader.subscribe("flood", None).await;
    let mut raw = raw_publisher(&node).await;
    const SENT: usize = 2_000;
    let mut pipelined = String::new();
    for n in 0..SENT {
        pipelined.push_str(&format!("PUB flood {}\r\n{n}\r\n", n.to_string().len()));
    }
    pipelined.push_str("PING\r\n");
    raw.send(&pipelined).await;
    assert_eq!(raw.line().await, "PONG\r\n", "nothing ahead of the PONG");
    let delivered: Vec<Value> = messages(&mut reader, SENT)
        .await
        .into_iter()
        .map(|(_, _, data)| data)
        .collect();
    assert_eq!(delivered, (0..SENT).map(Value::from).collect::<Vec<_>>());
    let metrics = support::scrape_text(&node).await;
    assert_eq!(
        support::sample(
            &metrics,
            r#"herald_cluster_publishes_refused_total{code="cluster_busy"}"#
        ),
        Some(0.0)
    );
}

/// A NATS client's publish that the cluster cannot take is counted, not
/// answered: nats.go and nats-py close for good on an `-ERR` they do not
/// know, so an outage must not end every Go and Python publisher. Once
/// the cluster is back, the same connection publishes into it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_nats_publish_the_cluster_cannot_take_is_counted_and_the_connection_stays() {
    let (mut nats, node) = node_while_nats_is_down().await;
    let refused = r#"herald_cluster_publishes_refused_total{code="cluster_unavailable"}"#;
    let metrics = support::scrape_text(&node).await;
    assert_eq!(support::sample(&metrics, refused), Some(0.0));

    let (status, _) = try_publish(&node, "early.x", json!(0)).await;
    assert_eq!(status, 503);
    let mut raw = raw_publisher(&node).await;
    raw.send("SUB early.> 1\r\nPUB early.x 1\r\n1\r\nPUB early.x 1\r\n2\r\nPING\r\n")
        .await;
    assert_eq!(raw.line().await, "PONG\r\n", "nothing ahead of the PONG");
    let metrics = support::scrape_text(&node).await;
    assert_eq!(
        support::sample(&metrics, refused),
        Some(3.0),
        "the HTTP publish and both NATS publishes"
    );

    nats.restart();
    wait_ready(&node).await;
    raw.send("PUB early.x 1\r\n3\r\n").await;
    assert_eq!(raw.line().await, "MSG early.x 1 1\r\n");
    assert_eq!(raw.line().await, "3\r\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nodes_authenticate_to_nats_and_a_wrong_password_is_reported() {
    let nats = NatsServer::with_config("authorization { user: herald, password: s3cret-0123 }");
    let url = nats.url();
    let good = node_with(&url, "good", |config| {
        config.cluster.user = "herald".into();
        config.cluster.password = "s3cret-0123".into();
    })
    .await;
    let mut client = Client::connect(&good).await;
    client.subscribe("auth.>", None).await;
    publish(&good, "auth.x", json!("in")).await;
    assert_eq!(messages(&mut client, 1).await[0].2, json!("in"));

    let wrong = Server::start(move |config| {
        config.cluster.nats_url = url;
        config.cluster.user = "herald".into();
        config.cluster.password = "wrong".into();
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let health = support::get_json(&wrong, "/healthz", None).await;
    assert_eq!(health["cluster"]["state"], "connecting", "{health}");
    let error = health["cluster"]["last_error"]
        .as_str()
        .unwrap_or_default()
        .to_lowercase();
    assert!(error.contains("authorization"), "the reason is shown: {health}");
    assert_eq!(reqwest::get(wrong.url("/readyz")).await.unwrap().status(), 503);
}
