//! What each connection of a fanout run does: subscribers count what arrives,
//! publishers write at their pace and read their own echoes back.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use futures_util::StreamExt;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use crate::stats::{Tally, now_us};
use crate::target::{Ws, close, error_message};
use crate::wire::MessageTemplate;
use crate::{pace, scan};

/// Counters the phases read while the connections run.
#[derive(Default)]
pub(super) struct Live {
    pub(super) sent: AtomicU64,
    pub(super) delivered: AtomicU64,
    pub(super) echoes: AtomicU64,
    pub(super) publishing: AtomicUsize,
    pub(super) first_error: Mutex<Option<String>>,
}

/// How a publisher paces itself.
#[derive(Clone, Copy)]
pub(super) enum Pace {
    /// Messages per second from a start time (staggered between publishers).
    Rate { per_sec: f64, first: Instant },
    /// At most this many un-echoed messages.
    Window(usize),
}

pub(super) struct Subscribed {
    pub(super) tally: Tally,
    pub(super) dropped: bool,
}

pub(super) struct Published {
    pub(super) echoes: u64,
    pub(super) errors: u64,
    pub(super) dropped: bool,
}

/// A subscriber's one task: counts stamped messages until stopped.
pub(super) async fn subscribe(
    mut ws: Ws,
    publishers: usize,
    live: Arc<Live>,
    stop: CancellationToken,
) -> Subscribed {
    let mut tally = Tally::new(publishers);
    let dropped = loop {
        tokio::select! {
            biased;
            _ = stop.cancelled() => break false,
            msg = ws.next() => match msg {
                Some(Ok(Message::Text(text))) => {
                    if scan::is_new_message(&text)
                        && let Some(stamp) = scan::stamp(&text)
                        && tally.record(stamp, now_us())
                    {
                        live.delivered.fetch_add(1, Relaxed);
                    }
                }
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break true,
                Some(Ok(_)) => {}
            }
        }
    };
    if !dropped {
        close(&mut ws).await;
    }
    Subscribed { tally, dropped }
}

/// A publisher's task: writes at its pace until the deadline while reading what the
/// room sends it (its own echoes open the window) until stopped.
pub(super) async fn publish(
    ws: Ws,
    me: u32,
    template: MessageTemplate,
    pace: Pace,
    deadline: Instant,
    live: Arc<Live>,
    stop: CancellationToken,
) -> Published {
    let (mut tx, mut rx) = ws.split();
    let window = match pace {
        Pace::Window(n) => Some(Semaphore::new(n)),
        Pace::Rate { .. } => None,
    };
    let reading = async {
        let (mut echoes, mut errors) = (0, 0);
        let dropped = loop {
            tokio::select! {
                biased;
                _ = stop.cancelled() => break false,
                msg = rx.next() => match msg {
                    Some(Ok(Message::Text(text))) => {
                        if scan::is_new_message(&text) {
                            if scan::stamp(&text).is_some_and(|s| s.publisher == me) {
                                echoes += 1;
                                live.echoes.fetch_add(1, Relaxed);
                                if let Some(w) = &window {
                                    w.add_permits(1);
                                }
                            }
                        } else if scan::kind(&text).is_some_and(|k| k == "error") {
                            errors += 1;
                            note_error(&live, error_message(&text));
                        }
                    }
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break true,
                    Some(Ok(_)) => {}
                }
            }
        };
        (echoes, errors, dropped)
    };
    let writing = async {
        let frame = |seq| template.frame(seq, now_us(), None);
        let written = match (&window, pace) {
            (Some(w), _) => pace::windowed(&mut tx, frame, w, deadline, &live.sent).await,
            (None, Pace::Rate { per_sec, first }) => {
                pace::at_rate(&mut tx, frame, per_sec, first, deadline, &live.sent).await
            }
            (None, Pace::Window(_)) => unreachable!("a window pace has a semaphore"),
        };
        if let Err(e) = written {
            note_error(&live, e.to_string());
        }
        live.publishing.fetch_sub(1, Relaxed);
    };
    let ((echoes, errors, dropped), ()) = tokio::join!(reading, writing);
    if !dropped && let Ok(mut ws) = rx.reunite(tx) {
        close(&mut ws).await;
    }
    Published {
        echoes,
        errors,
        dropped,
    }
}

pub(super) fn note_error(live: &Live, message: String) {
    live.first_error
        .lock()
        .expect("not poisoned")
        .get_or_insert(message);
}
