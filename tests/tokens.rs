//! User tokens (JWT) on every transport, against the real server. Tokens
//! are built here independently of Herald's verifier: HS256 by hand (HMAC
//! over base64url parts), RS256 and ES256 signed by the `openssl` command.

mod support;

use std::path::Path;
use std::process::Command;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use herald_broker::protocol::ServerEvent;
use herald_broker::{Encoding, Secret};
use serde_json::{json, Value};
use support::{encode_part, hs256, now, Client, Server};

const SECRET: &str = "a-shared-secret-of-at-least-32-bytes!";

/// Alice's claims: read chat (not its admin corner) and her own inbox,
/// publish typing indicators.
fn alice(exp: u64) -> Value {
    json!({
        "sub": "alice",
        "exp": exp,
        "herald": {
            "pub": {"allow": ["chat.*.typing"]},
            "sub": {"allow": ["chat.>", "user.{sub}.>"], "deny": ["chat.admin.>"]},
            "info": {"name": "Alice"}
        }
    })
}

async fn with_secret() -> Server {
    Server::start(|config| config.auth.jwt_hs256_secret = Some(Secret(SECRET.into()))).await
}

/// The code of a refused subscription (or `None` for an ack).
async fn sub_outcome(client: &mut Client, subject: &str) -> Option<String> {
    client
        .send(json!({"op": "sub", "id": 1, "subject": subject}))
        .await;
    match client.next_event().await {
        ServerEvent::Ack { .. } => None,
        ServerEvent::Err { code, .. } => Some(code),
        other => panic!("ack or err, got {other:?}"),
    }
}

/// `GET`; the HTTP API takes its credential from the header only, the
/// streaming transports (which browsers open without headers) from
/// `?token=` too.
async fn get_status(server: &Server, path_and_query: &str) -> (u16, Value) {
    let mut request = reqwest::Client::new().get(server.url(path_and_query));
    if let Some((path, query)) = path_and_query
        .split_once('?')
        .filter(|(path, _)| path.starts_with("/v1/"))
    {
        let token = query
            .split('&')
            .find_map(|pair| pair.strip_prefix("token="))
            .unwrap();
        request = reqwest::Client::new()
            .get(server.url(path) + "?" + query)
            .bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let body = if status == 200 {
        Value::Null
    } else {
        response.json().await.unwrap()
    };
    (status, body)
}

async fn publish_with(server: &Server, token: &str, subject: &str) -> u16 {
    reqwest::Client::new()
        .post(server.url("/v1/publish"))
        .bearer_auth(token)
        .json(&json!({"subject": subject, "data": 1}))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn a_token_gives_its_user_their_own_permissions_on_every_transport() {
    let server = with_secret().await;
    let token = hs256(&alice(now() + 600), SECRET.as_bytes());

    let mut client = Client::connect_with(&server, Encoding::Json, Some(&token)).await;
    assert_eq!(sub_outcome(&mut client, "chat.lobby").await, None);
    assert_eq!(
        sub_outcome(&mut client, "user.alice.inbox").await,
        None,
        "{{sub}} is her id"
    );
    for refused in ["user.bob.inbox", "chat.admin.keys", "chat.>", "news.today"] {
        // `chat.>` could deliver `chat.admin.*`: deny wins at subscribe.
        assert_eq!(
            sub_outcome(&mut client, refused).await.as_deref(),
            Some("forbidden"),
            "{refused}"
        );
    }

    assert_eq!(publish_with(&server, &token, "chat.lobby.typing").await, 200);
    assert_eq!(publish_with(&server, &token, "chat.lobby").await, 403);

    let allowed = format!("/sse?subject=user.alice.>&token={token}");
    let response = support::SseClient::request(&server, &allowed[5..], None).await;
    assert_eq!(response.status(), 200);
    let (status, body) = get_status(&server, &format!("/sse?subject=user.bob.>&token={token}")).await;
    assert_eq!((status, body["code"].as_str()), (403, Some("forbidden")));
    let (status, body) = get_status(
        &server,
        &format!("/poll?subject=chat.admin.x&wait=0&token={token}"),
    )
    .await;
    assert_eq!((status, body["code"].as_str()), (403, Some("forbidden")));
    let (status, _) = get_status(&server, &format!("/v1/history?subject=chat.lobby&token={token}")).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn refused_tokens_get_a_code_and_never_access() {
    let server = Server::start(|config| {
        config.auth.jwt_hs256_secret = Some(Secret(SECRET.into()));
        config.auth.jwt_audience = Some("chat-app".into());
    })
    .await;
    let mut claims = alice(now() + 600);
    claims["aud"] = json!("chat-app");
    let good = hs256(&claims, SECRET.as_bytes());
    let with = |change: &dyn Fn(&mut Value)| {
        let mut claims = claims.clone();
        change(&mut claims);
        hs256(&claims, SECRET.as_bytes())
    };
    let none_alg = format!(
        "{}.{}.",
        encode_part(&json!({"alg": "none"})),
        encode_part(&claims)
    );
    let cases = [
        (with(&|c| c["exp"] = json!(now() - 600)), "token_expired"),
        (with(&|c| c["nbf"] = json!(now() + 600)), "token_not_yet_valid"),
        (with(&|c| c["aud"] = json!("another-app")), "token_rejected"),
        (
            with(&|c| c.as_object_mut().unwrap().remove("exp").map(|_| ()).unwrap()),
            "token_rejected",
        ),
        // A user id that would widen `user.{sub}.>`.
        (with(&|c| c["sub"] = json!("*")), "token_rejected"),
        (
            hs256(&claims, b"another-secret-of-at-least-32-bytes!!"),
            "token_rejected",
        ),
        (none_alg, "token_rejected"),
    ];
    for (token, code) in &cases {
        for path in [
            "/sse?subject=chat.lobby",
            "/poll?subject=chat.lobby&wait=0",
            "/v1/history?subject=chat.lobby",
        ] {
            let (status, body) = get_status(&server, &format!("{path}&token={token}")).await;
            assert_eq!(
                (status, body["code"].as_str()),
                (401, Some(*code)),
                "{path} {code}"
            );
        }
        assert_eq!(
            publish_with(&server, token, "chat.lobby.typing").await,
            401,
            "{code}"
        );
        let mut refused = Client::connect_to(&server, &format!("/ws?token={token}"), &[]).await;
        assert_eq!(refused.refusal().await, (code.to_string(), 4401), "ws {code}");
    }
    assert_eq!(publish_with(&server, &good, "chat.lobby.typing").await, 200);
}

/// Signs `claims` with `alg` using the `openssl` command and `key` (PEM).
fn openssl_signed(alg: &str, claims: &Value, key: &Path) -> String {
    let signing_input = format!(
        "{}.{}",
        encode_part(&json!({"alg": alg, "typ": "JWT"})),
        encode_part(claims)
    );
    let input = key.with_extension("input");
    std::fs::write(&input, &signing_input).unwrap();
    let output = Command::new("openssl")
        .args(["dgst", "-sha256", "-sign"])
        .arg(key)
        .arg(&input)
        .output()
        .expect("the openssl command");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let signature = if alg == "ES256" {
        der_to_raw_ecdsa(&output.stdout)
    } else {
        output.stdout
    };
    format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(signature))
}

/// A DER ECDSA signature (SEQUENCE of INTEGER r, INTEGER s) as the JWS
/// form: r and s, 32 bytes each.
fn der_to_raw_ecdsa(der: &[u8]) -> Vec<u8> {
    let mut raw = Vec::new();
    let mut at = 2; // SEQUENCE tag and (short) length
    for _ in 0..2 {
        assert_eq!(der[at], 0x02, "an INTEGER");
        let length = der[at + 1] as usize;
        let integer = &der[at + 2..at + 2 + length];
        let integer = &integer[integer.len().saturating_sub(32)..];
        raw.extend(std::iter::repeat_n(0, 32 - integer.len()));
        raw.extend_from_slice(integer);
        at += 2 + length;
    }
    raw
}

fn openssl(arguments: &[&str]) {
    let output = Command::new("openssl")
        .args(arguments)
        .output()
        .expect("the openssl command");
    assert!(
        output.status.success(),
        "openssl {arguments:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test]
async fn public_key_tokens_and_no_algorithm_confusion() {
    let directory = tempfile::tempdir().unwrap();
    let path = |name: &str| directory.path().join(name).to_str().unwrap().to_owned();
    let (rsa_private, rsa_public) = (path("rsa.pem"), path("rsa.pub.pem"));
    openssl(&[
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:2048",
        "-out",
        &rsa_private,
    ]);
    openssl(&["pkey", "-in", &rsa_private, "-pubout", "-out", &rsa_public]);
    let (ec_private, ec_public) = (path("ec.pem"), path("ec.pub.pem"));
    openssl(&[
        "genpkey",
        "-algorithm",
        "EC",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-out",
        &ec_private,
    ]);
    openssl(&["pkey", "-in", &ec_private, "-pubout", "-out", &ec_public]);

    let claims = alice(now() + 600);
    for (alg, private, public) in [
        ("RS256", &rsa_private, &rsa_public),
        ("ES256", &ec_private, &ec_public),
    ] {
        let public_key = public.clone();
        let server =
            Server::start(move |config| config.auth.jwt_public_key_file = Some(public_key.into())).await;
        let token = openssl_signed(alg, &claims, Path::new(private));
        assert_eq!(
            publish_with(&server, &token, "chat.lobby.typing").await,
            200,
            "{alg}"
        );
        assert_eq!(publish_with(&server, &token, "chat.lobby").await, 403, "{alg}");
        // The same claims "signed" with HS256, the public key as the secret.
        let pem = std::fs::read(public).unwrap();
        let confused = hs256(&claims, &pem);
        let (status, body) = get_status(
            &server,
            &format!("/v1/history?subject=chat.lobby&token={confused}"),
        )
        .await;
        assert_eq!(
            (status, body["code"].as_str()),
            (401, Some("token_rejected")),
            "{alg}"
        );
        let mut refused = Client::connect_to(&server, &format!("/ws?token={confused}"), &[]).await;
        assert_eq!(
            refused.refusal().await,
            ("token_rejected".to_owned(), 4401),
            "ws {alg}"
        );
    }
}

#[tokio::test]
async fn herald_token_mints_what_the_server_accepts() {
    let mint = |extra: &[&str]| {
        Command::new(support::HERALD)
            .args([
                "token",
                "--sub",
                "bob",
                "--pub",
                "chat.*.typing",
                "--sub-allow",
                "user.{sub}.>",
                "--ttl",
                "5m",
            ])
            .args(extra)
            .env("HERALD_AUTH__JWT_HS256_SECRET", SECRET)
            .output()
            .unwrap()
    };
    let output = mint(&[]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let token = String::from_utf8(output.stdout).unwrap().trim().to_owned();
    let server = with_secret().await;
    assert_eq!(publish_with(&server, &token, "chat.room1.typing").await, 200);
    assert_eq!(publish_with(&server, &token, "chat.room1").await, 403);
    let mut client = Client::connect_with(&server, Encoding::Json, Some(&token)).await;
    assert_eq!(sub_outcome(&mut client, "user.bob.inbox").await, None);
    assert_eq!(
        sub_outcome(&mut client, "user.alice.inbox").await.as_deref(),
        Some("forbidden")
    );

    // Without a secret there is nothing to sign with: a clear error.
    let unsigned = Command::new(support::HERALD)
        .args(["token", "--sub", "bob"])
        .env_remove("HERALD_AUTH__JWT_HS256_SECRET")
        .output()
        .unwrap();
    assert!(!unsigned.status.success());
    assert!(String::from_utf8_lossy(&unsigned.stderr).contains("jwt_hs256_secret"));
}

/// An SSE request as `EventSource` makes it, refused: the `err` event of
/// the refusal, read from a 200 stream.
async fn sse_refusal(server: &Server, query: &str, headers: &[(&str, &str)]) -> (String, u64, Option<u64>) {
    let response = support::SseClient::request_with(server, query, headers).await;
    assert_eq!(
        response.status(),
        200,
        "an EventSource can only read a 200 stream"
    );
    let mut stream = support::SseClient::from_response(response);
    let advice = stream.next().await.expect("retry advice first");
    let event = stream.next_event().await.expect("the refusal's err event");
    assert_eq!(event.event, "err");
    assert!(stream.next_event().await.is_none(), "then the stream ends");
    let body = event.json();
    (
        body["code"].as_str().unwrap().to_owned(),
        body["close"].as_u64().unwrap(),
        advice.retry,
    )
}

#[tokio::test]
async fn refusals_after_connecting_carry_the_code_and_a_close_code() {
    let server = Server::start_default(|config| {
        config.auth.jwt_hs256_secret = Some(Secret(SECRET.into()));
        config.server.allowed_origins = vec!["https://app.example".into()];
    })
    .await;
    let expired = hs256(&alice(now() - 600), SECRET.as_bytes());
    let good = hs256(&alice(now() + 600), SECRET.as_bytes());
    let forged = hs256(&alice(now() + 600), b"another-secret-of-at-least-32-bytes!!");
    type Case<'a> = (String, &'a [(&'a str, &'a str)], &'a str, u16);
    let cases: [Case; 4] = [
        (format!("token={expired}"), &[], "token_expired", 4401),
        (format!("token={forged}"), &[], "token_rejected", 4401),
        (
            format!("token={good}"),
            &[("origin", "https://evil.example")],
            "origin_not_allowed",
            4403,
        ),
        (String::new(), &[], "unauthorized", 4401),
    ];
    for (query, headers, code, close) in cases {
        if !query.is_empty() {
            let mut refused = Client::connect_to(&server, &format!("/ws?{query}"), headers).await;
            assert_eq!(refused.refusal().await, (code.to_owned(), close), "ws {query}");
        }
        let (sse_code, sse_close, retry) =
            sse_refusal(&server, &format!("subject=chat.lobby&{query}"), headers).await;
        assert_eq!(
            (sse_code.as_str(), sse_close),
            (code, u64::from(close)),
            "sse {query}"
        );
        assert_eq!(
            retry,
            Some(24 * 60 * 60 * 1000),
            "a refusal that will not change is not retried soon"
        );
        let mut request =
            reqwest::Client::new().get(server.url(&format!("/poll?subject=chat.lobby&wait=0&{query}")));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status().as_u16(), close - 4000, "poll {query}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["code"], code, "poll {query}");
    }
    // The allowed origin, and no origin at all (a backend), are let in.
    for headers in [&[("origin", "https://app.example")][..], &[][..]] {
        let mut client = Client::connect_to(&server, &format!("/ws?token={good}"), headers).await;
        assert_eq!(sub_outcome(&mut client, "chat.lobby").await, None);
    }
}

#[tokio::test]
async fn a_websocket_may_authenticate_with_its_first_command() {
    let server = Server::start_default(|config| {
        config.auth.jwt_hs256_secret = Some(Secret(SECRET.into()));
        config.websocket.auth_timeout = std::time::Duration::from_millis(300);
    })
    .await;
    let token = hs256(&alice(now() + 600), SECRET.as_bytes());
    let mut client = Client::connect_to(&server, "/ws", &[]).await;
    client.send(json!({"op": "auth", "id": 7, "token": token})).await;
    assert!(matches!(
        client.next_event().await,
        ServerEvent::Ack { id: Some(7), .. }
    ));
    assert_eq!(sub_outcome(&mut client, "user.alice.inbox").await, None);
    assert_eq!(
        sub_outcome(&mut client, "user.bob.inbox").await.as_deref(),
        Some("forbidden")
    );

    // Anything else first, a bad token, or nothing in time: refused.
    let mut eager = Client::connect_to(&server, "/ws", &[]).await;
    eager.send(json!({"op": "sub", "subject": "chat.lobby"})).await;
    assert_eq!(eager.refusal().await, ("unauthorized".to_owned(), 4401));
    let mut forged = Client::connect_to(&server, "/ws", &[]).await;
    let bad = hs256(&alice(now() + 600), b"another-secret-of-at-least-32-bytes!!");
    forged.send(json!({"op": "auth", "token": bad})).await;
    assert_eq!(forged.refusal().await, ("token_rejected".to_owned(), 4401));
    let mut silent = Client::connect_to(&server, "/ws", &[]).await;
    assert_eq!(silent.refusal().await, ("auth_timeout".to_owned(), 4408));
    // Counted once the close handshake ends (the clients' replies).
    drop((eager, forged, silent));
    let counted = async {
        while server.disconnects.count("refused") < 3 {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(support::PATIENCE, counted)
        .await
        .expect("three refusals counted");
    assert_eq!(server.disconnects.count("refused"), 3);
}

#[tokio::test]
async fn sse_and_long_polling_read_the_token_from_a_cookie() {
    let server =
        Server::start_default(|config| config.auth.jwt_hs256_secret = Some(Secret(SECRET.into()))).await;
    let token = hs256(&alice(now() + 600), SECRET.as_bytes());
    let cookie = format!("theme=dark; herald_token={token}");
    let response =
        support::SseClient::request_with(&server, "subject=user.alice.inbox", &[("cookie", &cookie)]).await;
    let mut stream = support::SseClient::from_response(response);
    assert_eq!(stream.next_event().await.unwrap().event, "ack");
    let poll = reqwest::Client::new()
        .get(server.url("/poll?subject=user.alice.inbox&wait=0"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(poll.status(), 200);
    // The cookie carries the same user's rules.
    let poll = reqwest::Client::new()
        .get(server.url("/poll?subject=user.bob.inbox&wait=0"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(poll.status(), 403);
    // A WebSocket does not read it: a page's cookies must not open one.
    let mut client = Client::connect_to(&server, "/ws", &[("cookie", &cookie)]).await;
    client
        .send(json!({"op": "sub", "subject": "user.alice.inbox"}))
        .await;
    assert_eq!(client.refusal().await, ("unauthorized".to_owned(), 4401));
}

#[tokio::test]
async fn an_expiring_token_is_told_then_refreshed_or_closed() {
    let server = Server::start_default(|config| {
        config.auth.jwt_hs256_secret = Some(Secret(SECRET.into()));
        config.auth.refresh_grace = std::time::Duration::from_secs(1);
    })
    .await;
    // Valid for two more seconds (the verifier allows 5 s of clock skew).
    let expiring = hs256(&alice(now() + 2), SECRET.as_bytes());
    let mut refreshing = Client::connect_with(&server, Encoding::Json, Some(&expiring)).await;
    let mut lapsing = Client::connect_with(&server, Encoding::Json, Some(&expiring)).await;
    let mut early = Client::connect_with(&server, Encoding::Json, Some(&expiring)).await;
    for client in [&mut refreshing, &mut lapsing, &mut early] {
        assert_eq!(sub_outcome(client, "user.alice.inbox").await, None);
    }
    // Refreshed before it expires: never told, never closed.
    let renewed = hs256(&alice(now() + 600), SECRET.as_bytes());
    early
        .send(json!({"op": "refresh", "id": 9, "token": renewed}))
        .await;
    assert!(matches!(
        early.next_event().await,
        ServerEvent::Ack { id: Some(9), .. }
    ));
    let mut sse = support::SseClient::connect(
        &server,
        &format!("subject=user.alice.inbox&token={expiring}"),
        None,
    )
    .await;
    for client in [&mut refreshing, &mut lapsing] {
        match client.next_event().await {
            ServerEvent::Err { id: None, code, .. } => assert_eq!(code, "token_expired"),
            other => panic!("told the token expired, got {other:?}"),
        }
    }
    // A token for someone else, or one that drops a held subscription, is
    // refused; the same user's new token is taken.
    let bob = hs256(&json!({"sub": "bob", "exp": now() + 600}), SECRET.as_bytes());
    refreshing
        .send(json!({"op": "refresh", "id": 1, "token": bob}))
        .await;
    assert!(
        matches!(refreshing.next_event().await, ServerEvent::Err { id: Some(1), code, .. } if code == "refresh_refused")
    );
    let fresh = hs256(&alice(now() + 600), SECRET.as_bytes());
    refreshing
        .send(json!({"op": "refresh", "id": 2, "token": fresh}))
        .await;
    assert!(matches!(
        refreshing.next_event().await,
        ServerEvent::Ack { id: Some(2), .. }
    ));

    assert_eq!(lapsing.close_frame().await, (4401, "token_expired".to_owned()));
    let mut last = None;
    while let Some(event) = sse.next_event().await {
        last = Some(event);
    }
    let last = last.expect("the stream's final event");
    assert_eq!(
        (last.event.as_str(), last.json()["code"].as_str()),
        ("err", Some("token_expired"))
    );
    // Past the old token's grace, the refreshed connection still delivers.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    publish_with(&server, support::PUBLISHER_KEY, "user.alice.inbox").await;
    for client in [&mut refreshing, &mut early] {
        let event = client.next_event().await;
        assert!(
            matches!(&event, ServerEvent::Msg { subject, .. } if subject == "user.alice.inbox"),
            "still delivering, nothing else first: {event:?}"
        );
    }
    assert_eq!(server.disconnects.count("token_expired"), 2);
}

#[tokio::test]
async fn a_client_publishing_too_fast_is_refused_not_disconnected() {
    let server = Server::start_default(|config| {
        config.auth.jwt_hs256_secret = Some(Secret(SECRET.into()));
        config.broker.max_client_publishes_per_second = 5;
    })
    .await;
    let token = hs256(&alice(now() + 600), SECRET.as_bytes());
    let mut client = Client::connect_with(&server, Encoding::Json, Some(&token)).await;
    let mut backend = Client::connect_with(&server, Encoding::Json, Some(support::PUBLISHER_KEY)).await;
    for id in 0..20u64 {
        let command = json!({"op": "pub", "id": id, "subject": "chat.lobby.typing", "data": id});
        client.send(command.clone()).await;
        backend.send(command).await;
    }
    let (mut acked, mut limited) = (0, 0);
    for _ in 0..20 {
        match client.next_event().await {
            ServerEvent::Ack { .. } => acked += 1,
            ServerEvent::Err { code, .. } if code == "rate_limited" => limited += 1,
            other => panic!("ack or rate_limited, got {other:?}"),
        }
    }
    assert!((5..=7).contains(&acked), "about one second's budget: {acked}");
    assert_eq!(acked + limited, 20);
    // The connection is still open and still answers.
    client.send(json!({"op": "ping", "id": 99})).await;
    assert!(matches!(
        client.next_event().await,
        ServerEvent::Pong { id: Some(99) }
    ));
    // An API key (a backend) is not limited.
    for _ in 0..20 {
        assert!(matches!(backend.next_event().await, ServerEvent::Ack { .. }));
    }
    // Over HTTP the budget is the user's, however many requests and
    // connections carry the token.
    let mut carol = alice(now() + 600);
    carol["sub"] = json!("carol");
    let carol = hs256(&carol, SECRET.as_bytes());
    let (mut accepted, mut refused) = (0, 0);
    for _ in 0..20 {
        let response = reqwest::Client::new()
            .post(server.url("/v1/publish"))
            .bearer_auth(&carol)
            .json(&json!({"subject": "chat.lobby.typing", "data": 1}))
            .send()
            .await
            .unwrap();
        match response.status().as_u16() {
            200 => accepted += 1,
            429 => {
                let body: Value = response.json().await.unwrap();
                assert_eq!(body["code"], "rate_limited");
                refused += 1;
            }
            other => panic!("200 or 429, got {other}"),
        }
    }
    assert!(
        (5..=8).contains(&accepted) && accepted + refused == 20,
        "{accepted} accepted"
    );
}

#[tokio::test]
async fn the_default_configuration_lets_nobody_publish_anonymously() {
    let server = Server::start_default(|_| {}).await;
    // WebSocket: without a credential the first command must be `auth`.
    let mut client = Client::connect_to(&server, "/ws", &[]).await;
    client
        .send(json!({"op": "pub", "id": 1, "subject": "chat.lobby", "data": 1}))
        .await;
    assert_eq!(client.refusal().await, ("unauthorized".to_owned(), 4401));
    // HTTP API.
    let response = reqwest::Client::new()
        .post(server.url("/v1/publish"))
        .json(&json!({"subject": "chat.lobby", "data": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    // SSE and long polling are read-only, and refuse anonymous readers too.
    for path in ["/sse?subject=chat.lobby", "/poll?subject=chat.lobby"] {
        let response = reqwest::Client::new()
            .post(server.url(path))
            .json(&json!({"subject": "chat.lobby", "data": 1}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 405, "{path}");
        let response = reqwest::Client::new()
            .get(server.url(&format!("{path}&wait=0")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 401, "{path}");
    }
    assert_eq!(server.broker.metrics().published, 0);
}

/// NATS clients present the same tokens in CONNECT (`auth_token`, the
/// password, or `jwt`), with the same permissions.
#[tokio::test]
async fn a_nats_client_connects_with_a_user_token() {
    let server = with_secret().await;
    let url = format!("nats://{}", server.nats_address.unwrap());
    let token = hs256(&alice(now() + 600), SECRET.as_bytes());
    let (errors_tx, mut errors) = tokio::sync::mpsc::unbounded_channel();
    let client = async_nats::ConnectOptions::new()
        .token(token.clone())
        .event_callback(move |event| {
            let errors_tx = errors_tx.clone();
            async move {
                if let async_nats::Event::ServerError(error) = event {
                    let _ = errors_tx.send(error.to_string());
                }
            }
        })
        .connect(&url)
        .await
        .expect("a valid token connects");
    let mut inbox = client.subscribe("user.alice.inbox").await.unwrap();
    let _denied = client.subscribe("chat.admin.keys").await.unwrap();
    client.publish("chat.lobby", "not allowed".into()).await.unwrap();
    client.flush().await.unwrap();
    support::publish(&server, "user.alice.inbox", json!("hello")).await;
    let message = tokio::time::timeout(support::PATIENCE, futures_util::StreamExt::next(&mut inbox))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&message.payload[..], br#""hello""#);
    let mut said = vec![errors.recv().await.unwrap(), errors.recv().await.unwrap()];
    said.sort();
    assert!(
        said[0].contains("Permissions Violation for Publish to \"chat.lobby\""),
        "{said:?}"
    );
    assert!(
        said[1].contains("Permissions Violation for Subscription to \"chat.admin.keys\""),
        "{said:?}"
    );

    // The `jwt` field carries it too; an expired one is refused.
    for (claims, expected) in [
        (alice(now() + 600), "PONG\r\n"),
        (alice(now() - 600), "-ERR 'Authorization Violation'\r\n"),
    ] {
        let jwt = hs256(&claims, SECRET.as_bytes());
        let mut raw = support::RawNats::connect(&server, &format!("{{\"jwt\":\"{jwt}\"}}")).await;
        raw.send("PING\r\n").await;
        assert_eq!(raw.line().await, expected);
    }
}

/// A NATS connection opened with a token ends when the token does.
#[tokio::test]
async fn a_nats_connection_ends_when_its_token_expires() {
    let server = with_secret().await;
    let token = hs256(&alice(now() + 2), SECRET.as_bytes());
    let mut raw = support::RawNats::connect(&server, &format!("{{\"auth_token\":\"{token}\"}}")).await;
    raw.send("PING\r\n").await;
    let text = raw.rest().await;
    assert!(text.contains("PONG\r\n"), "{text}");
    assert!(text.ends_with("-ERR 'User Authentication Expired'\r\n"), "{text}");
}
