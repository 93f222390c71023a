//! A real cluster for tests: nodes of the `switchboard` binary joined by a real Redis
//! and a fresh PostgreSQL database, and HAProxy in front.
//!
//! Redis: the shared one (127.0.0.1:6379) under a key prefix of the test's own, or a
//! private `redis-server` the test may stop and start. PostgreSQL: a fresh database on
//! the local server (127.0.0.1:5432, user postgres), dropped at the end; a test that
//! restarts PostgreSQL runs a private server of its own ([`PrivatePostgres`]).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{API_KEY, SECRET, WAIT, free_port, wait_healthy};

pub const SHARED_REDIS: &str = "redis://127.0.0.1:6379";
const PG: &str = "postgres://postgres@127.0.0.1:5432";

/// Runs `sql` on the local PostgreSQL server's `test` database.
fn psql(url: &str, sql: &str) {
    let out = Command::new("psql")
        .args([url, "-v", "ON_ERROR_STOP=1", "-q", "-c", sql])
        .output()
        .expect("psql runs");
    assert!(
        out.status.success(),
        "psql {sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A fresh database, dropped when this is.
pub struct Database {
    pub url: String,
    server: String,
    name: String,
}

impl Database {
    pub fn create() -> Database {
        Database::create_on(PG)
    }

    /// A fresh database on the server at `server` (`postgres://user@host:port`).
    pub fn create_on(server: &str) -> Database {
        let name = format!("sb_{}", uuid::Uuid::new_v4().simple());
        psql(
            &format!("{server}/postgres"),
            &format!("CREATE DATABASE {name}"),
        );
        Database {
            url: format!("{server}/{name}"),
            server: server.to_string(),
            name,
        }
    }

    /// Runs `sql` in this database.
    pub fn sql(&self, sql: &str) -> String {
        let out = Command::new("psql")
            .args([&self.url, "-At", "-q", "-c", sql])
            .output()
            .expect("psql runs");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        let _ = Command::new("psql")
            .args([
                &format!("{}/postgres", self.server),
                "-q",
                "-c",
                &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
            ])
            .output();
    }
}

/// A `redis-server` of the test's own, which it may stop and start again (on the same
/// port, empty: it keeps nothing on disk).
pub struct PrivateRedis {
    pub port: u16,
    child: Option<Child>,
}

impl PrivateRedis {
    pub async fn start() -> PrivateRedis {
        let mut r = PrivateRedis {
            port: free_port(),
            child: None,
        };
        r.up().await;
        r
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub async fn up(&mut self) {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        self.child = Some(child);
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let pong = Command::new("redis-cli")
                .args(["-p", &self.port.to_string(), "ping"])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).contains("PONG"))
                .unwrap_or(false);
            if pong {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "redis did not start"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Kills it (as a crash would).
    pub fn down(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Runs a command on it with redis-cli; its output.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .arg("-p")
            .arg(self.port.to_string())
            .args(args)
            .output()
            .expect("redis-cli runs");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.down();
    }
}

/// A PostgreSQL server of the test's own (initdb into a temporary directory, run as
/// the `postgres` user), which it may stop and start again with its data.
pub struct PrivatePostgres {
    pub port: u16,
    dir: PathBuf,
    _tmp: tempfile::TempDir,
}

fn pg_bin(tool: &str) -> PathBuf {
    let base = Path::new("/usr/lib/postgresql");
    let mut versions: Vec<_> = std::fs::read_dir(base)
        .expect("PostgreSQL is installed")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    versions.sort();
    versions
        .pop()
        .expect("a PostgreSQL version")
        .join("bin")
        .join(tool)
}

fn as_postgres(program: PathBuf, args: &[&str]) -> std::process::Output {
    Command::new("runuser")
        .args(["-u", "postgres", "--"])
        .arg(program)
        .args(args)
        .output()
        .expect("runuser runs")
}

impl PrivatePostgres {
    pub async fn start() -> PrivatePostgres {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("pg");
        std::fs::create_dir(&dir).unwrap();
        // The server runs as `postgres`, which must own its directory.
        Command::new("chown")
            .args(["-R", "postgres", tmp.path().to_str().unwrap()])
            .status()
            .unwrap();
        Command::new("chmod")
            .args(["755", tmp.path().to_str().unwrap()])
            .status()
            .unwrap();
        let out = as_postgres(
            pg_bin("initdb"),
            &["-D", dir.to_str().unwrap(), "-A", "trust", "-U", "postgres"],
        );
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let pg = PrivatePostgres {
            port: free_port(),
            dir,
            _tmp: tmp,
        };
        pg.up().await;
        pg
    }

    pub fn server(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}", self.port)
    }

    pub async fn up(&self) {
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.dir.display()
        );
        let log = self.dir.join("log");
        let out = as_postgres(
            pg_bin("pg_ctl"),
            &[
                "-D",
                self.dir.to_str().unwrap(),
                "-o",
                &opts,
                "-l",
                log.to_str().unwrap(),
                "-w",
                "start",
            ],
        );
        assert!(
            out.status.success(),
            "pg_ctl start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Stops it at once (`immediate`: like a crash, but it comes back with its data).
    pub fn down(&self) {
        let _ = as_postgres(
            pg_bin("pg_ctl"),
            &[
                "-D",
                self.dir.to_str().unwrap(),
                "-m",
                "immediate",
                "-w",
                "stop",
            ],
        );
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        self.down();
    }
}

/// One node: the real binary on a free port.
pub struct Node {
    pub name: String,
    pub addr: SocketAddr,
    child: Option<Child>,
    env: Vec<(String, String)>,
    dir: PathBuf,
}

impl Node {
    pub fn http(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn ws(&self, token: &str) -> String {
        format!("ws://{}/ws?token={token}", self.addr)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn signal(&self, signal: &str) {
        if let Some(pid) = self.pid() {
            let _ = Command::new("kill")
                .args([signal, &pid.to_string()])
                .status();
        }
    }

    /// Waits for the process to end (after a signal).
    pub async fn wait_exit(&mut self) -> Option<std::process::ExitStatus> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let child = self.child.as_mut()?;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return Some(status);
            }
            assert!(tokio::time::Instant::now() < deadline, "node did not exit");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Starts (again) on the same port and data dir.
    pub async fn start(&mut self) {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_switchboard"));
        cmd.arg("serve")
            .env("SWITCHBOARD_LISTEN", self.addr.to_string())
            .env("SWITCHBOARD_DATA_DIR", &self.dir)
            .env("SWITCHBOARD_NODE_ID", &self.name)
            .env("SWITCHBOARD_JWT_SECRET", SECRET)
            .env("SWITCHBOARD_API_KEY", API_KEY)
            .env("SWITCHBOARD_LOG", "warn")
            .stdout(Stdio::null());
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        self.child = Some(cmd.spawn().expect("the binary starts"));
        wait_healthy(&self.addr.to_string()).await;
    }

    /// Waits until `/ready` answers `status`.
    pub async fn wait_ready(&self, status: u16) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let got = reqwest::get(self.http("/ready"))
                .await
                .map(|r| r.status().as_u16())
                .unwrap_or(0);
            if got == status {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{}: /ready stayed {got}, wanted {status}",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// HAProxy in front of the nodes: round robin, health checks on `/ready`.
pub struct Balancer {
    pub addr: SocketAddr,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Balancer {
    pub async fn start(nodes: &[&Node]) -> Balancer {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let servers: String = nodes
            .iter()
            .map(|n| format!("  server {} {} check\n", n.name, n.addr))
            .collect();
        let config = format!(
            "global\n  maxconn 8000\n\
             defaults\n  mode http\n  timeout connect 2s\n  timeout client 1h\n  \
             timeout server 1h\n  timeout tunnel 1h\n  option redispatch\n  retries 2\n\
             frontend fe\n  bind 127.0.0.1:{port}\n  default_backend nodes\n\
             backend nodes\n  balance roundrobin\n  option httpchk GET /ready\n  \
             http-check expect status 200\n  default-server inter 200ms fall 1 rise 1\n{servers}"
        );
        let path = dir.path().join("haproxy.cfg");
        std::fs::write(&path, config).unwrap();
        let child = Command::new(haproxy())
            .args(["-db", "-f", path.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("haproxy starts");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let b = Balancer {
            addr,
            child,
            _dir: dir,
        };
        // Up once it passes a request through to a ready node.
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let ok = reqwest::get(b.http("/ready"))
                .await
                .is_ok_and(|r| r.status() == 200);
            if ok {
                return b;
            }
            assert!(tokio::time::Instant::now() < deadline, "haproxy not up");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn http(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn ws(&self, token: &str) -> String {
        format!("ws://{}/ws?token={token}", self.addr)
    }
}

fn haproxy() -> String {
    std::env::var("SWITCHBOARD_HAPROXY").unwrap_or_else(|_| "haproxy".into())
}

impl Drop for Balancer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Nodes sharing a Redis and a database.
pub struct Cluster {
    pub nodes: Vec<Node>,
    pub prefix: String,
    _dirs: tempfile::TempDir,
}

impl Cluster {
    /// `n` nodes on `redis` (a URL) and `database`, with `env` on top of the defaults.
    pub async fn start(n: usize, redis: &str, database: &str, env: &[(&str, &str)]) -> Cluster {
        let dirs = tempfile::tempdir().unwrap();
        let prefix = format!("sbt{}:", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let mut base: Vec<(String, String)> = vec![
            ("SWITCHBOARD_REDIS_URL".into(), redis.into()),
            ("SWITCHBOARD_DATABASE_URL".into(), database.into()),
            ("SWITCHBOARD_REDIS_PREFIX".into(), prefix.clone()),
            ("SWITCHBOARD_DRAIN_TIMEOUT_SECS".into(), "5".into()),
        ];
        base.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let mut nodes = Vec::new();
        for i in 1..=n {
            let dir = dirs.path().join(format!("node-{i}"));
            let mut node = Node {
                name: format!("node-{i}"),
                addr: format!("127.0.0.1:{}", free_port()).parse().unwrap(),
                child: None,
                env: base.clone(),
                dir,
            };
            node.start().await;
            nodes.push(node);
        }
        for node in &nodes {
            node.wait_ready(200).await;
        }
        Cluster {
            nodes,
            prefix,
            _dirs: dirs,
        }
    }

    pub fn node(&self, i: usize) -> &Node {
        &self.nodes[i]
    }

    pub async fn balancer(&self) -> Balancer {
        let nodes: Vec<&Node> = self.nodes.iter().collect();
        Balancer::start(&nodes).await
    }
}
