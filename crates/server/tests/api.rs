//! Every HTTP API route: success, missing or wrong key or token, bad input; metrics;
//! and the OpenAPI document against the routes the server really serves.

mod common;

use common::*;
use reqwest::StatusCode;
use serde_json::{Value, json};

/// Every route the router serves, as (method, path with example parameters).
const ROUTES: &[(&str, &str, &str)] = &[
    ("get", "/ws", "/ws"),
    ("get", "/events", "/events"),
    ("get", "/socket.io/", "/socket.io/?EIO=4&transport=polling"),
    (
        "post",
        "/socket.io/",
        "/socket.io/?EIO=4&transport=polling&sid=unknown",
    ),
    ("get", "/health", "/health"),
    ("get", "/ready", "/ready"),
    ("get", "/metrics", "/metrics"),
    ("get", "/admin/stats", "/admin/stats"),
    ("get", "/admin/socket-stats", "/admin/socket-stats"),
    ("post", "/admin/broadcast", "/admin/broadcast"),
    ("post", "/events/broadcast", "/events/broadcast"),
    ("post", "/notifications", "/notifications"),
    (
        "post",
        "/api/rooms/{room}/publish",
        "/api/rooms/general/publish",
    ),
    (
        "post",
        "/api/users/{id}/disconnect",
        "/api/users/bob/disconnect",
    ),
    (
        "get",
        "/api/rooms/{room}/messages",
        "/api/rooms/general/messages",
    ),
    ("put", "/api/users/{id}/contacts", "/api/users/bob/contacts"),
    ("get", "/api/users/{id}", "/api/users/bob"),
    ("get", "/api/users/me/contacts", "/api/users/me/contacts"),
    ("get", "/api/users/me/rooms", "/api/users/me/rooms"),
    ("get", "/api/notifications", "/api/notifications"),
    ("post", "/api/files", "/api/files"),
    (
        "get",
        "/api/files/{id}",
        "/api/files/0123456789abcdef0123456789abcdef",
    ),
    (
        "get",
        "/api/files/{id}/meta",
        "/api/files/0123456789abcdef0123456789abcdef/meta",
    ),
    ("post", "/api/notifications/read", "/api/notifications/read"),
    ("get", "/api/ice-servers", "/api/ice-servers"),
    ("get", "/openapi.json", "/openapi.json"),
];

/// POSTs a JSON body with the API key.
async fn admin_post(srv: &TestServer, path: &str, body: &Value) -> reqwest::Response {
    admin()
        .post(srv.http(path))
        .json(body)
        .send()
        .await
        .unwrap()
}

async fn error_of(resp: reqwest::Response) -> (StatusCode, String) {
    let status = resp.status();
    let body: Value = resp.json().await.expect("errors are JSON");
    assert!(body["error"]["message"].is_string(), "{body}");
    (status, body["error"]["code"].as_str().unwrap().to_string())
}

#[tokio::test]
async fn server_routes_need_the_key() {
    let srv = TestServer::start().await;
    let http = reqwest::Client::new();
    for (method, _, path) in ROUTES.iter().filter(|(_, p, _)| {
        p.starts_with("/admin")
            || p.starts_with("/events/")
            || p.starts_with("/notifications")
            || p.contains("/publish")
            || p.contains("/disconnect")
    }) {
        let req = |key: Option<&str>| {
            let mut r = if *method == "get" {
                http.get(srv.http(path))
            } else {
                http.post(srv.http(path)).json(&json!({}))
            };
            if let Some(k) = key {
                r = r.header("x-api-key", k);
            }
            r.send()
        };
        assert_eq!(
            error_of(req(None).await.unwrap()).await,
            (StatusCode::UNAUTHORIZED, "unauthorized".into()),
            "{path}"
        );
        assert_eq!(
            error_of(req(Some("wrong")).await.unwrap()).await.0,
            StatusCode::UNAUTHORIZED,
            "{path}"
        );
    }
    // Bearer works as well as X-API-Key.
    let ok = http
        .get(srv.http("/admin/stats"))
        .bearer_auth(API_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    // No key configured: the server API is closed.
    let closed = TestServer::with(|c| c.api_key = None).await;
    let resp = http
        .get(closed.http("/admin/stats"))
        .header("x-api-key", "anything")
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_of(resp).await,
        (StatusCode::FORBIDDEN, "admin_disabled".into())
    );
}

#[tokio::test]
async fn stats_count_connections_and_rooms() {
    let srv = TestServer::start().await;
    let _a = srv.member("alice", "general").await;
    let _b = srv.member("bob", "general").await;
    let _c = srv.member("carol", "other").await;
    let mut sse = SseClient::open(&srv, "dave", "general", None).await;
    sse.next_of("connected").await;
    let stats: Value = admin_get(&srv, "/admin/stats").await;
    assert_eq!(stats["totalClients"], 4);
    assert_eq!(stats["totalRooms"], 2);
    assert_eq!(
        stats["transports"],
        json!({"websocket": 3, "sse": 1, "socketio": 0})
    );
    assert!(stats["nodeId"].is_string());
    assert_eq!(
        stats["clientsByRoom"],
        json!([{"roomId": "general", "clientCount": 3}, {"roomId": "other", "clientCount": 1}])
    );
    let ws: Value = admin_get(&srv, "/admin/socket-stats").await;
    assert_eq!(ws["totalClients"], 3);
    assert_eq!(
        ws["clientsByRoom"][0],
        json!({"roomId": "general", "clientCount": 2})
    );
}

#[tokio::test]
async fn admin_broadcast_reaches_every_transport() {
    let srv = TestServer::start().await;
    let mut alice = srv.client("alice").await;
    let mut sse = SseClient::open(&srv, "bob", "anything", None).await;
    sse.next_of("connected").await;
    let resp = admin_post(
        &srv,
        "/admin/broadcast",
        &json!({"message": "maintenance at noon", "type": "maintenance"}),
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.json::<Value>().await.unwrap()["delivered"], 2);
    let m = alice.expect("system_message").await;
    assert_eq!(m["data"]["type"], "maintenance");
    assert_eq!(m["data"]["content"], "maintenance at noon");
    let e = sse.next_of("system_message").await;
    assert_eq!(e.data["content"], "maintenance at noon");
    let resp = admin_post(&srv, "/admin/broadcast", &json!({"message": ""})).await;
    assert_eq!(error_of(resp).await.0, StatusCode::BAD_REQUEST);
    let resp = admin_post(&srv, "/admin/broadcast", &json!({"type": "x"})).await;
    assert_eq!(error_of(resp).await.0, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn malformed_and_oversized_bodies() {
    let srv = TestServer::with(|c| c.max_body_bytes = 1024).await;
    let post = |body: String, ctype: &'static str| {
        admin()
            .post(srv.http("/admin/broadcast"))
            .header("content-type", ctype)
            .body(body)
            .send()
    };
    let (status, code) =
        error_of(post("{not json".into(), "application/json").await.unwrap()).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::BAD_REQUEST, "bad_request")
    );
    let (status, _) = error_of(post("[1,2]".into(), "application/json").await.unwrap()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = error_of(post("{}".into(), "text/plain").await.unwrap()).await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let big = json!({"message": "x".repeat(5000)}).to_string();
    let (status, code) = error_of(post(big, "application/json").await.unwrap()).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large")
    );
    let resp = admin()
        .get(srv.http("/no/such/route"))
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(resp).await.0, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn events_and_notifications() {
    let srv = TestServer::start().await;
    let mut alice = srv.member("alice", "general").await;
    let mut alice_sse = SseClient::open(&srv, "alice", "user:alice", None).await;
    alice_sse.next_of("connected").await;
    let resp = admin_post(
        &srv,
        "/notifications",
        &json!({"userId": "alice", "message": "you have mail", "type": "mail"}),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let n = alice.next_of("notification").await;
    assert_eq!(n["data"]["type"], "mail");
    assert_eq!(n["data"]["message"], "you have mail");
    assert_eq!(alice_sse.next_of("notification").await.data["type"], "mail");
    for bad in [
        json!({"message": "x"}),
        json!({"userId": "a b", "message": "x"}),
        json!({"userId": "a"}),
    ] {
        let resp = admin_post(&srv, "/notifications", &bad).await;
        assert_eq!(error_of(resp).await.0, StatusCode::BAD_REQUEST, "{bad}");
    }
    for bad in [
        json!({"event": "has space", "data": {}, "channel": "general"}),
        json!({"event": "ok", "data": {}, "channel": "bad room"}),
        json!({"event": "ok", "data": {}}),
    ] {
        let resp = admin_post(&srv, "/events/broadcast", &bad).await;
        assert_eq!(error_of(resp).await.0, StatusCode::BAD_REQUEST, "{bad}");
    }
}

#[tokio::test]
async fn publish_is_durable_and_validated() {
    let srv = TestServer::start().await;
    let mut alice = srv.member("alice", "general").await;
    let resp = admin_post(
        &srv,
        "/api/rooms/general/publish",
        &json!({"content": "hello", "type": "announcement"}),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["offset"], 1);
    let m = alice.next_of("new_message").await;
    assert_eq!(m["data"]["id"], body["id"]);
    assert_eq!(m["data"]["type"], "announcement");
    assert_eq!(
        m["data"]["sender"],
        json!({"id": "server", "username": "Server"})
    );
    for bad in [
        json!({}),
        json!({"content": ""}),
        json!({"content": "x", "metadata": 3}),
    ] {
        let resp = admin_post(&srv, "/api/rooms/general/publish", &bad).await;
        assert_eq!(error_of(resp).await.0, StatusCode::BAD_REQUEST, "{bad}");
    }
    let resp = admin_post(
        &srv,
        "/api/rooms/bad%20room/publish",
        &json!({"content": "x"}),
    )
    .await;
    assert_eq!(error_of(resp).await.0, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn disconnecting_a_user_closes_all_its_connections() {
    let srv = TestServer::start().await;
    let mut a = srv.client("bob").await;
    let mut b = srv.client("bob").await;
    let _other = srv.client("carol").await;
    let resp = admin()
        .post(srv.http("/api/users/bob/disconnect"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.json::<Value>().await.unwrap()["disconnected"], 2);
    for c in [&mut a, &mut b] {
        assert_eq!(
            c.expect_close().await,
            (1000, "Disconnected by server".to_string())
        );
    }
    let resp = admin()
        .post(srv.http("/api/users/nobody/disconnect"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.json::<Value>().await.unwrap()["disconnected"], 0);
}

#[tokio::test]
async fn history_over_http_is_for_members() {
    let srv = TestServer::start().await;
    let mut alice = srv.member("alice", "general").await;
    for i in 1..=5 {
        alice.send(json!({"type": "send_message", "ref": i, "data": {"roomId": "general", "content": format!("m{i}")}})).await;
        alice.next_of("ack").await;
    }
    let http = reqwest::Client::new();
    let get = |q: &str, sub: Option<&str>| {
        let mut r = http.get(srv.http(&format!("/api/rooms/general/messages{q}")));
        if let Some(sub) = sub {
            r = r.bearer_auth(token(sub));
        }
        r.send()
    };
    let body: Value = get("?before=5&limit=2", Some("alice"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["roomId"], "general");
    let offsets: Vec<_> = body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(offsets, [3, 4]);
    let body: Value = get("?since=3", Some("alice"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["messages"].as_array().unwrap().len(), 2);
    assert_eq!(
        error_of(get("", None).await.unwrap()).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        error_of(get("", Some("mallory")).await.unwrap()).await.0,
        StatusCode::FORBIDDEN
    );
    let between: Value = get("?since=1&before=4", Some("alice"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(between["messages"].as_array().unwrap().len(), 2);
    assert_eq!(
        error_of(get("?limit=many", Some("alice")).await.unwrap())
            .await
            .0,
        StatusCode::BAD_REQUEST
    );
    // A listener reads the history of the channels its stream names, to fill a gap
    // its resume could not.
    let mut stream = SseClient::open(&srv, "lurker", "general", None).await;
    stream.next_of("connected").await;
    let body: Value = get("?limit=1", Some("lurker"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["messages"][0]["offset"], 5);
}

#[tokio::test]
async fn ice_servers_with_turn_credentials() {
    let srv = TestServer::with(|c| {
        c.ice.stun_urls = vec!["stun:stun.example:3478".into()];
        c.ice.turn_urls = vec!["turn:turn.example:3478?transport=udp".into()];
        c.ice.turn_secret = Some("turn-secret".into());
        c.ice.turn_ttl_secs = 600;
    })
    .await;
    let resp = reqwest::Client::new()
        .get(srv.http("/api/ice-servers"))
        .bearer_auth(token("alice"))
        .send()
        .await
        .unwrap();
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["ttl"], 600);
    let servers = body["iceServers"].as_array().unwrap();
    assert_eq!(servers[0], json!({"urls": ["stun:stun.example:3478"]}));
    let turn = &servers[1];
    let username = turn["username"].as_str().unwrap();
    let (expiry, user) = username.split_once(':').unwrap();
    assert_eq!(user, "alice");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!((now + 590..=now + 610).contains(&expiry.parse::<u64>().unwrap()));
    let (_, expected) =
        switchboard::auth::turn_credential("turn-secret", "alice", expiry.parse().unwrap());
    assert_eq!(turn["credential"], expected);
    let resp = reqwest::get(srv.http("/api/ice-servers")).await.unwrap();
    assert_eq!(error_of(resp).await.0, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn metrics_count_what_happens() {
    let srv = TestServer::start().await;
    let mut alice = srv.member("alice", "general").await;
    alice.send(json!({"type": "send_message", "ref": 1, "data": {"roomId": "general", "content": "x"}})).await;
    alice.next_of("ack").await;
    let _ = Client::connect(&srv.url("bad-token"))
        .await
        .expect_close()
        .await;
    let text = reqwest::get(srv.http("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for (name, _) in switchboard::metrics::NAMES {
        assert!(text.contains(name), "{name} missing from /metrics");
    }
    let value = |line_start: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(line_start))
            .unwrap_or_else(|| panic!("{line_start} in {text}"))
            .rsplit(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    assert_eq!(
        value("switchboard_connections{transport=\"websocket\"}"),
        1.0
    );
    assert_eq!(value("switchboard_messages_stored_total"), 1.0);
    assert!(value("switchboard_deliveries_total") >= 1.0);
    assert_eq!(value("switchboard_auth_failures_total"), 1.0);
    assert_eq!(value("switchboard_publish_latency_seconds_count"), 1.0);
    assert!(value("switchboard_store_batch_size_count") >= 1.0);
}

#[tokio::test]
async fn openapi_lists_every_route_and_nothing_else() {
    let srv = TestServer::start().await;
    let doc: Value = reqwest::get(srv.http("/openapi.json"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let paths = doc["paths"].as_object().unwrap();
    for (method, path, _) in ROUTES {
        assert!(
            paths.get(*path).and_then(|p| p.get(*method)).is_some(),
            "{method} {path} is not in /openapi.json"
        );
    }
    let documented: usize = paths.values().map(|p| p.as_object().unwrap().len()).sum();
    assert_eq!(
        documented,
        ROUTES.len(),
        "the document has routes the test does not know"
    );
    // Every route answers (not 404), so the list is the router's.
    let http = reqwest::Client::new();
    for (method, _, example) in ROUTES {
        let resp = match *method {
            "get" => http.get(srv.http(example)),
            "put" => http.put(srv.http(example)),
            _ => http.post(srv.http(example)),
        }
        .send()
        .await
        .unwrap();
        assert_ne!(resp.status(), 404, "{method} {example}");
    }
}
