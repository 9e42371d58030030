//! Real frameworks as exec-mode commands, as their users run them: gunicorn
//! with an app whose import takes seconds, and the drain recipes of
//! `examples/exec/` for uvicorn, Express and Go's `net/http`, each reloaded
//! under keep-alive load. Each needs its framework installed (`.ci/run`
//! installs them all) and fails, not skips, without it.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::load::Load;
use crate::util::*;

/// Panics unless `program --version` runs: a test of a framework that is not
/// there has checked nothing.
pub fn require(program: &str, install: &str) {
    let runs = std::process::Command::new(program)
        .arg("--version")
        .output()
        .is_ok_and(|out| out.status.success());
    assert!(runs, "{program} is not installed ({install}; .ci/run installs it)");
}

/// HUP, then waits until the `n`-th reload is complete.
fn reload(server: &Server, n: usize) {
    server.signal(Signal::SIGHUP);
    server.wait_for_log_count("reload complete", n, Duration::from_secs(60));
}

/// gunicorn's arbiter says `READY=1` before it forks the workers that import
/// the app. The master counts a command ready once it is seen accepting: with
/// an app whose import takes 3 s (no `--preload`), the ready line and each
/// "reload complete" come after the import, and the old gunicorns serve
/// meanwhile, so no request waits across 5 HUPs under keep-alive load.
#[test]
fn gunicorn_is_ready_once_its_app_is_imported_and_no_reload_keeps_a_request_waiting() {
    require("gunicorn", "pip install gunicorn");
    const IMPORT: Duration = Duration::from_secs(3);
    let dir = tempdir("slow-gunicorn-app");
    std::fs::write(
        dir.join("slow_app.py"),
        format!(
            "import os, time\n\
             time.sleep({})  # a big framework, or a model loaded at import\n\
             def app(environ, start_response):\n\
             \x20   body = f'Hello from worker {{os.getpid()}}\\n'.encode()\n\
             \x20   start_response('200 OK', [('Content-Type', 'text/plain'), ('Content-Length', str(len(body)))])\n\
             \x20   return [body]\n",
            IMPORT.as_secs()
        ),
    )
    .unwrap();
    let dir = dir.to_string_lossy().into_owned();
    let started = Instant::now();
    let server = Server::start(&[
        "--workers",
        "2",
        "--reload-batch",
        "2",
        "--graceful-timeout",
        "10s",
        "--",
        "gunicorn",
        "--workers",
        "1",
        "--chdir",
        &dir,
        "slow_app:app",
    ]);
    assert!(
        started.elapsed() >= IMPORT,
        "ready after {:?}, before the app was imported\n{}",
        started.elapsed(),
        server.logs()
    );
    let load = Load::start(server.addr, 16);
    load.wait_for_traffic(100);
    for n in 1..=5 {
        let hup = Instant::now();
        reload(&server, n);
        assert!(
            hup.elapsed() >= IMPORT,
            "reload {n} complete after {:?}, before the new app was imported",
            hup.elapsed()
        );
        load.wait_for_traffic(50);
    }
    let tally = load.finish();
    tally.assert_clean("keep-alive load across 5 HUPs of gunicorn", 500);
    assert!(
        tally.slowest < Duration::from_secs(1),
        "a request waited {:?} across the reloads",
        tally.slowest
    );
}
