//! What each connection of a fanout run does: subscribers count what arrives,
//! publishers write at their pace and read their own echoes back. Over Socket.IO
//! every connection also answers the server's pings, and publishers ask for an ack
//! of every send.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use futures_util::{SinkExt, StreamExt};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use crate::pace::Pongs;
use crate::stats::{Tally, now_us};
use crate::target::{Proto, Ws, close, error_message};
use crate::wire::MessageTemplate;
use crate::{pace, scan, sio};

/// Counters the phases read while the connections run.
#[derive(Default)]
pub(super) struct Live {
    pub(super) sent: AtomicU64,
    pub(super) delivered: AtomicU64,
    pub(super) echoes: AtomicU64,
    /// Socket.IO acks of the publishers' sends, refusals included.
    pub(super) acks: AtomicU64,
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
    pub(super) acks: u64,
    pub(super) errors: u64,
    pub(super) dropped: bool,
}

/// A subscriber's one task: counts stamped messages until stopped.
pub(super) async fn subscribe(
    mut ws: Ws,
    proto: Proto,
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
                    if is_new_message(proto, &text) {
                        if let Some(stamp) = scan::stamp(&text)
                            && tally.record(stamp, now_us())
                        {
                            live.delivered.fetch_add(1, Relaxed);
                        }
                    } else if proto == Proto::SocketIo
                        && sio::is_ping(&text)
                        && ws.send(Message::text(sio::pong(&text))).await.is_err()
                    {
                        break true;
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
#[allow(clippy::too_many_arguments)]
pub(super) async fn publish(
    ws: Ws,
    proto: Proto,
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
    let pongs = Pongs::default();
    let reading = async {
        let (mut echoes, mut acks, mut errors) = (0, 0, 0);
        let dropped = loop {
            tokio::select! {
                biased;
                _ = stop.cancelled() => break false,
                msg = rx.next() => match msg {
                    Some(Ok(Message::Text(text))) => {
                        if is_new_message(proto, &text) {
                            if scan::stamp(&text).is_some_and(|s| s.publisher == me) {
                                echoes += 1;
                                live.echoes.fetch_add(1, Relaxed);
                                if let Some(w) = &window {
                                    w.add_permits(1);
                                }
                            }
                        } else if proto == Proto::Native {
                            if scan::kind(&text).is_some_and(|k| k == "error") {
                                errors += 1;
                                note_error(&live, error_message(&text));
                            }
                        } else if sio::is_ping(&text) {
                            pongs.owe();
                        } else if let Some(ack) = sio::ack(&text) {
                            acks += 1;
                            live.acks.fetch_add(1, Relaxed);
                            if let Some(e) = ack.error {
                                errors += 1;
                                note_error(&live, e);
                            }
                        } else if sio::event_name(&text).is_some_and(|n| n == "error") {
                            errors += 1;
                            note_error(&live, sio::error_message(&text));
                        }
                    }
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break true,
                    Some(Ok(_)) => {}
                }
            }
        };
        (echoes, acks, errors, dropped)
    };
    let writing = async {
        // Over Socket.IO each send asks for an ack, its sequence number as the ack id.
        let acked = proto == Proto::SocketIo;
        let frame = |seq| template.frame(seq, now_us(), acked.then_some(seq));
        let sent = &live.sent;
        let written = match (&window, pace) {
            (Some(w), _) => pace::windowed(&mut tx, frame, w, deadline, sent, &pongs).await,
            (None, Pace::Rate { per_sec, first }) => {
                pace::at_rate(&mut tx, frame, per_sec, first, deadline, sent, &pongs).await
            }
            (None, Pace::Window(_)) => unreachable!("a window pace has a semaphore"),
        };
        if let Err(e) = written {
            note_error(&live, e.to_string());
        }
        live.publishing.fetch_sub(1, Relaxed);
        // The server still pings while the last messages arrive.
        if acked {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = pongs.owed() => {
                        if pongs.feed(&mut tx).await.is_err() || tx.flush().await.is_err() {
                            break;
                        }
                    }
                }
            }
        }
    };
    let ((echoes, acks, errors, dropped), ()) = tokio::join!(reading, writing);
    if !dropped && let Ok(mut ws) = rx.reunite(tx) {
        close(&mut ws).await;
    }
    Published {
        echoes,
        acks,
        errors,
        dropped,
    }
}

/// Whether `text` is a `new_message` in `proto`.
fn is_new_message(proto: Proto, text: &str) -> bool {
    match proto {
        Proto::Native => scan::is_new_message(text),
        Proto::SocketIo => sio::is_new_message(text),
    }
}

pub(super) fn note_error(live: &Live, message: String) {
    live.first_error
        .lock()
        .expect("not poisoned")
        .get_or_insert(message);
}
