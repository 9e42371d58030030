//! The request metrics in `/status`: histograms with their quantiles, status
//! classes and bytes, for one worker or the whole server.

use serde_json::{json, Map, Value};

use crate::sys::traffic::{HistogramSnapshot, Snapshot, BOUNDS_US};

/// The buckets' upper bounds, in seconds (each `buckets` list has one more: `+Inf`).
pub fn bounds() -> Value {
    json!(BOUNDS_US.map(|bound| bound as f64 / 1e6))
}

/// Counts since the start (per bucket, not cumulative: a page that polls
/// computes the quantiles of an interval from the difference), and the
/// quantiles since the start.
fn histogram(histogram: &HistogramSnapshot) -> Value {
    json!({
        "count": histogram.count(),
        "sum_s": histogram.sum_seconds(),
        "buckets": histogram.buckets,
        "p50_s": histogram.quantile(0.5),
        "p90_s": histogram.quantile(0.9),
        "p99_s": histogram.quantile(0.99),
    })
}

/// Adds what `traffic` holds to a `/status` object.
pub fn insert(into: &mut Map<String, Value>, traffic: &Snapshot) {
    let responses: Map<String, Value> = traffic
        .classes()
        .map(|(class, n)| (class.to_owned(), json!(n)))
        .collect();
    into.insert("responses".into(), Value::Object(responses));
    into.insert("sent_bytes".into(), json!(traffic.sent));
    into.insert("duration".into(), histogram(&traffic.duration));
    into.insert("queue_wait".into(), histogram(&traffic.queue_wait));
}
