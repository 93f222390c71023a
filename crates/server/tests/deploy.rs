//! The deployment pieces as an operator uses them: deploy/haproxy.cfg and
//! deploy/nginx.conf pass their programs' own checks, and scripts/cluster.sh brings up
//! a private Redis, a database, three nodes and HAProxy; clients get in through the
//! balancer, spread over the nodes, a Socket.IO session keeps to its node; `down`
//! drains the nodes, leaves no process behind and drops the database.
//!
//! Needs haproxy, nginx, redis-server, psql and curl, and PostgreSQL at 127.0.0.1:5432
//! with trust auth for user postgres (scripts/services.sh sees to all of them).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use sqlx::{Connection, PgConnection};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const PG_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
/// The longest `up` may take (the binary is built already) and `down` (three drains).
const UP_SECS: &str = "120";
const DOWN_SECS: &str = "60";
/// The longest the whole cluster test may take; past it the cluster is taken down.
const CLUSTER_TEST: Duration = Duration::from_secs(300);

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn text(out: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs `program`, saying which package to install when it is missing.
fn run(cmd: &mut Command) -> Output {
    let program = cmd.get_program().to_string_lossy().into_owned();
    cmd.output().unwrap_or_else(|e| {
        panic!("cannot run {program}: {e} (scripts/services.sh installs what the tests need)")
    })
}

#[test]
fn haproxy_config_is_valid_as_shipped_and_as_cluster_sh_runs_it() {
    let cfg = repo().join("deploy/haproxy.cfg");
    // As shipped: the production defaults of every variable.
    let out = run(Command::new("haproxy").arg("-c").arg("-f").arg(&cfg));
    assert!(out.status.success(), "{}", text(&out));
    // As scripts/cluster.sh runs it: loopback addresses, no chroot, logs to stdout.
    let dir = tempfile::tempdir().unwrap();
    let out = run(Command::new("haproxy")
        .arg("-c")
        .arg("-f")
        .arg(&cfg)
        .env("SB_LISTEN", "127.0.0.1:18080")
        .env("SB_STATS_BIND", "127.0.0.1:18404")
        .env("SB_NODE1", "127.0.0.1:18081")
        .env("SB_NODE2", "127.0.0.1:18082")
        .env("SB_NODE3", "127.0.0.1:18083")
        .env("SB_HAPROXY_SOCKET", dir.path().join("haproxy.sock"))
        .env("SB_HAPROXY_LOG", "stdout")
        .env("SB_HAPROXY_LOG_FORMAT", "raw")
        .env("SB_NO_CHROOT", "1"));
    assert!(out.status.success(), "{}", text(&out));
    let all = text(&out);
    assert!(
        !all.contains("[WARNING]") && !all.contains("[ALERT]"),
        "{all}"
    );
}

/// deploy/nginx.conf is an http-level file (conf.d/): a main config around `include`,
/// with every path in the temporary prefix `dir`, so nginx needs nothing of /etc or
/// /var. Returns the main config's path.
fn nginx_main_conf(dir: &Path, include: &Path) -> PathBuf {
    let p = dir.display();
    let main = format!(
        "pid {p}/nginx.pid;\n\
         error_log stderr;\n\
         master_process off;\n\
         events {{}}\n\
         http {{\n\
             access_log off;\n\
             client_body_temp_path {p}/body;\n\
             proxy_temp_path {p}/proxy;\n\
             fastcgi_temp_path {p}/fastcgi;\n\
             uwsgi_temp_path {p}/uwsgi;\n\
             scgi_temp_path {p}/scgi;\n\
             include {};\n\
         }}\n",
        include.display()
    );
    let conf = dir.join("main.conf");
    std::fs::write(&conf, main).unwrap();
    conf
}

fn nginx(dir: &Path, conf: &Path) -> Command {
    let mut cmd = Command::new("nginx");
    cmd.arg("-p")
        .arg(dir)
        .arg("-e")
        .arg("stderr")
        .arg("-c")
        .arg(conf);
    cmd
}

#[test]
fn nginx_config_is_valid_inside_a_main_config() {
    let dir = tempfile::tempdir().unwrap();
    let include = repo().join("deploy/nginx.conf").canonicalize().unwrap();
    let conf = nginx_main_conf(dir.path(), &include);
    let out = run(nginx(dir.path(), &conf).arg("-t"));
    assert!(out.status.success(), "{}", text(&out));
    let all = text(&out);
    assert!(all.contains("test is successful"), "{all}");
    assert!(!all.contains("[warn]") && !all.contains("[emerg]"), "{all}");
}

/// scripts/cluster.sh with ports, a state dir and a database of this test's own; runs
/// `down` when dropped, so a failing test leaves nothing running.
struct Cluster {
    env: Vec<(&'static str, String)>,
    dir: tempfile::TempDir,
    db: String,
    port: u16,
    node_ports: [u16; 3],
    down: bool,
}

impl Cluster {
    fn new() -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let db = format!("sb_deploy_{}", uuid::Uuid::new_v4().simple());
        let port = free_port();
        let node_ports = [free_port(), free_port(), free_port()];
        let env = vec![
            ("SB_CLUSTER_DIR", dir.path().display().to_string()),
            ("SB_CLUSTER_PORT", port.to_string()),
            ("SB_CLUSTER_STATS_PORT", free_port().to_string()),
            (
                "SB_CLUSTER_NODE_PORTS",
                node_ports.map(|p| p.to_string()).join(" "),
            ),
            ("SB_CLUSTER_REDIS_PORT", free_port().to_string()),
            ("SB_CLUSTER_DB", db.clone()),
            (
                "SB_CLUSTER_BIN",
                env!("CARGO_BIN_EXE_switchboard").to_string(),
            ),
            ("SB_CLUSTER_WAIT_SECS", "60".to_string()),
        ];
        Cluster {
            env,
            dir,
            db,
            port,
            node_ports,
            down: false,
        }
    }

    /// `scripts/cluster.sh <what>`, bounded by `timeout`.
    fn script(&self, what: &str, secs: &str) -> Output {
        let mut cmd = Command::new("timeout");
        cmd.arg(secs)
            .arg(repo().join("scripts/cluster.sh"))
            .arg(what);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        run(&mut cmd)
    }

    fn pid(&self, name: &str) -> u32 {
        let file = self.dir.path().join(format!("{name}.pid"));
        std::fs::read_to_string(&file)
            .unwrap_or_else(|e| panic!("{}: {e}", file.display()))
            .trim()
            .parse()
            .unwrap()
    }

    fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(name))
            .unwrap()
            .trim()
            .to_string()
    }

    /// A token for `sub` from the binary, signed with the cluster's generated secret.
    fn token(&self, sub: &str) -> String {
        let out = run(Command::new(env!("CARGO_BIN_EXE_switchboard"))
            .args(["token", "--sub", sub])
            .env("SWITCHBOARD_JWT_SECRET", self.read("jwt-secret")));
        assert!(out.status.success(), "{}", text(&out));
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }

    fn url(&self, path: &str) -> String {
        format!("127.0.0.1:{}{path}", self.port)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if !self.down {
            let out = self.script("down", DOWN_SECS);
            if !out.status.success() {
                eprintln!("cluster.sh down after a failure: {}", text(&out));
            }
        }
    }
}

/// deploy/nginx.conf in front of the cluster's nodes, its addresses and ports
/// replaced by the test's; stopped when dropped.
struct Nginx {
    child: std::process::Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Nginx {
    async fn start(node_ports: &[u16; 3]) -> Nginx {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let mut conf = std::fs::read_to_string(repo().join("deploy/nginx.conf")).unwrap();
        let mut swap = |from: &str, to: String| {
            assert!(conf.contains(from), "deploy/nginx.conf has {from}");
            conf = conf.replace(from, &to);
        };
        swap("listen [::]:80;", String::new());
        swap("listen 80;", format!("listen 127.0.0.1:{port};"));
        swap(
            "listen 127.0.0.1:8404;",
            format!("listen 127.0.0.1:{};", free_port()),
        );
        for (i, p) in node_ports.iter().enumerate() {
            swap(&format!("10.0.0.1{}:8080", i + 1), format!("127.0.0.1:{p}"));
        }
        let include = dir.path().join("switchboard.conf");
        std::fs::write(&include, conf).unwrap();
        let main = nginx_main_conf(dir.path(), &include);
        // In the foreground, one process (master_process off): killing it stops nginx.
        let child = nginx(dir.path(), &main)
            .args(["-g", "daemon off;"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("nginx starts");
        let nginx = Nginx {
            child,
            port,
            _dir: dir,
        };
        wait_healthy(&format!("127.0.0.1:{port}")).await;
        nginx
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// True while process `pid` exists and is not a zombie (exited, not yet reaped).
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/status")) {
        Ok(status) => !status
            .lines()
            .any(|l| l.starts_with("State:") && l.contains('Z')),
        Err(_) => false,
    }
}

async fn database_exists(name: &str) -> bool {
    let mut admin = PgConnection::connect(PG_ADMIN_URL)
        .await
        .expect("PostgreSQL at 127.0.0.1:5432");
    let found: Option<i32> = sqlx::query_scalar("SELECT 1 FROM pg_database WHERE datname = $1")
        .bind(name)
        .fetch_optional(&mut admin)
        .await
        .unwrap();
    let _ = admin.close().await;
    found.is_some()
}

/// Socket.IO over long-polling through the balancer: the handshake, a namespace
/// CONNECT, a poll and the upgrade to WebSocket all reach the node that made the
/// session (another would answer 400, unknown session), thanks to the cookie HAProxy
/// set on the handshake.
async fn socketio_session_keeps_to_its_node(cluster: &Cluster, token: &str) {
    let http = reqwest::Client::builder().timeout(WAIT).build().unwrap();
    let base = format!(
        "http://{}",
        cluster.url("/socket.io/?EIO=4&transport=polling")
    );
    let res = http.get(&base).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let cookie = res
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with("SBNODE="))
        .expect("HAProxy names the node in a cookie")
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let body = res.text().await.unwrap();
    let open: Value = serde_json::from_str(body.strip_prefix('0').unwrap()).unwrap();
    let sid = open["sid"].as_str().unwrap().to_string();
    let session = format!("{base}&sid={sid}");

    let res = http
        .post(&session)
        .header("cookie", &cookie)
        .body(format!("40{}", json!({ "token": token })))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "{:?}", res.text().await);
    let res = http
        .get(&session)
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let poll = res.text().await.unwrap();
    assert!(
        poll.starts_with("40"),
        "the namespace CONNECT answer: {poll}"
    );

    let mut req = format!(
        "ws://{}",
        cluster.url(&format!("/socket.io/?EIO=4&transport=websocket&sid={sid}"))
    )
    .into_client_request()
    .unwrap();
    req.headers_mut().insert("cookie", cookie.parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(req)
        .await
        .expect("the upgrade reaches the session's node");
    ws.send(Message::text("2probe")).await.unwrap();
    loop {
        let msg = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("the probe is answered")
            .expect("open")
            .unwrap();
        if let Message::Text(t) = msg {
            assert_eq!(t.as_str(), "3probe");
            break;
        }
    }
    ws.send(Message::text("5")).await.unwrap();
    let _ = ws.close(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_sh_runs_three_nodes_behind_haproxy_and_cleans_up() {
    // Every command is bounded on its own; this bounds the whole, and a timeout drops
    // the scenario's Cluster, which runs `down`.
    tokio::time::timeout(CLUSTER_TEST, cluster_scenario())
        .await
        .expect("the cluster test finishes in time");
}

async fn cluster_scenario() {
    let mut cluster = Cluster::new();

    let out = cluster.script("up", UP_SECS);
    assert!(out.status.success(), "up: {}", text(&out));
    let out = cluster.script("up", UP_SECS);
    assert!(out.status.success(), "up again: {}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("already up"),
        "{}",
        text(&out)
    );
    let pids: Vec<u32> = ["node-1", "node-2", "node-3", "haproxy", "redis"]
        .iter()
        .map(|name| cluster.pid(name))
        .collect();
    assert!(pids.iter().all(|&p| alive(p)), "{pids:?}");
    assert!(database_exists(&cluster.db).await);

    // Three WebSocket clients through the balancer, all greeted; leastconn puts one
    // on each node.
    let token = cluster.token("alice");
    let mut clients = Vec::new();
    for _ in 0..3 {
        let mut c = Client::connect(&format!(
            "ws://{}",
            cluster.url(&format!("/ws?token={token}"))
        ))
        .await;
        c.next_of("connected").await;
        clients.push(c);
    }
    let out = cluster.script("status", "30");
    let status = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "status: {}", text(&out));
    for (i, port) in cluster.node_ports.iter().enumerate() {
        let line = status
            .lines()
            .find(|l| l.starts_with(&format!("node-{}", i + 1)))
            .unwrap_or_else(|| panic!("node-{} in {status}", i + 1));
        assert!(line.contains(&format!("127.0.0.1:{port}")), "{line}");
        assert!(
            line.contains("health 200") && line.contains("ready 200"),
            "{line}"
        );
        assert!(
            line.contains("connections 1"),
            "one client per node: {status}"
        );
    }
    assert!(status.contains("nodes up 3/3"), "{status}");

    socketio_session_keeps_to_its_node(&cluster, &token).await;

    // deploy/nginx.conf in front of the same nodes: the WebSocket upgrade and an SSE
    // stream pass through.
    {
        let nginx = Nginx::start(&cluster.node_ports).await;
        let mut c =
            Client::connect(&format!("ws://127.0.0.1:{}/ws?token={token}", nginx.port)).await;
        c.next_of("connected").await;
        let url = format!(
            "http://127.0.0.1:{}/events?channels=general&token={token}",
            nginx.port
        );
        let mut sse = SseClient::open_url(&url, None).await;
        sse.next_of("connected").await;
    }

    // Down: every node drains (its clients see 1012, through the balancer), nothing
    // is left running and the database is gone.
    let out = cluster.script("down", DOWN_SECS);
    cluster.down = true;
    assert!(out.status.success(), "down: {}", text(&out));
    for c in &mut clients {
        let (code, _) = c.expect_close().await;
        assert_eq!(code, 1012);
    }
    let left: Vec<u32> = pids.iter().copied().filter(|&p| alive(p)).collect();
    assert!(left.is_empty(), "still running: {left:?}\n{}", text(&out));
    assert!(
        !database_exists(&cluster.db).await,
        "the database is dropped"
    );
}
