//! The README's axum app: a `Router` under prefork-server, nothing else.
//! `cargo run --release --example axum_minimal -- --port 8000`

use axum::{routing::get, Router};

fn main() -> std::process::ExitCode {
    // The server's flags (--port, --workers, ...); exits 2 on a bad one.
    let config = prefork_server::Config::from_args();
    let app = || {
        Ok::<_, std::convert::Infallible>(Router::new().route(
            "/",
            get(|| async { format!("Hello from worker {}\n", std::process::id()) }),
        ))
    };
    match prefork_server::run_with(config, app) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("{err}");
            std::process::ExitCode::FAILURE
        }
    }
}
