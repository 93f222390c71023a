//! Engine.IO v4 decoding: a packet as a WebSocket text frame carries it
//! (`engine::Packet::decode`) and a polling payload (`engine::decode_payload`), on any
//! UTF-8 text (the server refuses other bytes before decoding). Neither may panic; a
//! packet that decodes is its type digit followed by its data; a payload has one item
//! per `\x1e`-separated part, each as the part decodes alone; a binary item re-encodes
//! (`encode_binary`) into an item that decodes to the same bytes. Message packets go on
//! to the Socket.IO decoder, as the server's polling path does.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard_protocol::socketio::{self, RECORD_SEPARATOR, engine};

/// The server's default (transport/socketio/mod.rs).
const MAX_ATTACHMENTS: usize = 10;

fn check_packet(text: &str, decoded: Result<engine::Packet<'_>, socketio::DecodeError>) {
    match decoded {
        Ok(packet) => {
            let digit = text.as_bytes()[0];
            assert!((b'0'..=b'6').contains(&digit), "{text:?} decoded");
            let data = match packet {
                engine::Packet::Open(d)
                | engine::Packet::Ping(d)
                | engine::Packet::Pong(d)
                | engine::Packet::Message(d) => d,
                engine::Packet::Close | engine::Packet::Upgrade | engine::Packet::Noop => {
                    &text[1..]
                }
            };
            assert_eq!(&text[1..], data, "the data is all after the type digit");
            if let engine::Packet::Message(m) = packet {
                let _ = socketio::Packet::decode(m, MAX_ATTACHMENTS);
            }
        }
        Err(_) => assert!(
            !matches!(text.as_bytes().first(), Some(b'0'..=b'6')),
            "{text:?} refused"
        ),
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };

    // One packet (a WebSocket text frame).
    check_packet(text, engine::Packet::decode(text));

    // A polling payload.
    let mut parts = text.split(RECORD_SEPARATOR);
    for item in engine::decode_payload(text) {
        let part = parts.next().expect("no more items than parts");
        match item {
            Ok(engine::Item::Binary(bytes)) => {
                assert!(part.starts_with('b'));
                let encoded = engine::encode_binary(&bytes);
                let again: Vec<_> = engine::decode_payload(&encoded).collect();
                assert_eq!(again, [Ok(engine::Item::Binary(bytes))]);
            }
            Ok(engine::Item::Text(packet)) => {
                assert!(!part.starts_with('b'));
                assert_eq!(engine::Packet::decode(part), Ok(packet));
                check_packet(part, Ok(packet));
            }
            Err(_) => {
                if !part.starts_with('b') {
                    check_packet(part, engine::Packet::decode(part));
                }
            }
        }
    }
    assert!(parts.next().is_none(), "one item per part");
});
