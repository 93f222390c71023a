//! Load generator for the Switchboard native WebSocket protocol (and, for `connect`
//! and `fanout`, Socket.IO: see [`sio`]), as a library.
//!
//! One module per scenario (`connect`, `fanout`, `echo`, `durable`, `rooms`), each a `run`
//! function that takes a [`Target`] and its options and returns a report; the
//! `switchboard-bench` binary is a thin CLI over them. The bench shares the machine
//! with the server it measures, so it stays light: one task per connection that
//! reads, a byte scan instead of a JSON parse on the hot path (see [`scan`]), and
//! tallies kept per task and merged at the end.

pub mod connect;
pub mod durable;
pub mod echo;
mod error;
pub mod fanout;
mod pace;
pub mod process;
mod progress;
pub mod report;
pub mod rlimit;
pub mod rooms;
pub mod scan;
pub mod sio;
pub mod stats;
pub mod target;
pub mod wire;

use std::time::Duration;

pub use error::BenchError;
pub use report::Report;
pub use target::{Proto, ProtoArg, Target, TargetArgs};

/// A flag's seconds, 0 allowed.
fn seconds(value: f64, flag: &str) -> Result<Duration, BenchError> {
    Duration::try_from_secs_f64(value)
        .map_err(|_| BenchError::Options(format!("{flag} must be a number of seconds >= 0")))
}

/// A flag's seconds, above 0.
fn positive(value: f64, flag: &str) -> Result<Duration, BenchError> {
    match seconds(value, flag)? {
        d if d.is_zero() => Err(BenchError::Options(format!("{flag} must be above 0"))),
        d => Ok(d),
    }
}
