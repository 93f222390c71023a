//! Files through the real server: upload (multipart and raw), share in a room, download
//! by signed link and Bearer token, who may not, ranges, the headers that keep user
//! bytes from running as a page, limits and quotas, orphan cleanup, and a real browser
//! loading a shared image.

mod common;

use std::time::Duration;

use base64::Engine;
use common::*;
use reqwest::StatusCode;
use serde_json::{Value, json};

/// A 1x1 PNG.
const PNG: &str = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg==";

fn png() -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(PNG)
        .unwrap()
}

fn bearer(sub: &str) -> String {
    format!("Bearer {}", token(sub))
}

async fn upload_form(
    srv: &TestServer,
    sub: &str,
    name: &str,
    kind: &str,
    bytes: Vec<u8>,
) -> (u16, Value) {
    let part = reqwest::multipart::Part::bytes(bytes)
        .file_name(name.to_string())
        .mime_str(kind)
        .unwrap();
    let form = reqwest::multipart::Form::new()
        .text("note", "ignored")
        .part("file", part);
    let resp = reqwest::Client::new()
        .post(srv.http("/api/files"))
        .header("authorization", bearer(sub))
        .multipart(form)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn upload_raw(
    srv: &TestServer,
    sub: &str,
    name: &str,
    kind: &str,
    bytes: Vec<u8>,
) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .post(srv.http("/api/files"))
        .header("authorization", bearer(sub))
        .header("content-type", kind)
        .header("x-file-name", name)
        .body(bytes)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(bytes);
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploaded_files_are_shared_in_a_room_and_read_only_by_its_members() {
    let srv = TestServer::start().await;
    let mut alice = srv.member("alice", "design").await;
    let mut bob = srv.member("bob", "design").await;
    let carol = srv.member("carol", "elsewhere").await;
    alice.next_of("user_joined_room").await;

    let (status, file) = upload_form(&srv, "alice", "dot.png", "image/png", png()).await;
    assert_eq!(status, 201, "{file}");
    assert_eq!(file["name"], "dot.png");
    assert_eq!(file["type"], "image/png");
    assert_eq!(file["size"], png().len());
    assert_eq!(file["sha256"], sha256_hex(&png()));
    assert_eq!(file["uploadedBy"], "alice");
    let id = file["id"].as_str().unwrap().to_string();

    // Before it is shared, only its uploader may read it.
    let http = reqwest::Client::new();
    let get = |path: String, sub: Option<&str>| {
        let mut req = http.get(srv.http(&path));
        if let Some(sub) = sub {
            req = req.header("authorization", bearer(sub));
        }
        req.send()
    };
    let path = format!("/api/files/{id}");
    assert_eq!(
        get(path.clone(), Some("alice")).await.unwrap().status(),
        200
    );
    assert_eq!(get(path.clone(), Some("bob")).await.unwrap().status(), 404);

    alice
        .send(json!({"type": "share_file", "data": {"roomId": "design", "fileId": id}, "ref": 1}))
        .await;
    let ack = alice.next_of("ack").await;
    let shared = bob.next_of("new_message").await;
    assert_eq!(shared["data"]["type"], "file");
    let content = &shared["data"]["content"];
    assert_eq!(content["id"], id.as_str());
    assert_eq!(content["name"], "dot.png");
    assert_eq!(content["size"], png().len());
    assert_eq!(content["type"], "image/png");
    assert_eq!(content["uploadedBy"], "alice");
    assert_eq!(shared["data"]["offset"], ack["data"]["offset"]);

    // The signed link works alone, as a browser would use it.
    let url = content["url"].as_str().unwrap();
    let resp = get(url.to_string(), None).await.unwrap();
    assert_eq!(resp.status(), 200);
    let h = resp.headers().clone();
    assert_eq!(h["content-type"], "image/png");
    assert!(
        h["content-disposition"]
            .to_str()
            .unwrap()
            .starts_with("inline")
    );
    assert_eq!(h["x-content-type-options"], "nosniff");
    assert!(
        h["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("default-src 'none'")
    );
    assert_eq!(resp.bytes().await.unwrap().as_ref(), png().as_slice());

    // A member by token; a non-member gets 404 as for no file at all.
    assert_eq!(get(path.clone(), Some("bob")).await.unwrap().status(), 200);
    assert_eq!(
        get(path.clone(), Some("carol")).await.unwrap().status(),
        404
    );
    assert_eq!(
        get(
            "/api/files/00000000000000000000000000000000".into(),
            Some("alice")
        )
        .await
        .unwrap()
        .status(),
        404
    );
    assert_eq!(get(path.clone(), None).await.unwrap().status(), 401);
    let (status, meta) = srv.get_as("bob", &format!("{path}/meta")).await;
    assert_eq!(status, 200, "{meta}");
    assert_eq!(meta["sha256"], sha256_hex(&png()));
    assert_eq!(srv.get_as("carol", &format!("{path}/meta")).await.0, 404);

    // A forged or altered link is refused; so is one past its expiry.
    let forged = url.replace("sig=", "sig=00");
    assert_eq!(get(forged, None).await.unwrap().status(), 403);
    let (base, _) = url.split_once("?").unwrap();
    let expired = format!("{base}?expires=1&sig={}", "ab".repeat(32));
    assert_eq!(get(expired, None).await.unwrap().status(), 403);
    let other = url.replace(&id, "00000000000000000000000000000000");
    assert_eq!(get(other, None).await.unwrap().status(), 403);
    drop(carol);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn share_file_refuses_what_is_not_yours_or_not_there() {
    let srv = TestServer::start().await;
    let mut alice = srv.member("alice", "design").await;
    let mut bob = srv.member("bob", "design").await;
    alice.next_of("user_joined_room").await;
    let (_, file) = upload_raw(&srv, "alice", "a.txt", "text/plain", b"hello".to_vec()).await;
    let id = file["id"].as_str().unwrap();

    bob.request("share_file", json!({"roomId": "design", "fileId": id}))
        .await;
    bob.expect_error("File not found").await;
    bob.request("share_file", json!({"roomId": "design", "fileId": "nope"}))
        .await;
    bob.expect_error("File not found").await;
    alice
        .request("share_file", json!({"roomId": "other", "fileId": id}))
        .await;
    alice.expect_error("Not in room").await;
    alice
        .request("share_file", json!({"roomId": "design"}))
        .await;
    alice.expect_error("File not found").await;
    // Not into a private conversation, even one's own.
    alice
        .send(json!({"type": "join_room", "data": {"roomId": "dm:alice:bob"}, "ref": 2}))
        .await;
    alice.next_of("room_joined").await;
    alice
        .request(
            "share_file",
            json!({"roomId": "dm:alice:bob", "fileId": id}),
        )
        .await;
    alice.expect_error("Forbidden").await;
    // Nothing was shared: bob still may not read it.
    assert_eq!(
        srv.get_as("bob", &format!("/api/files/{id}/meta")).await.0,
        404
    );
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_bytes_never_run_as_a_page() {
    let srv = TestServer::start().await;
    let page = b"<html><script>alert(document.cookie)</script></html>".to_vec();
    let svg = b"<svg xmlns='http://www.w3.org/2000/svg'><script>alert(1)</script></svg>".to_vec();
    for (name, kind, bytes) in [
        ("x.html", "text/html", page.clone()),
        ("x.svg", "image/svg+xml", svg),
    ] {
        let (status, file) = upload_raw(&srv, "alice", name, kind, bytes).await;
        assert_eq!(status, 201, "{file}");
        let resp = reqwest::get(srv.http(file["url"].as_str().unwrap()))
            .await
            .unwrap();
        let h = resp.headers();
        assert!(
            h["content-disposition"]
                .to_str()
                .unwrap()
                .starts_with("attachment"),
            "{name}"
        );
        assert_eq!(h["x-content-type-options"], "nosniff");
        assert!(
            h["content-security-policy"]
                .to_str()
                .unwrap()
                .contains("sandbox")
        );
    }
    // A page that claims to be an image is refused, multipart or raw.
    let (status, body) = upload_raw(&srv, "alice", "x.png", "image/png", page.clone()).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("image/png")
    );
    let (status, _) = upload_form(&srv, "alice", "x.gif", "image/gif", page).await;
    assert_eq!(status, 400);
    // Undeclared bytes are typed by their magic.
    let (status, file) = upload_raw(&srv, "alice", "dot", "application/octet-stream", png()).await;
    assert_eq!(status, 201);
    assert_eq!(file["type"], "image/png");
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ranges_and_names() {
    let srv = TestServer::start().await;
    let bytes: Vec<u8> = (0..=255u8).cycle().take(10_000).collect();
    let (status, file) = upload_raw(
        &srv,
        "alice",
        "r%C3%A9sum%C3%A9.bin",
        "application/octet-stream",
        bytes.clone(),
    )
    .await;
    assert_eq!(status, 201);
    assert_eq!(file["name"], "résumé.bin");
    let url = srv.http(file["url"].as_str().unwrap());
    let http = reqwest::Client::new();
    let resp = ranged(&http, &url, "bytes=100-199").await;
    assert_eq!(resp.status(), 206);
    assert_eq!(resp.headers()["content-range"], "bytes 100-199/10000");
    assert_eq!(resp.bytes().await.unwrap().as_ref(), &bytes[100..200]);
    let resp = ranged(&http, &url, "bytes=-10").await;
    assert_eq!(resp.status(), 206);
    assert_eq!(resp.bytes().await.unwrap().as_ref(), &bytes[9990..]);
    let resp = ranged(&http, &url, "bytes=20000-").await;
    assert_eq!(resp.status(), 416);
    assert_eq!(resp.headers()["content-range"], "bytes */10000");
    let resp = http.get(&url).send().await.unwrap();
    let disposition = resp.headers()["content-disposition"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        disposition.contains("filename*=UTF-8''r%C3%A9sum%C3%A9.bin"),
        "{disposition}"
    );
    let etag = resp.headers()["etag"].clone();
    let resp = http
        .get(&url)
        .header("if-none-match", etag)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 304);
    // Paths are not names.
    let (_, file) = upload_raw(
        &srv,
        "alice",
        "../../etc/passwd",
        "text/plain",
        b"x".to_vec(),
    )
    .await;
    assert_eq!(file["name"], "passwd");
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_and_quotas_refuse_before_keeping_anything() {
    let srv = TestServer::with(|c| {
        c.files.max_bytes = 64 * 1024;
        c.files.user_quota_bytes = 100 * 1024;
    })
    .await;
    let big = vec![7u8; 64 * 1024 + 1];
    let (status, body) = upload_raw(
        &srv,
        "alice",
        "big.bin",
        "application/octet-stream",
        big.clone(),
    )
    .await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(body["error"]["code"], "too_large");
    let (status, body) =
        upload_form(&srv, "alice", "big.bin", "application/octet-stream", big).await;
    assert_eq!(status, 413, "{body}");

    // 60 KiB fits; another 60 KiB would pass the 100 KiB quota.
    let part = vec![1u8; 60 * 1024];
    let (status, _) = upload_raw(
        &srv,
        "alice",
        "a.bin",
        "application/octet-stream",
        part.clone(),
    )
    .await;
    assert_eq!(status, 201);
    let (status, body) = upload_raw(
        &srv,
        "alice",
        "b.bin",
        "application/octet-stream",
        part.clone(),
    )
    .await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(body["error"]["code"], "quota_exceeded");
    // Without a length up front (chunked), the quota holds as the bytes come.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..6).map(|_| Ok(vec![2u8; 10 * 1024])).collect();
    let resp = reqwest::Client::new()
        .post(srv.http("/api/files"))
        .header("authorization", bearer("alice"))
        .header("x-file-name", "c.bin")
        .header("content-type", "application/octet-stream")
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
    // Another user has its own quota.
    let (status, _) = upload_raw(&srv, "bob", "b.bin", "application/octet-stream", part).await;
    assert_eq!(status, 201);

    // Bad requests, and a raw body without a name.
    let resp = reqwest::Client::new()
        .post(srv.http("/api/files"))
        .header("authorization", bearer("alice"))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400, "no Content-Type");
    let resp = reqwest::Client::new()
        .post(srv.http("/api/files"))
        .header("authorization", bearer("alice"))
        .header("content-type", "text/plain")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201, "no X-File-Name: named `file`");
    let unnamed: Value = resp.json().await.unwrap();
    assert_eq!(unnamed["name"], "file");
    let form = reqwest::multipart::Form::new().text("other", "x");
    let resp = reqwest::Client::new()
        .post(srv.http("/api/files"))
        .header("authorization", bearer("alice"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400, "no file part");
    let resp = reqwest::Client::new()
        .post(srv.http("/api/files"))
        .header("x-file-name", "a")
        .header("content-type", "text/plain")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    // Nothing refused was kept: only the three accepted files are on disk.
    let mut kept = 0;
    for dir in std::fs::read_dir(srv.dir.path().join("files")).unwrap() {
        let dir = dir.unwrap();
        if dir.file_type().unwrap().is_dir() {
            kept += std::fs::read_dir(dir.path()).unwrap().count();
        }
    }
    assert_eq!(kept, 3);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_form_keeps_nothing_even_after_its_file_part() {
    let srv = TestServer::start().await;
    let part = |name: &str, body: &str| {
        format!(
            "--B\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"f.txt\"\r\nContent-Type: text/plain\r\n\r\n{body}\r\n"
        )
    };
    for (form, why) in [
        (
            format!("{}{}--B--\r\n", part("file", "one"), part("file", "two")),
            "two file parts",
        ),
        (
            format!("{}{}--B--\r\n", part("file", "one"), part("", "x")),
            "a part without a name",
        ),
        (
            format!("{}--B\r\nbroken", part("file", "one")),
            "a form cut short",
        ),
    ] {
        let resp = reqwest::Client::new()
            .post(srv.http("/api/files"))
            .header("authorization", bearer("alice"))
            .header("content-type", "multipart/form-data; boundary=B")
            .body(form)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400, "{why}");
    }
    let form = format!("{}{}--B--\r\n", part("note", "x"), part("file", "kept"));
    let resp = reqwest::Client::new()
        .post(srv.http("/api/files"))
        .header("authorization", bearer("alice"))
        .header("content-type", "multipart/form-data; boundary=B")
        .body(form)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let mut kept = 0;
    for dir in std::fs::read_dir(srv.dir.path().join("files")).unwrap() {
        let dir = dir.unwrap();
        if dir.file_type().unwrap().is_dir() && dir.file_name() != "tmp" {
            kept += std::fs::read_dir(dir.path()).unwrap().count();
        }
    }
    assert_eq!(kept, 1);
    srv.stop().await;
}

async fn ranged(http: &reqwest::Client, url: &str, range: &str) -> reqwest::Response {
    http.get(url).header("range", range).send().await.unwrap()
}

/// Resident memory of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_upload_is_refused_without_the_server_holding_it() {
    let dir = tempfile::tempdir().unwrap();
    let max = 8 * 1024 * 1024;
    let server = BinServer::start(
        dir.path(),
        &[("SWITCHBOARD_FILES_MAX_BYTES", &max.to_string())],
    )
    .await;
    let base = format!("http://{}", server.addr);
    let before = rss_kib(server.pid());
    // 256 MiB, chunked (no length up front), raw and multipart: each is cut off at
    // the limit.
    let total = 256 * 1024 * 1024usize;
    let chunk = bytes::Bytes::from(vec![0u8; 1024 * 1024]);
    for multipart in [false, true] {
        let head = "--B\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big\"\r\n\r\n";
        let mut parts: Vec<Result<bytes::Bytes, std::io::Error>> = Vec::new();
        if multipart {
            parts.push(Ok(bytes::Bytes::from_static(head.as_bytes())));
        }
        parts.extend((0..total / chunk.len()).map(|_| Ok(chunk.clone())));
        let mut req = reqwest::Client::new()
            .post(format!("{base}/api/files"))
            .header("authorization", bearer("alice"))
            .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
                parts,
            )));
        req = match multipart {
            true => req.header("content-type", "multipart/form-data; boundary=B"),
            false => req
                .header("x-file-name", "big")
                .header("content-type", "application/octet-stream"),
        };
        // The server answers as soon as the limit is passed; the client may see its
        // answer or a connection closed under its remaining bytes.
        match req.send().await {
            Ok(resp) => assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE),
            Err(e) => assert!(e.is_request() || e.is_body(), "{e}"),
        }
    }
    let after = rss_kib(server.pid());
    assert!(
        after < before + 32 * 1024,
        "RSS grew from {before} KiB to {after} KiB"
    );
    // And nothing was kept.
    let tmp = std::fs::read_dir(dir.path().join("files").join("tmp"))
        .unwrap()
        .count();
    assert_eq!(tmp, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_never_shared_are_swept_and_shared_ones_stay() {
    let srv = TestServer::with(|c| c.files.orphan_ttl_secs = 1).await;
    let mut alice = srv.member("alice", "design").await;
    let (_, kept) = upload_raw(&srv, "alice", "kept.txt", "text/plain", b"k".to_vec()).await;
    let (_, orphan) = upload_raw(&srv, "alice", "orphan.txt", "text/plain", b"o".to_vec()).await;
    let kept = kept["id"].as_str().unwrap().to_string();
    let orphan = orphan["id"].as_str().unwrap().to_string();
    alice
        .send(json!({"type": "share_file", "data": {"roomId": "design", "fileId": kept}, "ref": 1}))
        .await;
    alice.next_of("ack").await;
    eventually("the orphan is swept", || async {
        srv.get_as("alice", &format!("/api/files/{orphan}/meta"))
            .await
            .0
            == 404
    })
    .await;
    let on_disk = srv
        .dir
        .path()
        .join("files")
        .join(&orphan[30..])
        .join(&orphan);
    assert!(!on_disk.exists());
    // Past another sweep, the shared file is still there.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        srv.get_as("alice", &format!("/api/files/{kept}/meta"))
            .await
            .0,
        200
    );
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_outlive_a_restart() {
    let srv = TestServer::start().await;
    let (_, file) = upload_raw(&srv, "alice", "a.txt", "text/plain", b"still here".to_vec()).await;
    let url = file["url"].as_str().unwrap().to_string();
    let srv = srv.restart().await;
    let resp = reqwest::get(srv.http(&url)).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "still here");
    srv.stop().await;
}

/// The Chromium binary: `SWITCHBOARD_CHROMIUM`, else one on the PATH.
fn chromium() -> Option<String> {
    if let Ok(path) = std::env::var("SWITCHBOARD_CHROMIUM") {
        return Some(path);
    }
    ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|name| {
            std::process::Command::new("which")
                .arg(name)
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .map(str::to_string)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_shows_a_shared_image_from_its_link() {
    let Some(browser) = chromium() else {
        // scripts/test.sh installs Chromium and sets SWITCHBOARD_CHROMIUM, so the
        // suite never skips this; a bare `cargo test` on a machine without it does.
        eprintln!("skipped: no Chromium (scripts/test.sh installs it)");
        return;
    };
    let srv = TestServer::start().await;
    let mut alice = srv.member("alice", "design").await;
    let mut bob = srv.member("bob", "design").await;
    let (_, file) = upload_form(&srv, "alice", "dot.png", "image/png", png()).await;
    alice
        .request(
            "share_file",
            json!({"roomId": "design", "fileId": file["id"]}),
        )
        .await;
    let shared = bob.next_of("new_message").await;
    let url = srv.http(shared["data"]["content"]["url"].as_str().unwrap());
    let unsigned = srv.http(&format!("/api/files/{}", file["id"].as_str().unwrap()));
    let page = format!(
        r#"<!doctype html><html><body>
<img id="signed" src="{url}" onload="document.body.dataset.signed = 'loaded ' + this.naturalWidth + 'x' + this.naturalHeight" onerror="document.body.dataset.signed = 'error'">
<img id="unsigned" src="{unsigned}" onload="document.body.dataset.unsigned = 'loaded'" onerror="document.body.dataset.unsigned = 'error'">
</body></html>"#
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("page.html");
    std::fs::write(&path, page).unwrap();
    let out = tokio::process::Command::new(&browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--virtual-time-budget=10000",
            &format!("--user-data-dir={}", dir.path().join("profile").display()),
            "--dump-dom",
            &format!("file://{}", path.display()),
        ])
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), out)
        .await
        .expect("Chromium finishes")
        .expect("Chromium runs");
    let dom = String::from_utf8_lossy(&out.stdout);
    assert!(
        dom.contains(r#"data-signed="loaded 1x1""#),
        "{dom}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(dom.contains(r#"data-unsigned="error""#), "{dom}");
    srv.stop().await;
}
