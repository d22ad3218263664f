//! Herald's browser transports in a real browser: headless Chromium
//! (Debian's `chromium`), driven by `playwright-core`.
//!
//! - `tests/browser/transports.mjs`: the server ends SSE streams mid-way
//!   and the page aborts polls mid-wait while messages keep coming; each
//!   page must end with every message exactly once, in order.
//! - `tests/browser/webtransport.mjs`: a page on WebTransport, trusting the
//!   generated certificate by its published hash, across a restart of the
//!   real binary (a new certificate): every message once, in order.
//!
//! `.ci/run` installs the browser and the npm package; under CI a missing
//! one fails the test, elsewhere it is skipped with a note.

mod support;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use support::Server;

const MESSAGES: u64 = 60;

/// What the browser test needs, or why it cannot run here.
fn prerequisites() -> Result<(PathBuf, PathBuf), String> {
    let script_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    let chromium =
        std::env::var_os("CHROMIUM").map_or_else(|| PathBuf::from("/usr/bin/chromium"), PathBuf::from);
    if !chromium.exists() {
        return Err(format!(
            "{} not found (apt-get install chromium)",
            chromium.display()
        ));
    }
    if !script_dir.join("node_modules/playwright-core").exists() {
        return Err("playwright-core not installed (cd tests/browser && npm ci)".into());
    }
    let node = std::process::Command::new("node").arg("--version").output();
    if !node.is_ok_and(|output| output.status.success()) {
        return Err("node not found".into());
    }
    Ok((script_dir, chromium))
}

/// The prerequisites, or `None` (with a note) when the test may skip.
fn prerequisites_or_skip() -> Option<(PathBuf, PathBuf)> {
    match prerequisites() {
        Ok(found) => Some(found),
        Err(missing) => {
            assert!(
                std::env::var_os("CI").is_none(),
                "under CI the browser test must run: {missing}"
            );
            eprintln!("browser test skipped: {missing}");
            None
        }
    }
}

/// Runs a driver script to its end; its one JSON line.
async fn run_script(mut command: tokio::process::Command, chromium: &Path) -> Value {
    let run = command
        .env("CHROMIUM", chromium)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("the browser run finishes within two minutes")
        .expect("node starts");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "the browser run failed: {stderr}");
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|error| panic!("{error}: {}", String::from_utf8_lossy(&output.stdout)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eventsource_and_a_fetch_poll_loop_get_every_message_once_in_order() {
    let Some((scripts, chromium)) = prerequisites_or_skip() else {
        return;
    };
    let server = Server::start(|config| {
        // The pages are served from another origin, as in production.
        config.server.allowed_origins = vec!["*".into()];
        config.sse.max_stream_duration = Duration::from_secs(1);
        config.sse.retry = Duration::from_millis(100);
    })
    .await;
    let mut command = tokio::process::Command::new("node");
    command
        .arg(scripts.join("transports.mjs"))
        .arg(server.url(""))
        .arg(support::PUBLISHER_KEY)
        .arg(MESSAGES.to_string());
    let result = run_script(command, &chromium).await;
    let expected: Vec<Value> = (0..MESSAGES).map(Value::from).collect();

    let sse = &result["sse"];
    assert_eq!(sse["received"].as_array().unwrap(), &expected, "SSE: {sse}");
    assert!(
        sse["opens"].as_u64().unwrap() >= 2,
        "the stream was cut and reopened: {sse}"
    );
    assert!(
        sse["log"]
            .as_array()
            .unwrap()
            .iter()
            .any(|code| code == "stream_expired"),
        "the server said why it ended the stream: {sse}"
    );

    let poll = &result["poll"];
    assert_eq!(
        poll["received"].as_array().unwrap(),
        &expected,
        "long poll: {poll}"
    );
    assert!(
        poll["aborted"].as_u64().unwrap() >= 1,
        "polls were cut mid-wait: {poll}"
    );
    let refusals = &result["refusals"];
    assert_eq!(
        refusals["wsClose"],
        serde_json::json!([4401, "invalid_credential"]),
        "the page reads the close code and reason: {refusals}"
    );
    assert_eq!(refusals["wsErr"], "invalid_credential", "{refusals}");
    assert_eq!(
        refusals["sseErr"],
        serde_json::json!(["invalid_credential", 4401]),
        "an EventSource reads the refusal as an err event: {refusals}"
    );
    eprintln!(
        "Chromium {}: SSE opened {} times; {} polls, {} aborted",
        result["browser"], sse["opens"], poll["polls"], poll["aborted"]
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webtransport_page_resumes_across_a_server_restart_with_nothing_lost() {
    let Some((scripts, chromium)) = prerequisites_or_skip() else {
        return;
    };
    let mut command = tokio::process::Command::new("node");
    command
        .arg(scripts.join("webtransport.mjs"))
        .arg(env!("CARGO_BIN_EXE_herald"))
        .arg(MESSAGES.to_string());
    let result = run_script(command, &chromium).await;
    let expected: Vec<Value> = (0..MESSAGES).map(Value::from).collect();
    assert_eq!(
        result["received"].as_array().unwrap(),
        &expected,
        "every message once, in order, across the restart: {result}"
    );
    let sessions = result["sessions"].as_array().unwrap();
    assert!(sessions.len() >= 2, "the page reconnected: {result}");
    let first = &sessions[0];
    let events = first["events"].as_array().unwrap();
    assert!(
        events.iter().any(|event| event == "err:shutdown"),
        "the page read why the server closed its session: {first}"
    );
    assert_ne!(
        first["hash"],
        sessions.last().unwrap()["hash"],
        "the restarted server has a new certificate, trusted by its new hash"
    );
    assert!(
        result["datagrams"].as_u64().unwrap() >= 1,
        "latest-value messages arrived as datagrams: {result}"
    );
    eprintln!(
        "Chromium {}: {} sessions; first closed with {}; {} datagrams",
        result["browser"],
        sessions.len(),
        first["closed"],
        result["datagrams"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_refuses_a_wrong_key_and_shows_live_numbers_with_the_right_one() {
    let Some((scripts, chromium)) = prerequisites_or_skip() else {
        return;
    };
    const ADMIN_KEY: &str = "test-admin-key-0123456789";
    const SUBJECT: &str = "dash.room";
    let server = Server::start(|config| {
        config.admin.key = herald_broker::Secret(ADMIN_KEY.into());
        config.admin.stats_interval = Duration::from_millis(250);
    })
    .await;
    let mut subscribers = Vec::new();
    for _ in 0..3 {
        let mut client = support::Client::connect(&server).await;
        client.subscribe(SUBJECT, None).await;
        subscribers.push(client);
    }
    let screenshot = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/images/dashboard.png");
    let mut command = tokio::process::Command::new("node");
    command
        .arg(scripts.join("dashboard.mjs"))
        .arg(server.url(""))
        .arg(ADMIN_KEY)
        .arg(support::PUBLISHER_KEY)
        .arg(SUBJECT)
        .arg(&screenshot);
    let result = run_script(command, &chromium).await;
    let number = |value: &Value| -> f64 { value.as_str().unwrap().replace(',', "").parse().unwrap() };

    let refused = &result["refused"];
    assert_eq!(refused["status"], "refused", "{refused}");
    assert!(
        refused["error"].as_str().unwrap().contains("invalid_credential"),
        "{refused}"
    );
    assert_eq!(
        refused["panelsHidden"], true,
        "no numbers without the key: {refused}"
    );

    let (before, during) = (&result["before"], &result["during"]);
    assert_eq!(during["status"], "live", "{during}");
    // Three subscribers and the dashboard's own connection.
    assert_eq!(during["connections"], "4", "{during}");
    let published = result["published"].as_f64().unwrap();
    assert!(
        number(&during["published"]) > number(&before["published"]),
        "the totals moved: {before} → {during}"
    );
    assert!(
        number(&during["published"]) >= published * 0.5,
        "the page kept up with the workload: {during}"
    );
    let highest_rate = result["rates"]
        .as_array()
        .unwrap()
        .iter()
        .map(number)
        .fold(0.0, f64::max);
    assert!(highest_rate >= 10.0, "messages in per second shown: {result}");
    assert_eq!(during["topSubjects"][0][0], SUBJECT, "{during}");
    assert_eq!(during["topSubjects"][0][1], "3", "{during}");
    assert!(screenshot.exists());
    eprintln!(
        "Chromium {}: {} published; rates shown {}",
        result["browser"], published, result["rates"]
    );
    drop(subscribers);
    server.shutdown().await;
}
