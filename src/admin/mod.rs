//! The admin listener (`--admin`): a dashboard at `/`, `/status` (JSON), `/metrics`,
//! and the health checks `/readyz`, `/livez` and `/healthz`, served by the
//! workers from the scoreboard, so the master stays HTTP-free. Every worker
//! accepts on the one admin socket; any of them can answer for all.

use std::convert::Infallible;
use std::net::TcpListener as StdListener;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::json;

use crate::config::Config;
use crate::sys::process::Exit;
use crate::sys::scoreboard::{monotonic_ms, Record, Scoreboard, State};

/// The page at `/`: a table of the workers that polls `/status` every second.
const DASHBOARD: &str = include_str!("dashboard.html");

mod resident;
mod traffic;

/// How long a rendered `/status` or `/metrics` may be served again, while the
/// master has changed nothing (no spawn, exit, reload...): a flood of requests
/// then costs a worker a copy of the last rendering, not a rendering each. Only
/// the counters (requests, connections) can lag, by at most this.
const RENDERED_FOR: std::time::Duration = std::time::Duration::from_millis(250);

/// A rendering: when it was made, under which scoreboard `changes`, and the body.
type Rendered = std::cell::RefCell<Option<(std::time::Instant, u64, Bytes)>>;

/// What the admin views need.
struct View {
    scoreboard: &'static Scoreboard,
    resident: resident::Resident,
    status: Rendered,
    metrics: Rendered,
    /// The config this worker was started with (addresses, balance).
    summary: serde_json::Value,
    /// `--tls-cert`: the certificates this worker serves, and their expiry.
    certificates: Vec<crate::tls::Expiry>,
    /// The workers count their requests (they are not commands).
    requests_counted: bool,
}

/// Exec mode: the admin process, which serves the admin listener on its own
/// (the commands do not): until the master kills it, or dies (PDEATHSIG).
/// Returns its exit code.
pub fn serve_alone(listener: &StdListener, scoreboard: &'static Scoreboard, config: &Config) -> i32 {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            crate::log::error!("admin process: cannot build its runtime: {err}");
            return crate::sys::process::exit_code::BOOT_FAILED;
        }
    };
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async {
        match start(listener, scoreboard, config) {
            Ok(server) => {
                server.await;
                crate::sys::process::exit_code::OK
            }
            Err(err) => {
                crate::log::error!("admin process: cannot serve --admin: {err}");
                crate::sys::process::exit_code::BOOT_FAILED
            }
        }
    })
}

/// Prepares the admin server of this worker: a future that accepts admin
/// connections until its task is aborted (at drain). It owns what it needs.
pub fn start(
    listener: &StdListener,
    scoreboard: &'static Scoreboard,
    config: &Config,
) -> std::io::Result<impl std::future::Future<Output = ()> + 'static> {
    let listener = tokio::net::TcpListener::from_std(listener.try_clone()?)?;
    let certificates = config.tls.as_ref().map_or(Vec::new(), |tls| tls.expiries());
    let tls: Vec<serde_json::Value> = (certificates.iter())
        .map(|cert| json!({"file": cert.file, "name": cert.name, "expires_at": cert.expires_at}))
        .collect();
    let summary = json!({
        "tls": tls,
        "listen": config.addr().to_string(),
        "balance": config.balance.as_str(),
        "graceful_timeout_s": config.graceful_timeout.as_secs_f64(),
        "timeout_s": config.timeout.as_secs_f64(),
        "max_requests": config.max_requests,
        "max_worker_memory": config.max_worker_memory,
        "command": config.command,
    });
    let view = Rc::new(View {
        scoreboard,
        resident: resident::Resident::new(config.command.is_some()),
        status: Rendered::default(),
        metrics: Rendered::default(),
        summary,
        certificates,
        requests_counted: config.command.is_none(),
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(std::time::Duration::from_secs(10));
    let builder = Rc::new(builder);
    Ok(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            };
            let (view, builder) = (Rc::clone(&view), Rc::clone(&builder));
            tokio::task::spawn_local(async move {
                let service =
                    service_fn(move |request| std::future::ready(Ok::<_, Infallible>(answer(&view, &request))));
                let _ = builder.serve_connection(TokioIo::new(stream), service).await;
            });
        }
    })
}

fn answer(view: &View, request: &Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
    if !matches!(*request.method(), Method::GET | Method::HEAD) {
        let mut response = respond(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "the admin views are read-only: GET or HEAD\n",
        );
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    match request.uri().path() {
        "/" => respond(StatusCode::OK, "text/html; charset=utf-8", DASHBOARD),
        "/status" => respond(
            StatusCode::OK,
            "application/json",
            recent(view, &view.status, || status(view).to_string() + "\n"),
        ),
        "/metrics" => respond(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            recent(view, &view.metrics, || {
                let (board, certificates) = (view.scoreboard, &view.certificates);
                crate::metrics::render(board, &|pid| view.resident.of(pid), certificates, view.requests_counted)
            }),
        ),
        "/healthz" => health(readiness(view.scoreboard, false)),
        "/readyz" => health(readiness(view.scoreboard, true)),
        "/livez" => health(liveness(view.scoreboard)),
        _ => respond(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: try /, /status, /metrics, /readyz, /livez or /healthz\n",
        ),
    }
}

/// The rendering in `cache` if it is less than [`RENDERED_FOR`] old and the
/// master has changed nothing since, else a new one.
fn recent(view: &View, cache: &Rendered, render: impl FnOnce() -> String) -> Bytes {
    let now = std::time::Instant::now();
    let changes = view.scoreboard.header().changes.load(Relaxed);
    let mut cache = cache.borrow_mut();
    match &*cache {
        Some((at, seen, body)) if *seen == changes && now.duration_since(*at) < RENDERED_FOR => body.clone(),
        _ => {
            let body = Bytes::from(render());
            *cache = Some((now, changes, body.clone()));
            body
        }
    }
}

fn respond(status: StatusCode, kind: &'static str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(kind));
    response
}

/// 200 `ok`, or 503 with the reason.
fn health(judged: Result<(), String>) -> Response<Full<Bytes>> {
    match judged {
        Ok(()) => respond(StatusCode::OK, "text/plain", "ok\n"),
        Err(why) => respond(StatusCode::SERVICE_UNAVAILABLE, "text/plain", why + "\n"),
    }
}

/// Ready for traffic: every active slot has a ready worker, and (for
/// `/readyz`, `stop_fails`) no stop has begun, the shutdown delay included.
fn readiness(scoreboard: &Scoreboard, stop_fails: bool) -> Result<(), String> {
    if stop_fails && scoreboard.header().stopping.load(Relaxed) != 0 {
        return Err("stopping".into());
    }
    match unready_slots(scoreboard) {
        missing if missing.is_empty() => Ok(()),
        missing => {
            let missing: Vec<String> = missing.iter().map(ToString::to_string).collect();
            Err(format!("not ready: slots {} have no ready worker", missing.join(", ")))
        }
    }
}

/// Alive: the master's loop ran within the last few beats, and at least one
/// worker serves (ready, or draining during a stop: a stop is no reason for an
/// orchestrator to restart the server).
fn liveness(scoreboard: &Scoreboard) -> Result<(), String> {
    let header = scoreboard.header();
    let silent_ms = monotonic_ms().saturating_sub(header.master_beat_ms.load(Relaxed));
    let limit_ms = 5 * crate::sys::scoreboard::MASTER_BEAT.as_millis() as u64;
    if silent_ms > limit_ms {
        return Err(format!("the master's loop has not run for {silent_ms} ms"));
    }
    let serving = [State::Ready as u64, State::Draining as u64];
    match scoreboard.live().any(|r| serving.contains(&r.state.load(Relaxed))) {
        true => Ok(()),
        false => Err("no worker serves".into()),
    }
}

/// Active slots without a ready worker.
fn unready_slots(scoreboard: &Scoreboard) -> Vec<u64> {
    let workers = scoreboard.header().workers.load(Relaxed);
    let ready = |slot: u64| {
        scoreboard
            .live()
            .any(|r| r.slot.load(Relaxed) == slot && r.state.load(Relaxed) == State::Ready as u64)
    };
    (0..workers).filter(|slot| !ready(*slot)).collect()
}

fn status(view: &View) -> serde_json::Value {
    let board = view.scoreboard;
    let header = board.header();
    let now = monotonic_ms();
    let seconds = |since_ms: u64| now.saturating_sub(since_ms) as f64 / 1000.0;
    let mut workers: Vec<&Record> = board.live().collect();
    workers.sort_by_key(|r| (r.slot.load(Relaxed), r.started_ms.load(Relaxed)));
    let server = server(view, &workers);
    let workers: Vec<serde_json::Value> = workers.into_iter().map(|r| worker(view, r, &seconds)).collect();
    json!({
        "master_pid": header.master_pid.load(Relaxed),
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_s": seconds(header.started_ms.load(Relaxed)),
        "workers": header.workers.load(Relaxed),
        "generation": header.generation.load(Relaxed),
        "reloads": header.reloads.load(Relaxed),
        // What `--balance` came to (`config.balance` is what was asked).
        "steering": crate::sys::scoreboard::SteeringMode::name(header.steering.load(Relaxed)),
        "config": view.summary,
        "bucket_bounds_s": traffic::bounds(),
        "server": server,
        "slots": workers,
    })
}

/// The whole server: what its live workers hold now, and what every worker
/// served since the start, those reaped since included (so these counters
/// only grow, where a worker's start again with its replacement).
fn server(view: &View, workers: &[&Record]) -> serde_json::Value {
    let board = view.scoreboard;
    let sum = |field: fn(&Record) -> &std::sync::atomic::AtomicU64| -> u64 {
        workers.iter().map(|record| field(record).load(Relaxed)).sum()
    };
    let active = (board.header().workers.load(Relaxed) as usize).min(crate::sys::scoreboard::SLOTS);
    let queue: u64 = board.slots()[..active]
        .iter()
        .map(|slot| slot.queue.load(Relaxed))
        .sum();
    let rss: u64 = workers
        .iter()
        .filter_map(|r| view.resident.of(r.pid.load(Relaxed)))
        .sum();
    let mut server = serde_json::Map::new();
    server.insert("connections".into(), json!(sum(|r| &r.connections)));
    server.insert("in_flight".into(), json!(sum(|r| &r.in_flight)));
    server.insert("queue".into(), json!(queue));
    server.insert("rss_bytes".into(), json!(rss));
    if view.requests_counted {
        let mut total = crate::sys::traffic::Snapshot::default();
        board.traffic_by_slot().iter().for_each(|slot| total.add(slot));
        server.insert("requests".into(), json!(total.duration.count()));
        traffic::insert(&mut server, &total);
    }
    serde_json::Value::Object(server)
}

fn worker(view: &View, record: &Record, seconds: &dyn Fn(u64) -> f64) -> serde_json::Value {
    let board = view.scoreboard;
    let (pid, slot) = (record.pid.load(Relaxed), record.slot.load(Relaxed) as usize);
    let state = match record.state.load(Relaxed) {
        s if s == State::Ready as u64 => "ready",
        s if s == State::Draining as u64 => "draining",
        _ => "booting",
    };
    let stats = board.slot(slot);
    let mut worker = json!({
        "slot": slot,
        "pid": pid,
        "generation": record.generation.load(Relaxed),
        "state": state,
        "uptime_s": seconds(record.started_ms.load(Relaxed)),
        "requests": record.requests.load(Relaxed),
        "connections": record.connections.load(Relaxed),
        "in_flight": record.in_flight.load(Relaxed),
        // The slot's socket: what waits in its accept queue, what the
        // steering program sent there, whether its worker is stalled.
        "queue": stats.queue.load(Relaxed),
        "backlog": stats.backlog.load(Relaxed),
        "steered": stats.steered.load(Relaxed),
        "stalled": stats.stalled.load(Relaxed) == 1,
        "rss_bytes": view.resident.of(pid),
        "restarts": stats.died.load(Relaxed) + stats.timed_out.load(Relaxed),
        "restarts_by_reason": {
            "died": stats.died.load(Relaxed),
            "timed_out": stats.timed_out.load(Relaxed),
            "recycled": stats.recycled.load(Relaxed),
        },
        "last_exit": Exit::decode(stats.last_exit.load(Relaxed)).map(|exit| exit.to_string()),
        // Exec mode: the command's last `STATUS=`.
        "status": Some(record.status()).filter(|text| !text.is_empty()),
    });
    if let (true, Some(worker)) = (view.requests_counted, worker.as_object_mut()) {
        traffic::insert(worker, &record.traffic.snapshot());
    }
    worker
}
