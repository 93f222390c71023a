//! `durable`: acknowledged sends. Each publisher has a room of its own and keeps up
//! to a window of `send_message`s with a `ref` in flight; the server's `ack` (sent
//! once the message is durable) completes one. Acks per second and ack latency.

use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use serde::Serialize;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use crate::report::latency_line;
use crate::stats::{Latency, LatencySummary, now_us, per_sec};
use crate::target::{Target, Ws, close, error_message, join, open_all};
use crate::wire::MessageTemplate;
use crate::{BenchError, pace, positive, progress, scan, seconds};

/// A publisher reads its own acks and echoes only.
const READ_BUFFER: usize = 16 * 1024;
/// How often the run checks whether the writers are done and every ack arrived.
const POLL: Duration = Duration::from_millis(20);

#[derive(clap::Args, Debug, Clone)]
pub struct DurableOptions {
    /// Publishers, each in a room of its own.
    #[arg(long, short = 'p', default_value_t = 4)]
    pub publishers: usize,
    /// Sends each publisher may have un-acked at once.
    #[arg(long, short = 'w', default_value_t = 32)]
    pub window: usize,
    /// Seconds of sending.
    #[arg(long, short = 'd', default_value_t = 10.0)]
    pub duration: f64,
    /// Bytes of padding in each message's content (a stamp of about 25 bytes follows).
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    /// Seconds to wait after sending stops for acks still due; the rest are un-acked.
    #[arg(long, default_value_t = 5.0)]
    pub grace: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct DurableReport {
    pub publishers: u64,
    pub window: u64,
    pub padding_bytes: u64,
    /// Seconds from the first send to the end of sending.
    pub send_secs: f64,
    pub sent: u64,
    pub acked: u64,
    /// Sent, but neither acked nor refused by the end of the grace period.
    pub unacked: u64,
    /// Sends answered with an `error` instead of an `ack`.
    pub errors: u64,
    /// Acks per second from the first send to the last ack.
    pub acked_per_sec: f64,
    /// Send to ack.
    pub ack_latency: Option<LatencySummary>,
    /// Connections that closed before the end.
    pub dropped: u64,
    #[serde(skip)]
    pub first_error: Option<String>,
}

#[derive(Default)]
struct Live {
    sent: AtomicU64,
    /// Acks and refusals: sends that are complete.
    answered: AtomicU64,
    publishing: AtomicUsize,
    first_error: Mutex<Option<String>>,
}

struct Acked {
    latency: Latency,
    errors: u64,
    last_us: u64,
    dropped: bool,
}

pub async fn run(
    target: &Target,
    opts: &DurableOptions,
    show_progress: bool,
) -> Result<DurableReport, BenchError> {
    target.native_only("durable")?;
    let duration = positive(opts.duration, "--duration")?;
    let grace = seconds(opts.grace, "--grace")?;
    if opts.publishers == 0 || opts.window == 0 {
        return Err(BenchError::Options(
            "--publishers and --window must be at least 1".into(),
        ));
    }
    let run_id = now_us();
    let stop = CancellationToken::new();
    let _stop_on_return = stop.clone().drop_guard();
    let live = Arc::new(Live::default());

    let bar = progress::counter(show_progress, opts.publishers as u64, "publishers");
    let connections = open_all(
        "publishers",
        opts.publishers,
        target.concurrency,
        &bar,
        |i| async move {
            let room = format!("bench-durable-{run_id}-{i}");
            let mut ws = target
                .connect(i, &format!("bench-durable-{i}"), READ_BUFFER)
                .await?;
            join(&mut ws, &room).await?;
            Ok((ws, room))
        },
    )
    .await?;
    bar.finish_and_clear();

    let started = Instant::now();
    let start_us = now_us();
    let deadline = started + duration;
    live.publishing.store(opts.publishers, Relaxed);
    let publishing: Vec<_> = connections
        .into_iter()
        .enumerate()
        .map(|(i, (ws, room))| {
            let template = MessageTemplate::new(&room, opts.size, i as u32);
            tokio::spawn(publish(
                ws,
                template,
                opts.window,
                deadline,
                live.clone(),
                stop.clone(),
            ))
        })
        .collect();

    let give_up = deadline + grace + Duration::from_secs(5);
    let bar = progress::timer(show_progress, duration, "durable");
    while live.publishing.load(Relaxed) > 0 && Instant::now() < give_up {
        bar.set_position(started.elapsed().as_millis() as u64);
        bar.set_message(format!(
            "sent {}, acked {}",
            live.sent.load(Relaxed),
            live.answered.load(Relaxed)
        ));
        tokio::time::sleep(POLL).await;
    }
    let send_span = started.elapsed().min(duration);
    bar.finish_and_clear();

    let sent = live.sent.load(Relaxed);
    let grace_end = Instant::now() + grace;
    while live.answered.load(Relaxed) < sent && Instant::now() < grace_end {
        tokio::time::sleep(POLL).await;
    }
    stop.cancel();

    let mut latency = Latency::default();
    let (mut errors, mut dropped, mut last_us) = (0, 0, start_us);
    for p in publishing {
        let Ok(p) = p.await else { continue };
        latency.merge(&p.latency);
        errors += p.errors;
        dropped += u64::from(p.dropped);
        last_us = last_us.max(p.last_us);
    }
    let acked = latency.count();
    let first_error = live.first_error.lock().expect("not poisoned").take();
    Ok(DurableReport {
        publishers: opts.publishers as u64,
        window: opts.window as u64,
        padding_bytes: opts.size as u64,
        send_secs: send_span.as_secs_f64(),
        sent,
        acked,
        unacked: sent.saturating_sub(acked + errors),
        errors,
        acked_per_sec: per_sec(acked, Duration::from_micros(last_us - start_us)),
        ack_latency: latency.summary(),
        dropped,
        first_error,
    })
}

/// A publisher's task: sends within the window until the deadline while reading
/// acks (which reopen the window) until stopped.
async fn publish(
    ws: Ws,
    template: MessageTemplate,
    window: usize,
    deadline: Instant,
    live: Arc<Live>,
    stop: CancellationToken,
) -> Acked {
    let (mut tx, mut rx) = ws.split();
    let window = Semaphore::new(window);
    let reading = async {
        let mut acked = Acked {
            latency: Latency::default(),
            errors: 0,
            last_us: 0,
            dropped: false,
        };
        acked.dropped = loop {
            tokio::select! {
                biased;
                _ = stop.cancelled() => break false,
                msg = rx.next() => match msg {
                    Some(Ok(Message::Text(text))) => match scan::kind(&text).as_deref() {
                        // The ref is the send time: no table of sends in flight.
                        Some("ack") => if let Some(sent_us) = scan::reference(&text) {
                            let now = now_us();
                            acked.latency.record(now.saturating_sub(sent_us));
                            acked.last_us = now;
                            live.answered.fetch_add(1, Relaxed);
                            window.add_permits(1);
                        },
                        // A refused send: it too is complete.
                        Some("error") if scan::reference(&text).is_some() => {
                            acked.errors += 1;
                            live.answered.fetch_add(1, Relaxed);
                            window.add_permits(1);
                            note_error(&live, error_message(&text));
                        }
                        // Its own new_message echoes.
                        _ => {}
                    },
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break true,
                    Some(Ok(_)) => {}
                }
            }
        };
        acked
    };
    let writing = async {
        // Refs must be unique to tell acks apart: the send time, nudged past the last.
        let mut last_ref = 0;
        let frame = |seq| {
            let sent_us = now_us().max(last_ref + 1);
            last_ref = sent_us;
            template.frame(seq, sent_us, Some(sent_us))
        };
        if let Err(e) = pace::windowed(
            &mut tx,
            frame,
            &window,
            deadline,
            &live.sent,
            &pace::Pongs::default(),
        )
        .await
        {
            note_error(&live, e.to_string());
        }
        live.publishing.fetch_sub(1, Relaxed);
    };
    let (acked, ()) = tokio::join!(reading, writing);
    if !acked.dropped
        && let Ok(mut ws) = rx.reunite(tx)
    {
        close(&mut ws).await;
    }
    acked
}

fn note_error(live: &Live, message: String) {
    live.first_error
        .lock()
        .expect("not poisoned")
        .get_or_insert(message);
}

impl fmt::Display for DurableReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "durable: {} publishers (one room each), window {}, {:.1} s, {} B padding",
            self.publishers, self.window, self.send_secs, self.padding_bytes
        )?;
        writeln!(
            f,
            "  {:<12} {} sent, {} acked ({:.0}/s), {} errors, {} un-acked",
            "sends", self.sent, self.acked, self.acked_per_sec, self.errors, self.unacked
        )?;
        latency_line(f, "ack latency", self.ack_latency.as_ref())?;
        writeln!(f, "  {:<12} {} dropped", "connections", self.dropped)?;
        if let Some(e) = &self.first_error {
            writeln!(f, "  {:<12} {e}", "first error")?;
        }
        Ok(())
    }
}
