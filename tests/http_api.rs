//! The HTTP API against the real server: every status code it documents.

mod support;

use reqwest::StatusCode;
use serde_json::{json, Value};
use support::{Server, NEWS_ONLY_KEY, PUBLISHER_KEY};

async fn post(server: &Server, key: Option<&str>, body: String) -> (StatusCode, Value) {
    let mut request = reqwest::Client::new()
        .post(server.url("/v1/publish"))
        .header("content-type", "application/json")
        .body(body);
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    (status, response.json().await.unwrap())
}

async fn get(server: &Server, path: &str) -> (StatusCode, Value) {
    let response = reqwest::get(server.url(path)).await.unwrap();
    let status = response.status();
    (status, response.json().await.unwrap())
}

fn one(subject: &str, data: Value) -> String {
    json!({"subject": subject, "data": data}).to_string()
}

#[tokio::test]
async fn publish_and_history() {
    let server = Server::start(|_| {}).await;
    let (status, body) = post(&server, Some(PUBLISHER_KEY), one("orders.eu", json!({"id": 1}))).await;
    assert_eq!(status, StatusCode::OK);
    let first = body["pos"].as_str().unwrap().to_owned();

    let batch = json!({"messages": [
        {"subject": "orders.us", "data": {"id": 2}},
        {"subject": "orders.eu", "data": null},
    ]});
    let (status, body) = post(&server, Some(PUBLISHER_KEY), batch.to_string()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["positions"].as_array().unwrap().len(), 2);

    let (status, body) = get(&server, "/v1/history?subject=orders.*").await;
    assert_eq!(
        status,
        StatusCode::OK,
        "anonymous clients may read history by default"
    );
    let data: Vec<&Value> = body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| &m["data"])
        .collect();
    assert_eq!(data, vec![&json!({"id": 1}), &json!({"id": 2}), &Value::Null]);

    let (status, body) = get(
        &server,
        &format!("/v1/history?subject=orders.eu&since={first}&limit=5"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["messages"].as_array().unwrap().len(), 1);

    let (status, body) = get(&server, "/healthz").await;
    assert_eq!((status, body), (StatusCode::OK, json!({"status": "ok"})));
    server.shutdown().await;
}

#[tokio::test]
async fn errors_have_codes_and_statuses() {
    let server = Server::start(|config| {
        config.broker.max_payload_bytes = 1024;
        config.http.max_body_bytes = 64 * 1024;
        config.http.max_batch = 3;
        config.broker.history.max_subjects = 3;
    })
    .await;
    let big = "x".repeat(2000);
    let cases: Vec<(Option<&str>, String, StatusCode, &str)> = vec![
        (Some(PUBLISHER_KEY), one("a..b", json!(1)), StatusCode::BAD_REQUEST, "invalid_subject"),
        (Some(PUBLISHER_KEY), one("a.*", json!(1)), StatusCode::BAD_REQUEST, "invalid_subject"),
        (Some(PUBLISHER_KEY), one("$SYS.x", json!(1)), StatusCode::BAD_REQUEST, "reserved_subject"),
        (Some(PUBLISHER_KEY), "{\"subject\":\"a\"}".into(), StatusCode::BAD_REQUEST, "malformed_body"),
        (Some(PUBLISHER_KEY), "not json".into(), StatusCode::BAD_REQUEST, "malformed_body"),
        (None, one("a", json!(1)), StatusCode::UNAUTHORIZED, "unauthorized"),
        (Some("wrong-key"), one("a", json!(1)), StatusCode::UNAUTHORIZED, "invalid_credential"),
        (Some(NEWS_ONLY_KEY), one("chat.a", json!(1)), StatusCode::FORBIDDEN, "forbidden"),
        (Some(PUBLISHER_KEY), one("a", json!(big)), StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
        (Some(PUBLISHER_KEY), "x".repeat(70_000), StatusCode::PAYLOAD_TOO_LARGE, "body_too_large"),
        (
            Some(PUBLISHER_KEY),
            json!({"messages": [{"subject":"a","data":1},{"subject":"b","data":1},{"subject":"c","data":1},{"subject":"d","data":1}]}).to_string(),
            StatusCode::PAYLOAD_TOO_LARGE,
            "batch_too_large",
        ),
    ];
    for (key, body, status, code) in cases {
        let (got_status, got) = post(&server, key, body.clone()).await;
        assert_eq!(
            (got_status, got["code"].as_str()),
            (status, Some(code)),
            "{}: {got}",
            &body[..body.len().min(80)]
        );
        assert!(got["message"].as_str().is_some_and(|m| !m.is_empty()));
    }

    // A bad message in a batch refuses the whole batch and names it.
    let batch = json!({"messages": [{"subject":"ok.one","data":1},{"subject":"bad..one","data":1}]});
    let (status, body) = post(&server, Some(PUBLISHER_KEY), batch.to_string()).await;
    assert_eq!(
        (status, body["index"].as_u64()),
        (StatusCode::BAD_REQUEST, Some(1))
    );
    let (_, history) = get(&server, "/v1/history?subject=ok.one").await;
    assert!(
        history["messages"].as_array().unwrap().is_empty(),
        "nothing of the batch was published"
    );

    // The subject limit is a capacity problem of the server: 503.
    for subject in ["s.1", "s.2", "s.3"] {
        assert_eq!(
            post(&server, Some(PUBLISHER_KEY), one(subject, json!(1))).await.0,
            StatusCode::OK
        );
    }
    let (status, body) = post(&server, Some(PUBLISHER_KEY), one("s.4", json!(1))).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, Some("too_many_subjects"))
    );

    let (status, body) = get(&server, "/v1/history?subject=s.*&since=garbage").await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_token"))
    );
    let (status, body) = get(&server, "/v1/history").await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_query"))
    );
    server.shutdown().await;
}

#[tokio::test]
async fn history_needs_a_key_when_anonymous_access_is_off() {
    let server = Server::start(|config| config.auth.anonymous_subscribe.clear()).await;
    let (status, body) = get(&server, "/v1/history?subject=a").await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("unauthorized"))
    );
    let response = reqwest::Client::new()
        .get(server.url("/v1/history?subject=a"))
        .bearer_auth(PUBLISHER_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    server.shutdown().await;
}

#[tokio::test]
async fn cors_allows_only_configured_origins() {
    let server =
        Server::start(|config| config.server.allowed_origins = vec!["https://app.example".into()]).await;
    let preflight = |origin: &'static str| {
        reqwest::Client::new()
            .request(reqwest::Method::OPTIONS, server.url("/v1/publish"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "authorization,content-type")
            .send()
    };
    let allowed = preflight("https://app.example").await.unwrap();
    assert_eq!(
        allowed.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    let refused = preflight("https://evil.example").await.unwrap();
    assert!(refused.headers().get("access-control-allow-origin").is_none());
    server.shutdown().await;
}

#[tokio::test]
async fn unknown_routes_and_methods_get_the_json_error_body() {
    let server = Server::start(|_| {}).await;
    let (status, body) = get(&server, "/v2/nothing").await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_found"))
    );
    let response = reqwest::Client::new()
        .delete(server.url("/v1/publish"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], "method_not_allowed");
}
