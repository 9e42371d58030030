//! Bring your own hyper service: every supervision feature, your handler.
//!
//! ```text
//! cargo run --example custom_service -- --port 8000
//! curl localhost:8000/count     # per-worker state, built after the fork
//! curl localhost:8000/          # Hello from a custom service in worker <pid>
//! ```
//!
//! The factory passed to `run_with` runs in each worker after the fork: state made
//! there (here a request counter; in a real app a connection pool or a cache) is
//! the worker's own. Returning `Err` from it is a boot failure: the worker exits
//! with code 3, and the master backs off (or, if no worker ever booted, stops and
//! says why).

use std::cell::Cell;
use std::convert::Infallible;
use std::rc::Rc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper::{Request, Response};
use prefork_server::RequestBody;

fn main() -> std::process::ExitCode {
    let config = prefork_server::Config::from_args();
    let make_service = || {
        let served = Rc::new(Cell::new(0u64)); // this worker's, not shared
        Ok::<_, Infallible>(service_fn(move |request| handle(request, Rc::clone(&served))))
    };
    match prefork_server::run_with(config, make_service) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("custom_service: {err}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn handle(request: Request<RequestBody>, served: Rc<Cell<u64>>) -> Result<Response<Full<Bytes>>, Infallible> {
    served.set(served.get() + 1);
    let pid = std::process::id();
    let body = match request.uri().path() {
        "/count" => format!("worker {pid} has served {} requests\n", served.get()),
        _ => format!("Hello from a custom service in worker {pid}\n"),
    };
    Ok(Response::new(Full::new(Bytes::from(body))))
}
