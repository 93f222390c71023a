//! `connect`: open N idle authenticated connections and hold them; the connect rate,
//! the failures, and the server's resident memory per connection. Over Socket.IO
//! (`--proto socketio`) a connection is open once its `connected` event arrives, and
//! held connections answer the server's Engine.IO pings.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use tokio::sync::{Semaphore, mpsc};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use crate::report::{bytes, latency_line};
use crate::stats::{Latency, LatencySummary, per_sec};
use crate::target::{Proto, Target, Ws, close};
use crate::{BenchError, process, progress, seconds, sio};

/// Idle connections read little: a small read buffer keeps the bench's own memory
/// at ~15k connections well under a gigabyte.
const IDLE_READ_BUFFER: usize = 4096;

#[derive(clap::Args, Debug, Clone)]
pub struct ConnectOptions {
    /// Connections to open (each is one file descriptor here and one on the server;
    /// the open-files limit is raised to its hard limit at start).
    #[arg(long, short = 'n', default_value_t = 1000)]
    pub connections: usize,
    /// Seconds to hold the connections open after the last attempt; the server's RSS
    /// "after" is sampled at the end of the hold. RSS seldom shrinks when connections
    /// close (the allocator keeps what it freed), so measure on a fresh server.
    #[arg(long, default_value_t = 5.0)]
    pub hold: f64,
    /// PID of the server, for its memory. Default: the process listening on the URL's
    /// port, when the URL is a loopback address (needs permission to read its
    /// /proc/<pid>/fd: same user or root). With several URLs no memory is read: it
    /// would be one server's, for a share of the connections.
    #[arg(long)]
    pub server_pid: Option<u32>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ConnectReport {
    /// Present for Socket.IO only (the native report is as it always was).
    #[serde(skip_serializing_if = "Proto::is_native")]
    pub proto: Proto,
    /// Connections asked for.
    pub connections: u64,
    pub opened: u64,
    pub failed: u64,
    /// From the first attempt to the last outcome.
    pub connect_secs: f64,
    /// Opened connections per second of `connect_secs`.
    pub connects_per_sec: f64,
    /// Per connection: TCP connect, upgrade and the `connected` frame (Socket.IO: and
    /// the open packet and CONNECT exchange before it).
    pub connect_latency: Option<LatencySummary>,
    pub hold_secs: f64,
    /// Connections that the server closed, or that broke, while held.
    pub dropped: u64,
    pub server_pid: Option<u32>,
    pub rss_before_bytes: Option<u64>,
    pub rss_after_bytes: Option<u64>,
    /// `(after - before) / opened`.
    pub rss_per_connection_bytes: Option<f64>,
    #[serde(skip)]
    pub first_error: Option<String>,
}

pub async fn run(
    target: &Target,
    opts: &ConnectOptions,
    show_progress: bool,
) -> Result<ConnectReport, BenchError> {
    let hold = seconds(opts.hold, "--hold")?;
    let total = opts.connections;
    let proto = target.proto();
    let pid = server_pid(target, opts.server_pid)?;
    let rss_before = pid.and_then(process::rss_bytes);

    let stop = CancellationToken::new();
    let _stop_on_return = stop.clone().drop_guard();
    let target = Arc::new(target.clone());
    let gate = Arc::new(Semaphore::new(target.concurrency));
    let dropped = Arc::new(AtomicU64::new(0));
    // Each connection reports its outcome once; the bound only paces reporters.
    let (report_tx, mut outcomes) = mpsc::channel::<Result<Duration, String>>(1024);

    let bar = progress::counter(show_progress, total as u64, "connect");
    let started = Instant::now();
    let mut holders = Vec::with_capacity(total);
    for index in 0..total {
        let (target, gate, stop, dropped, report_tx) = (
            target.clone(),
            gate.clone(),
            stop.clone(),
            dropped.clone(),
            report_tx.clone(),
        );
        holders.push(tokio::spawn(async move {
            let permit = gate.acquire_owned().await;
            let began = Instant::now();
            let result = target
                .connect(index, &format!("bench-conn-{index}"), IDLE_READ_BUFFER)
                .await;
            drop(permit);
            match result {
                Err(e) => {
                    let _ = report_tx.send(Err(e.to_string())).await;
                }
                Ok(mut ws) => {
                    let _ = report_tx.send(Ok(began.elapsed())).await;
                    drop(report_tx);
                    if hold_idle(&mut ws, proto, &stop).await {
                        dropped.fetch_add(1, Relaxed);
                    }
                }
            }
        }));
    }
    drop(report_tx);

    let mut latency = Latency::default();
    let mut failed = 0u64;
    let mut first_error = None;
    while let Some(outcome) = outcomes.recv().await {
        match outcome {
            Ok(took) => latency.record(took.as_micros() as u64),
            Err(e) => {
                failed += 1;
                first_error.get_or_insert(e);
                bar.set_message(format!("{failed} failed"));
            }
        }
        bar.inc(1);
    }
    let connect_span = started.elapsed();
    bar.finish_and_clear();
    let opened = latency.count();

    let bar = progress::timer(show_progress, hold, "hold");
    let hold_end = Instant::now() + hold;
    while Instant::now() < hold_end {
        bar.set_position((hold - (hold_end - Instant::now())).as_millis() as u64);
        bar.set_message(format!("{opened} open, {} dropped", dropped.load(Relaxed)));
        tokio::time::sleep_until((Instant::now() + progress::TICK).min(hold_end)).await;
    }
    bar.finish_and_clear();
    let rss_after = pid.and_then(process::rss_bytes);

    stop.cancel();
    let bar = progress::counter(show_progress, total as u64, "close");
    for holder in holders {
        let _ = holder.await;
        bar.inc(1);
    }
    bar.finish_and_clear();

    let rss_per_connection_bytes = match (rss_before, rss_after) {
        (Some(before), Some(after)) if opened > 0 => {
            Some((after as f64 - before as f64) / opened as f64)
        }
        _ => None,
    };
    Ok(ConnectReport {
        proto,
        connections: total as u64,
        opened,
        failed,
        connect_secs: connect_span.as_secs_f64(),
        connects_per_sec: per_sec(opened, connect_span),
        connect_latency: latency.summary(),
        hold_secs: hold.as_secs_f64(),
        dropped: dropped.load(Relaxed),
        server_pid: pid,
        rss_before_bytes: rss_before,
        rss_after_bytes: rss_after,
        rss_per_connection_bytes,
        first_error,
    })
}

/// Reads (so the server's pings are answered: WebSocket pings by tungstenite,
/// Engine.IO pings here) until stopped; `true` if the connection ended first.
async fn hold_idle(ws: &mut Ws, proto: Proto, stop: &CancellationToken) -> bool {
    loop {
        tokio::select! {
            biased;
            _ = stop.cancelled() => {
                close(ws).await;
                return false;
            }
            msg = ws.next() => match msg {
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return true,
                Some(Ok(Message::Text(text))) if proto == Proto::SocketIo && sio::is_ping(&text) => {
                    if ws.send(Message::text(sio::pong(&text))).await.is_err() {
                        return true;
                    }
                }
                Some(Ok(_)) => {}
            }
        }
    }
}

/// The PID whose memory to read: `given` (refused with several servers) or, for one
/// server on this machine, found by its port; none with several servers.
pub(crate) fn server_pid(target: &Target, given: Option<u32>) -> Result<Option<u32>, BenchError> {
    if given.is_some() {
        target.single_server("--server-pid")?;
    }
    Ok(match target.servers() {
        1 => given.or_else(|| local_server_pid(target.addr())),
        _ => None,
    })
}

/// The server's PID found by its port, only for a server on this machine.
fn local_server_pid(addr: SocketAddr) -> Option<u32> {
    let ip = addr.ip();
    (ip.is_loopback() || ip.is_unspecified())
        .then(|| process::pid_listening_on(addr.port()))
        .flatten()
}

impl fmt::Display for ConnectReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.proto {
            Proto::Native => writeln!(f, "connect: {} connections", self.connections)?,
            other => writeln!(
                f,
                "connect: {} connections over {}",
                self.connections,
                other.name()
            )?,
        }
        writeln!(
            f,
            "  {:<12} {} in {:.2} s: {:.0} connections/s, {} failed",
            "opened", self.opened, self.connect_secs, self.connects_per_sec, self.failed
        )?;
        if let Some(e) = &self.first_error {
            writeln!(f, "  {:<12} {e}", "first error")?;
        }
        latency_line(f, "connect time", self.connect_latency.as_ref())?;
        writeln!(
            f,
            "  {:<12} {:.1} s, {} dropped",
            "held", self.hold_secs, self.dropped
        )?;
        match (self.server_pid, self.rss_before_bytes, self.rss_after_bytes) {
            (Some(pid), Some(before), Some(after)) => {
                write!(
                    f,
                    "  {:<12} pid {pid}: RSS {} before, {} after",
                    "server",
                    bytes(before as f64),
                    bytes(after as f64)
                )?;
                match self.rss_per_connection_bytes {
                    Some(per) => writeln!(f, ", {} per connection", bytes(per)),
                    None => writeln!(f),
                }
            }
            (Some(pid), _, _) => writeln!(f, "  {:<12} pid {pid}: RSS unreadable", "server"),
            (None, _, _) => writeln!(f, "  {:<12} RSS not measured (pass --server-pid)", "server"),
        }
    }
}
