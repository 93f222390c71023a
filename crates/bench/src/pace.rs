//! Pacing a publisher's writes: at a fixed rate, or within a window of messages in
//! flight that the reading side reopens. Over Socket.IO the writer also sends the
//! pongs the reading side owes the server ([`Pongs`]).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use futures_util::SinkExt;
use futures_util::stream::SplitSink;
use tokio::sync::{Notify, Semaphore};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use crate::BenchError;
use crate::target::Ws;

/// Most frames written before one flush.
const MAX_BATCH: u64 = 256;

pub type Sink = SplitSink<Ws, Message>;

/// Engine.IO pongs that the reading half of a split connection owes the server: the
/// writing half, the only one that may write, sends them with its next batch, or as
/// soon as it is told when it is waiting. Never used over the native protocol
/// (WebSocket pings are answered by tungstenite itself).
#[derive(Default)]
pub struct Pongs {
    owed: AtomicU64,
    notify: Notify,
}

impl Pongs {
    /// A ping arrived.
    pub fn owe(&self) {
        self.owed.fetch_add(1, Relaxed);
        self.notify.notify_one();
    }

    /// Until a pong is owed.
    pub async fn owed(&self) {
        self.notify.notified().await
    }

    /// Queues the owed pongs (a flush sends them).
    pub async fn feed(&self, tx: &mut Sink) -> Result<(), BenchError> {
        for _ in 0..self.owed.swap(0, Relaxed) {
            tx.feed(Message::text(crate::sio::PONG)).await?;
        }
        Ok(())
    }
}

/// Sends frame k at `first + k / per_sec` until `deadline`. A writer that falls
/// behind catches up in batches; `frame(k)` stamps the actual send time, so the lag
/// is not counted as latency.
pub async fn at_rate(
    tx: &mut Sink,
    mut frame: impl FnMut(u64) -> String,
    per_sec: f64,
    first: Instant,
    deadline: Instant,
    sent: &AtomicU64,
    pongs: &Pongs,
) -> Result<(), BenchError> {
    tokio::time::sleep_until(first.min(deadline)).await;
    let mut seq = 0u64;
    loop {
        let now = Instant::now();
        if now >= deadline {
            return Ok(());
        }
        let due = ((now - first).as_secs_f64() * per_sec) as u64 + 1;
        let batch = due.saturating_sub(seq).min(MAX_BATCH);
        pongs.feed(tx).await?;
        for _ in 0..batch {
            tx.feed(Message::text(frame(seq))).await?;
            seq += 1;
            sent.fetch_add(1, Relaxed);
        }
        tx.flush().await?;
        let next = first + Duration::from_secs_f64(seq as f64 / per_sec);
        tokio::select! {
            _ = tokio::time::sleep_until(next.min(deadline)) => {}
            _ = pongs.owed() => {}
        }
    }
}

/// Sends whenever `window` has a permit, until `deadline`; each frame takes one, which
/// the reading side gives back when the frame completes. What the window has room
/// for goes out in one batch.
pub async fn windowed(
    tx: &mut Sink,
    mut frame: impl FnMut(u64) -> String,
    window: &Semaphore,
    deadline: Instant,
    sent: &AtomicU64,
    pongs: &Pongs,
) -> Result<(), BenchError> {
    let mut seq = 0u64;
    while Instant::now() < deadline {
        let acquired = tokio::select! {
            permit = tokio::time::timeout_at(deadline, window.acquire()) => permit,
            _ = pongs.owed() => {
                pongs.feed(tx).await?;
                tx.flush().await?;
                continue;
            }
        };
        match acquired {
            Ok(Ok(permit)) => permit.forget(),
            _ => return Ok(()),
        }
        pongs.feed(tx).await?;
        let mut batch = 1;
        while batch < MAX_BATCH
            && let Ok(permit) = window.try_acquire()
        {
            permit.forget();
            batch += 1;
        }
        for _ in 0..batch {
            tx.feed(Message::text(frame(seq))).await?;
            seq += 1;
            sent.fetch_add(1, Relaxed);
        }
        tx.flush().await?;
    }
    Ok(())
}
