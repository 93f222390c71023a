//! `fanout`: publishers send into one room of subscribers, at a total rate or (with
//! `--max`) as fast as a window of un-echoed messages allows; deliveries, loss and
//! end-to-end latency.
//!
//! Expected deliveries are `sent × subscribers`. Publishers are room members too and
//! receive every message, but their copies are not deliveries: a publisher's copy of
//! its own message (its echo) is counted apart and is the completion signal of
//! `--max`.
//!
//! With `--proto socketio` the same run speaks Socket.IO: events `42["send_message",..]`
//! with an ack id, `42["new_message",..]` deliveries (the stamp is found the same way),
//! acks counted apart and refused ones counted as errors.

mod members;

use std::fmt;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::report::latency_line;
use crate::stats::{LatencySummary, Loss, Tally, now_us, per_sec};
use crate::target::{Proto, Target, open_all};
use crate::wire::MessageTemplate;
use crate::{BenchError, positive, progress, seconds};
use members::{Live, Pace, publish, subscribe};

/// Members read a steady stream: a larger buffer than idle connections need.
const MEMBER_READ_BUFFER: usize = 16 * 1024;
/// How often the run checks whether the writers are done and everything arrived.
const GRACE_POLL: Duration = Duration::from_millis(20);

#[derive(clap::Args, Debug, Clone)]
pub struct FanoutOptions {
    /// Subscribers in the room.
    #[arg(long, short = 'n', default_value_t = 100)]
    pub subscribers: usize,
    /// Publishing connections, members of the room too.
    #[arg(long, short = 'p', default_value_t = 1)]
    pub publishers: usize,
    /// Messages per second over all publishers (ignored with --max).
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    /// Seconds of publishing.
    #[arg(long, short = 'd', default_value_t = 10.0)]
    pub duration: f64,
    /// Bytes of padding in each message's content, before the stamp
    /// (`|<publisher>:<seq>|t=<µs since epoch>`, about 25 more bytes).
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    /// Find the peak: each publisher sends as fast as it can while keeping at most
    /// --window of its messages un-echoed, instead of following --rate.
    #[arg(long)]
    pub max: bool,
    /// With --max: messages each publisher may have in flight (sent, but its own copy
    /// not yet back).
    #[arg(long, short = 'w', default_value_t = 16)]
    pub window: usize,
    /// Seconds to wait after publishing stops for messages still on their way; what
    /// has not arrived then is lost.
    #[arg(long, default_value_t = 5.0)]
    pub grace: f64,
    /// Room to use. Default: a fresh `bench-fanout-<µs>` room, so no earlier run's
    /// messages are counted.
    #[arg(long)]
    pub room: Option<String>,
    /// Shell command run twice, with the moment as its last argument: `joined` once
    /// every member is in the room (publishing starts when it exits), `settled` once
    /// everything arrived or the grace ran out, before the connections close. For a
    /// script that cuts other figures (a server's counters, Redis's INFO) to the run.
    /// Its stdout is discarded; a non-zero exit fails the run.
    #[arg(long, value_name = "CMD")]
    pub phase_command: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct FanoutReport {
    /// Present for Socket.IO only (the native report is as it always was).
    #[serde(skip_serializing_if = "Proto::is_native")]
    pub proto: Proto,
    pub subscribers: u64,
    pub publishers: u64,
    /// Messages/s asked for; null with --max.
    pub target_rate: Option<f64>,
    /// Un-echoed messages allowed per publisher; null without --max.
    pub window: Option<u64>,
    pub padding_bytes: u64,
    /// Seconds from the first send to the end of publishing.
    pub send_secs: f64,
    pub sent: u64,
    pub sent_per_sec: f64,
    /// `expected` is `sent × subscribers`; `delivered` counts distinct messages.
    #[serde(flatten)]
    pub loss: Loss,
    pub duplicates: u64,
    /// Deliveries per second from the first send to the last delivery.
    pub deliveries_per_sec: f64,
    /// Send to receipt, over every delivery to a subscriber.
    pub latency: Option<LatencySummary>,
    /// Publishers' copies of their own messages (not deliveries).
    pub publisher_echoes: u64,
    /// Socket.IO: acks the publishers got (refusals included); absent for native.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acks: Option<u64>,
    /// `error` frames the publishers got (e.g. rate limited); Socket.IO: refused acks
    /// and `error` events.
    pub errors: u64,
    /// Connections that closed before the end.
    pub dropped: u64,
    #[serde(skip)]
    pub first_error: Option<String>,
}

pub async fn run(
    target: &Target,
    opts: &FanoutOptions,
    show_progress: bool,
) -> Result<FanoutReport, BenchError> {
    let duration = positive(opts.duration, "--duration")?;
    let grace = seconds(opts.grace, "--grace")?;
    if opts.publishers == 0 {
        return Err(BenchError::Options(
            "--publishers must be at least 1".into(),
        ));
    }
    if opts.max && opts.window == 0 {
        return Err(BenchError::Options("--window must be at least 1".into()));
    }
    let rate_ok = opts.rate.is_finite() && opts.rate > 0.0;
    if !(opts.max || rate_ok) {
        return Err(BenchError::Options("--rate must be above 0".into()));
    }
    let room = opts
        .room
        .clone()
        .unwrap_or_else(|| format!("bench-fanout-{}", now_us()));
    let stop = CancellationToken::new();
    let _stop_on_return = stop.clone().drop_guard();
    let live = Arc::new(Live::default());
    let publishers = opts.publishers;
    let proto = target.proto();

    // Each subscriber starts reading as soon as it has joined: while the others join,
    // it hears of each of them, and an unread outbox would overflow.
    let bar = progress::counter(show_progress, opts.subscribers as u64, "subscribe");
    let subscribers = open_all(
        "subscribers",
        opts.subscribers,
        target.concurrency,
        &bar,
        |i| {
            let (room, live, stop) = (&room, live.clone(), stop.clone());
            async move {
                let mut ws = target
                    .connect(i, &format!("bench-sub-{i}"), MEMBER_READ_BUFFER)
                    .await?;
                target.join(&mut ws, room).await?;
                Ok(tokio::spawn(subscribe(ws, proto, publishers, live, stop)))
            }
        },
    )
    .await?;
    bar.finish_and_clear();

    let bar = progress::counter(show_progress, publishers as u64, "publishers");
    let offset = opts.subscribers;
    let connections = open_all("publishers", publishers, target.concurrency, &bar, |i| {
        let room = &room;
        async move {
            // Publisher i goes to server i (round robin), whatever its connection index.
            let mut ws = target
                .connect_to(i, offset + i, &format!("bench-pub-{i}"), MEMBER_READ_BUFFER)
                .await?;
            target.join(&mut ws, room).await?;
            Ok(ws)
        }
    })
    .await?;
    bar.finish_and_clear();
    phase(opts, "joined").await?;

    let started = Instant::now();
    let start_us = now_us();
    let deadline = started + duration;
    live.publishing.store(publishers, Relaxed);
    let mut publishing = Vec::with_capacity(publishers);
    for (i, ws) in connections.into_iter().enumerate() {
        let pace = if opts.max {
            Pace::Window(opts.window)
        } else {
            let per_sec = opts.rate / publishers as f64;
            // Spread the publishers' sends over each period rather than bunch them.
            let first = started + Duration::from_secs_f64(i as f64 / opts.rate);
            Pace::Rate { per_sec, first }
        };
        let template = MessageTemplate::for_proto(proto, &room, opts.size, i as u32);
        publishing.push(tokio::spawn(publish(
            ws,
            proto,
            i as u32,
            template,
            pace,
            deadline,
            live.clone(),
            stop.clone(),
        )));
    }

    // A writer stuck on a full socket must not hold the run forever.
    let give_up = deadline + grace + Duration::from_secs(5);
    let bar = progress::timer(show_progress, duration, "fanout");
    while live.publishing.load(Relaxed) > 0 && Instant::now() < give_up {
        bar.set_position(started.elapsed().as_millis() as u64);
        bar.set_message(format!(
            "sent {}, delivered {}",
            live.sent.load(Relaxed),
            live.delivered.load(Relaxed)
        ));
        tokio::time::sleep(GRACE_POLL).await;
    }
    // Writers stop at the deadline; one that overran it still had only this long.
    let send_span = started.elapsed().min(duration);
    bar.finish_and_clear();

    let sent = live.sent.load(Relaxed);
    let expected = sent * opts.subscribers as u64;
    let bar = progress::counter(show_progress, expected, "stragglers");
    let grace_end = Instant::now() + grace;
    loop {
        let delivered = live.delivered.load(Relaxed);
        bar.set_position(delivered);
        // Publishers' echoes (and Socket.IO acks) too, so that their count is complete.
        let acked = proto == Proto::Native || live.acks.load(Relaxed) >= sent;
        let arrived = delivered >= expected && live.echoes.load(Relaxed) >= sent && acked;
        if arrived || Instant::now() >= grace_end {
            break;
        }
        tokio::time::sleep(GRACE_POLL).await;
    }
    bar.finish_and_clear();
    phase(opts, "settled").await?;
    stop.cancel();

    let mut tally = Tally::new(publishers);
    let mut dropped = 0;
    for s in subscribers {
        if let Ok(s) = s.await {
            tally.merge(&s.tally);
            dropped += u64::from(s.dropped);
        }
    }
    let (mut echoes, mut acks, mut errors) = (0, 0, 0);
    for p in publishing {
        if let Ok(p) = p.await {
            echoes += p.echoes;
            acks += p.acks;
            errors += p.errors;
            dropped += u64::from(p.dropped);
        }
    }
    let delivery_span = Duration::from_micros(tally.last_us.saturating_sub(start_us));
    let first_error = live.first_error.lock().expect("not poisoned").take();
    Ok(FanoutReport {
        proto,
        subscribers: opts.subscribers as u64,
        publishers: publishers as u64,
        target_rate: (!opts.max).then_some(opts.rate),
        window: opts.max.then_some(opts.window as u64),
        padding_bytes: opts.size as u64,
        send_secs: send_span.as_secs_f64(),
        sent,
        sent_per_sec: per_sec(sent, send_span),
        loss: Loss::account(sent, opts.subscribers as u64, tally.delivered),
        duplicates: tally.duplicates,
        deliveries_per_sec: per_sec(tally.delivered, delivery_span),
        latency: tally.latency.summary(),
        publisher_echoes: echoes,
        acks: (proto == Proto::SocketIo).then_some(acks),
        errors,
        dropped,
        first_error,
    })
}

/// Runs `--phase-command` for `moment`, if there is one, and waits for it.
async fn phase(opts: &FanoutOptions, moment: &'static str) -> Result<(), BenchError> {
    let Some(command) = &opts.phase_command else {
        return Ok(());
    };
    let failed = |reason: String| BenchError::PhaseCommand { moment, reason };
    // The moment goes in as "$1": nothing to quote, whatever the command.
    let status = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(format!("{command} \"$1\""))
        .arg("sh")
        .arg(moment)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .status()
        .await
        .map_err(|e| failed(e.to_string()))?;
    if status.success() {
        Ok(())
    } else {
        Err(failed(status.to_string()))
    }
}

impl fmt::Display for FanoutReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pace = match (self.target_rate, self.window) {
            (Some(rate), _) => format!("{rate} msg/s"),
            (None, Some(w)) => format!("max, window {w}/publisher"),
            (None, None) => "max".into(),
        };
        let over = match self.proto {
            Proto::Native => String::new(),
            other => format!(", over {}", other.name()),
        };
        writeln!(
            f,
            "fanout: {} subscribers, {} publishers, {pace}, {:.1} s, {} B padding{over}",
            self.subscribers, self.publishers, self.send_secs, self.padding_bytes
        )?;
        writeln!(
            f,
            "  {:<12} {} ({:.1}/s)",
            "sent", self.sent, self.sent_per_sec
        )?;
        writeln!(
            f,
            "  {:<12} {} of {} expected (sent x subscribers), lost {} ({:.3}%), duplicates {}",
            "delivered",
            self.loss.delivered,
            self.loss.expected,
            self.loss.lost,
            self.loss.loss_ratio * 100.0,
            self.duplicates
        )?;
        writeln!(
            f,
            "  {:<12} {:.0} deliveries/s",
            "throughput", self.deliveries_per_sec
        )?;
        latency_line(f, "latency", self.latency.as_ref())?;
        let acks = match self.acks {
            Some(n) => format!(", {n} acks"),
            None => String::new(),
        };
        writeln!(
            f,
            "  {:<12} {} own echoes{acks}, {} errors, {} connections dropped",
            "publishers", self.publisher_echoes, self.errors, self.dropped
        )?;
        if let Some(e) = &self.first_error {
            writeln!(f, "  {:<12} {e}", "first error")?;
        }
        Ok(())
    }
}
