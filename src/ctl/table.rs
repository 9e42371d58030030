//! The workers table of `status` and `top`, from `/status`.

use std::collections::HashMap;
use std::fmt::Write as _;

use serde_json::Value;

/// What `top` measured between two polls of `/status`: the requests finished
/// per second and their p99, per worker (by pid) and for the whole server.
#[derive(Default)]
pub struct Rates {
    per_pid: HashMap<u64, Rate>,
    server: Rate,
    seconds: f64,
}

#[derive(Default, Clone, Copy)]
struct Rate {
    per_second: Option<f64>,
    p99_s: Option<f64>,
}

impl Rates {
    pub fn between(before: &Value, now: &Value, seconds: f64) -> Rates {
        let slots = |status: &Value| -> HashMap<u64, Value> {
            let slots = status["slots"].as_array().into_iter().flatten();
            slots.filter_map(|w| Some((w["pid"].as_u64()?, w.clone()))).collect()
        };
        let earlier = slots(before);
        let per_pid = slots(now)
            .into_iter()
            .filter_map(|(pid, worker)| Some((pid, rate(earlier.get(&pid)?, &worker, seconds))))
            .collect();
        Rates {
            per_pid,
            server: rate(&before["server"], &now["server"], seconds),
            seconds,
        }
    }
}

/// From the difference of two readings of one histogram (`duration`): none
/// if either lacks it (a command) or the counts went back (another worker).
fn rate(before: &Value, now: &Value, seconds: f64) -> Rate {
    let buckets = |value: &Value| -> Option<Vec<u64>> {
        value["duration"]["buckets"]
            .as_array()?
            .iter()
            .map(Value::as_u64)
            .collect()
    };
    let (Some(before), Some(now)) = (buckets(before), buckets(now)) else {
        return Rate::default();
    };
    if before.len() != now.len() || before.iter().zip(&now).any(|(b, n)| n < b) || seconds <= 0.0 {
        return Rate::default();
    }
    let delta: Vec<u64> = now.iter().zip(&before).map(|(n, b)| n - b).collect();
    Rate {
        per_second: Some(delta.iter().sum::<u64>() as f64 / seconds),
        p99_s: prefork_server::quantile(&delta, 0.99),
    }
}

/// A cell: text as it is, a float as whole seconds, null as `-`.
fn field(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        Value::Null => "-".into(),
        Value::Number(n) if n.is_f64() => format!("{:.0}s", n.as_f64().unwrap_or_default()),
        other => other.to_string(),
    }
}

fn millis(seconds: Option<f64>) -> String {
    seconds.map_or("-".into(), |s| format!("{:.1}ms", s * 1000.0))
}

fn per_second(rate: Option<f64>) -> String {
    rate.map_or("-".into(), |r| format!("{r:.0}"))
}

/// The table: a summary line, the header, a row per worker. Without `rates`
/// (`status`), requests/s is `-` and p99 is since each worker started.
pub fn render(status: &Value, rates: Option<&Rates>) -> String {
    let mut text = String::new();
    let server = rates.map(|rates| rates.server).unwrap_or_default();
    let (rate, p99, over) = match rates {
        Some(rates) => (server.per_second, server.p99_s, format!("over {:.1}s", rates.seconds)),
        None => (
            None,
            status["server"]["duration"]["p99_s"].as_f64(),
            "since start".into(),
        ),
    };
    let _ = writeln!(
        text,
        "master {} · {} workers · generation {} · {} reloads · up {} · {} · {} req/s · p99 {} ({over})",
        status["master_pid"],
        status["workers"],
        status["generation"],
        status["reloads"],
        field(&status["uptime_s"]),
        field(&status["steering"]),
        per_second(rate),
        millis(p99),
    );
    let _ = writeln!(
        text,
        "{:>4} {:>8} {:>4} {:>9} {:>8} {:>7} {:>8} {:>10} {:>6} {:>6} {:>5} {:>10} {:>8}  last exit",
        "slot",
        "pid",
        "gen",
        "state",
        "uptime",
        "req/s",
        "p99",
        "requests",
        "flight",
        "conns",
        "queue",
        "memory",
        "restarts"
    );
    for worker in status["slots"].as_array().into_iter().flatten() {
        let memory = worker["rss_bytes"]
            .as_u64()
            .map_or("-".into(), |b| format!("{:.1}MiB", b as f64 / 1048576.0));
        let queue = match worker["stalled"].as_bool() {
            Some(true) => format!("{}!", field(&worker["queue"])),
            _ => field(&worker["queue"]),
        };
        let measured = worker["pid"].as_u64().and_then(|pid| rates?.per_pid.get(&pid).copied());
        let (rate, p99) = match (rates, measured) {
            (Some(_), Some(measured)) => (measured.per_second, measured.p99_s),
            (Some(_), None) => (None, None),
            (None, _) => (None, worker["duration"]["p99_s"].as_f64()),
        };
        let _ = writeln!(
            text,
            "{:>4} {:>8} {:>4} {:>9} {:>8} {:>7} {:>8} {:>10} {:>6} {:>6} {:>5} {:>10} {:>8}  {}",
            field(&worker["slot"]),
            field(&worker["pid"]),
            field(&worker["generation"]),
            field(&worker["state"]),
            field(&worker["uptime_s"]),
            per_second(rate),
            millis(p99),
            field(&worker["requests"]),
            field(&worker["in_flight"]),
            field(&worker["connections"]),
            queue,
            memory,
            field(&worker["restarts"]),
            field(&worker["last_exit"]),
        );
    }
    text
}
