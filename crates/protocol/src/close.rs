//! Close codes: the one table of why the server ends a connection.

/// Why the server closes a WebSocket, with the code and reason it sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseCode {
    /// 1000: a normal close.
    Normal,
    /// 1001: the server is draining (SIGTERM); reconnect elsewhere or later.
    GoingAway,
    /// 1007: a text frame that is not valid UTF-8.
    InvalidUtf8,
    /// 1008: the token was missing or bad.
    AuthenticationFailed,
    /// 1008: the client kept exceeding its message rate.
    RateLimited,
    /// 1008: the user already has as many connections as allowed.
    TooManyConnections,
    /// 1009: a frame or message larger than the configured limit.
    TooBig,
    /// 1011: the server failed.
    Internal,
    /// 1012: the server is restarting; reconnect.
    ServiceRestart,
    /// 1013: the connection's outbox overflowed (slow consumer); reconnect and recover.
    SlowConsumer,
    /// 1000 with a reason: an operator disconnected the user.
    Disconnected,
    /// 1001: no answer to pings within the liveness timeout.
    Timeout,
}

impl CloseCode {
    pub fn code(self) -> u16 {
        match self {
            CloseCode::Normal | CloseCode::Disconnected => 1000,
            CloseCode::GoingAway | CloseCode::Timeout => 1001,
            CloseCode::InvalidUtf8 => 1007,
            CloseCode::AuthenticationFailed
            | CloseCode::RateLimited
            | CloseCode::TooManyConnections => 1008,
            CloseCode::TooBig => 1009,
            CloseCode::Internal => 1011,
            CloseCode::ServiceRestart => 1012,
            CloseCode::SlowConsumer => 1013,
        }
    }

    pub fn reason(self) -> &'static str {
        match self {
            CloseCode::Normal => "",
            CloseCode::GoingAway => "Server shutting down",
            CloseCode::InvalidUtf8 => "Invalid UTF-8",
            CloseCode::AuthenticationFailed => "Authentication failed",
            CloseCode::RateLimited => "Rate limit exceeded",
            CloseCode::TooManyConnections => "Too many connections",
            CloseCode::TooBig => "Message too big",
            CloseCode::Internal => "Internal error",
            CloseCode::ServiceRestart => "Service restart",
            CloseCode::SlowConsumer => "Slow consumer",
            CloseCode::Disconnected => "Disconnected by server",
            CloseCode::Timeout => "Ping timeout",
        }
    }
}
