//! Socket.IO v5 decoding (`socketio::Packet::decode`, the payload of an Engine.IO
//! message) on any UTF-8 text. Must not panic, and what decodes must be what the
//! server relies on:
//! - the attachment limit only refuses packets over it;
//! - a packet re-encodes (`write_header`, `message`) into text that decodes to the same
//!   kind, attachments, namespace, id and data;
//! - an event splits (`Packet::event`) into its name (a string that is not reserved, or
//!   a number) and the rest of its array, rebuilds with `event_message`, and goes on to
//!   `Request::from_event` in both dialects, as the hub's Socket.IO path does.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use switchboard_protocol::socketio::{self, EventName, Kind, Packet, RESERVED_EVENTS, engine};

/// The server's default (transport/socketio/mod.rs).
const MAX_ATTACHMENTS: usize = 10;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let limited = Packet::decode(text, MAX_ATTACHMENTS);
    let unlimited = Packet::decode(text, usize::MAX);
    match (&limited, &unlimited) {
        (Ok(a), Ok(b)) => assert_eq!(a, b),
        (Err(_), Ok(b)) => assert!(b.attachments > MAX_ATTACHMENTS, "{text:?}: {b:?}"),
        (Ok(a), Err(e)) => panic!("{text:?}: {a:?} under the limit, {e} without"),
        (Err(_), Err(_)) => {}
    }
    let Ok(packet) = unlimited else {
        return;
    };
    assert!(packet.namespace.starts_with('/') && !packet.namespace.contains(','));
    if !packet.kind.is_binary() {
        assert_eq!(packet.attachments, 0);
    }

    // Re-encoding, alone and as an Engine.IO message.
    let mut header = String::new();
    socketio::write_header(
        &mut header,
        packet.kind,
        packet.attachments,
        packet.namespace,
        packet.id,
    );
    let reencoded = header + packet.data.unwrap_or("");
    let again = Packet::decode(&reencoded, usize::MAX)
        .unwrap_or_else(|e| panic!("{text:?} re-encoded as {reencoded:?}: {e}"));
    assert_eq!(again, packet, "{text:?} re-encoded as {reencoded:?}");
    let message = socketio::message(
        packet.kind,
        packet.attachments,
        packet.namespace,
        packet.id,
        packet.data,
    );
    assert_eq!(
        engine::Packet::decode(&message),
        Ok(engine::Packet::Message(reencoded.as_str()))
    );

    match packet.kind {
        Kind::Event | Kind::BinaryEvent => {
            let (name, args) = packet
                .event()
                .unwrap_or_else(|e| panic!("{text:?}: a valid event does not split: {e}"));
            let array: Vec<Value> = serde_json::from_str(packet.data.expect("events have data"))
                .expect("validated as an array");
            assert_eq!(args.len() + 1, array.len());
            for (raw, value) in args.iter().zip(&array[1..]) {
                assert_eq!(&serde_json::from_str::<Value>(raw.get()).unwrap(), value);
            }
            let name = match (name, &array[0]) {
                (EventName::Text(n), Value::String(s)) => {
                    assert_eq!(&*n, s);
                    assert!(!RESERVED_EVENTS.contains(&s.as_str()), "reserved {s:?}");
                    n
                }
                (EventName::Other(raw), Value::Number(_)) => {
                    assert!(
                        serde_json::from_str::<Value>(raw.get())
                            .unwrap()
                            .is_number()
                    );
                    return;
                }
                (n, v) => panic!("{text:?}: event name {n:?} for {v:?}"),
            };
            // Rebuilt as the server writes events.
            if let Some(first) = args.first() {
                let out = socketio::event_message(packet.namespace, &name, first.get(), None);
                let p = Packet::decode(&out[1..], 0)
                    .unwrap_or_else(|e| panic!("event_message wrote {out:?}: {e}"));
                assert_eq!(
                    (p.kind, p.namespace, p.id),
                    (Kind::Event, packet.namespace, None)
                );
                let (n, a) = p.event().expect("an event");
                assert!(
                    matches!(n, EventName::Text(ref n) if *n == *name),
                    "{out:?}"
                );
                assert_eq!(a.len(), 1);
                assert_eq!(a[0].get(), first.get());
            }
            // The hub takes the first argument as the request's payload.
            let _ = switchboard_fuzz::check_both_dialects(&name, args.first().copied());
        }
        Kind::Ack | Kind::BinaryAck => {
            assert!(packet.id.is_some());
            let _ = packet.event();
        }
        Kind::Connect | Kind::Disconnect | Kind::ConnectError => {}
    }
});
