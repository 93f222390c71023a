//! A run's report: the human summary and the one JSON line.

use std::fmt;

use serde::Serialize;

use crate::connect::ConnectReport;
use crate::durable::DurableReport;
use crate::echo::EchoReport;
use crate::fanout::FanoutReport;
use crate::rooms::RoomsReport;
use crate::stats::LatencySummary;

/// What a scenario measured. Serialized as one JSON object tagged with `scenario`;
/// every other value is a number (or null when it could not be measured).
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "scenario", rename_all = "snake_case")]
pub enum Report {
    Connect(ConnectReport),
    Fanout(FanoutReport),
    Echo(EchoReport),
    Durable(DurableReport),
    Rooms(RoomsReport),
}

impl Report {
    /// One line of JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("reports serialize")
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Report::Connect(r) => r.fmt(f),
            Report::Fanout(r) => r.fmt(f),
            Report::Echo(r) => r.fmt(f),
            Report::Durable(r) => r.fmt(f),
            Report::Rooms(r) => r.fmt(f),
        }
    }
}

/// `  label  p50 .. p90 .. p99 .. max ..` in milliseconds.
pub(crate) fn latency_line(
    f: &mut fmt::Formatter<'_>,
    label: &str,
    latency: Option<&LatencySummary>,
) -> fmt::Result {
    match latency {
        None => writeln!(f, "  {label:<12} (none recorded)"),
        Some(l) => writeln!(
            f,
            "  {label:<12} p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  (min {}, mean {})",
            ms(l.p50_us),
            ms(l.p90_us),
            ms(l.p99_us),
            ms(l.p999_us),
            ms(l.max_us),
            ms(l.min_us),
            ms(l.mean_us as u64),
        ),
    }
}

/// Microseconds as milliseconds, three decimals.
pub(crate) fn ms(us: u64) -> String {
    format!("{:.3} ms", us as f64 / 1000.0)
}

/// Bytes in binary units.
pub(crate) fn bytes(b: f64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = b;
    let mut unit = 0;
    while v.abs() >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{v:.0} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units() {
        assert_eq!(ms(1234), "1.234 ms");
        assert_eq!(bytes(512.0), "512 B");
        assert_eq!(bytes(3.5 * 1024.0 * 1024.0), "3.5 MiB");
        assert_eq!(bytes(-2048.0), "-2.0 KiB");
    }
}
