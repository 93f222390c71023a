//! The native WebSocket transport: `GET /ws`.
//!
//! One task per connection, running two halves side by side: the reader decodes
//! frames and hands them to the hub one request after another; the writer drains the
//! session's outbox in batches, flushing once per batch. The writer never waits on the
//! reader: a slow request (history, recovery, a custom handler) does not stop delivery.
//! The upgrade is done here (not by axum's extractor) so the socket's buffers can be
//! sized for hundreds of thousands of idle connections and so outbox text goes to the
//! socket without a copy or a second UTF-8 check.
//!
//! The session's [`Registration`] lives in the task: however the task ends (the client
//! leaves, the server closes it, the task is cancelled or panics), dropping it removes
//! the connection from the hub.

use std::collections::VecDeque;
use std::future::Future;
use std::ops::ControlFlow;
use std::pin::Pin;
use std::sync::Arc;
use std::task::ready;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::future::BoxFuture;
use futures_util::{Sink, StreamExt};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use switchboard_protocol::{CloseCode, Connected, ErrorKind, Frame, now_millis};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode as WsCloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};

use crate::app::App;
use crate::auth::bearer;
use crate::encode;
use crate::error::ApiError;
use crate::hub::{ConnectError, Hub, Outgoing, Registration, Session, Wire};

type Socket = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

/// How long a close frame may take to go out.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Deserialize, utoipa::IntoParams)]
pub struct ConnectParams {
    /// The user's JWT (or send `Authorization: Bearer`).
    token: Option<String>,
    /// A room to join at once.
    room: Option<String>,
}

/// Upgrades the request, then authenticates on the open socket: a bad token gets a
/// close with 1008, as the protocol says, rather than an HTTP error.
#[utoipa::path(get, path = "/ws", tag = "events", params(ConnectParams),
    responses(
        (status = 101, description = "WebSocket upgrade; the native protocol (docs/protocol.md) follows"),
        (status = 400, description = "not a WebSocket upgrade request", body = crate::error::ErrorBody),
    ))]
pub async fn upgrade(
    State(app): State<App>,
    Query(params): Query<ConnectParams>,
    headers: HeaderMap,
    mut req: Request<Body>,
) -> Response {
    let Some(key) = handshake_key(&headers) else {
        return ApiError::bad_request(
            "expected a WebSocket upgrade (GET with Upgrade: websocket, Sec-WebSocket-Version: 13)",
        )
        .into_response();
    };
    let token = params.token.or_else(|| bearer(&headers));
    let on_upgrade = hyper::upgrade::on(&mut req);
    let ws_config = socket_config(&app);
    let hub = app.hub.clone();
    let room = params.room;
    // The task lives as long as the connection: everything it holds is held by every
    // idle connection, so the one-off steps (upgrade, closing) are boxed and freed,
    // and what only they need is moved into the box rather than kept by the task.
    let opening = Box::pin(open(hub.clone(), on_upgrade, ws_config, token, room));
    let task = async move {
        if let Some((socket, registration)) = opening.await {
            serve(hub, socket, registration).await;
        }
    };
    app.tracker.spawn(task);
    switching_protocols(key)
}

/// The 101 answer to a WebSocket handshake with `key`.
pub(crate) fn switching_protocols(key: &str) -> Response {
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, HeaderValue::from_static("upgrade"))
        .header(header::UPGRADE, HeaderValue::from_static("websocket"))
        .header(header::SEC_WEBSOCKET_ACCEPT, accept)
        .body(Body::empty())
        .expect("static response parts are valid")
}

/// Completes the upgrade and authenticates; says hello and joins the `room` of the
/// URL. Returns the open connection, or None once a refused one is closed. The socket
/// is boxed: a future keeps a moved value in more than one slot, and the connection's
/// task would otherwise keep it several times.
async fn open(
    hub: Hub,
    on_upgrade: hyper::upgrade::OnUpgrade,
    config: WebSocketConfig,
    token: Option<String>,
    room: Option<String>,
) -> Option<(Box<Socket>, Registration)> {
    let upgraded = match on_upgrade.await {
        Ok(upgraded) => upgraded,
        Err(e) => {
            tracing::debug!(error = %e, "upgrade failed");
            return None;
        }
    };
    let mut socket = Box::new(
        WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config)).await,
    );
    if hub.is_draining() {
        close(&mut socket, CloseCode::ServiceRestart).await;
        return None;
    }
    let identity = match hub.authenticate(token.as_deref()) {
        Ok(identity) => identity,
        Err(e) => {
            hub.metrics().auth_failures.increment(1);
            tracing::debug!(reason = %e, "websocket authentication failed");
            close(&mut socket, CloseCode::AuthenticationFailed).await;
            return None;
        }
    };
    let user = identity.user.id.clone();
    let greet = |session: &Session| {
        let hello = Connected {
            client_id: session.client_id.to_string(),
            user: session.user().clone(),
            timestamp: now_millis(),
        };
        session.reply("connected", &hello, None);
    };
    let registration = match hub.connect(identity, Wire::WebSocket, greet).await {
        Ok(registration) => registration,
        Err(ConnectError::TooManyConnections) => {
            tracing::info!(user = %user, "connection refused: too many connections for this user");
            close(&mut socket, CloseCode::TooManyConnections).await;
            return None;
        }
        Err(e) => {
            tracing::error!(error = %e, "connection refused");
            close(&mut socket, CloseCode::Internal).await;
            return None;
        }
    };
    let session = registration.session();
    tracing::debug!(client = %session.client_id, user = %session.user().id, "connected");
    if let Some(room) = room {
        hub.join_at_connect(session, room).await;
    }
    Some((socket, registration))
}

fn socket_config(app: &App) -> WebSocketConfig {
    let ws = &app.config.ws;
    WebSocketConfig::default()
        .read_buffer_size(ws.read_buffer_bytes)
        .write_buffer_size(ws.write_buffer_bytes)
        .max_write_buffer_size(ws.outbox_max_bytes.max(ws.write_buffer_bytes) * 2)
        .max_message_size(Some(ws.max_message_bytes))
        .max_frame_size(Some(ws.max_message_bytes))
}

fn header_has(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|v| v.trim().eq_ignore_ascii_case(token))
}

pub(crate) fn handshake_key(headers: &HeaderMap) -> Option<&str> {
    let ok = header_has(headers, header::CONNECTION, "upgrade")
        && header_has(headers, header::UPGRADE, "websocket")
        && headers
            .get(header::SEC_WEBSOCKET_VERSION)
            .is_some_and(|v| v == "13");
    if !ok {
        return None;
    }
    headers.get(header::SEC_WEBSOCKET_KEY)?.to_str().ok()
}

/// Runs an open connection to its end. The socket comes boxed: an async fn keeps its
/// arguments for its whole life, and this one lives as long as the connection.
async fn serve(hub: Hub, mut socket: Box<Socket>, registration: Registration) {
    let session = registration.session().clone();
    let code = drive(&hub, &session, &mut socket).await;
    drop(registration);
    if code == Some(CloseCode::SlowConsumer) {
        hub.metrics().slow_consumers.increment(1);
    }
    if let Some(code) = code {
        Box::pin(close(&mut socket, code)).await;
    }
    tracing::debug!(client = %session.client_id, ?code, "disconnected");
}

/// Runs the connection until it ends; returns the close to send, if one should be.
///
/// One loop waits on three things: the outbox (take what is queued and write it), the
/// client (read a frame), and the request in progress, if any. Requests of a
/// connection run one after another (no frame is read while one is in progress), but
/// the outbox is drained all along: a slow request never holds back delivery. Writes
/// go out in chunks of [`WRITE_CHUNK`] frames with the client read in between, and the
/// branches are polled in random order, so a long backlog does not keep the client's
/// pongs waiting either.
async fn drive(hub: &Hub, session: &Arc<Session>, socket: &mut Socket) -> Option<CloseCode> {
    let mut backlog: VecDeque<Outgoing> = VecDeque::new();
    let mut taken = 0;
    let mut closing = None;
    let mut pending: Option<BoxFuture<'_, ()>> = None;
    loop {
        tokio::select! {
            _ = session.ready(), if backlog.is_empty() && closing.is_none() => {
                // The backlog's vector and the outbox's trade places on every batch.
                let mut batch = Vec::from(std::mem::take(&mut backlog));
                closing = session.take(&mut batch);
                taken = batch.len();
                hub.metrics().frames_sent.increment(taken as u64);
                backlog = VecDeque::from(batch);
                // Most batches are one chunk: written in this same turn.
                if !write_turn(socket, &mut backlog, taken).await {
                    return None;
                }
            }
            _ = std::future::ready(()), if !backlog.is_empty() => {
                if !write_turn(socket, &mut backlog, taken).await {
                    return None;
                }
            }
            _ = async { pending.as_mut().expect("guarded").await }, if pending.is_some() => {
                pending = None;
                session.set_busy(false);
                session.touch(hub.clock_secs());
            }
            incoming = socket.next(), if pending.is_none() => {
                match receive(hub, session, incoming) {
                    ControlFlow::Break(code) => return code,
                    ControlFlow::Continue(waiting) => {
                        session.set_busy(waiting.is_some());
                        pending = waiting;
                    }
                }
            }
        }
        if closing.is_some() && backlog.is_empty() {
            return closing;
        }
    }
}

/// One frame from the client: handled, handed over as a request to wait for, or the
/// end of the connection.
fn receive<'a>(
    hub: &'a Hub,
    session: &'a Arc<Session>,
    incoming: Option<Result<Message, WsError>>,
) -> ControlFlow<Option<CloseCode>, Option<BoxFuture<'a, ()>>> {
    let Some(incoming) = incoming else {
        return ControlFlow::Break(None);
    };
    session.touch(hub.clock_secs());
    match incoming {
        Ok(Message::Text(text)) => {
            if !hub.admit(session) {
                return ControlFlow::Continue(None);
            }
            let frame = match Frame::parse(&text) {
                Ok(frame) => frame,
                Err(e) => {
                    session.error(&e, None);
                    return ControlFlow::Continue(None);
                }
            };
            match frame.request {
                Ok(request) => {
                    ControlFlow::Continue(hub.dispatch(session, request, frame.reference))
                }
                Err(e) => {
                    session.error(&e, frame.reference.as_ref());
                    ControlFlow::Continue(None)
                }
            }
        }
        Ok(Message::Binary(_)) => {
            session.error(&ErrorKind::InvalidFormat, None);
            ControlFlow::Continue(None)
        }
        // Pings are answered by tungstenite; pongs and closes only prove life.
        Ok(_) => ControlFlow::Continue(None),
        Err(WsError::Capacity(_)) => ControlFlow::Break(Some(CloseCode::TooBig)),
        Err(WsError::Utf8(_)) => ControlFlow::Break(Some(CloseCode::InvalidUtf8)),
        Err(e) => {
            tracing::debug!(client = %session.client_id, error = %e, "read failed");
            ControlFlow::Break(None)
        }
    }
}

/// Frames written per turn of the connection's loop.
const WRITE_CHUNK: usize = 256;

/// One turn's write: a chunk of the backlog. False when the socket failed.
async fn write_turn(socket: &mut Socket, backlog: &mut VecDeque<Outgoing>, taken: usize) -> bool {
    if backlog.is_empty() {
        return true;
    }
    // A client that stopped reading fails this write after the listener's write
    // timeout.
    if write_chunk(socket, backlog).await.is_err() {
        return false;
    }
    // A busy connection keeps a modest vector, so a steady stream allocates nothing;
    // a quiet one gives it up, so an idle connection holds none.
    if backlog.is_empty() && (taken <= 1 || backlog.capacity() > 256) {
        *backlog = VecDeque::new();
    }
    true
}

/// Writes up to [`WRITE_CHUNK`] frames of the backlog and flushes them.
///
/// Written against the socket's `Sink` methods by hand: the future holds two
/// references and a count, so it needs no allocation and adds almost nothing to the
/// connection's task.
fn write_chunk<'a>(
    socket: &'a mut Socket,
    backlog: &'a mut VecDeque<Outgoing>,
) -> impl Future<Output = Result<(), WsError>> + 'a {
    let mut left = backlog.len().min(WRITE_CHUNK);
    std::future::poll_fn(move |cx| {
        while left > 0 {
            ready!(Pin::new(&mut *socket).poll_ready(cx))?;
            let Some(frame) = backlog.pop_front() else {
                break;
            };
            left -= 1;
            let msg = match frame {
                Outgoing::Frame(f) | Outgoing::Positioned { frame: f, .. } => {
                    Message::Text(text(f))
                }
                Outgoing::Ping => Message::Ping(Default::default()),
            };
            Pin::new(&mut *socket).start_send(msg)?;
        }
        Pin::new(&mut *socket).poll_flush(cx)
    })
}

/// The frame's bytes as a WebSocket text payload, without a copy or a UTF-8 check.
fn text(frame: encode::Frame) -> Utf8Bytes {
    // SAFETY: a Frame is always valid UTF-8 (see `encode::Frame`).
    unsafe { Utf8Bytes::from_bytes_unchecked(frame.into_bytes()) }
}

/// Sends a close frame, then reads until the client's close (or the timeout), so
/// the socket is not dropped with unread data: the kernel would answer that with a
/// reset, which can destroy the close frame before the client reads it.
async fn close(socket: &mut Socket, code: CloseCode) {
    let frame = CloseFrame {
        code: WsCloseCode::from(code.code()),
        reason: Utf8Bytes::from_static(code.reason()),
    };
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
        if socket.close(Some(frame)).await.is_ok() {
            while let Some(Ok(_)) = socket.next().await {}
        }
    })
    .await;
}
