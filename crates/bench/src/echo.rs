//! `echo`: ping/pong round trips over N connections, one ping in flight on each;
//! pings per second and round-trip time.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use crate::report::latency_line;
use crate::stats::{Latency, LatencySummary, per_sec};
use crate::target::{Target, Ws, close, closed, open_all};
use crate::{BenchError, positive, progress, scan, wire};

/// A connection holds one small frame at a time.
const READ_BUFFER: usize = 4096;
/// A pong later than this ends the connection's run, counted as a timeout.
const PONG_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(clap::Args, Debug, Clone)]
pub struct EchoOptions {
    /// Connections, each with one ping in flight at a time.
    #[arg(long, short = 'n', default_value_t = 50)]
    pub connections: usize,
    /// Seconds of pinging.
    #[arg(long, short = 'd', default_value_t = 10.0)]
    pub duration: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct EchoReport {
    pub connections: u64,
    /// Seconds from the first ping to the last pong.
    pub duration_secs: f64,
    /// Pings answered.
    pub pings: u64,
    pub pings_per_sec: f64,
    /// Connections that waited for a pong longer than 10 s.
    pub timeouts: u64,
    /// Connections that closed or broke before the end.
    pub dropped: u64,
    /// Ping sent to pong received.
    pub rtt: Option<LatencySummary>,
    #[serde(skip)]
    pub first_error: Option<String>,
}

struct Echoed {
    rtt: Latency,
    /// When the last round trip ended.
    finished: Instant,
    timed_out: bool,
    error: Option<BenchError>,
}

pub async fn run(
    target: &Target,
    opts: &EchoOptions,
    show_progress: bool,
) -> Result<EchoReport, BenchError> {
    target.native_only("echo")?;
    let duration = positive(opts.duration, "--duration")?;
    let bar = progress::counter(show_progress, opts.connections as u64, "connect");
    let connections = open_all(
        "connections",
        opts.connections,
        target.concurrency,
        &bar,
        |i| async move {
            target
                .connect(i, &format!("bench-echo-{i}"), READ_BUFFER)
                .await
        },
    )
    .await?;
    bar.finish_and_clear();

    let pings = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + duration;
    let tasks: Vec<_> = connections
        .into_iter()
        .map(|ws| tokio::spawn(echo(ws, deadline, pings.clone())))
        .collect();

    let bar = progress::timer(show_progress, duration, "echo");
    while tasks.iter().any(|t| !t.is_finished()) {
        bar.set_position(started.elapsed().as_millis() as u64);
        bar.set_message(format!("{} pongs", pings.load(Relaxed)));
        tokio::time::sleep(progress::TICK).await;
    }
    bar.finish_and_clear();

    let mut rtt = Latency::default();
    let (mut timeouts, mut dropped, mut first_error) = (0, 0, None);
    let mut finished = started;
    for task in tasks {
        let Ok(e) = task.await else { continue };
        rtt.merge(&e.rtt);
        timeouts += u64::from(e.timed_out);
        if let Some(err) = e.error {
            dropped += 1;
            first_error.get_or_insert_with(|| err.to_string());
        }
        finished = finished.max(e.finished);
    }
    let span = finished - started;
    Ok(EchoReport {
        connections: opts.connections as u64,
        duration_secs: span.as_secs_f64(),
        pings: rtt.count(),
        pings_per_sec: per_sec(rtt.count(), span),
        timeouts,
        dropped,
        rtt: rtt.summary(),
        first_error,
    })
}

/// One connection's task: ping, wait for the pong with the same `ref`, repeat.
async fn echo(mut ws: Ws, deadline: Instant, pings: Arc<AtomicU64>) -> Echoed {
    let mut rtt = Latency::default();
    let mut seq = 0u64;
    let mut timed_out = false;
    let mut error = None;
    while Instant::now() < deadline {
        seq += 1;
        let began = Instant::now();
        if let Err(e) = ws.send(Message::text(wire::ping(seq))).await {
            error = Some(e.into());
            break;
        }
        match tokio::time::timeout(PONG_TIMEOUT, pong(&mut ws, seq)).await {
            Ok(Ok(())) => {
                rtt.record(began.elapsed().as_micros() as u64);
                pings.fetch_add(1, Relaxed);
            }
            Ok(Err(e)) => {
                error = Some(e);
                break;
            }
            Err(_) => {
                timed_out = true;
                break;
            }
        }
    }
    let finished = Instant::now();
    if error.is_none() {
        close(&mut ws).await;
    }
    Echoed {
        rtt,
        finished,
        timed_out,
        error,
    }
}

/// Reads until the `pong` that answers ping `seq`.
async fn pong(ws: &mut Ws, seq: u64) -> Result<(), BenchError> {
    while let Some(msg) = ws.next().await {
        match msg? {
            Message::Text(text)
                if scan::kind(&text).is_some_and(|k| k == "pong")
                    && scan::reference(&text) == Some(seq) =>
            {
                return Ok(());
            }
            Message::Close(frame) => return Err(closed(frame)),
            _ => {}
        }
    }
    Err(closed(None))
}

impl fmt::Display for EchoReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "echo: {} connections, {:.1} s",
            self.connections, self.duration_secs
        )?;
        writeln!(
            f,
            "  {:<12} {} ({:.0}/s), {} timeouts, {} connections dropped",
            "pings", self.pings, self.pings_per_sec, self.timeouts, self.dropped
        )?;
        latency_line(f, "rtt", self.rtt.as_ref())?;
        if let Some(e) = &self.first_error {
            writeln!(f, "  {:<12} {e}", "first error")?;
        }
        Ok(())
    }
}
