//! The bench's one error type: why a scenario could not run.
//!
//! Failures that are part of the measurement (a connection refused during `connect`,
//! a message lost in `fanout`) are counted in the report, not raised here.

use tokio_tungstenite::tungstenite;

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("invalid --url {url:?}: {reason}")]
    Url { url: String, reason: String },
    #[error("invalid options: {0}")]
    Options(String),
    #[error("cannot mint a token: {0}")]
    Token(#[from] jsonwebtoken::errors::Error),
    #[error("cannot connect: {0}")]
    Io(#[from] std::io::Error),
    #[error("websocket: {0}")]
    Ws(Box<tungstenite::Error>),
    /// The server closed during setup; 1008 here usually means a wrong `--jwt-secret`.
    #[error("the server closed the connection: code {code}, reason {reason:?}")]
    Closed { code: u16, reason: String },
    #[error("the server answered with an error: {0}")]
    Server(String),
    #[error("unexpected frame while waiting for {expected}: {frame}")]
    Unexpected {
        expected: &'static str,
        frame: String,
    },
    #[error("--phase-command at {moment} failed: {reason}")]
    PhaseCommand {
        moment: &'static str,
        reason: String,
    },
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),
    #[error("{failed} of {total} {role} could not be set up; first error: {first}")]
    Setup {
        role: &'static str,
        failed: usize,
        total: usize,
        first: String,
    },
}

impl From<tungstenite::Error> for BenchError {
    fn from(e: tungstenite::Error) -> Self {
        BenchError::Ws(Box::new(e))
    }
}
