//! `/metrics` on the admin listener: the scoreboard in the Prometheus text format,
//! built afresh for each scrape (the scoreboard, not this module, holds the state).

use std::sync::atomic::Ordering::Relaxed;

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::sys::scoreboard::{monotonic_ms, Scoreboard};
use crate::sys::traffic::{HistogramSnapshot, Snapshot};

type Labels = Vec<(String, String)>;

/// The text exposition of everything the scoreboard knows. `requests_counted`:
/// the workers count their requests (not commands, whose requests the
/// master cannot see).
pub fn render(
    board: &Scoreboard,
    resident: &dyn Fn(u64) -> Option<u64>,
    certificates: &[crate::tls::Expiry],
    requests_counted: bool,
) -> String {
    let mut registry = Registry::with_prefix("prefork");
    let header = board.header();
    let gauge = |value: u64| {
        let gauge = Gauge::<i64>::default();
        gauge.set(i64::try_from(value).unwrap_or(i64::MAX));
        gauge
    };
    let counter = |value: u64| {
        let counter = Counter::<u64>::default();
        counter.inc_by(value);
        counter
    };
    registry.register(
        "workers",
        "Worker slots configured",
        gauge(header.workers.load(Relaxed)),
    );
    registry.register(
        "reloads",
        "Reloads (HUP) completed",
        counter(header.reloads.load(Relaxed)),
    );
    let uptime = monotonic_ms().saturating_sub(header.started_ms.load(Relaxed)) / 1000;
    registry.register(
        "master_uptime_seconds",
        "Seconds since the master started",
        gauge(uptime),
    );

    let requests = Family::<Labels, Counter>::default();
    let connections = Family::<Labels, Gauge>::default();
    let in_flight = Family::<Labels, Gauge>::default();
    let worker_uptime = Family::<Labels, Gauge>::default();
    let memory = Family::<Labels, Gauge>::default();
    for record in board.live() {
        let pid = record.pid.load(Relaxed);
        let labels = vec![
            ("slot".to_owned(), record.slot.load(Relaxed).to_string()),
            ("pid".to_owned(), pid.to_string()),
        ];
        requests.get_or_create(&labels).inc_by(record.requests.load(Relaxed));
        connections
            .get_or_create(&labels)
            .set(record.connections.load(Relaxed) as i64);
        in_flight
            .get_or_create(&labels)
            .set(record.in_flight.load(Relaxed) as i64);
        let up = monotonic_ms().saturating_sub(record.started_ms.load(Relaxed)) / 1000;
        worker_uptime.get_or_create(&labels).set(up as i64);
        if let Some(rss) = resident(pid) {
            memory.get_or_create(&labels).set(rss as i64);
        }
    }
    registry.register("requests", "Requests served by each live worker", requests);
    registry.register("connections", "Open connections of each live worker", connections);
    registry.register("in_flight", "Requests each live worker has in flight", in_flight);
    registry.register(
        "worker_uptime_seconds",
        "Seconds since each live worker was spawned",
        worker_uptime,
    );
    registry.register("worker_resident_bytes", "Resident memory of each live worker", memory);

    if !certificates.is_empty() {
        let expiry = Family::<Labels, Gauge>::default();
        for cert in certificates {
            let labels = vec![
                ("file".to_owned(), cert.file.clone()),
                ("name".to_owned(), cert.name.clone()),
            ];
            expiry.get_or_create(&labels).set(cert.expires_at);
        }
        registry.register(
            "tls_certificate_expiry_timestamp_seconds",
            "When each certificate served expires, in seconds since the epoch (alert on it minus time())",
            expiry,
        );
    }

    let restarts = Family::<Labels, Counter>::default();
    for slot in 0..header.workers.load(Relaxed) as usize {
        let stats = board.slot(slot);
        for (reason, value) in [
            ("died", &stats.died),
            ("timed_out", &stats.timed_out),
            ("recycled", &stats.recycled),
        ] {
            let labels = vec![
                ("slot".to_owned(), slot.to_string()),
                ("reason".to_owned(), reason.to_owned()),
            ];
            restarts.get_or_create(&labels).inc_by(value.load(Relaxed));
        }
    }
    registry.register("restarts", "Workers replaced, by slot and reason", restarts);

    let steering = Family::<Labels, Gauge>::default();
    let mode = crate::sys::scoreboard::SteeringMode::name(header.steering.load(Relaxed));
    steering
        .get_or_create(&vec![("mode".to_owned(), mode.to_owned())])
        .set(1);
    registry.register(
        "steering",
        "How new connections reach the workers: steered by load, lending, hash or shared",
        steering,
    );

    let queue = Family::<Labels, Gauge>::default();
    let backlog = Family::<Labels, Gauge>::default();
    let steered = Family::<Labels, Counter>::default();
    let stalled = Family::<Labels, Gauge>::default();
    for slot in 0..header.workers.load(Relaxed) as usize {
        let stats = board.slot(slot);
        let labels = vec![("slot".to_owned(), slot.to_string())];
        queue.get_or_create(&labels).set(stats.queue.load(Relaxed) as i64);
        backlog.get_or_create(&labels).set(stats.backlog.load(Relaxed) as i64);
        steered.get_or_create(&labels).inc_by(stats.steered.load(Relaxed));
        stalled.get_or_create(&labels).set(stats.stalled.load(Relaxed) as i64);
    }
    registry.register(
        "listen_queue",
        "Connections waiting in the accept queue of each slot's socket (measured once a second)",
        queue,
    );
    registry.register(
        "listen_backlog",
        "The accept queue's limit of each slot's socket (--backlog, capped by net.core.somaxconn)",
        backlog,
    );
    registry.register(
        "steered",
        "New connections the steering program sent to each slot's socket",
        steered,
    );
    registry.register(
        "stalled",
        "1 while a slot's worker is stalled (its socket lent to a sibling) or stopped",
        stalled,
    );

    if requests_counted {
        register_traffic(&mut registry, &board.traffic_by_slot());
    }

    let mut text = String::new();
    // Writing into a String cannot fail.
    encode(&mut text, &registry).expect("encoding into a String");
    text
}

/// The request metrics: for the whole server (workers since reaped
/// included), and per slot under `prefork_slot_*` (two families, not one
/// with and without a `slot` label, so that `sum()` counts nothing twice).
fn register_traffic(registry: &mut Registry, by_slot: &[Snapshot]) {
    let mut total = Snapshot::default();
    by_slot.iter().for_each(|slot| total.add(slot));
    let per_slot = |pick: fn(&Snapshot) -> HistogramSnapshot| Histograms {
        series: (by_slot.iter().enumerate())
            .map(|(slot, traffic)| (vec![("slot".to_owned(), slot.to_string())], pick(traffic)))
            .collect(),
    };
    let whole = |histogram: HistogramSnapshot| Histograms {
        series: vec![(Vec::new(), histogram)],
    };
    let duration_help = "Requests from head to the end of the response body";
    let wait_help = "New connections: time from the handshake to the worker's accept, in the kernel's accept queue";
    registry.register("request_duration_seconds", duration_help, whole(total.duration));
    registry.register("queue_wait_seconds", wait_help, whole(total.queue_wait));
    registry.register("slot_request_duration_seconds", duration_help, per_slot(|t| t.duration));
    registry.register("slot_queue_wait_seconds", wait_help, per_slot(|t| t.queue_wait));

    let responses = Family::<Labels, Counter>::default();
    let slot_responses = Family::<Labels, Counter>::default();
    let sent = Family::<Labels, Counter>::default();
    for (class, count) in total.classes() {
        responses
            .get_or_create(&vec![("code".to_owned(), class.to_owned())])
            .inc_by(count);
    }
    for (slot, traffic) in by_slot.iter().enumerate() {
        for (class, count) in traffic.classes() {
            let labels = vec![
                ("slot".to_owned(), slot.to_string()),
                ("code".to_owned(), class.to_owned()),
            ];
            slot_responses.get_or_create(&labels).inc_by(count);
        }
        sent.get_or_create(&vec![("slot".to_owned(), slot.to_string())])
            .inc_by(traffic.sent);
    }
    let total_sent = Counter::<u64>::default();
    total_sent.inc_by(total.sent);
    registry.register("responses", "Responses by status class", responses);
    registry.register("slot_responses", "Responses by slot and status class", slot_responses);
    let sent_help = "Bytes written to clients: response heads and bodies, HTTP/2 framing (before TLS)";
    registry.register("sent_bytes", sent_help, total_sent);
    registry.register("slot_sent_bytes", sent_help, sent);
}

/// Histograms read from the scoreboard, one per label set: `prometheus_client`'s
/// own `Histogram` observes values itself, these are counted already.
#[derive(Debug)]
struct Histograms {
    series: Vec<(Labels, HistogramSnapshot)>,
}

impl EncodeMetric for Histograms {
    fn encode(&self, mut encoder: MetricEncoder) -> std::fmt::Result {
        for (labels, histogram) in &self.series {
            let buckets = histogram.prometheus_buckets();
            let (sum, count) = (histogram.sum_seconds(), histogram.count());
            match labels.is_empty() {
                true => encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)?,
                false => encoder
                    .encode_family(labels)?
                    .encode_histogram::<NoLabelSet>(sum, count, &buckets, None)?,
            }
        }
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}
