//! The load generator's smoke mode, so the tool cannot rot: every scenario
//! for a few seconds against the real binary and every peer installed here
//! (nats-server, Socket.IO, Pushpin: `.ci/run` installs them). It asserts
//! correctness (no duplicates, no reordering, nothing lost at a low fixed
//! rate), never timings. A peer missing on a developer's machine is skipped
//! with a note; under CI (`CI` set) it fails the run.

use herald_bench::{Binaries, Target};

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
/// WebSocket and to WebTransport subscribers; at the fixed rate every
/// message arrives once, in order, on both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_webtransport_workload_runs_next_to_websocket() {
    let binaries = Binaries::locate(env!("CARGO_BIN_EXE_herald").into());
    let size = herald_bench::rounds::RoundSize::SMOKE;
    let records = herald_bench::quic::run(&binaries, size, |_| {})
        .await
        .expect("the WebTransport workload runs");
    for transport in ["herald-ws-json", "herald-wt-json"] {
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
}
