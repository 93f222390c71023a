//! Server-Sent Events: `GET /events?channels=a,b`.
//!
//! An SSE stream is a hub session of wire `Sse`: a listener in the rooms it names, with
//! a bounded outbox like any other and the same per-user connection limit. Events
//! arrive in the SSE encoding, made once per event for every stream; each stream adds
//! its own `id:` line.
//!
//! Event ids carry a position per channel, with its epoch: `general=42@e1,news=7@e1`.
//! The first event, `connected`, carries the position the stream starts from, and
//! every durable event the position after it; a browser that reconnects sends the last
//! one back as `Last-Event-ID` and gets what it missed on every channel, once, in
//! order (within `store.recovery_max_bytes` for the whole stream). A position from
//! another epoch is not trusted.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use futures_util::stream;
use serde::{Deserialize, Serialize};
use switchboard_protocol::{CloseCode, ErrorKind, Pong, is_valid_room_id, now_millis};
use utoipa::{IntoParams, ToSchema};

use crate::app::App;
use crate::auth::bearer;
use crate::encode::sse;
use crate::error::{ApiError, ErrorBody};
use crate::hub::{ConnectError, Outgoing, Registration};

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
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

/// A channel's position: its last offset and the epoch of its history.
type Position = (u64, Option<Arc<str>>);

/// A stream of room events as Server-Sent Events.
#[utoipa::path(
    get,
    path = "/events",
    tag = "events",
    params(EventsParams, ("Last-Event-ID" = Option<String>, Header, description = "resume position, as sent in event ids")),
    security((), ("bearer" = [])),
    responses(
        (status = 200, description = "an endless `text/event-stream`: `connected`, then room events named by their type, `ping` every 30 s", content_type = "text/event-stream", body = String),
        (status = 400, description = "no, too many or invalid channels", body = ErrorBody),
        (status = 401, description = "missing or bad token", body = ErrorBody),
        (status = 403, description = "a channel the user may not read", body = ErrorBody),
        (status = 429, description = "the user already holds as many connections as allowed", body = ErrorBody),
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
    let mut channels: Vec<String> = Vec::new();
    for c in params.channels.as_deref().unwrap_or_default().split(',') {
        let c = c.trim();
        if !c.is_empty() && !channels.iter().any(|seen| seen == c) {
            channels.push(c.to_string());
        }
    }
    if channels.is_empty() {
        return Err(ApiError::bad_request("channels is required: ?channels=a,b"));
    }
    let max = app.config.sse.max_channels;
    if channels.len() > max {
        return Err(ApiError::bad_request(format!(
            "at most {max} channels per stream"
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

    let registration = hub
        .connect(identity, crate::hub::Wire::Sse, |_| {})
        .await
        .map_err(|e| match e {
            ConnectError::TooManyConnections => {
                ApiError::too_many_requests("too_many_connections", "Too many connections")
            }
            e => {
                tracing::error!(error = %e, "SSE connection refused");
                ApiError::unavailable("unavailable", "Service unavailable")
            }
        })?;
    let session = registration.session().clone();
    let mut position = BTreeMap::new();
    let mut recovered = resume.as_ref().map(|_| BTreeMap::new());
    // One replay budget for the whole stream: its outbox is not drained until the
    // response starts, so every channel's replay must fit in it together.
    let mut budget = hub.settings().recovery_max_bytes;
    for channel in &channels {
        let at = resume.as_ref().and_then(|r| r.get(channel)).cloned();
        let (since, epoch) = match at {
            Some((offset, epoch)) => (Some(offset), epoch.map(|e| e.to_string())),
            None => (None, None),
        };
        let joined = hub
            .subscribe(&session, channel.clone(), since, epoch, budget)
            .await
            .map_err(|e| match e {
                ErrorKind::Forbidden => {
                    ApiError::forbidden(format!("Forbidden: channel {channel}"))
                }
                ErrorKind::Internal => ApiError::internal(),
                e => ApiError::bad_request(e.to_string()),
            })?;
        budget = budget.saturating_sub(joined.replayed_bytes);
        let complete = joined.recovered.unwrap_or(true);
        if let Some(r) = recovered.as_mut() {
            r.insert(channel.clone(), complete);
        }
        // Replayed: the events that follow move the position on from `since`. Not
        // recovered, or new: the stream starts at the room's head.
        let start = match (since, joined.recovered) {
            (Some(since), Some(true)) => since,
            _ => joined.position.offset,
        };
        position.insert(channel.clone(), (start, Some(joined.position.epoch)));
    }

    let hello = SseConnected {
        client_id: session.client_id.to_string(),
        channels,
        timestamp: now_millis(),
        recovered,
    };
    let mut first = Vec::new();
    let json = serde_json::to_string(&hello).map_err(|_| ApiError::internal())?;
    sse::event(
        &mut first,
        &sse::wrap("connected", &json),
        Some(&encode_position(&position)),
    );
    let ping_every = Duration::from_secs(app.config.sse.ping_secs);
    let state = Stream {
        registration,
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

/// `general=42@e1,news=7@e1`: room ids never contain `=` or `,`, offsets are digits.
pub fn encode_position(position: &BTreeMap<String, Position>) -> String {
    let mut out = String::new();
    for (i, (room, (offset, epoch))) in position.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(room);
        out.push('=');
        out.push_str(&offset.to_string());
        if let Some(epoch) = epoch {
            out.push('@');
            out.push_str(epoch);
        }
    }
    out
}

/// Parses an event id; parts that are not `room=offset[@epoch]` are ignored (a stale
/// or hand-made id resumes what it can). An offset past `u64` is kept as the largest
/// one, which no room reaches.
pub fn parse_position(id: &str) -> BTreeMap<String, Position> {
    id.split(',')
        .filter_map(|part| {
            let (room, rest) = part.split_once('=')?;
            let (offset, epoch) = match rest.split_once('@') {
                Some((o, e)) if !e.trim().is_empty() => (o, Some(e.trim().into())),
                Some((o, _)) => (o, None),
                None => (rest, None),
            };
            let offset = offset.trim();
            if offset.is_empty() || !offset.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            let offset = offset.parse().unwrap_or(u64::MAX);
            let room = room.trim();
            is_valid_room_id(room).then(|| (room.to_string(), (offset, epoch)))
        })
        .collect()
}

struct Stream {
    /// Dropping the stream (the client went away, or it ended) unregisters the session.
    registration: Registration,
    position: BTreeMap<String, Position>,
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
        let session = self.registration.session().clone();
        loop {
            tokio::select! {
                _ = session.ready() => {
                    let closing = session.take(&mut self.batch);
                    if closing.is_some() {
                        self.done = true;
                        if closing == Some(CloseCode::SlowConsumer) {
                            self.registration.hub().metrics().slow_consumers.increment(1);
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
                    sse::event(&mut out, &sse::wrap("ping", &ping), None);
                    return Some(Bytes::from(out));
                }
            }
        }
    }

    fn encode_batch(&mut self) -> Bytes {
        let mut out = Vec::with_capacity(self.batch.iter().map(|_| 256).sum());
        self.registration
            .hub()
            .metrics()
            .frames_sent
            .increment(self.batch.len() as u64);
        for frame in self.batch.drain(..) {
            match frame {
                Outgoing::Frame(f) => sse::event(&mut out, &f, None),
                Outgoing::Positioned {
                    frame,
                    room,
                    offset,
                    epoch,
                } => {
                    self.position
                        .insert(room.to_string(), (offset, Some(epoch)));
                    let id = encode_position(&self.position);
                    sse::event(&mut out, &frame, Some(&id));
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
        let mut p: BTreeMap<String, Position> = BTreeMap::new();
        p.insert("general".to_string(), (42, Some("e1".into())));
        p.insert("team:a@b".to_string(), (7, Some("e1".into())));
        let id = encode_position(&p);
        assert_eq!(id, "general=42@e1,team:a@b=7@e1");
        assert_eq!(parse_position(&id), p);
        assert_eq!(parse_position("garbage,x=1,bad room=2,y=z").len(), 1);
        assert!(parse_position("").is_empty());
        // The first release's ids had no epoch; past u64 is beyond every room.
        let old = parse_position("general=42,news=99999999999999999999999");
        assert_eq!(old["general"], (42, None));
        assert_eq!(old["news"], (u64::MAX, None));
    }
}
