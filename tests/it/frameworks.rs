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
    require_that(&[program, "--version"], program, install);
}

/// Panics unless `command` runs and exits 0 (`what` is missing otherwise).
fn require_that(command: &[&str], what: &str, install: &str) {
    let runs = std::process::Command::new(command[0])
        .args(&command[1..])
        .output()
        .is_ok_and(|out| out.status.success());
    assert!(runs, "{what} is not installed ({install}; .ci/run installs it)");
}

fn exec_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/exec")
}

/// The Go recipe, built once per test run with Debian's Go (standard library
/// only: no module proxy is needed).
fn go_app() -> PathBuf {
    static BUILT: std::sync::Mutex<bool> = std::sync::Mutex::new(false);
    let binary = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("go_app");
    let mut built = BUILT.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if !*built {
        require_that(&["go", "version"], "go", "apt-get install golang-go");
        let status = std::process::Command::new("go")
            .args(["build", "-o", binary.to_str().unwrap(), "."])
            .current_dir(exec_dir().join("go_app"))
            .env("GOFLAGS", "-mod=mod")
            .env("GOPROXY", "off")
            .status()
            .expect("run go build");
        assert!(status.success(), "go build of examples/exec/go_app failed");
        *built = true;
    }
    binary
}

/// A recipe of `examples/exec/` under keep-alive load (16 clients, 2
/// workers): 5 HUPs lose nothing, and a `kill -9` of one worker costs at
/// most the connections it held.
fn drains_without_loss(what: &str, program: &[&str]) {
    let mut args = vec!["--workers", "2", "--"];
    args.extend_from_slice(program);
    let server = Server::start(&args);
    let load = Load::start(server.addr, 16);
    load.wait_for_traffic(200);
    for n in 1..=5 {
        reload(&server, n);
        load.wait_for_traffic(100);
    }
    let tally = load.finish();
    tally.assert_clean(&format!("{what}: 16 keep-alive clients across 5 HUPs"), 700);
    // A reload must not stall the old command while its successor boots.
    assert!(
        tally.slowest < Duration::from_secs(1),
        "{what}: a request waited {:?} across the reloads",
        tally.slowest
    );
    assert!(
        !server.logs().contains("killed by") && !server.logs().contains("stopped by"),
        "{what}: a worker did not exit 0 by itself\n{}",
        server.logs()
    );

    let load = Load::start(server.addr, 16);
    load.wait_for_traffic(200);
    let victim = server.workers()[0];
    let held = established_connections(victim, server.addr.port());
    nix::sys::signal::kill(victim, Signal::SIGKILL).unwrap();
    server.wait_for_log(&format!("(pid {victim}) killed by SIGKILL"), Duration::from_secs(5));
    load.wait_for_traffic(200);
    let tally = load.finish();
    assert!(held > 0, "{what}: the killed worker held no connection");
    assert!(
        tally.failures.len() <= held,
        "{what}: a kill -9 of a worker holding {held} connections failed {} requests: {:?}",
        tally.failures.len(),
        tally.failures
    );
}

/// `examples/exec/uvicorn_app.py`: uvicorn started by the app, with a drain
/// of its own (stock uvicorn closes idle keep-alive connections at once).
#[test]
fn the_uvicorn_recipe_loses_nothing_across_reloads() {
    require_that(&["python3", "-c", "import uvicorn"], "uvicorn", "pip install uvicorn");
    let app = exec_dir().join("uvicorn_app.py");
    drains_without_loss("uvicorn", &["python3", app.to_str().unwrap()]);
}

/// `examples/exec/express_app.js`: Express 5, draining without
/// `http.Server#close`, which closes idle connections at once.
#[test]
fn the_express_recipe_loses_nothing_across_reloads() {
    require("node", "apt-get install nodejs");
    assert!(
        exec_dir().join("node_modules/express").is_dir(),
        "Express is not installed (npm ci --prefix examples/exec; .ci/run does it)"
    );
    let app = exec_dir().join("express_app.js");
    drains_without_loss("Express", &["node", app.to_str().unwrap()]);
}

/// `examples/exec/go_app`: Go's `net/http`, draining without
/// `Server.Shutdown` alone, which closes idle connections at once.
#[test]
fn the_go_recipe_loses_nothing_across_reloads() {
    let app = go_app();
    drains_without_loss("Go net/http", &[app.to_str().unwrap()]);
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

/// The uvicorn recipe serves an app named on its command line (`main:app`,
/// from the current directory), as uvicorn would (a FastAPI app unchanged),
/// and drains it as its own: a reload under keep-alive load loses nothing.
#[test]
fn the_uvicorn_recipe_serves_and_drains_an_app_named_on_its_command_line() {
    require_that(&["python3", "-c", "import uvicorn"], "uvicorn", "pip install uvicorn");
    let dir = tempdir("uvicorn-named-app");
    std::fs::write(
        dir.join("main.py"),
        "async def app(scope, receive, send):\n\
         \x20   if scope['type'] != 'http':\n        return\n\
         \x20   await send({'type': 'http.response.start', 'status': 200, 'headers': [(b'content-length', b'14')]})\n\
         \x20   await send({'type': 'http.response.body', 'body': b'from main.py!\\n'})\n",
    )
    .unwrap();
    let recipe = exec_dir().join("uvicorn_app.py");
    let mut command = command(
        server_binary(),
        &["--workers", "1", "--", "python3", recipe.to_str().unwrap(), "main:app"],
    );
    command.current_dir(&dir);
    let server = Server::start_command(command);
    assert_eq!(get(server.addr, "/").unwrap().body, "from main.py!\n");
    let load = Load::start(server.addr, 8);
    load.wait_for_traffic(100);
    reload(&server, 1);
    load.wait_for_traffic(100);
    load.finish().assert_clean("a named app across a HUP", 200);
}
