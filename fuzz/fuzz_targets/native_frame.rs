//! The native protocol's frame parser (`Frame::parse`) on any UTF-8 text. Must not
//! panic; a request it accepts passed the validation the hub relies on (valid room ids,
//! limits within bounds, required fields present; `switchboard_fuzz::check_request`);
//! `Request::from_event` gives the same request for the frame's type and data, and the
//! Socket.IO dialect differs only where it is meant to.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde::Deserialize;
use serde_json::value::RawValue;
use switchboard_protocol::Frame;

/// The frame's envelope, read again to call the request parser directly. Laxer than
/// the protocol's own (any `ref`), so it reads every frame that `Frame::parse` takes.
#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default, borrow)]
    data: Option<&'a RawValue>,
    #[serde(rename = "ref", default)]
    _reference: Option<serde::de::IgnoredAny>,
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let frame = match Frame::parse(text) {
        Ok(frame) => frame,
        Err(e) => {
            let _ = (e.to_string(), e.code());
            return;
        }
    };
    let env: Envelope<'_> = serde_json::from_str(text)
        .unwrap_or_else(|e| panic!("{text:?} parsed as a frame but has no envelope: {e}"));
    let request = switchboard_fuzz::check_both_dialects(&env.kind, env.data);
    assert_eq!(frame.request, request, "{text:?}");
});
