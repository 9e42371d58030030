//! An app that installs its own `tracing` subscriber before `run_with`, as
//! most of axum's examples do: its filter names only the app's own target.
//! The server's lines (spawns, exits, reloads) still reach the server's log,
//! in `--log-format`, to stderr or `--log-file`; the app's events go to the
//! app's subscriber (stdout, here).
//!
//!     cargo run --example own_subscriber -- --port 8000 --log-format json

fn main() {
    tracing_subscriber::fmt().with_env_filter("own_subscriber=debug").init();
    let config = prefork_server::Config::from_args();
    tracing::info!("the app's subscriber is installed");
    let served = prefork_server::run_with(config, || {
        tracing::debug!("the app's setup runs in worker {}", std::process::id());
        prefork_server::Hello::new()
    });
    if let Err(err) = served {
        tracing::error!("prefork-server: {err}");
        std::process::exit(1);
    }
}
