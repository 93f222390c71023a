//! Prometheus metrics: one recorder per server (no global), handles resolved once so
//! the hot path only touches atomics.

use metrics::{Counter, Gauge, Histogram, Key, Label, Level, Metadata, Recorder};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};

const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1024.0];

pub struct Metrics {
    render: PrometheusHandle,
    pub connections_websocket: Gauge,
    pub connections_sse: Gauge,
    pub connections_socketio: Gauge,
    pub rooms: Gauge,
    pub joins_pending: Gauge,
    pub frames_received: Counter,
    pub frames_sent: Counter,
    pub messages_stored: Counter,
    pub deliveries: Counter,
    pub slow_consumers: Counter,
    pub rate_limited: Counter,
    pub auth_failures: Counter,
    pub files_uploaded: Counter,
    pub file_bytes_uploaded: Counter,
    pub publish_latency: Histogram,
    pub store_commit_latency: Histogram,
    pub store_batch_size: Histogram,
    pub broker_received: Counter,
    pub gap_filled: Counter,
}

/// Every metric name, with its help text: what docs/operations.md lists.
pub const NAMES: &[(&str, &str)] = &[
    ("switchboard_connections", "open connections, by transport"),
    (
        "switchboard_rooms",
        "rooms with at least one member on this node",
    ),
    (
        "switchboard_joins_pending",
        "joins in progress (each buffers its room's live events until it completes)",
    ),
    (
        "switchboard_frames_received_total",
        "frames received from clients",
    ),
    ("switchboard_frames_sent_total", "frames written to clients"),
    (
        "switchboard_messages_stored_total",
        "room messages made durable",
    ),
    (
        "switchboard_deliveries_total",
        "room events queued to a member",
    ),
    (
        "switchboard_slow_consumers_total",
        "connections closed because their outbox overflowed (1013)",
    ),
    (
        "switchboard_rate_limited_total",
        "client messages refused by the rate limit",
    ),
    (
        "switchboard_auth_failures_total",
        "connections or requests refused for a bad token or key",
    ),
    (
        "switchboard_files_uploaded_total",
        "files uploaded and kept",
    ),
    (
        "switchboard_file_bytes_uploaded_total",
        "bytes of the files uploaded and kept",
    ),
    (
        "switchboard_publish_latency_seconds",
        "send_message received to durable and published",
    ),
    (
        "switchboard_store_commit_latency_seconds",
        "one store transaction",
    ),
    (
        "switchboard_store_batch_size",
        "messages per store transaction",
    ),
    (
        "switchboard_broker_received_total",
        "room events this node received from the cluster's broker (Redis)",
    ),
    (
        "switchboard_gap_filled_total",
        "durable messages read from the store to fill a gap in a room's order",
    ),
];

fn meta() -> Metadata<'static> {
    Metadata::new(module_path!(), Level::INFO, None)
}

impl Metrics {
    pub fn new() -> Metrics {
        let recorder: PrometheusRecorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
            .and_then(|b| {
                b.set_buckets_for_metric(
                    Matcher::Full("switchboard_store_batch_size".into()),
                    BATCH_BUCKETS,
                )
            })
            .expect("bucket lists are not empty")
            .build_recorder();
        for (name, help) in NAMES {
            recorder.describe_counter((*name).into(), None, (*help).into());
        }
        let counter =
            |name: &'static str| recorder.register_counter(&Key::from_static_name(name), &meta());
        let histogram =
            |name: &'static str| recorder.register_histogram(&Key::from_static_name(name), &meta());
        let connections = |transport: &'static str| {
            let key = Key::from_parts(
                "switchboard_connections",
                vec![Label::new("transport", transport)],
            );
            recorder.register_gauge(&key, &meta())
        };
        Metrics {
            render: recorder.handle(),
            connections_websocket: connections("websocket"),
            connections_sse: connections("sse"),
            connections_socketio: connections("socketio"),
            rooms: recorder.register_gauge(&Key::from_static_name("switchboard_rooms"), &meta()),
            joins_pending: recorder
                .register_gauge(&Key::from_static_name("switchboard_joins_pending"), &meta()),
            frames_received: counter("switchboard_frames_received_total"),
            frames_sent: counter("switchboard_frames_sent_total"),
            messages_stored: counter("switchboard_messages_stored_total"),
            deliveries: counter("switchboard_deliveries_total"),
            slow_consumers: counter("switchboard_slow_consumers_total"),
            rate_limited: counter("switchboard_rate_limited_total"),
            auth_failures: counter("switchboard_auth_failures_total"),
            files_uploaded: counter("switchboard_files_uploaded_total"),
            file_bytes_uploaded: counter("switchboard_file_bytes_uploaded_total"),
            publish_latency: histogram("switchboard_publish_latency_seconds"),
            broker_received: counter("switchboard_broker_received_total"),
            gap_filled: counter("switchboard_gap_filled_total"),
            store_commit_latency: histogram("switchboard_store_commit_latency_seconds"),
            store_batch_size: histogram("switchboard_store_batch_size"),
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        self.render.render()
    }

    /// Folds the histograms' recorded samples into their buckets. Rendering does it
    /// too; without either, samples pile up with every message. Run periodically.
    pub fn upkeep(&self) {
        self.render.run_upkeep();
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
