//! Smoke tests: each scenario, small and short, against a real server started in
//! this process. They check the accounting (nothing lost, figures present), never
//! timings. `connect` and `fanout` run over Socket.IO (`--proto socketio`) too.

use std::net::SocketAddr;
use std::time::Duration;

use switchboard::{Config, Server};
use switchboard_bench::connect::{self, ConnectOptions};
use switchboard_bench::durable::{self, DurableOptions};
use switchboard_bench::echo::{self, EchoOptions};
use switchboard_bench::fanout::{self, FanoutOptions};
use switchboard_bench::{BenchError, Proto, Report, Target, TargetArgs};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const SECRET: &str = "smoke-secret";

/// A server on a free loopback port with its own data dir and no rate limit.
struct TestServer {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl TestServer {
    async fn start() -> TestServer {
        TestServer::start_with(|_| {}).await
    }

    async fn start_with(configure: impl FnOnce(&mut Config)) -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            data_dir: dir.path().to_path_buf(),
            drain_timeout_secs: 5,
            ..Config::default()
        };
        cfg.auth.jwt_secret = Some(SECRET.into());
        cfg.rate_limit.per_sec = 0;
        configure(&mut cfg);
        let server = Server::builder().config(cfg).bind().await.unwrap();
        let addr = server.local_addr();
        let (tx, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(server.run_until(async {
            let _ = rx.await;
        }));
        TestServer {
            addr,
            stop: Some(tx),
            handle: Some(handle),
            _dir: dir,
        }
    }

    fn url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    async fn target(&self) -> Target {
        Target::resolve(&TargetArgs::new(self.url(), SECRET))
            .await
            .unwrap()
    }

    fn socketio_url(&self) -> String {
        format!("ws://{}/socket.io/", self.addr)
    }

    async fn socketio_target(&self) -> Target {
        let args = TargetArgs::new(self.socketio_url(), SECRET).with_proto(Proto::SocketIo);
        Target::resolve(&args).await.unwrap()
    }

    async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.handle.take() {
            tokio::time::timeout(Duration::from_secs(10), h)
                .await
                .expect("the server stops")
                .unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_opens_holds_and_measures_the_server() {
    let server = TestServer::start().await;
    let opts = ConnectOptions {
        connections: 20,
        hold: 0.5,
        server_pid: None,
    };
    let r = connect::run(&server.target().await, &opts, false)
        .await
        .unwrap();
    assert_eq!((r.opened, r.failed, r.dropped), (20, 0, 0), "{r}");
    assert_eq!(r.connect_latency.unwrap().count, 20);
    assert!(r.connects_per_sec > 0.0);
    // The server runs in this process: found by its port.
    assert_eq!(r.server_pid, Some(std::process::id()));
    assert!(r.rss_before_bytes.is_some() && r.rss_per_connection_bytes.is_some());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_counts_refused_tokens_as_failures() {
    let server = TestServer::start().await;
    let target = Target::resolve(&TargetArgs::new(server.url(), "wrong-secret"))
        .await
        .unwrap();
    let opts = ConnectOptions {
        connections: 3,
        hold: 0.0,
        server_pid: None,
    };
    let r = connect::run(&target, &opts, false).await.unwrap();
    assert_eq!((r.opened, r.failed), (0, 3));
    assert!(r.first_error.unwrap().contains("1008"));
    server.stop().await;
}

fn fanout_options() -> FanoutOptions {
    FanoutOptions {
        subscribers: 20,
        publishers: 2,
        rate: 100.0,
        duration: 1.0,
        size: 32,
        max: false,
        window: 16,
        grace: 5.0,
        room: None,
        phase_command: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_at_a_rate_delivers_everything() {
    let server = TestServer::start().await;
    let r = fanout::run(&server.target().await, &fanout_options(), false)
        .await
        .unwrap();
    assert!(r.sent > 0, "{r}");
    assert_eq!(r.loss.expected, r.sent * 20);
    assert_eq!(
        (r.loss.lost, r.duplicates, r.dropped, r.errors),
        (0, 0, 0, 0),
        "{r}"
    );
    assert_eq!(r.loss.delivered, r.loss.expected);
    assert_eq!(r.publisher_echoes, r.sent, "each publisher sees its own");
    let latency = r.latency.expect("latency recorded");
    assert_eq!(latency.count, r.loss.delivered);
    assert!(latency.p50_us <= latency.p99_us && latency.p99_us <= latency.max_us);
    assert!(r.deliveries_per_sec > 0.0);

    let json: serde_json::Value = serde_json::from_str(&Report::Fanout(r).to_json()).unwrap();
    assert_eq!(json["scenario"], "fanout");
    assert_eq!(json["lost"], 0);
    assert!(json["latency"]["p99_us"].is_u64());
    // The native report is as it was before Socket.IO: no protocol, no acks.
    assert!(
        json.get("proto").is_none() && json.get("acks").is_none(),
        "{json}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_max_keeps_a_window_and_loses_nothing() {
    let server = TestServer::start().await;
    let opts = FanoutOptions {
        subscribers: 10,
        publishers: 1,
        max: true,
        window: 4,
        ..fanout_options()
    };
    let r = fanout::run(&server.target().await, &opts, false)
        .await
        .unwrap();
    assert!(r.sent > 0, "{r}");
    assert_eq!((r.loss.lost, r.duplicates, r.dropped), (0, 0, 0), "{r}");
    assert_eq!(r.loss.delivered, r.sent * 10);
    assert_eq!((r.target_rate, r.window), (None, Some(4)));
    assert!(r.latency.is_some());
    server.stop().await;
}

/// Connections go round robin over a list of URLs: with the second server gone, every
/// other connection fails; and the memory of one server is not passed off as the run's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_of_urls_spreads_the_connections() {
    let server = TestServer::start().await;
    let gone = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let urls = format!("{},ws://{gone}/ws", server.url());
    let mut args = TargetArgs::new(urls, SECRET);
    args.connect_timeout = 2.0;
    let target = Target::resolve(&args).await.unwrap();
    let opts = ConnectOptions {
        connections: 10,
        hold: 0.0,
        server_pid: None,
    };
    let r = connect::run(&target, &opts, false).await.unwrap();
    assert_eq!((r.opened, r.failed), (5, 5), "{r}");
    assert_eq!((r.server_pid, r.rss_per_connection_bytes), (None, None));
    let with_pid = ConnectOptions {
        server_pid: Some(std::process::id()),
        ..opts
    };
    assert!(matches!(
        connect::run(&target, &with_pid, false).await,
        Err(BenchError::Options(_))
    ));

    // The same server twice: a fan-out over the list delivers everything.
    let twice = format!("{},{}", server.url(), server.url());
    let target = Target::resolve(&TargetArgs::new(twice, SECRET))
        .await
        .unwrap();
    let r = fanout::run(&target, &fanout_options(), false)
        .await
        .unwrap();
    assert!(r.sent > 0, "{r}");
    assert_eq!((r.loss.lost, r.dropped, r.errors), (0, 0, 0), "{r}");
    assert_eq!(r.publisher_echoes, r.sent);
    server.stop().await;
}

/// `--phase-command` runs when everyone has joined and when everything has arrived; a
/// failing one fails the run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_runs_the_phase_command_at_both_ends() {
    let server = TestServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("phases");
    let opts = FanoutOptions {
        subscribers: 5,
        phase_command: Some(format!("echo >>'{}'", log.display())),
        ..fanout_options()
    };
    let r = fanout::run(&server.target().await, &opts, false)
        .await
        .unwrap();
    assert_eq!((r.loss.lost, r.errors), (0, 0), "{r}");
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "joined\nsettled\n");

    let failing = FanoutOptions {
        phase_command: Some("false".into()),
        ..opts
    };
    let err = fanout::run(&server.target().await, &failing, false)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            BenchError::PhaseCommand {
                moment: "joined",
                ..
            }
        ),
        "{err}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_round_trips() {
    let server = TestServer::start().await;
    let opts = EchoOptions {
        connections: 20,
        duration: 1.0,
    };
    let r = echo::run(&server.target().await, &opts, false)
        .await
        .unwrap();
    assert!(r.pings > 0, "{r}");
    assert_eq!((r.timeouts, r.dropped), (0, 0), "{r}");
    assert_eq!(r.rtt.unwrap().count, r.pings);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_acks_every_send() {
    let server = TestServer::start().await;
    let opts = DurableOptions {
        publishers: 2,
        window: 8,
        duration: 1.0,
        size: 32,
        grace: 5.0,
    };
    let r = durable::run(&server.target().await, &opts, false)
        .await
        .unwrap();
    assert!(r.sent > 0, "{r}");
    assert_eq!(r.acked, r.sent, "{r}");
    assert_eq!((r.unacked, r.errors, r.dropped), (0, 0, 0), "{r}");
    assert_eq!(r.ack_latency.unwrap().count, r.acked);
    assert!(r.acked_per_sec > 0.0);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setup_failures_name_the_cause() {
    let server = TestServer::start().await;
    let target = Target::resolve(&TargetArgs::new(server.url(), "wrong-secret"))
        .await
        .unwrap();
    let err = echo::run(
        &target,
        &EchoOptions {
            connections: 2,
            duration: 1.0,
        },
        false,
    )
    .await
    .unwrap_err();
    assert!(matches!(err, BenchError::Setup { failed: 2, .. }), "{err}");
    assert!(err.to_string().contains("Authentication failed"), "{err}");
    server.stop().await;
}

/// The binary end to end: flags parse, and `--json` prints one JSON line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_prints_one_json_line() {
    let server = TestServer::start().await;
    let url = server.url();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_switchboard-bench"))
            .args(["echo", "-n", "2", "-d", "0.5", "--json", "--url", &url])
            .args(["--jwt-secret", SECRET])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    let json: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(json["scenario"], "echo");
    assert!(json["pings"].as_u64().unwrap() > 0);
    server.stop().await;
}

#[test]
fn every_scenario_documents_its_flags() {
    let flags: &[(&str, &[&str])] = &[
        (
            "connect",
            &["--connections", "--hold", "--server-pid", "--proto"],
        ),
        (
            "fanout",
            &[
                "--subscribers",
                "--publishers",
                "--rate",
                "--duration",
                "--size",
                "--max",
                "--window",
                "--grace",
                "--room",
                "--proto",
            ],
        ),
        ("echo", &["--connections", "--duration"]),
        (
            "durable",
            &[
                "--publishers",
                "--window",
                "--duration",
                "--size",
                "--grace",
            ],
        ),
    ];
    let common = [
        "--url",
        "--jwt-secret",
        "--connect-concurrency",
        "--connect-timeout",
        "--no-spread",
        "--json",
        "--quiet",
    ];
    for (scenario, own) in flags {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_switchboard-bench"))
            .args([scenario, "--help"])
            .output()
            .unwrap();
        assert!(out.status.success());
        let help = String::from_utf8(out.stdout).unwrap();
        for flag in own.iter().chain(&common) {
            assert!(
                help.contains(flag),
                "{scenario} --help lacks {flag}:\n{help}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_count_what_each_join_costs() {
    let server = TestServer::start().await;
    let opts = switchboard_bench::rooms::RoomsOptions {
        big: 30,
        rooms: 4,
        size: 3,
        settle: 0.2,
        server_pid: None,
    };
    let r = switchboard_bench::rooms::run(&server.target().await, &opts, false)
        .await
        .unwrap();
    assert_eq!(r.big.connections, 30);
    assert_eq!((r.small.connections, r.small.rooms), (12, 4));
    // Every join is answered, and the others in a small room hear of it: at least the
    // reply, at most the reply plus one announcement per member.
    assert!(r.big.frames_per_join >= 1.0, "{r:?}");
    assert!(
        (1.0..=3.0).contains(&r.small.frames_per_join),
        "{}",
        r.small.frames_per_join
    );
    assert!(r.big.largest_frame_bytes > 0 && r.big.bytes_per_join > 0.0);
    let json = Report::Rooms(r).to_json();
    assert!(json.contains("\"scenario\":\"rooms\""), "{json}");
    server.stop().await;
}

/// A server whose Socket.IO heartbeat is fast: a bench connection that did not answer
/// the Engine.IO pings would be closed within a second (a ping every 100 ms, 700 ms
/// for its pong: room for a loaded CI machine).
async fn socketio_server() -> TestServer {
    TestServer::start_with(|cfg| {
        cfg.socketio.ping_interval_ms = 100;
        cfg.socketio.ping_timeout_ms = 700;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socketio_connect_opens_holds_and_answers_pings() {
    let server = socketio_server().await;
    let opts = ConnectOptions {
        connections: 20,
        hold: 1.5,
        server_pid: None,
    };
    let r = connect::run(&server.socketio_target().await, &opts, false)
        .await
        .unwrap();
    assert_eq!((r.opened, r.failed, r.dropped), (20, 0, 0), "{r}");
    assert_eq!(r.proto, Proto::SocketIo);
    assert_eq!(r.connect_latency.unwrap().count, 20);
    assert_eq!(r.server_pid, Some(std::process::id()));
    assert!(r.rss_per_connection_bytes.is_some());
    assert!(
        r.to_string()
            .starts_with("connect: 20 connections over socketio")
    );
    let json: serde_json::Value = serde_json::from_str(&Report::Connect(r).to_json()).unwrap();
    assert_eq!(json["proto"], "socketio");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socketio_connect_counts_refused_tokens_as_failures() {
    let server = TestServer::start().await;
    let args = TargetArgs::new(server.socketio_url(), "wrong-secret").with_proto(Proto::SocketIo);
    let opts = ConnectOptions {
        connections: 3,
        hold: 0.0,
        server_pid: None,
    };
    let r = connect::run(&Target::resolve(&args).await.unwrap(), &opts, false)
        .await
        .unwrap();
    assert_eq!((r.opened, r.failed), (0, 3));
    let error = r.first_error.unwrap();
    assert!(error.contains("Authentication failed"), "{error}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socketio_fanout_delivers_and_acks_everything() {
    let server = socketio_server().await;
    let target = server.socketio_target().await;
    // At a rate (a second and a half: the server pings every 100 ms), then the peak.
    let opts = FanoutOptions {
        duration: 1.5,
        ..fanout_options()
    };
    let r = fanout::run(&target, &opts, false).await.unwrap();
    assert!(r.sent > 0, "{r}");
    assert_eq!(r.loss.expected, r.sent * 20);
    assert_eq!(r.loss.delivered, r.loss.expected, "{r}");
    assert_eq!(
        (r.loss.lost, r.duplicates, r.dropped, r.errors),
        (0, 0, 0, 0),
        "{r}"
    );
    assert_eq!(r.publisher_echoes, r.sent, "{r}");
    assert_eq!(r.acks, Some(r.sent), "every send is acked");
    assert_eq!(r.latency.unwrap().count, r.loss.delivered);
    let json: serde_json::Value = serde_json::from_str(&Report::Fanout(r).to_json()).unwrap();
    assert_eq!(
        (&json["proto"], &json["lost"]),
        (&"socketio".into(), &0.into())
    );

    let opts = FanoutOptions {
        subscribers: 10,
        publishers: 1,
        max: true,
        window: 4,
        ..fanout_options()
    };
    let r = fanout::run(&target, &opts, false).await.unwrap();
    assert!(r.sent > 0, "{r}");
    assert_eq!(
        (r.loss.lost, r.duplicates, r.dropped, r.errors),
        (0, 0, 0, 0),
        "{r}"
    );
    assert_eq!(r.loss.delivered, r.sent * 10);
    assert_eq!(r.acks, Some(r.sent));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socketio_is_for_connect_and_fanout_only() {
    let server = TestServer::start().await;
    let err = echo::run(
        &server.socketio_target().await,
        &EchoOptions {
            connections: 1,
            duration: 1.0,
        },
        false,
    )
    .await
    .unwrap_err();
    assert!(matches!(err, BenchError::Options(_)), "{err}");
    server.stop().await;
}

/// `--proto socketio` through the binary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_speaks_socketio() {
    let server = TestServer::start().await;
    let url = server.socketio_url();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_switchboard-bench"))
            .args(["fanout", "--proto", "socketio", "-n", "3", "--rate", "50"])
            .args(["-d", "0.5", "--json", "--url", &url, "--jwt-secret", SECRET])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["proto"], "socketio");
    assert!(json["sent"].as_u64().unwrap() > 0);
    assert_eq!(json["lost"], 0);
    server.stop().await;
}
