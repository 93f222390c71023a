//! Reading the few facts the bench needs from a raw frame without parsing it.
//!
//! A subscriber may get tens of thousands of frames a second while sharing the CPU
//! with the server, so the hot path looks at bytes: the frame's type at its head, the
//! stamp at the end of a message's content, the `ref` at the frame's tail. The fast
//! paths match the server's own encoding (`{"type":..,"data":..,"ref":..}` in that
//! order); any other layout falls back to a JSON parse, so another server that speaks
//! the protocol still measures correctly, only slower.

use std::borrow::Cow;

use serde::Deserialize;

/// The marker before the send time, the last thing in a bench message's content:
/// `<padding>|<publisher>:<seq>|t=<µs since the epoch>`.
pub const TIME_MARK: &[u8] = b"|t=";

/// Longest `<publisher>:<seq>` tag: two u64s and the colon.
const TAG_MAX: usize = 41;

/// Who sent a bench message, its sequence number, and when it was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub publisher: u32,
    pub seq: u64,
    pub sent_us: u64,
}

/// The content suffix that [`stamp`] finds again.
pub fn write_stamp(out: &mut String, publisher: u32, seq: u64, sent_us: u64) {
    use std::fmt::Write;
    let _ = write!(out, "|{publisher}:{seq}|t={sent_us}");
}

#[derive(Deserialize)]
struct Head<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(rename = "ref", default)]
    reference: Option<serde_json::Value>,
}

/// The frame's `type`.
pub fn kind(frame: &str) -> Option<Cow<'_, str>> {
    if let Some(rest) = frame.strip_prefix("{\"type\":\"") {
        let end = rest.find('"')?;
        return Some(Cow::Borrowed(&rest[..end]));
    }
    serde_json::from_str::<Head<'_>>(frame).ok().map(|h| h.kind)
}

/// Whether the frame is a `new_message`, without parsing it when it can.
pub fn is_new_message(frame: &str) -> bool {
    if frame.starts_with("{\"type\":\"") {
        return frame.starts_with("{\"type\":\"new_message\"");
    }
    kind(frame).is_some_and(|k| k == "new_message")
}

/// The stamp at the end of a bench message's content, searched from the frame's end:
/// after the content the server writes only `type`, `metadata`, `timestamp` and
/// `offset`, so the search passes a few dozen bytes, never the padding.
pub fn stamp(frame: &str) -> Option<Stamp> {
    let bytes = frame.as_bytes();
    let at = bytes
        .windows(TIME_MARK.len())
        .rposition(|w| w == TIME_MARK)?;
    let after = &bytes[at + TIME_MARK.len()..];
    let digits = after.iter().take_while(|b| b.is_ascii_digit()).count();
    // The content is a JSON string: the time must be the last thing in it.
    if after.get(digits) != Some(&b'"') {
        return None;
    }
    let sent_us = parse_u64(&after[..digits])?;
    let head = &bytes[at.saturating_sub(TAG_MAX)..at];
    let bar = head.iter().rposition(|&b| b == b'|')?;
    let tag = &head[bar + 1..];
    let colon = tag.iter().position(|&b| b == b':')?;
    Some(Stamp {
        publisher: u32::try_from(parse_u64(&tag[..colon])?).ok()?,
        seq: parse_u64(&tag[colon + 1..])?,
        sent_us,
    })
}

/// The frame's numeric `ref`, read from its tail (`..,"ref":123}`).
pub fn reference(frame: &str) -> Option<u64> {
    let body = frame.strip_suffix('}')?;
    let digits = body
        .bytes()
        .rev()
        .take_while(|b| b.is_ascii_digit())
        .count();
    let (head, number) = body.split_at(body.len() - digits);
    if digits > 0 && head.ends_with(",\"ref\":") {
        return parse_u64(number.as_bytes());
    }
    let head: Head<'_> = serde_json::from_str(frame).ok()?;
    match head.reference? {
        serde_json::Value::Number(n) => n.as_u64(),
        serde_json::Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

fn parse_u64(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 20 {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &d| {
        if !d.is_ascii_digit() {
            return None;
        }
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `new_message` as the server encodes it.
    const DELIVERED: &str = r#"{"type":"new_message","data":{"id":"0193a1b2","roomId":"bench","sender":{"id":"pub-0","username":"pub-0"},"content":"xxxxxxxx|3:17|t=1732000000123456","type":"text","metadata":{},"timestamp":1732000000124,"offset":42}}"#;

    #[test]
    fn finds_the_stamp_in_a_server_frame() {
        assert!(is_new_message(DELIVERED));
        assert_eq!(
            stamp(DELIVERED),
            Some(Stamp {
                publisher: 3,
                seq: 17,
                sent_us: 1_732_000_000_123_456
            })
        );
    }

    #[test]
    fn stamp_round_trips() {
        let mut content = "x".repeat(100);
        write_stamp(&mut content, 7, u64::MAX, 5);
        let frame = format!(r#"{{"type":"new_message","data":{{"content":"{content}"}}}}"#);
        assert_eq!(
            stamp(&frame),
            Some(Stamp {
                publisher: 7,
                seq: u64::MAX,
                sent_us: 5
            })
        );
    }

    #[test]
    fn content_that_is_not_a_bench_message_has_no_stamp() {
        let plain = r#"{"type":"new_message","data":{"content":"hello","offset":1}}"#;
        assert_eq!(stamp(plain), None);
        // The mark must end the content string.
        let inner = r#"{"type":"new_message","data":{"content":"a|1:2|t=3 more"}}"#;
        assert_eq!(stamp(inner), None);
        let no_tag = r#"{"type":"new_message","data":{"content":"xx|t=3"}}"#;
        assert_eq!(stamp(no_tag), None);
    }

    #[test]
    fn other_field_orders_fall_back_to_parsing() {
        let reordered = r#"{"data":{"content":"x|0:1|t=9"},"type":"new_message"}"#;
        assert!(is_new_message(reordered));
        assert_eq!(stamp(reordered).map(|s| s.sent_us), Some(9));
        assert_eq!(kind(r#"{"ref":1,"type":"pong"}"#).as_deref(), Some("pong"));
        assert!(!is_new_message(r#"{"type":"room_joined","data":{}}"#));
        assert!(!is_new_message("not json"));
    }

    #[test]
    fn reads_the_ref() {
        assert_eq!(
            reference(r#"{"type":"ack","data":{"id":"a","offset":5},"ref":1732000000123456}"#),
            Some(1_732_000_000_123_456)
        );
        assert_eq!(
            reference(r#"{"type":"pong","data":{"timestamp":5},"ref":7}"#),
            Some(7)
        );
        assert_eq!(reference(r#"{"ref":"12","type":"pong"}"#), Some(12));
        assert_eq!(reference(r#"{"type":"pong","data":{"timestamp":5}}"#), None);
        assert_eq!(kind(r#"{"type":"ack","data":{}}"#).as_deref(), Some("ack"));
    }
}
