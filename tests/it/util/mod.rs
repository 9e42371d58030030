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

/// A path in the system's temporary directory for this test run
/// (`prefork-test-<pid>-<name>`), with nothing left there from before; the
/// file is not created.
pub fn temp_path(name: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("prefork-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_file(&path);
    path
}

/// A small tmpfs of the test's own, unmounted when the test ends (failed or not).
pub struct Tmpfs(pub std::path::PathBuf);

impl Tmpfs {
    /// Needs root (CI runs as root): `mount -t tmpfs -o size=SIZE`.
    pub fn mount(name: &str, options: &str) -> Tmpfs {
        let dir = tempdir(name);
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "tmpfs", dir.to_str().unwrap()])
            .status()
            .expect("run mount");
        assert!(
            status.success(),
            "mount a tmpfs at {} (this test needs root)",
            dir.display()
        );
        Tmpfs(dir)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
