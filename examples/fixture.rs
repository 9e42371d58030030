//! The test fixture: a service with the routes and switches the tests and scripts
//! need. Not an example to copy (see `custom_service.rs` for that).
//!
//! Routes:
//! - `/sleep?ms=N`: answers after N ms (a request in flight);
//! - `/block?ms=N`: blocks the worker's thread N ms, as a synchronous database
//!   call would; `/spin?ms=N`: burns N ms of CPU;
//! - `/count`: requests this worker has served (per-worker state);
//! - `/addr`: `client <addr> local <addr>`, the connection's two ends;
//! - `/tls`: what the TLS handshake settled (`TlsInfo`), or `plain`;
//! - `/alloc?mb=N`: leaks N MiB (for `--max-worker-memory`);
//! - `/bytes?kb=N`: an N KiB body of a repeating pattern (the write path);
//! - `/preset-length`: `hello` with a `Content-Length: 05` of its own (kept as set);
//! - `POST /echo`: reads the whole request body and returns it;
//! - `/panic`: panics in the handler;
//! - `/stream?n=N&ms=M`: a chunked body of N lines, M ms apart (SSE-like);
//! - anything else: `Hello from a custom service in worker <pid>`.
//!
//! Boot switches (environment): `FIXTURE_FAIL_IF_EXISTS=PATH` fails the boot while
//! PATH exists; `FIXTURE_SLOW_BOOT_IF_EXISTS=PATH` makes the boot take 30 s while
//! it exists; `FIXTURE_PANIC=1` panics in the factory (exit code 70);
//! `FIXTURE_THREAD=1` starts a thread before `run_with_setup` (which then refuses
//! to fork); `FIXTURE_ASYNC_SETUP=sleep|fail|hang` makes the setup await a
//! timer first, fail after one, or never finish; `FIXTURE_CODE_WORKERS=N` sets
//! the worker count in code, after the flags are parsed.

use std::cell::Cell;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use prefork_server::RequestBody;

fn main() -> std::process::ExitCode {
    let mut config = prefork_server::Config::from_args();
    if let Some(workers) = std::env::var("FIXTURE_CODE_WORKERS").ok().and_then(|n| n.parse().ok()) {
        // A setting chosen in code, not by a flag: a reload must keep it.
        config.set_workers(workers);
    }
    if let Some(path) = std::env::var_os("FIXTURE_OPEN_BEFORE") {
        // A file the app opens before `run_with` (its own log, say): its
        // workers still hold it.
        let file = std::fs::File::create(path).expect("FIXTURE_OPEN_BEFORE");
        std::mem::forget(file);
    }
    if std::env::var_os("FIXTURE_THREAD").is_some() {
        // What `#[tokio::main]` around `run_with` amounts to.
        std::thread::spawn(|| loop {
            std::thread::park();
        });
    }
    let setup = || async {
        let exists = |var: &str| std::env::var_os(var).is_some_and(|path| std::path::Path::new(&path).exists());
        if exists("FIXTURE_FAIL_IF_EXISTS") {
            return Err("refusing to start: FIXTURE_FAIL_IF_EXISTS exists".to_owned());
        }
        if exists("FIXTURE_SLOW_BOOT_IF_EXISTS") {
            std::thread::sleep(Duration::from_secs(30));
        }
        if std::env::var_os("FIXTURE_PANIC").is_some() {
            panic!("FIXTURE_PANIC is set");
        }
        // An async setup, as a connection pool's would be: it needs the runtime.
        match std::env::var("FIXTURE_ASYNC_SETUP").as_deref() {
            Ok("sleep") => tokio::time::sleep(Duration::from_millis(50)).await,
            Ok("fail") => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                return Err("the database said no (FIXTURE_ASYNC_SETUP=fail)".to_owned());
            }
            Ok("hang") => std::future::pending::<()>().await,
            _ => {}
        }
        // Where this worker listens, known in the setup (`--port 0` included).
        let listening = prefork_server::local_addr();
        tracing::info!("fixture (pid {}): the setup sees {listening:?}", std::process::id());
        let served = Rc::new(Cell::new(0u64));
        // Made per connection, to know its addresses (`/addr`).
        Ok(prefork_server::per_connection(move |addresses| {
            let served = Rc::clone(&served);
            service_fn(move |request| handle(request, addresses, Rc::clone(&served)))
        }))
    };
    match prefork_server::run_with_setup(config, setup) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("fixture: {err}");
            std::process::ExitCode::FAILURE
        }
    }
}

type Reply = Response<http_body_util::Either<Full<Bytes>, Lines>>;

fn full(body: impl Into<Bytes>) -> Reply {
    Response::new(http_body_util::Either::Left(Full::new(body.into())))
}

async fn handle(
    request: Request<RequestBody>,
    addresses: prefork_server::Addresses,
    served: Rc<Cell<u64>>,
) -> Result<Reply, Infallible> {
    served.set(served.get() + 1);
    let pid = std::process::id();
    let number = |key: &str, default: u64| query_number(request.uri().query(), key).unwrap_or(default);
    let reply = match (request.method(), request.uri().path()) {
        (_, "/sleep") => {
            let ms = number("ms", 1000);
            tracing::info!("fixture (pid {pid}): sleeping {ms}ms"); // the tests wait for it
            tokio::time::sleep(Duration::from_millis(ms)).await;
            full(format!("slept {ms}ms in worker {pid}\n"))
        }
        (_, "/block") => {
            // A synchronous call (a database driver's, say): the worker's
            // thread, and so every connection of this worker, waits.
            let ms = number("ms", 1000);
            tracing::info!("fixture (pid {pid}): blocking {ms}ms"); // the tests wait for it
            block(ms);
            full(format!("blocked {ms}ms in worker {pid}\n"))
        }
        (_, "/spin") => {
            let ms = number("ms", 10);
            let until = std::time::Instant::now() + Duration::from_millis(ms);
            let mut spins = 0u64;
            while std::time::Instant::now() < until {
                spins = std::hint::black_box(spins + 1);
            }
            full(format!("spun {ms}ms in worker {pid}\n"))
        }
        (_, "/count") => full(format!("worker {pid} has served {} requests\n", served.get())),
        (_, "/local-addr") => full(format!("{:?}\n", prefork_server::local_addr())),
        (_, "/addr") => full(format!("client {} local {}\n", addresses.client, addresses.local)),
        (_, "/tls") => full(match request.extensions().get::<prefork_server::TlsInfo>() {
            None => "plain\n".to_owned(),
            Some(tls) => format!(
                "{} alpn {} sni {} resumed {} client certificates {}\n",
                tls.version().unwrap_or("?"),
                String::from_utf8_lossy(tls.alpn_protocol().unwrap_or(b"none")),
                tls.server_name().unwrap_or("none"),
                tls.resumed(),
                tls.client_certificates().map_or(0, <[_]>::len),
            ),
        }),
        (_, "/alloc") => {
            let mb = number("mb", 1) as usize;
            std::mem::forget(vec![1u8; mb << 20]); // written, so resident
            full(format!("leaked {mb} MiB in worker {pid}\n"))
        }
        (_, "/bytes") => {
            let kb = number("kb", 1) as usize;
            full((0..kb << 10).map(|i| b'a' + (i % 26) as u8).collect::<Vec<u8>>())
        }
        (_, "/preset-length") => {
            // Written as no server would write it, so that a test can tell it was kept.
            let mut reply = full("hello");
            reply.headers_mut().insert(
                hyper::header::CONTENT_LENGTH,
                hyper::header::HeaderValue::from_static("05"),
            );
            reply
        }
        (&Method::POST, "/echo") => match request.into_body().collect().await {
            Ok(body) => full(body.to_bytes()),
            Err(err) => {
                let mut reply = full(format!("cannot read the body: {err}\n"));
                *reply.status_mut() = StatusCode::BAD_REQUEST;
                reply
            }
        },
        (_, "/panic") => panic!("GET /panic"),
        // A handler that takes its body for granted, as many do.
        (&Method::POST, "/echo-or-panic") => full(request.into_body().collect().await.expect("the body").to_bytes()),
        (_, "/stream") => {
            let lines = Lines {
                left: number("n", 10),
                every: Duration::from_millis(number("ms", 1000)),
                sleep: None,
                sent: 0,
            };
            Response::new(http_body_util::Either::Right(lines))
        }
        _ => full(format!("Hello from a custom service in worker {pid}\n")),
    };
    Ok(reply)
}

/// `data: N\n\n` every `every`, `left` times: a slow streamed body.
struct Lines {
    left: u64,
    every: Duration,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    sent: u64,
}

impl Body for Lines {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.left == 0 {
            return Poll::Ready(None);
        }
        if self.sent > 0 {
            let every = self.every;
            let sleep = self.sleep.get_or_insert_with(|| Box::pin(tokio::time::sleep(every)));
            std::task::ready!(sleep.as_mut().poll(cx));
            self.sleep = None;
        }
        self.left -= 1;
        self.sent += 1;
        let line = format!("data: {}\n\n", self.sent);
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(line)))))
    }
}

fn query_number(query: Option<&str>, key: &str) -> Option<u64> {
    query?
        .split('&')
        .find_map(|pair| pair.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
}

/// `/block`: out of line, so that a hung worker's stack names it.
#[inline(never)]
fn block(ms: u64) {
    std::thread::sleep(Duration::from_millis(ms));
}
