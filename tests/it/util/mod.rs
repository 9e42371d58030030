//! What the integration tests share: the server harness, /proc helpers, an
//! HTTP/1.1 client, and `eventually`.

pub mod h2raw;
mod http;
mod procfs;
mod server;

use std::thread;
use std::time::{Duration, Instant};

pub use http::*;
pub use procfs::*;
pub use server::*;

/// Polls `probe` every 20 ms until it yields `Some`, or panics after `within`
/// naming what it waited for. Use instead of bare sleeps.
pub fn eventually<T>(within: Duration, what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = probe() {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// A fresh, empty directory for one test: `prefork-test-<pid>-<name>` under the
/// system's temporary directory.
pub fn tempdir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("prefork-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create a temporary directory");
    dir
}
