//! HTTP long-polling: a GET waits for packets and takes them all, a POST brings the
//! client's packets. One of each at a time per connection; a second concurrent one is
//! a protocol error that closes the connection.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use switchboard_protocol::socketio::engine;

use super::conn::{CloseReason, Out, Transport};
use super::{Conn, Engine, bad_request};

/// Clears a flag of the connection's state when the request ends, however it ends.
struct Flag<'a> {
    conn: &'a Conn,
    get: bool,
}

impl Drop for Flag<'_> {
    fn drop(&mut self) {
        let mut st = self.conn.state();
        if self.get {
            st.polling = false;
        } else {
            st.posting = false;
        }
    }
}

/// Answers a long-poll with what is queued, waiting for something if nothing is.
pub(super) async fn get(engine: Engine, conn: Arc<Conn>) -> Response {
    {
        let mut st = conn.state();
        // Upgraded: polling is refused, the session goes on.
        if st.transport != Transport::Polling {
            return bad_request();
        }
        // A second concurrent poll is the protocol error that ends the session.
        if st.polling {
            drop(st);
            engine.close(&conn, CloseReason::ProtocolError);
            return bad_request();
        }
        st.polling = true;
    }
    let _flag = Flag {
        conn: &conn,
        get: true,
    };

    let mut batch = Vec::new();
    let closing = loop {
        let probed = {
            let st = conn.state();
            // An upgrade took the transport: this poll ends empty-handed (a noop).
            if st.transport != Transport::Polling {
                break None;
            }
            st.probed
        };
        let closing = conn.take(&mut batch);
        // During an upgrade a poll ends at once, so the client can finish it.
        if !batch.is_empty() || closing.is_some() || probed {
            break closing;
        }
        conn.changed().await;
    };
    let mut body = String::new();
    for out in &batch {
        if !body.is_empty() {
            body.push(switchboard_protocol::socketio::RECORD_SEPARATOR);
        }
        match out {
            Out::Text(f) => body.push_str(f.as_str()),
            Out::Binary(b) => body.push_str(&engine::encode_binary(b)),
        }
    }
    if let Some(reason) = closing {
        // The client closed it itself: its poll just ends. Else it hears the close.
        if reason != CloseReason::Client {
            if !body.is_empty() {
                body.push(switchboard_protocol::socketio::RECORD_SEPARATOR);
            }
            body.push('1');
        }
        engine.close(&conn, reason);
    }
    if body.is_empty() {
        body.push('6');
    }
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; charset=UTF-8")],
        body,
    )
        .into_response()
}

/// Takes the client's packets and handles them in order.
pub(super) async fn post(engine: Engine, conn: Arc<Conn>, body: Body) -> Response {
    {
        let mut st = conn.state();
        if st.transport != Transport::Polling {
            return bad_request();
        }
        if st.posting {
            drop(st);
            engine.close(&conn, CloseReason::ProtocolError);
            return bad_request();
        }
        st.posting = true;
    }
    let _flag = Flag {
        conn: &conn,
        get: false,
    };
    let max = engine.settings().max_payload;
    let bytes = match axum::body::to_bytes(body, max).await {
        Ok(b) => b,
        Err(_) => {
            engine.close(&conn, CloseReason::ProtocolError);
            return (StatusCode::PAYLOAD_TOO_LARGE, "payload too large").into_response();
        }
    };
    let Ok(text) = std::str::from_utf8(&bytes) else {
        engine.close(&conn, CloseReason::ProtocolError);
        return bad_request();
    };
    for item in engine::decode_payload(text) {
        let Ok(item) = item else {
            engine.close(&conn, CloseReason::ProtocolError);
            return bad_request();
        };
        match engine.app().packet(&engine, &conn, item) {
            Ok(Some(work)) => {
                conn.set_busy();
                work.await;
                engine.idle(&conn);
            }
            Ok(None) => {}
            Err(reason) => {
                engine.close(&conn, reason);
                // A close packet is the client's own way out, not an error.
                if reason != CloseReason::Client {
                    return bad_request();
                }
                break;
            }
        }
    }
    (StatusCode::OK, [(header::CONTENT_TYPE, "text/html")], "ok").into_response()
}
