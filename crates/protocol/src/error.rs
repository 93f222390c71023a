//! Protocol errors: the one table of error messages a client can receive.
//!
//! `message` is the exact text of the original design (clients match on it); `code` is a
//! stable machine-readable name added beside it.

use std::fmt;

/// An error answered to a request as `error {message, code, timestamp}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ErrorKind {
    /// The frame was not JSON, or not an object with a string `type`.
    InvalidFormat,
    /// The payload of a known type had the wrong shape.
    InvalidPayload(String),
    RoomIdRequired,
    RoomIdAndContentRequired,
    RecipientIdAndContentRequired,
    InvalidRoomId,
    NotInRoom,
    Forbidden,
    TargetPeerNotFound,
    InvalidStatus,
    FileNotFound,
    UnknownType(String),
    InvalidClientMessageId,
    RateLimited,
    TooManyRooms,
    NotSupported(&'static str),
    /// A custom handler's own error message.
    Handler(String),
    /// A part the server depends on is shutting down or unreachable; retry later.
    Unavailable,
    Internal,
}

impl ErrorKind {
    /// The stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            ErrorKind::InvalidFormat => "invalid_format",
            ErrorKind::InvalidPayload(_)
            | ErrorKind::RoomIdRequired
            | ErrorKind::RoomIdAndContentRequired
            | ErrorKind::RecipientIdAndContentRequired
            | ErrorKind::InvalidRoomId
            | ErrorKind::InvalidClientMessageId => "bad_request",
            ErrorKind::NotInRoom => "not_in_room",
            ErrorKind::Forbidden => "forbidden",
            ErrorKind::TargetPeerNotFound | ErrorKind::FileNotFound => "not_found",
            ErrorKind::InvalidStatus => "bad_request",
            ErrorKind::UnknownType(_) => "unknown_type",
            ErrorKind::RateLimited => "rate_limited",
            ErrorKind::TooManyRooms => "too_many_rooms",
            ErrorKind::NotSupported(_) => "not_supported",
            ErrorKind::Handler(_) => "handler_error",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Internal => "internal",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ErrorKind::InvalidFormat => f.write_str("Invalid message format"),
            ErrorKind::InvalidPayload(why) => write!(f, "Invalid message format: {why}"),
            ErrorKind::RoomIdRequired => f.write_str("Room ID is required"),
            ErrorKind::RoomIdAndContentRequired => f.write_str("Room ID and content are required"),
            ErrorKind::RecipientIdAndContentRequired => {
                f.write_str("Recipient ID and content are required")
            }
            ErrorKind::InvalidRoomId => f.write_str("Invalid room ID"),
            ErrorKind::NotInRoom => f.write_str("Not in room"),
            ErrorKind::Forbidden => f.write_str("Forbidden"),
            ErrorKind::TargetPeerNotFound => f.write_str("Target peer not found"),
            ErrorKind::InvalidStatus => f.write_str("Invalid status"),
            ErrorKind::FileNotFound => f.write_str("File not found"),
            ErrorKind::UnknownType(t) => write!(f, "Unknown message type: {t}"),
            ErrorKind::InvalidClientMessageId => {
                f.write_str("Invalid clientMessageId: 1-64 characters of A-Za-z0-9_-")
            }
            ErrorKind::RateLimited => f.write_str("rate limit exceeded"),
            ErrorKind::TooManyRooms => f.write_str("Too many rooms"),
            ErrorKind::NotSupported(what) => write!(f, "{what} is not yet supported"),
            ErrorKind::Handler(msg) => f.write_str(msg),
            ErrorKind::Unavailable => f.write_str("Service unavailable"),
            ErrorKind::Internal => f.write_str("Internal server error"),
        }
    }
}

impl std::error::Error for ErrorKind {}
