//! Server-Sent Events: `GET /events?channels=a,b`.
//!
//! An SSE stream is a hub session of wire `Sse`: a listener in the rooms it names, with
//! a bounded outbox like any other. Frames are queued in the native encoding (shared
//! with every WebSocket member) and turned into SSE events as the stream is read.
//!
//! Event ids carry a position per channel: `general=42,news=7`. The first event,
//! `connected`, carries the position the stream starts from, and every durable event
//! the position after it; a browser that reconnects sends the last one back as
//! `Last-Event-ID` and gets what it missed on every channel, once, in order.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use futures_util::stream;
use serde::{Deserialize, Serialize};
use switchboard_protocol::{Pong, is_valid_room_id, now_millis, split_frame};
use utoipa::{IntoParams, ToSchema};

use crate::app::App;
use crate::auth::bearer;
use crate::http::error::{ApiError, ErrorBody};
use crate::hub::{Hub, Outgoing, Session, Wire};

#[derive(Deserialize, IntoParams)]
pub struct EventsParams {
    /// Comma-separated channels (rooms) to receive.
    channels: Option<String>,
    /// The user's JWT, for EventSource, which cannot set headers.
    token: Option<String>,
}

/// The first event of a stream.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SseConnected {
    client_id: String,
    channels: Vec<String>,
    timestamp: u64,
    /// With `Last-Event-ID`: per channel, whether every missed event was replayed.
    #[serde(skip_serializing_if = "Option::is_none")]
    recovered: Option<BTreeMap<String, bool>>,
}

/// A stream of room events as Server-Sent Events.
#[utoipa::path(
    get,
    path = "/events",
    tag = "events",
    params(EventsParams, ("Last-Event-ID" = Option<String>, Header, description = "resume position, as sent in event ids")),
    security((), ("bearer" = [])),
    responses(
        (status = 200, description = "an endless `text/event-stream`: `connected`, then room events named by their type, `ping` every 30 s", content_type = "text/event-stream", body = String),
        (status = 400, description = "no or invalid channel", body = ErrorBody),
        (status = 401, description = "missing or bad token", body = ErrorBody),
        (status = 403, description = "a channel the user may not read", body = ErrorBody),
    )
)]
pub async fn events(
    State(app): State<App>,
    params: Result<Query<EventsParams>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Query(params) = params?;
    let hub = &app.hub;
    let token = params.token.or_else(|| bearer(&headers));
    let identity = hub.authenticate(token.as_deref()).map_err(|_| {
        hub.metrics().auth_failures.increment(1);
        ApiError::unauthorized("Authentication failed")
    })?;
    let channels: Vec<String> = params
        .channels
        .as_deref()
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(str::to_string)
        .collect();
    let mut seen = std::collections::HashSet::new();
    let channels: Vec<String> = channels
        .into_iter()
        .filter(|c| seen.insert(c.clone()))
        .collect();
    if channels.is_empty() {
        return Err(ApiError::bad_request("channels is required: ?channels=a,b"));
    }
    if channels.len() > app.config.ws.max_rooms_per_connection {
        return Err(ApiError::bad_request(format!(
            "at most {} channels per stream",
            app.config.ws.max_rooms_per_connection
        )));
    }
    for c in &channels {
        if !is_valid_room_id(c) {
            return Err(ApiError::bad_request(format!("Invalid channel: {c:?}")));
        }
        if !hub.verifier().may_join(&identity, c) {
            return Err(ApiError::forbidden(format!("Forbidden: channel {c}")));
        }
    }
    let resume = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(parse_position);

    let session = hub.connect(identity, Wire::Sse);
    let guard = Guard {
        hub: hub.clone(),
        session: session.clone(),
    };
    let mut position = BTreeMap::new();
    let mut recovered = resume.as_ref().map(|_| BTreeMap::new());
    for channel in &channels {
        // Start where the client left off, or at the room's head now: either way the
        // hub replays from there, so nothing falls between the read and the join.
        let since = match resume.as_ref().and_then(|r| r.get(channel)) {
            Some(offset) => *offset,
            None => head(hub, channel).await?,
        };
        let complete = hub
            .subscribe(&session, channel.clone(), Some(since))
            .await
            .map_err(|e| ApiError::bad_request(e.to_string()))?
            .unwrap_or(true);
        if let Some(r) = recovered.as_mut() {
            r.insert(channel.clone(), complete);
        }
        // Not recovered: the old position means nothing here; start from the head.
        let start = if complete {
            since
        } else {
            head(hub, channel).await?
        };
        position.insert(channel.clone(), start);
    }

    let hello = SseConnected {
        client_id: session.client_id.to_string(),
        channels,
        timestamp: now_millis(),
        recovered,
    };
    let mut first = Vec::new();
    write_event(
        &mut first,
        "connected",
        Some(&encode_position(&position)),
        &serde_json::to_string(&hello).map_err(|_| ApiError::internal())?,
    );
    let ping_every = Duration::from_secs(app.config.sse.ping_secs);
    let state = Stream {
        guard,
        position,
        batch: Vec::new(),
        first: Some(Bytes::from(first)),
        ping: tokio::time::interval_at(tokio::time::Instant::now() + ping_every, ping_every),
        done: false,
    };
    let body = Body::from_stream(stream::unfold(state, |mut s| async move {
        let chunk = s.next_chunk().await?;
        Some((Ok::<_, std::convert::Infallible>(chunk), s))
    }));
    let mut response = Response::new(body);
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive"));
    // Tells nginx not to buffer the stream.
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    *response.status_mut() = StatusCode::OK;
    Ok(response)
}

/// The room's last offset now (0 for an empty room).
async fn head(hub: &Hub, room: &str) -> Result<u64, ApiError> {
    hub.head(room).await.map_err(|e| {
        tracing::error!(error = %e, "reading a room head failed");
        ApiError::internal()
    })
}

/// `general=42,news=7`: room ids never contain `=` or `,`.
pub fn encode_position(position: &BTreeMap<String, u64>) -> String {
    let mut out = String::new();
    for (i, (room, offset)) in position.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(room);
        out.push('=');
        out.push_str(&offset.to_string());
    }
    out
}

/// Parses an event id; parts that are not `room=offset` are ignored (a stale or
/// hand-made id resumes what it can).
pub fn parse_position(id: &str) -> BTreeMap<String, u64> {
    id.split(',')
        .filter_map(|part| {
            let (room, offset) = part.split_once('=')?;
            let offset = offset.trim().parse().ok()?;
            is_valid_room_id(room.trim()).then(|| (room.trim().to_string(), offset))
        })
        .collect()
}

fn write_event(out: &mut Vec<u8>, kind: &str, id: Option<&str>, data: &str) {
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(kind.as_bytes());
    if let Some(id) = id {
        out.extend_from_slice(b"\nid: ");
        out.extend_from_slice(id.as_bytes());
    }
    out.extend_from_slice(b"\ndata: ");
    out.extend_from_slice(data.as_bytes());
    out.extend_from_slice(b"\n\n");
}

/// Removes the session from the hub when the response body is dropped: the client
/// went away, or the stream ended.
struct Guard {
    hub: Hub,
    session: Arc<Session>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.hub.disconnect(&self.session);
    }
}

struct Stream {
    guard: Guard,
    position: BTreeMap<String, u64>,
    batch: Vec<Outgoing>,
    first: Option<Bytes>,
    ping: tokio::time::Interval,
    done: bool,
}

impl Stream {
    /// The next bytes to send: everything queued, as one chunk. `None` ends the stream
    /// (the session was closed: drain, slow consumer, operator disconnect).
    async fn next_chunk(&mut self) -> Option<Bytes> {
        if let Some(first) = self.first.take() {
            return Some(first);
        }
        if self.done {
            return None;
        }
        let session = self.guard.session.clone();
        loop {
            tokio::select! {
                _ = session.ready() => {
                    let closing = session.take(&mut self.batch);
                    if closing.is_some() {
                        self.done = true;
                        if closing == Some(switchboard_protocol::CloseCode::SlowConsumer) {
                            self.guard.hub.metrics().slow_consumers.increment(1);
                        }
                    }
                    if !self.batch.is_empty() {
                        return Some(self.encode_batch());
                    }
                    if self.done {
                        return None;
                    }
                }
                _ = self.ping.tick() => {
                    let mut out = Vec::new();
                    let ping = serde_json::to_string(&Pong { timestamp: now_millis() }).ok()?;
                    write_event(&mut out, "ping", None, &ping);
                    return Some(Bytes::from(out));
                }
            }
        }
    }

    fn encode_batch(&mut self) -> Bytes {
        let mut out = Vec::with_capacity(self.batch.iter().map(|_| 256).sum());
        let metrics = self.guard.hub.metrics().clone();
        metrics.frames_sent.increment(self.batch.len() as u64);
        for frame in self.batch.drain(..) {
            match frame {
                Outgoing::Text(t) => {
                    if let Some((kind, data)) = split_frame(&t) {
                        write_event(&mut out, kind, None, data);
                    }
                }
                Outgoing::Durable {
                    frame,
                    room,
                    offset,
                } => {
                    if let Some((kind, data)) = split_frame(&frame) {
                        self.position.insert(room.to_string(), offset);
                        let id = encode_position(&self.position);
                        write_event(&mut out, kind, Some(&id), data);
                    }
                }
                // WebSocket pings; an SSE stream has its own.
                Outgoing::Ping => {}
            }
        }
        Bytes::from(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_round_trip() {
        let mut p = BTreeMap::new();
        p.insert("general".to_string(), 42);
        p.insert("team:a@b".to_string(), 7);
        let id = encode_position(&p);
        assert_eq!(id, "general=42,team:a@b=7");
        assert_eq!(parse_position(&id), p);
        assert_eq!(parse_position("garbage,x=1,bad room=2,y=z").len(), 1);
        assert!(parse_position("").is_empty());
    }
}
