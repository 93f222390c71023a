//! Bad tokens of every kind are refused with 1008 `Authentication failed`.

mod common;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::*;
use futures_util::StreamExt;
use jsonwebtoken::{EncodingKey, Header};
use serde_json::json;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn sign(claims: serde_json::Value, secret: &str) -> String {
    jsonwebtoken::encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

async fn refused(srv: &TestServer, url: String) {
    let mut c = Client::connect(&url).await;
    let (code, reason) = c.expect_close().await;
    assert_eq!(
        (code, reason.as_str()),
        (1008, "Authentication failed"),
        "{url}"
    );
    let _ = srv;
}

#[tokio::test]
async fn every_bad_token_is_refused() {
    let srv = TestServer::start().await;
    let base = format!("ws://{}/ws", srv.addr);
    let none_alg = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#),
        URL_SAFE_NO_PAD.encode(json!({"sub": "mallory", "exp": now() + 3600}).to_string())
    );
    let cases = [
        ("missing", base.clone()),
        ("empty", format!("{base}?token=")),
        ("malformed", format!("{base}?token=not.a.jwt")),
        (
            "wrong key",
            format!(
                "{base}?token={}",
                sign(json!({"sub": "a", "exp": now() + 60}), "other")
            ),
        ),
        (
            "expired",
            format!(
                "{base}?token={}",
                sign(json!({"sub": "a", "exp": now() - 3600}), SECRET)
            ),
        ),
        (
            "no exp",
            format!("{base}?token={}", sign(json!({"sub": "a"}), SECRET)),
        ),
        (
            "no sub",
            format!("{base}?token={}", sign(json!({"exp": now() + 60}), SECRET)),
        ),
        (
            "not yet valid",
            format!(
                "{base}?token={}",
                sign(
                    json!({"sub": "a", "exp": now() + 7200, "nbf": now() + 3600}),
                    SECRET
                )
            ),
        ),
        (
            "issued in the future",
            format!(
                "{base}?token={}",
                sign(
                    json!({"sub": "a", "exp": now() + 7200, "iat": now() + 3600}),
                    SECRET
                )
            ),
        ),
        ("alg none", format!("{base}?token={none_alg}")),
    ];
    for (what, url) in cases {
        eprintln!("case: {what}");
        refused(&srv, url).await;
    }
    assert_eq!(srv.hub.connections(), 0);
}

#[tokio::test]
async fn username_falls_back_to_name_then_sub() {
    let srv = TestServer::start().await;
    let t = sign(
        json!({"sub": "u1", "name": "Named", "avatar": "a.png", "exp": now() + 60}),
        SECRET,
    );
    let mut c = Client::connect(&srv.url(&t)).await;
    let hello = c.expect("connected").await;
    assert_eq!(
        hello["data"]["user"],
        json!({"id": "u1", "username": "Named", "avatar": "a.png"})
    );
    let t = sign(json!({"sub": "u2", "exp": now() + 60}), SECRET);
    let mut c = Client::connect(&srv.url(&t)).await;
    assert_eq!(
        c.expect("connected").await["data"]["user"]["username"],
        "u2"
    );
}

#[tokio::test]
async fn bearer_header_is_accepted() {
    let srv = TestServer::start().await;
    let mut req = format!("ws://{}/ws", srv.addr)
        .into_client_request()
        .unwrap();
    req.headers_mut().insert(
        "authorization",
        HeaderValue::from_str(&format!("Bearer {}", token("alice"))).unwrap(),
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    let first = ws.next().await.unwrap().unwrap();
    let v: serde_json::Value = serde_json::from_str(first.to_text().unwrap()).unwrap();
    assert_eq!(v["type"], "connected");
}

#[tokio::test]
async fn issuer_and_audience_are_checked_when_configured() {
    let srv = TestServer::with(|c| {
        c.auth.jwt_issuer = Some("https://auth.example".into());
        c.auth.jwt_audience = Some("switchboard".into());
    })
    .await;
    let good = sign(
        json!({"sub": "a", "exp": now() + 60, "iss": "https://auth.example", "aud": "switchboard"}),
        SECRET,
    );
    let mut c = Client::connect(&srv.url(&good)).await;
    c.expect("connected").await;
    let wrong_iss = sign(
        json!({"sub": "a", "exp": now() + 60, "iss": "x", "aud": "switchboard"}),
        SECRET,
    );
    refused(&srv, srv.url(&wrong_iss)).await;
    let no_aud = sign(
        json!({"sub": "a", "exp": now() + 60, "iss": "https://auth.example"}),
        SECRET,
    );
    refused(&srv, srv.url(&no_aud)).await;
}

#[tokio::test]
async fn tokens_without_exp_only_when_allowed() {
    let srv = TestServer::with(|c| c.auth.allow_tokens_without_exp = true).await;
    let mut c = Client::connect(&srv.url(&sign(json!({"sub": "a"}), SECRET))).await;
    c.expect("connected").await;
    // An exp that is present still counts.
    refused(
        &srv,
        srv.url(&sign(json!({"sub": "a", "exp": now() - 3600}), SECRET)),
    )
    .await;
}

/// Generates a key pair with the openssl CLI; returns (private PKCS#8 PEM, public PEM).
fn keypair(dir: &std::path::Path, algorithm: &[&str]) -> (Vec<u8>, std::path::PathBuf) {
    let private = dir.join("private.pem");
    let public = dir.join("public.pem");
    let ok = std::process::Command::new("openssl")
        .arg("genpkey")
        .args(algorithm)
        .arg("-out")
        .arg(&private)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("openssl is installed")
        .success();
    assert!(ok);
    let ok = std::process::Command::new("openssl")
        .args(["pkey", "-pubout", "-in"])
        .arg(&private)
        .arg("-out")
        .arg(&public)
        .status()
        .unwrap()
        .success();
    assert!(ok);
    (std::fs::read(private).unwrap(), public)
}

#[tokio::test]
async fn public_key_algorithms() {
    let cases: [(&str, &[&str], jsonwebtoken::Algorithm); 2] = [
        (
            "ES256",
            &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
            jsonwebtoken::Algorithm::ES256,
        ),
        (
            "RS256",
            &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
            jsonwebtoken::Algorithm::RS256,
        ),
    ];
    for (name, args, alg) in cases {
        let keys = tempfile::tempdir().unwrap();
        let (private, public) = keypair(keys.path(), args);
        let srv = TestServer::with(|c| {
            c.auth.jwt_algorithm = name.into();
            c.auth.jwt_public_key_file = Some(public.clone());
        })
        .await;
        let key = match alg {
            jsonwebtoken::Algorithm::ES256 => EncodingKey::from_ec_pem(&private).unwrap(),
            _ => EncodingKey::from_rsa_pem(&private).unwrap(),
        };
        let claims = json!({"sub": "pk-user", "exp": now() + 60});
        let good = jsonwebtoken::encode(&Header::new(alg), &claims, &key).unwrap();
        let mut c = Client::connect(&srv.url(&good)).await;
        assert_eq!(
            c.expect("connected").await["data"]["user"]["id"],
            "pk-user",
            "{name}"
        );
        // An HS256 token, even one signed with the public key's bytes, is refused.
        let confused = jsonwebtoken::encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(&std::fs::read(&public).unwrap()),
        )
        .unwrap();
        refused(&srv, srv.url(&confused)).await;
        refused(&srv, srv.url(&sign(claims.clone(), SECRET))).await;
    }
}
