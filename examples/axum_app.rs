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
//!
//! # over TLS, HTTP/2 by ALPN (sh scripts/make-certs.sh certs):
//! cargo run --release --example axum_app -- --port 8443 \
//!     --tls-cert certs/server.pem --tls-key certs/server.key
//! curl --cacert certs/ca.pem https://localhost:8443/json
//! ```
//!
//! The two long-lived responses end themselves when their worker drains
//! (a reload, a stop, a scale-down: `prefork_server::draining()`): `/ws`
//! sends a close frame with code 1001 (going away), and `/sse` ends its
//! stream, so that the client reconnects, to another worker, at once instead
//! of being cut at `--graceful-timeout`. (`/ws?on_drain=stay` shows what any
//! other upgraded connection gets: it is the handler's, and runs until then.)

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::ws::{close_code, CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, Query};
use axum::response::sse::{Event, Sse};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::{Stream, StreamExt};
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

/// `n` events (default 10), `ms` milliseconds apart (default 1000); the stream
/// ends early, cleanly, when the worker drains.
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
    Sse::new(stream.take_until(prefork_server::draining()))
}

#[derive(Deserialize)]
struct WsOptions {
    on_drain: Option<String>,
}

async fn ws(upgrade: WebSocketUpgrade, Query(options): Query<WsOptions>) -> impl IntoResponse {
    let leave = options.on_drain.as_deref() != Some("stay");
    upgrade.on_upgrade(move |socket| echo(socket, leave))
}

/// Sends every text or binary message back, until the client closes, or,
/// with `leave_on_drain`, until the worker drains: then a close frame with
/// code 1001 (going away) says why.
async fn echo(mut socket: WebSocket, leave_on_drain: bool) {
    let drain = prefork_server::draining();
    tokio::pin!(drain);
    loop {
        tokio::select! {
            () = &mut drain, if leave_on_drain => {
                let frame = CloseFrame { code: close_code::AWAY, reason: "the server is restarting".into() };
                if socket.send(Message::Close(Some(frame))).await.is_ok() {
                    // The closing handshake: the client's Close, for a moment,
                    // so that the connection ends cleanly rather than reset.
                    let answered = async {
                        while let Some(Ok(message)) = socket.recv().await {
                            if matches!(message, Message::Close(_)) {
                                break;
                            }
                        }
                    };
                    let _ = tokio::time::timeout(Duration::from_secs(1), answered).await;
                }
                return;
            }
            message = socket.recv() => match message {
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
                Some(Ok(message)) => {
                    if socket.send(message).await.is_err() {
                        return;
                    }
                }
            },
        }
    }
}
