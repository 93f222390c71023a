//! The native WebSocket protocol's frames: `{"type": ..., "data": ..., "ref": ...}`.

use serde::Serialize;
use switchboard_protocol::Ref;

use super::Frame;

/// `{"type": kind, "data": data, "ref": reference}`.
pub fn encode<T: Serialize + ?Sized>(kind: &str, data: &T, reference: Option<&Ref>) -> Frame {
    switchboard_protocol::encode(kind, data, reference).into()
}

/// The same, around `data` that is JSON already: no parse, one copy.
pub fn wrap(kind: &str, data: &str, reference: Option<&Ref>) -> Frame {
    let mut out = String::with_capacity(kind.len() + data.len() + 24);
    out.push_str("{\"type\":");
    // Type names are ASCII identifiers; a custom one is still escaped properly.
    out.push_str(&serde_json::to_string(kind).expect("a str serializes"));
    out.push_str(",\"data\":");
    out.push_str(data);
    if let Some(r) = reference {
        out.push_str(",\"ref\":");
        out.push_str(&serde_json::to_string(r).expect("a ref serializes"));
    }
    out.push('}');
    out.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrap_matches_encode() {
        let data = serde_json::json!({"a": [1, "x"]});
        let r = Ref::Number(3.into());
        assert_eq!(
            wrap("t", &data.to_string(), Some(&r)),
            encode("t", &data, Some(&r))
        );
        assert_eq!(
            wrap("t", "{}", None),
            encode("t", &serde_json::json!({}), None)
        );
    }
}
