//! Bring your own hyper service: every supervision feature, your handler.
//!
//! ```text
//! cargo run --example custom_service -- --port 8000
//! curl localhost:8000/count          # per-worker state, built after the fork
//! curl 'localhost:8000/sleep?ms=500' # a slow request (the tests drain it)
//! curl 'localhost:8000/alloc?mb=100' # leaks 100 MiB (see --max-worker-memory)
//! curl 'localhost:8000/bytes?kb=4096' # a 4 MiB body
//! ```
//!
//! The factory passed to `run_with` runs in each worker after the fork: state made
//! there (here a request counter; in a real app a connection pool or a cache) is
//! the worker's own. Returning `Err` from it is a boot failure: set
//! `CUSTOM_SERVICE_FAIL_IF_EXISTS=/some/path` and create that file to see one
//! (`CUSTOM_SERVICE_PANIC=1` makes it panic instead: exit code 70;
//! `CUSTOM_SERVICE_SLOW_BOOT_IF_EXISTS=/some/path` makes it take 30 s to boot).

use std::cell::Cell;
use std::convert::Infallible;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};

fn main() -> std::process::ExitCode {
    let config = prefork_server::Config::from_args();
    let make_service = || {
        if let Some(path) = std::env::var_os("CUSTOM_SERVICE_FAIL_IF_EXISTS") {
            if std::path::Path::new(&path).exists() {
                return Err(format!("refusing to start: {} exists", path.to_string_lossy()));
            }
        }
        if let Some(path) = std::env::var_os("CUSTOM_SERVICE_SLOW_BOOT_IF_EXISTS") {
            if std::path::Path::new(&path).exists() {
                std::thread::sleep(Duration::from_secs(30)); // e.g. warming a cache
            }
        }
        if std::env::var_os("CUSTOM_SERVICE_PANIC").is_some() {
            panic!("CUSTOM_SERVICE_PANIC is set"); // the worker exits 70
        }
        let served = Rc::new(Cell::new(0u64)); // this worker's, not shared
        Ok(service_fn(move |request| handle(request, Rc::clone(&served))))
    };
    match prefork_server::run_with(config, make_service) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("custom_service: {err}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn handle(request: Request<Incoming>, served: Rc<Cell<u64>>) -> Result<Response<Full<Bytes>>, Infallible> {
    served.set(served.get() + 1);
    let pid = std::process::id();
    let body = match request.uri().path() {
        "/sleep" => {
            let ms = query_number(request.uri().query(), "ms").unwrap_or(1000);
            tracing::info!("custom_service (pid {pid}): sleeping {ms}ms");
            tokio::time::sleep(Duration::from_millis(ms)).await;
            format!("slept {ms}ms in worker {pid}\n")
        }
        "/count" => format!("worker {pid} has served {} requests\n", served.get()),
        // A leak on purpose, to see --max-worker-memory recycle the worker.
        "/alloc" => {
            let mb = query_number(request.uri().query(), "mb").unwrap_or(1) as usize;
            std::mem::forget(vec![1u8; mb << 20]); // written, so resident
            format!("leaked {mb} MiB in worker {pid}\n")
        }
        // A large body: `kb` KiB of a repeating pattern, for the write path.
        "/bytes" => {
            let kb = query_number(request.uri().query(), "kb").unwrap_or(1) as usize;
            let body: Vec<u8> = (0..kb << 10).map(|i| b'a' + (i % 26) as u8).collect();
            return Ok(Response::new(Full::new(Bytes::from(body))));
        }
        _ => format!("Hello from a custom service in worker {pid}\n"),
    };
    Ok(Response::new(Full::new(Bytes::from(body))))
}

fn query_number(query: Option<&str>, key: &str) -> Option<u64> {
    query?
        .split('&')
        .find_map(|pair| pair.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
}
