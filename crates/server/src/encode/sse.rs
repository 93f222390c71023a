//! Server-Sent Events: `event: <type>` and `data: <json>` lines.
//!
//! The shared encoding stops before the event's end: each stream adds its own
//! `id: <position>` line to durable events, then the blank line that ends an event.
//! JSON from serde never holds a raw line break, so `data` is always one line.

use super::Frame;

/// `event: kind\ndata: data\n`, without the blank line that ends the event.
pub fn wrap(kind: &str, data: &str) -> Frame {
    let mut out = String::with_capacity(kind.len() + data.len() + 16);
    out.push_str("event: ");
    // A line break in a type name would end the field early; custom types may hold one.
    out.extend(
        kind.chars()
            .map(|c| if c == '\n' || c == '\r' { '_' } else { c }),
    );
    out.push_str("\ndata: ");
    out.push_str(data);
    out.push('\n');
    out.into()
}

/// A whole event: [`wrap`] with an optional id and the closing blank line.
pub fn event(out: &mut Vec<u8>, shared: &Frame, id: Option<&str>) {
    out.extend_from_slice(shared.bytes());
    if let Some(id) = id {
        out.extend_from_slice(b"id: ");
        out.extend_from_slice(id.as_bytes());
        out.push(b'\n');
    }
    out.push(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_end_with_a_blank_line() {
        let mut out = Vec::new();
        event(&mut out, &wrap("new_message", "{}"), Some("g=1@e"));
        assert_eq!(out, b"event: new_message\ndata: {}\nid: g=1@e\n\n");
        out.clear();
        event(&mut out, &wrap("ping", "{}"), None);
        assert_eq!(out, b"event: ping\ndata: {}\n\n");
        assert_eq!(wrap("a\nb", "1").as_str(), "event: a_b\ndata: 1\n");
    }
}
