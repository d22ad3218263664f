//! The load generator's smoke mode, so the tool cannot rot: every scenario
//! for a few seconds against the real binary and every peer installed here
//! (nats-server, Socket.IO, Pushpin: `.ci/run` installs them). It asserts
//! correctness (no duplicates, no reordering, nothing lost at a low fixed
//! rate), never timings. A peer missing on a developer's machine is skipped
//! with a note; under CI (`CI` set) it fails the run.

use std::time::Duration;

use herald_bench::{Binaries, Server, Target};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_scenario_runs_and_delivers_correctly() {
    let binaries = Binaries::locate(env!("CARGO_BIN_EXE_herald").into());
    // Herald's NATS listener with the same NATS client as nats-server's:
    // not in the standard set, but a target of every scenario.
    let targets: Vec<Target> = Target::ALL
        .into_iter()
        .chain([Target::HeraldNats])
        .filter(|target| binaries.can_run(*target))
        .collect();
    let missing: Vec<&str> = Target::ALL
        .into_iter()
        .filter(|t| !binaries.can_run(*t))
        .map(Target::name)
        .collect();
    if !missing.is_empty() {
        assert!(
            std::env::var_os("CI").is_none(),
            "under CI every peer must be installed (make bench-peers); missing: {missing:?}"
        );
        eprintln!("not installed here (make bench-peers), skipped: {missing:?}");
    }
    let records = herald_bench::smoke(&binaries, &targets)
        .await
        .expect("smoke run passes");
    for target in &targets {
        for scenario in ["fanout", "latency", "idle", "churn"] {
            if !target.runs(scenario) {
                continue;
            }
            assert!(
                records
                    .iter()
                    .any(|r| r.target == target.name() && r.scenario == scenario),
                "{} {scenario} ran",
                target.name()
            );
        }
    }
    for idle in records
        .iter()
        .filter(|r| r.scenario == "idle" && r.target.starts_with("herald"))
    {
        assert!(
            idle.server_cpu_seconds.is_some_and(|seconds| seconds >= 0.0),
            "an idle run says what the idle connections cost the server's CPU: {idle:?}"
        );
    }
}

/// The idle scenario reads its connections as live clients do: with the
/// server pinging every 200 ms and closing a connection it has heard
/// nothing from for a second, no connection is closed as silent in three
/// seconds held (one that only held its socket would be, and the server
/// counts it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_answer_the_server_s_pings() {
    let binaries = Binaries::locate(env!("CARGO_BIN_EXE_herald").into());
    let server = Server::herald_with(
        &binaries,
        &[
            ("HERALD_WEBSOCKET__HEARTBEAT_INTERVAL", "200ms"),
            ("HERALD_WEBSOCKET__IDLE_TIMEOUT", "1s"),
            ("HERALD_ADMIN__PUBLIC_METRICS", "true"),
        ],
    )
    .await
    .expect("herald starts");
    let held = herald_bench::scenarios::idle(Target::HeraldJson, &server, 20, Duration::from_secs(3)).await;
    let metrics = reqwest::get(format!("http://{}/metrics", server.address))
        .await
        .expect("metrics answer")
        .text()
        .await
        .expect("metrics text");
    server.stop().await;
    let record = held.expect("every idle connection stays open while held");
    assert_eq!(record.connections, 20);
    assert!(record.server_cpu_seconds.is_some(), "{record:?}");
    let silent = metrics
        .lines()
        .find_map(|line| line.strip_prefix(r#"herald_disconnects_total{reason="idle_timeout"} "#))
        .expect("disconnects are counted by reason");
    assert_eq!(silent, "0", "idle connections were closed as silent");
}

/// An idle run during which the server ends connections is an error, not
/// a figure for fewer connections: SSE streams that last one second, held
/// for three.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_run_the_server_cuts_short_is_an_error() {
    let binaries = Binaries::locate(env!("CARGO_BIN_EXE_herald").into());
    let server = Server::herald_with(&binaries, &[("HERALD_SSE__MAX_STREAM_DURATION", "1s")])
        .await
        .expect("herald starts");
    let held = herald_bench::scenarios::idle(Target::HeraldSse, &server, 20, Duration::from_secs(3)).await;
    server.stop().await;
    let error = held.expect_err("the streams ended while held");
    assert!(
        error.to_string().contains("20 of 20 idle connections ended"),
        "{error}"
    );
}

/// The `herald-wss-json` target is WSS end to end: its Herald refuses a
/// plain WebSocket, and its clients subscribe and receive over TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wss_target_speaks_only_tls() {
    let binaries = Binaries::locate(env!("CARGO_BIN_EXE_herald").into());
    let server = Server::start(Target::HeraldJsonTls, &binaries)
        .await
        .expect("herald starts with TLS");
    let plain = tokio_tungstenite::connect_async(format!("ws://{}/ws", server.address)).await;
    assert!(plain.is_err(), "a plain WebSocket is refused by a TLS listener");
    let mut subscriber = herald_bench::clients::Connection::open(Target::HeraldJsonTls, server.address, None)
        .await
        .expect("a WSS client connects");
    subscriber.subscribe("bench.tls", 1).await.expect("it subscribes");
    let mut publisher = herald_bench::clients::Connection::open_publisher(Target::HeraldJsonTls, &server)
        .await
        .expect("a WSS publisher connects");
    publisher
        .publish("bench.tls", &herald_bench::clients::payload(1, 7, 64))
        .await
        .expect("it publishes");
    publisher.flush().await.expect("it flushes");
    let received = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match subscriber.receive().await.expect("it reads") {
                herald_bench::clients::Received::Message { sequence, .. } => return sequence,
                herald_bench::clients::Received::Closed => panic!("closed before the message"),
                _ => {}
            }
        }
    })
    .await
    .expect("the message within 10 s");
    server.stop().await;
    assert_eq!(received, 7);
}

/// `--server-cpus`: a server started with `server_cpus` set runs on
/// those CPUs only, in its own process (the pid whose CPU time is read).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_can_be_held_to_chosen_cpus() {
    let binaries = Binaries {
        server_cpus: Some("0".into()),
        ..Binaries::locate(env!("CARGO_BIN_EXE_herald").into())
    };
    let server = Server::start(Target::HeraldJson, &binaries)
        .await
        .expect("herald starts on CPU 0");
    let pid = server.pid().expect("running");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("its status");
    let name = std::fs::read_to_string(format!("/proc/{pid}/comm")).expect("its name");
    server.stop().await;
    let allowed = status
        .lines()
        .find_map(|line| line.strip_prefix("Cpus_allowed_list:"))
        .expect("the status lists the CPUs allowed");
    assert_eq!(allowed.trim(), "0");
    assert_eq!(name.trim(), "herald", "the pid is the server's, not a wrapper's");
}

/// `herald-bench nats` in its seconds-long size: the async-nats workload
/// runs against both servers and every message arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_nats_workload_runs_against_both_servers() {
    let binaries = Binaries::locate(env!("CARGO_BIN_EXE_herald").into());
    if !binaries.can_run(Target::NatsTcp) {
        assert!(
            std::env::var_os("CI").is_none(),
            "under CI nats-server must be installed"
        );
        eprintln!("nats-server not installed here, skipped");
        return;
    }
    let records = herald_bench::nats::run(&binaries, herald_bench::nats::NatsSize::smoke(), |_| {})
        .await
        .expect("the NATS workload runs");
    for server in ["nats-server", "herald"] {
        for scenario in ["fanout", "publish"] {
            assert!(
                records
                    .iter()
                    .any(|r| r.server == server && r.scenario == scenario),
                "{server} {scenario} ran"
            );
        }
    }
    for record in &records {
        assert_eq!(record.delivered_share, 1.0, "{record:?}");
        assert!(record.per_second > 0.0, "{record:?}");
        assert!(
            record.client_cpu_us.is_some() && record.server_cpu_us.is_some(),
            "both CPU figures read from /proc: {record:?}"
        );
    }
}

/// `herald-bench cluster` in its seconds-long size: one node and two nodes
/// bridged through nats-server with JetStream; at the fixed rate every
/// message arrives once, in order, on every layout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_workload_runs_on_one_and_two_nodes() {
    let binaries = Binaries::locate(env!("CARGO_BIN_EXE_herald").into());
    if !binaries.has_nats() {
        assert!(
            std::env::var_os("CI").is_none(),
            "under CI nats-server must be installed"
        );
        eprintln!("nats-server not installed here, skipped");
        return;
    }
    let size = herald_bench::rounds::RoundSize::SMOKE;
    let records = herald_bench::cluster::run(&binaries, size, |_| {})
        .await
        .expect("the cluster workload runs");
    for layout in ["single", "cluster-split", "cluster-remote"] {
        for scenario in ["fanout", "latency"] {
            let record = records
                .iter()
                .find(|r| r.variant == layout && r.record.scenario == scenario)
                .unwrap_or_else(|| panic!("{layout} {scenario} ran"));
            let r = &record.record;
            assert_eq!((r.duplicates, r.out_of_order), (0, 0), "{record:?}");
            assert!(r.delivered > 0, "{record:?}");
            if scenario == "latency" {
                assert_eq!(r.delivered, r.expected, "nothing lost at a low rate: {record:?}");
            }
        }
    }
}

/// `herald-bench quic` in its seconds-long size: the same fan-out to
/// WebSocket subscribers, plain and over TLS (which speaks TLS to a Herald
/// that speaks only TLS, or delivers nothing), and to WebTransport
/// subscribers; at the fixed rate every message arrives once, in order, on
/// each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_webtransport_workload_runs_next_to_websocket() {
    let binaries = Binaries::locate(env!("CARGO_BIN_EXE_herald").into());
    let size = herald_bench::rounds::RoundSize::SMOKE;
    let records = herald_bench::quic::run(&binaries, size, |_| {})
        .await
        .expect("the WebTransport workload runs");
    for transport in ["herald-ws-json", "herald-wss-json", "herald-wt-json"] {
        for scenario in ["fanout", "latency"] {
            let record = records
                .iter()
                .find(|r| r.variant == transport && r.record.scenario == scenario)
                .unwrap_or_else(|| panic!("{transport} {scenario} ran"));
            let r = &record.record;
            assert_eq!(r.target, transport, "{record:?}");
            assert_eq!((r.duplicates, r.out_of_order), (0, 0), "{record:?}");
            assert!(r.delivered > 0, "{record:?}");
            if scenario == "latency" {
                assert_eq!(r.delivered, r.expected, "nothing lost at a low rate: {record:?}");
            }
        }
    }
    let tables = herald_bench::quic::markdown(&records);
    assert!(
        tables.contains("| herald-wt-json |") && tables.contains("vs herald-wss-json"),
        "WebTransport against plain WebSocket and against WSS:\n{tables}"
    );
}
