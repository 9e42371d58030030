//! The baseline users would write without a supervisor: one process, tokio's
//! multi-thread runtime (one thread per CPU it may run on), hyper's HTTP/1 on one
//! listener, the same body as the default app. `scripts/bench.sh` runs it beside
//! prefork-server, nginx and Node cluster.
//!
//! Usage: cargo run --release --example tokio_hyper -- PORT
//! Prints `listening on 127.0.0.1:PORT` once it accepts.

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::Response;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

fn main() -> std::io::Result<()> {
    let port: u16 = match std::env::args().nth(1).map(|arg| arg.parse()) {
        Some(Ok(port)) => port,
        _ => {
            eprintln!("usage: tokio_hyper PORT");
            std::process::exit(2);
        }
    };
    // The default worker count is the CPUs this process may run on, so `taskset -c 1`
    // gives it one thread, like one prefork worker.
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(serve(port))
}

async fn serve(port: u16) -> std::io::Result<()> {
    let listener = TcpListener::bind(("127.0.0.1", port)).await?;
    println!("listening on {}", listener.local_addr()?);
    let body = Bytes::from(format!("Hello from worker {}\n", std::process::id()));
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(err) => {
                eprintln!("accept failed: {err}");
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let body = body.clone();
        tokio::spawn(async move {
            let service = service_fn(move |_request| {
                let mut response = Response::new(Full::new(body.clone()));
                response
                    .headers_mut()
                    .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
                async { Ok::<_, Infallible>(response) }
            });
            let _ = http1::Builder::new()
                .timer(TokioTimer::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
