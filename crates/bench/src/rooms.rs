//! `rooms`: what filling rooms costs. One big room of N connections, then R rooms of
//! S: the time to set them up, what the server sends per join (frames and bytes,
//! counted by every client until no frame has arrived for a while: replies and every
//! announcement to the others), the largest frame, and the server's RSS per
//! connection. A server that lists every member in each reply and tells everyone of
//! every arrival spends O(N^2) on a room of N; a bounded one, O(N).

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use crate::report::bytes;
use crate::stats::{now_us, per_sec};
use crate::target::{Target, Ws, closed, open_all};
use crate::{BenchError, positive, process, progress, scan, wire};

/// Members read little: a small read buffer keeps the bench light at 10k connections.
const READ_BUFFER: usize = 4096;
/// How long a phase may take to go quiet before the bench stops waiting.
const QUIET_LIMIT: Duration = Duration::from_secs(60);

#[derive(clap::Args, Debug, Clone)]
pub struct RoomsOptions {
    /// Connections that fill the big room (one user each).
    #[arg(long, default_value_t = 5000)]
    pub big: usize,
    /// Small rooms filled after it.
    #[arg(long, default_value_t = 1000)]
    pub rooms: usize,
    /// Connections per small room.
    #[arg(long, default_value_t = 5)]
    pub size: usize,
    /// Seconds without a frame at any client that end a phase.
    #[arg(long, default_value_t = 0.5)]
    pub settle: f64,
    /// PID of the server, for its memory (default: found by the URL's port on
    /// loopback; none with several URLs).
    #[arg(long)]
    pub server_pid: Option<u32>,
}

/// One phase: connections joining rooms.
#[derive(Debug, Clone, Serialize)]
pub struct PhaseReport {
    pub connections: u64,
    pub rooms: u64,
    /// From the first connection attempt to the last `room_joined`.
    pub setup_secs: f64,
    pub joins_per_sec: f64,
    /// Frames (and bytes) every client received after `connected`, per join: the
    /// joiner's reply and what the others were told.
    pub frames_per_join: f64,
    pub bytes_per_join: f64,
    /// The largest frame any client received (e.g. the last joiner's `room_joined`).
    pub largest_frame_bytes: u64,
    /// Server RSS added by the phase, per connection.
    pub rss_per_connection_bytes: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RoomsReport {
    pub server_pid: Option<u32>,
    pub big: PhaseReport,
    pub small: PhaseReport,
}

#[derive(Default)]
struct Counters {
    frames: AtomicU64,
    bytes: AtomicU64,
    largest: AtomicU64,
    last_us: AtomicU64,
}

impl Counters {
    fn count(&self, len: usize) {
        self.frames.fetch_add(1, Relaxed);
        self.bytes.fetch_add(len as u64, Relaxed);
        self.largest.fetch_max(len as u64, Relaxed);
        self.last_us.store(now_us(), Relaxed);
    }
}

pub async fn run(
    target: &Target,
    opts: &RoomsOptions,
    show_progress: bool,
) -> Result<RoomsReport, BenchError> {
    target.native_only("rooms")?;
    let settle = positive(opts.settle, "--settle")?;
    if opts.size == 0 {
        return Err(BenchError::Options("--size must be at least 1".into()));
    }
    let pid = crate::connect::server_pid(target, opts.server_pid)?;
    let stop = CancellationToken::new();
    let _stop_on_return = stop.clone().drop_guard();
    let run_id = now_us();

    let big_room = format!("bench-rooms-{run_id}-big");
    let (big, big_members) = phase(
        target,
        Phase {
            name: "big room",
            first_index: 0,
            connections: opts.big,
            room_of: &|_| big_room.clone(),
            rooms: 1,
        },
        settle,
        pid,
        &stop,
        show_progress,
    )
    .await?;
    let (small, small_members) = phase(
        target,
        Phase {
            name: "small rooms",
            first_index: opts.big,
            connections: opts.rooms * opts.size,
            room_of: &|i| format!("bench-rooms-{run_id}-{}", i / opts.size),
            rooms: opts.rooms as u64,
        },
        settle,
        pid,
        &stop,
        show_progress,
    )
    .await?;
    stop.cancel();
    for member in big_members.into_iter().chain(small_members) {
        let _ = member.await;
    }
    Ok(RoomsReport {
        server_pid: pid,
        big,
        small,
    })
}

struct Phase<'a> {
    name: &'static str,
    first_index: usize,
    connections: usize,
    room_of: &'a (dyn Fn(usize) -> String + Sync),
    rooms: u64,
}

async fn phase(
    target: &Target,
    p: Phase<'_>,
    settle: Duration,
    pid: Option<u32>,
    stop: &CancellationToken,
    show_progress: bool,
) -> Result<(PhaseReport, Vec<tokio::task::JoinHandle<()>>), BenchError> {
    let counters = Arc::new(Counters::default());
    let rss_before = pid.and_then(process::rss_bytes);
    let bar = progress::counter(show_progress, p.connections as u64, p.name);
    let started = Instant::now();
    let members = open_all("members", p.connections, target.concurrency, &bar, |i| {
        let (counters, stop) = (counters.clone(), stop.clone());
        let room = (p.room_of)(i);
        let index = p.first_index + i;
        async move {
            let mut ws = target
                .connect(index, &format!("bench-rooms-{index}"), READ_BUFFER)
                .await?;
            join_counting(&mut ws, &room, &counters).await?;
            Ok(tokio::spawn(listen(ws, counters, stop)))
        }
    })
    .await?;
    let setup = started.elapsed();
    bar.finish_and_clear();
    // Announcements to earlier members may still be on their way.
    let quiet_by = Instant::now() + QUIET_LIMIT;
    loop {
        let since_last = now_us().saturating_sub(counters.last_us.load(Relaxed));
        if since_last >= settle.as_micros() as u64 || Instant::now() >= quiet_by {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let rss_after = pid.and_then(process::rss_bytes);
    let joins = p.connections as f64;
    let report = PhaseReport {
        connections: p.connections as u64,
        rooms: p.rooms,
        setup_secs: setup.as_secs_f64(),
        joins_per_sec: per_sec(p.connections as u64, setup),
        frames_per_join: counters.frames.load(Relaxed) as f64 / joins,
        bytes_per_join: counters.bytes.load(Relaxed) as f64 / joins,
        largest_frame_bytes: counters.largest.load(Relaxed),
        rss_per_connection_bytes: match (rss_before, rss_after) {
            (Some(b), Some(a)) if p.connections > 0 => Some((a as f64 - b as f64) / joins),
            _ => None,
        },
    };
    // The members stay connected: the next phase's RSS is on top of this one's.
    Ok((report, members))
}

/// Joins `room`, counting every frame until `room_joined` (announcements of others
/// joining may come first).
async fn join_counting(ws: &mut Ws, room: &str, counters: &Counters) -> Result<(), BenchError> {
    ws.send(Message::text(wire::join_room(room))).await?;
    while let Some(msg) = ws.next().await {
        match msg? {
            Message::Text(text) => {
                counters.count(text.len());
                match scan::kind(&text).as_deref() {
                    Some("room_joined") => return Ok(()),
                    Some("error") => {
                        return Err(BenchError::Server(crate::target::error_message(&text)));
                    }
                    _ => {}
                }
            }
            Message::Close(frame) => return Err(closed(frame)),
            _ => {}
        }
    }
    Err(closed(None))
}

/// Counts what a member is told until the run ends.
async fn listen(mut ws: Ws, counters: Arc<Counters>, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            msg = ws.next() => match msg {
                Some(Ok(Message::Text(text))) => counters.count(text.len()),
                Some(Ok(_)) => {}
                _ => return,
            }
        }
    }
}

impl fmt::Display for RoomsReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "rooms:")?;
        for (name, p) in [("big room", &self.big), ("small rooms", &self.small)] {
            writeln!(
                f,
                "  {name:<12} {} connections in {} room(s): {:.2} s, {:.0} joins/s",
                p.connections, p.rooms, p.setup_secs, p.joins_per_sec
            )?;
            writeln!(
                f,
                "  {:<12} {:.1} frames and {} per join; largest frame {}",
                "",
                p.frames_per_join,
                bytes(p.bytes_per_join),
                bytes(p.largest_frame_bytes as f64)
            )?;
            match p.rss_per_connection_bytes {
                Some(per) => writeln!(f, "  {:<12} server RSS {} per connection", "", bytes(per))?,
                None => writeln!(f, "  {:<12} server RSS not measured", "")?,
            }
        }
        Ok(())
    }
}
