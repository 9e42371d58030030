//! The flags, the file and their layers, as a user meets them.

use std::num::NonZeroUsize;
use std::time::Duration;

use super::units::*;
use super::*;

fn parse(args: &[&str]) -> Result<Config, Box<dyn std::error::Error>> {
    Config::try_from_args(std::iter::once("prefork-server").chain(args.iter().copied()))
}

fn file(name: &str, text: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("prefork-config-{}-{name}.toml", std::process::id()));
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn defaults() {
    let config = parse(&[]).unwrap();
    assert_eq!(config.addr(), "0.0.0.0:8000".parse().unwrap());
    assert_eq!(config.balance, Balance::Steered);
    assert_eq!(config.backlog, 1024);
    assert_eq!(config.graceful_timeout, Duration::from_secs(30));
    assert_eq!(config.workers, std::thread::available_parallelism().unwrap());
    assert_eq!(config.reload_batch.get(), 1);
}

#[test]
fn hosts_v4_v6_and_bracketed() {
    assert_eq!(
        parse(&["--host", "::1", "--port", "0"]).unwrap().addr(),
        "[::1]:0".parse().unwrap()
    );
    assert_eq!(parse(&["--host", "[::]"]).unwrap().addr(), "[::]:8000".parse().unwrap());
    assert!(parse(&["--host", "localhost:80"]).is_err());
}

#[test]
fn bad_flags_are_usage_errors() {
    for args in [
        &["--workers", "0"][..],
        &["--port", "70000"],
        &["--bogus"],
        &["--balance", "rr"],
    ] {
        let err =
            OnlyServerFlags::try_parse_from(std::iter::once("prefork-server").chain(args.iter().copied())).unwrap_err();
        assert_eq!(err.exit_code(), 2, "{args:?}");
    }
}

#[test]
fn durations() {
    assert_eq!(parse_duration("30").unwrap(), Duration::from_secs(30));
    assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
    assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
    assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
    // As users type them.
    assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
    assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
    assert_eq!(parse_duration("2 min").unwrap(), Duration::from_secs(120));
    assert!(parse_duration("5 parsecs").is_err());
    assert!(parse_duration("soon").is_err());
    assert!(parse_positive_duration("0").is_err());
    // Past what a deadline (`Instant + duration`) can hold: refused, not a panic on TERM.
    assert!(parse_duration("366d").is_err());
    let err = parse(&["--graceful-timeout", "10000000000000000000"])
        .unwrap_err()
        .to_string();
    assert!(err.contains("longer than a year"), "{err}");
    assert!(parse(&["--upgrade-timeout", "600000m"]).is_err());
    assert_eq!(
        parse(&["--graceful-timeout", "525600m"]).unwrap().graceful_timeout,
        MAX_DURATION
    );
}

#[test]
fn a_memory_limit_below_a_booting_worker_is_refused() {
    let err = parse(&["--max-worker-memory", "1"]).unwrap_err().to_string();
    assert!(
        err.starts_with("max_worker_memory:") && err.contains("below the 8 MiB"),
        "{err}"
    );
    assert!(parse(&["--max-worker-memory", "8MiB"]).is_ok());
}

#[test]
fn the_admin_listener_stays_on_loopback_unless_allowed() {
    assert_eq!(
        parse(&["--admin", "127.0.0.1:9100"]).unwrap().admin,
        Some("127.0.0.1:9100".parse().unwrap())
    );
    let err = parse(&["--admin", "0.0.0.0:9100"]).unwrap_err().to_string();
    assert!(err.contains("--admin-allow-remote"), "{err}");
    assert!(parse(&["--admin", "0.0.0.0:9100", "--admin-allow-remote"]).is_ok());
}

#[test]
fn sizes() {
    assert_eq!(parse_size("512MiB").unwrap(), 512 << 20);
    assert_eq!(parse_size("2GiB").unwrap(), 2 << 30);
    assert_eq!(parse_size("100MB").unwrap(), 100_000_000);
    assert_eq!(parse_size("64M").unwrap(), 64 << 20);
    assert_eq!(parse_size("4096").unwrap(), 4096);
    assert!(parse_size("lots").is_err());
    assert!(parse_size("0").is_err());
    // As users type them; a unit letter alone is binary, as in nginx.
    assert_eq!(parse_size("1.5GiB").unwrap(), 3 << 29);
    assert_eq!(parse_size("512mb").unwrap(), 512_000_000);
    assert_eq!(parse_size("8m").unwrap(), 8 << 20);
    assert_eq!(parse_size("64K").unwrap(), 64 << 10);
    assert_eq!(parse_size("1 GiB").unwrap(), 1 << 30);
}

#[test]
fn the_file_sets_values_and_flags_override_it() {
    let path = file(
        "layers",
        "host = \"127.0.0.1\"\nport = 9000\nworkers = 3\nbalance = \"shared\"\n\
         graceful_timeout = \"500ms\"\nready_timeout = 5\nlog_level = \"debug\"\n",
    );
    let path_arg = path.to_str().unwrap();
    let config = parse(&["--config", path_arg, "--port", "9001"]).unwrap();
    assert_eq!(
        config.addr(),
        "127.0.0.1:9001".parse().unwrap(),
        "the flag wins over the file"
    );
    assert_eq!(config.workers.get(), 3);
    assert_eq!(config.balance, Balance::Shared);
    assert_eq!(config.graceful_timeout, Duration::from_millis(500));
    assert_eq!(config.ready_timeout, Duration::from_secs(5));
    assert_eq!(config.log_level, tracing::Level::DEBUG);

    std::fs::write(&path, "workers = 5\nport = 1\n").unwrap();
    let reloaded = config.reload().unwrap();
    assert_eq!(reloaded.workers.get(), 5, "reload re-reads the file");
    assert_eq!(reloaded.addr().port(), 9001, "and keeps the command line on top");
}

#[test]
fn a_reload_keeps_what_the_program_set_in_code() {
    let mut config = Config::default();
    config
        .set_addr("127.0.0.1:8937".parse().unwrap())
        .set_workers(NonZeroUsize::new(3).unwrap());
    let reloaded = config.reload().unwrap();
    assert_eq!(
        reloaded.addr(),
        config.addr(),
        "no file: nothing reverts to the defaults"
    );
    assert_eq!(reloaded.workers.get(), 3);

    // With a file: the file's changes apply, the program's choices stay on top.
    let path = file("code", "workers = 2\nport = 9100\nbacklog = 64\n");
    let mut config = parse(&["--config", path.to_str().unwrap(), "--backlog", "128"]).unwrap();
    config.set_host("127.0.0.1".parse().unwrap());
    // Set in code to the value it already has: still the program's choice.
    config.set_port(9100);
    std::fs::write(&path, "workers = 5\nport = 9200\nbacklog = 64\n").unwrap();
    let reloaded = config.reload().unwrap();
    assert_eq!(reloaded.workers.get(), 5, "the file is re-read");
    assert_eq!(reloaded.backlog, 128, "the flags stay on top of it");
    assert_eq!(
        reloaded.addr(),
        "127.0.0.1:9100".parse().unwrap(),
        "the host and the port chosen in code stay"
    );
    assert_eq!(
        reloaded.reload().unwrap().addr(),
        reloaded.addr(),
        "and on the reload after"
    );

    // Nothing set in code: a value equal to the file's still follows the file.
    let config = parse(&["--config", path.to_str().unwrap()]).unwrap();
    std::fs::write(&path, "workers = 2\n").unwrap();
    assert_eq!(
        config.reload().unwrap().port,
        8000,
        "the file's port removed: the default"
    );
}

#[test]
fn file_errors_name_the_key() {
    let cases = [
        ("prot = 80\n", "unknown field `prot`"),
        ("port = 70000\n", "port"),
        ("workers = 0\n", "workers: must be at least 1"),
        ("graceful_timeout = \"soon\"\n", "not a duration"),
        ("balance = \"roundrobin\"\n", "balance"),
        ("host = \"example.com\"\n", "host"),
        ("timeout = \"200ms\"\n", "timeout: must be 0 (off) or at least 1s"),
        ("graceful_timeout = 1e19\n", "longer than a year"),
        ("send_timeout = \"0\"\n", "send_timeout"),
    ];
    for (i, (text, expected)) in cases.iter().enumerate() {
        let path = file(&format!("bad{i}"), text);
        let err = parse(&["--config", path.to_str().unwrap()]).unwrap_err().to_string();
        assert!(err.contains(expected), "{text:?}: {err}");
        assert!(err.starts_with(path.to_str().unwrap()), "names the file: {err}");
    }
    let err = parse(&["--config", "/nonexistent/prefork.toml"])
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("cannot read /nonexistent/prefork.toml"), "{err}");
}

#[test]
fn tls_files_set_in_code_are_read_at_the_start() {
    let mut config = Config::default();
    assert!(!config.tls_unread(), "no TLS, nothing to read");
    config
        .set_tls_cert(vec!["cert.pem".into()])
        .set_tls_key(vec!["key.pem".into()]);
    assert!(config.tls_unread());
    let err = config.clone().with_tls().unwrap_err().to_string();
    assert!(
        err.contains("cannot read the certificate (--tls-cert) cert.pem"),
        "{err}"
    );
}
