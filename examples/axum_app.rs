//! An axum app under prefork-server: the Router is served as it is.
//!
//! ```text
//! cargo run --release --example axum_app -- --port 8000
//! curl localhost:8000/              # Hello from worker <pid>
//! curl localhost:8000/json          # {"pid":<pid>}
//! curl -N 'localhost:8000/sse?n=5&ms=1000'   # five events, a second apart
//! curl -d hello localhost:8000/echo # hello
//! curl localhost:8000/ip            # 127.0.0.1:<port>: the client's address
//! websocat ws://localhost:8000/ws   # echoes every message
//! ```

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::ws::{WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, Query};
use axum::response::sse::{Event, Sse};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::Stream;
use serde::Deserialize;

fn main() -> std::process::ExitCode {
    let config = prefork_server::Config::from_args();
    // Runs in each worker, after the fork: state built here is the worker's own.
    let app = || {
        Ok::<_, Infallible>(
            Router::new()
                .route("/", get(hello))
                .route("/json", get(json))
                .route("/sse", get(sse))
                .route("/echo", post(|body: String| async move { body }))
                .route("/ip", get(ip))
                .route("/ws", get(ws))
                // The one line for `ConnectInfo`: each connection's service is made
                // with its client's address, as under `axum::serve`.
                .into_make_service_with_connect_info::<SocketAddr>(),
        )
    };
    match prefork_server::run_with(config, app) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("axum_app: {err}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn hello() -> String {
    format!("Hello from worker {}\n", std::process::id())
}

async fn ip(ConnectInfo(client): ConnectInfo<SocketAddr>) -> String {
    format!("{client}\n")
}

async fn json() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "pid": std::process::id() }))
}

#[derive(Deserialize)]
struct Events {
    n: Option<u64>,
    ms: Option<u64>,
}

/// `n` events (default 10), `ms` milliseconds apart (default 1000).
async fn sse(Query(events): Query<Events>) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let (n, every) = (events.n.unwrap_or(10), Duration::from_millis(events.ms.unwrap_or(1000)));
    let stream = futures_util::stream::unfold(0, move |sent| async move {
        if sent == n {
            return None;
        }
        if sent > 0 {
            tokio::time::sleep(every).await;
        }
        Some((Ok(Event::default().data(format!("{}", sent + 1))), sent + 1))
    });
    Sse::new(stream)
}

async fn ws(upgrade: WebSocketUpgrade) -> impl IntoResponse {
    upgrade.on_upgrade(echo)
}

/// Sends every text or binary message back, until the client closes.
async fn echo(mut socket: WebSocket) {
    while let Some(Ok(message)) = socket.recv().await {
        if matches!(message, axum::extract::ws::Message::Close(_)) {
            return;
        }
        if socket.send(message).await.is_err() {
            return;
        }
    }
}
