//! TLS on the serving port: real clients (curl, h2load, `openssl s_client`, a
//! tonic client) against certificates made by `scripts/make-certs.sh`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::util::*;

/// A fresh set of certificates (see `scripts/make-certs.sh`) in a directory of the test's own.
pub fn certs(name: &str) -> PathBuf {
    let dir = tempdir(name);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/make-certs.sh");
    let status = Command::new("sh")
        .arg(script)
        .arg(&dir)
        .stdout(Stdio::null())
        .status()
        .expect("run scripts/make-certs.sh");
    assert!(status.success(), "scripts/make-certs.sh failed");
    dir
}

/// `--tls-cert DIR/NAME.pem --tls-key DIR/NAME.key` for each name.
pub fn tls_args(dir: &Path, names: &[&str]) -> Vec<String> {
    let mut args = Vec::new();
    for name in names {
        args.push("--tls-cert".to_owned());
        args.push(dir.join(format!("{name}.pem")).display().to_string());
        args.push("--tls-key".to_owned());
        args.push(dir.join(format!("{name}.key")).display().to_string());
    }
    args
}

fn start(binary: PathBuf, dir: &Path, names: &[&str], more: &[&str]) -> Server {
    let mut args: Vec<String> = tls_args(dir, names);
    args.extend(more.iter().map(|arg| (*arg).to_owned()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Server::start_command(command(binary, &args))
}

/// The files a server is given and an operator renews in place:
/// `live.pem` and `live.key`, the `server` pair to begin with.
fn live(dir: &Path) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join("live.pem"), dir.join("live.key"));
    std::fs::copy(dir.join("server.pem"), &cert).unwrap();
    std::fs::copy(dir.join("server.key"), &key).unwrap();
    (cert, key)
}

/// The default app with 2 workers on `cert` and `key`.
fn start_live(cert: &Path, key: &Path) -> Server {
    let (cert, key) = (cert.display().to_string(), key.display().to_string());
    Server::start(&["--workers", "2", "--tls-cert", &cert, "--tls-key", &key])
}

/// curl over TLS to `https://localhost:PORT/path` (resolved to the server),
/// trusting the test CA: its exit status and what `-w` and the body printed.
fn curl(server: &Server, dir: &Path, path: &str, args: &[&str]) -> (bool, String) {
    let port = server.addr.port();
    let output = Command::new("curl")
        .args(["-sS", "--max-time", "10", "--cacert"])
        .arg(dir.join("ca.pem"))
        .arg("--resolve")
        .arg(format!("localhost:{port}:127.0.0.1"))
        .args(args)
        .arg(format!("https://localhost:{port}{path}"))
        .output()
        .expect("run curl");
    let text = String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr);
    (output.status.success(), text)
}

/// One request with `openssl s_client`, resuming the session in `session` if
/// it exists, and saving the one it ends with there: `Reused` or `New`, and the
/// answer.
fn s_client(addr: SocketAddr, session: &Path, args: &[&str]) -> String {
    let mut command = Command::new("openssl");
    command
        .args([
            "s_client",
            "-connect",
            &addr.to_string(),
            "-servername",
            "localhost",
            "-ign_eof",
        ])
        .args(args)
        .arg("-sess_out")
        .arg(session);
    if session.exists() {
        command.arg("-sess_in").arg(session);
    }
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("run openssl s_client");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .expect("write the request");
    let output = wait_output(child, Duration::from_secs(10));
    output
        .lines()
        .filter(|line| line.starts_with("Reused") || line.starts_with("New,") || line.contains("Hello"))
        .collect::<Vec<_>>()
        .join(" | ")
}

fn wait_output(mut child: std::process::Child, within: Duration) -> String {
    let deadline = Instant::now() + within;
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut text = String::new();
    if let Some(mut stdout) = child.stdout.take() {
        let _ = stdout.read_to_string(&mut text);
    }
    let _ = child.wait();
    text
}

/// The SHA-256 fingerprint of the certificate the server shows for `name`.
fn fingerprint_served(addr: SocketAddr, name: &str) -> String {
    let script = format!(
        "openssl s_client -connect {addr} -servername {name} </dev/null 2>/dev/null | openssl x509 -noout -fingerprint -sha256"
    );
    let output = Command::new("sh").args(["-c", &script]).output().expect("run openssl");
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

fn fingerprint_of(pem: &Path) -> String {
    let output = Command::new("openssl")
        .args(["x509", "-noout", "-fingerprint", "-sha256", "-in"])
        .arg(pem)
        .output()
        .expect("run openssl");
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// The worker pid of a `Hello from worker N` answer.
fn worker_of(answer: &str) -> Option<i32> {
    answer
        .split("from worker ")
        .nth(1)?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[test]
fn curl_gets_http1_and_http2_over_tls_as_alpn_chose() {
    let dir = certs("tls-curl");
    let server = start(server_binary(), &dir, &["server"], &["--workers", "2"]);
    assert!(server.ready_line().contains("(TLS)"), "{}", server.ready_line());
    for (flag, version) in [("--http1.1", "1.1"), ("--http2", "2")] {
        let (ok, text) = curl(&server, &dir, "/", &[flag, "-w", "\nversion %{http_version}"]);
        assert!(ok, "curl {flag}: {text}");
        assert!(text.contains("Hello from worker"), "{text}");
        assert!(text.ends_with(&format!("version {version}")), "curl {flag}: {text}");
    }
    // h2load over TLS: ALPN h2, 4 connections, every request answered.
    let output = Command::new("h2load")
        .args(["-n", "400", "-c", "4", "-m", "10"])
        .arg(format!("https://127.0.0.1:{}/", server.addr.port()))
        .output()
        .expect("run h2load");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.contains("Application protocol: h2"), "{text}");
    assert!(text.contains("400 succeeded, 0 failed, 0 errored"), "{text}");
}

#[test]
fn the_service_sees_what_the_handshake_settled() {
    let dir = certs("tls-info");
    let server = start(example_binary(), &dir, &["server"], &["--workers", "1"]);
    let (ok, text) = curl(&server, &dir, "/tls", &["--http2"]);
    assert!(ok, "{text}");
    assert_eq!(
        text.trim(),
        "TLSv1.3 alpn h2 sni localhost resumed false client certificates 0"
    );
    let (ok, text) = curl(&server, &dir, "/tls", &["--http1.1", "--tlsv1.2", "--tls-max", "1.2"]);
    assert!(ok, "{text}");
    assert_eq!(
        text.trim(),
        "TLSv1.2 alpn http/1.1 sni localhost resumed false client certificates 0"
    );
}

#[test]
fn sni_picks_the_certificate_and_others_get_the_first() {
    let dir = certs("tls-sni");
    let server = start(server_binary(), &dir, &["server", "other"], &["--workers", "1"]);
    let (server_fp, other_fp) = (
        fingerprint_of(&dir.join("server.pem")),
        fingerprint_of(&dir.join("other.pem")),
    );
    assert_ne!(server_fp, other_fp);
    assert_eq!(fingerprint_served(server.addr, "localhost"), server_fp);
    assert_eq!(fingerprint_served(server.addr, "other.test"), other_fp);
    assert_eq!(
        fingerprint_served(server.addr, "api.other.test"),
        other_fp,
        "the wildcard"
    );
    assert_eq!(
        fingerprint_served(server.addr, "a.b.other.test"),
        server_fp,
        "a wildcard is one label deep"
    );
    assert_eq!(
        fingerprint_served(server.addr, "unknown.example"),
        server_fp,
        "the default"
    );
    // curl, which checks the name, accepts the one for its name.
    let port = server.addr.port();
    let output = Command::new("curl")
        .args(["-sS", "--cacert"])
        .arg(dir.join("ca.pem"))
        .arg("--resolve")
        .arg(format!("www.other.test:{port}:127.0.0.1"))
        .arg(format!("https://www.other.test:{port}/"))
        .output()
        .expect("run curl");
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("Hello from worker"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn plain_http_to_the_tls_port_is_told_so() {
    let dir = certs("tls-plain");
    let server = start(server_binary(), &dir, &["server"], &["--workers", "1"]);
    let response = get(server.addr, "/").expect("an answer, not a hang or a reset");
    assert_eq!(response.status, 400);
    assert!(
        response.body.contains("The plain HTTP request was sent to HTTPS port"),
        "{:?}",
        response.body
    );
    // Still serving TLS.
    let (ok, text) = curl(&server, &dir, "/", &[]);
    assert!(ok, "{text}");
}

#[test]
fn a_client_hello_sent_a_byte_at_a_time_is_closed_at_the_header_read_timeout() {
    let dir = certs("tls-slow");
    let server = start(
        server_binary(),
        &dir,
        &["server"],
        &["--workers", "1", "--header-read-timeout", "2s"],
    );
    // The start of a real ClientHello, then a byte every 200 ms.
    let hello = [0x16u8, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03];
    let mut stream = TcpStream::connect(server.addr).expect("connect");
    let started = Instant::now();
    let mut closed_after = None;
    for byte in hello.iter().chain(std::iter::repeat(&0u8)).take(60) {
        if stream.write_all(&[*byte]).is_err() {
            closed_after = Some(started.elapsed());
            break;
        }
        stream.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        let mut buf = [0u8; 64];
        match stream.read(&mut buf) {
            Ok(0) => {
                closed_after = Some(started.elapsed());
                break;
            }
            Ok(_) => {}
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => {
                closed_after = Some(started.elapsed());
                break;
            }
        }
    }
    let closed_after = closed_after.expect("the server closed the slow handshake");
    assert!(
        closed_after >= Duration::from_millis(1900) && closed_after < Duration::from_secs(5),
        "closed after {closed_after:?}, not at the 2 s header read timeout"
    );
}

#[test]
fn sessions_resume_on_every_worker_and_after_a_reload_and_an_upgrade() {
    let dir = certs("tls-resume");
    // The kernel's hash places each reconnect (a new source port) on either
    // worker; steering would place them by load, and an idle pair by ties.
    let mut server = start(
        server_binary(),
        &dir,
        &["server"],
        &["--workers", "2", "--balance", "reuseport"],
    );
    for version in ["-tls1_3", "-tls1_2"] {
        let session = dir.join(format!("session{version}.pem"));
        let first = s_client(server.addr, &session, &[version]);
        assert!(first.starts_with("New,"), "{first}");
        let mut workers = std::collections::HashSet::new();
        for n in 0..20 {
            let answer = s_client(server.addr, &session, &[version]);
            assert!(answer.starts_with("Reused,"), "reconnect {n} ({version}): {answer}");
            workers.extend(worker_of(&answer));
        }
        assert_eq!(
            workers.len(),
            2,
            "{version}: 20 reconnects reached both workers: {workers:?}"
        );
    }
    let session = dir.join("session-tls1_3.pem");
    server.signal(Signal::SIGHUP);
    server.wait_for_log("reload complete", Duration::from_secs(15));
    for n in 0..5 {
        let answer = s_client(server.addr, &session, &["-tls1_3"]);
        assert!(answer.starts_with("Reused,"), "after the HUP, reconnect {n}: {answer}");
    }
    server.signal(Signal::SIGUSR2);
    server.follow_upgrade(Duration::from_secs(20));
    for n in 0..5 {
        let answer = s_client(server.addr, &session, &["-tls1_3"]);
        assert!(answer.starts_with("Reused,"), "after the USR2, reconnect {n}: {answer}");
    }
}

#[test]
fn two_servers_with_one_ticket_key_file_resume_each_others_sessions() {
    let dir = certs("tls-ticket-file");
    let key = dir.join("ticket.key");
    let random: Vec<u8> = (0..80u8).map(|n| n.wrapping_mul(37).wrapping_add(11)).collect();
    std::fs::write(&key, random).unwrap();
    let key = key.display().to_string();
    let one = start(
        server_binary(),
        &dir,
        &["server"],
        &["--workers", "1", "--tls-ticket-key", &key],
    );
    let two = start(
        server_binary(),
        &dir,
        &["server"],
        &["--workers", "1", "--tls-ticket-key", &key],
    );
    let session = dir.join("session.pem");
    assert!(s_client(one.addr, &session, &["-tls1_3"]).starts_with("New,"));
    let answer = s_client(two.addr, &session, &["-tls1_3"]);
    assert!(
        answer.starts_with("Reused,"),
        "a ticket of the first server, on the second: {answer}"
    );
    // A bad key file: a usage error that names it.
    std::fs::write(dir.join("short.key"), b"too short").unwrap();
    let short = dir.join("short.key").display().to_string();
    let mut args = tls_args(&dir, &["server"]);
    args.extend(["--tls-ticket-key".to_owned(), short.clone()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (status, _, stderr) = run_to_exit(command(server_binary(), &args), Duration::from_secs(10));
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&short) && stderr.contains("48 or 80 random bytes"),
        "{stderr}"
    );
}

#[test]
fn bad_certificates_are_usage_errors_that_name_the_file() {
    let dir = certs("tls-bad");
    let (cert, key) = (dir.join("server.pem"), dir.join("server.key"));
    let other_key = dir.join("other.key");
    let missing = dir.join("missing.pem");
    let expired = (dir.join("expired.pem"), dir.join("expired.key"));
    let show = |path: &Path| path.display().to_string();
    let cases: Vec<(Vec<String>, Vec<String>)> = vec![
        (
            vec!["--tls-cert".into(), show(&cert), "--tls-key".into(), show(&other_key)],
            vec![show(&other_key), "is not the key of the certificate".into()],
        ),
        (
            vec!["--tls-cert".into(), show(&missing), "--tls-key".into(), show(&key)],
            vec![show(&missing), "cannot read".into()],
        ),
        (
            vec![
                "--tls-cert".into(),
                show(&expired.0),
                "--tls-key".into(),
                show(&expired.1),
            ],
            vec![show(&expired.0), "expired on".into()],
        ),
        (
            vec!["--tls-cert".into(), show(&key), "--tls-key".into(), show(&key)],
            vec![show(&key), "no certificate in it".into()],
        ),
        (
            vec!["--tls-cert".into(), show(&cert)],
            vec!["1 certificate (--tls-cert) but 0 keys".into()],
        ),
        (
            vec!["--tls-client-ca".into(), show(&cert)],
            vec!["client certificates need TLS".into()],
        ),
        (
            vec!["--tls-client-auth".into(), "optional".into()],
            vec!["client certificates need TLS".into()],
        ),
        (
            vec![
                "--tls-cert".into(),
                show(&cert),
                "--tls-key".into(),
                show(&key),
                "--tls-client-ca".into(),
                show(&missing),
            ],
            vec![show(&missing), "client CA (--tls-client-ca)".into()],
        ),
        (
            vec![
                "--tls-cert".into(),
                show(&cert),
                "--tls-key".into(),
                show(&key),
                "--".into(),
                "python3".into(),
                "-c".into(),
                "pass".into(),
            ],
            vec!["TLS is the command's own business".into()],
        ),
    ];
    for (args, expected) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (status, _, stderr) = run_to_exit(command(server_binary(), &args), Duration::from_secs(10));
        assert_eq!(status.code(), Some(2), "{args:?}: {stderr}");
        for text in expected {
            assert!(stderr.contains(&text), "{args:?}: {text:?} not in {stderr}");
        }
    }
}

#[test]
fn a_key_that_is_not_its_certificates_refuses_the_reload_and_the_old_one_serves() {
    let dir = certs("tls-refused");
    let (cert, key) = live(&dir);
    let server = start_live(&cert, &key);
    let before = fingerprint_served(server.addr, "localhost");
    assert_eq!(before, fingerprint_of(&dir.join("server.pem")));
    let workers = server.workers();
    // A renewal half done: the new certificate, the old key.
    std::fs::copy(dir.join("rsa.pem"), &cert).unwrap();
    server.signal(Signal::SIGHUP);
    let refused = server.wait_for_log("reload refused", Duration::from_secs(10));
    assert!(refused.contains("is not the key of the certificate"), "{refused}");
    assert_eq!(server.workers(), workers, "the old workers keep serving");
    assert_eq!(fingerprint_served(server.addr, "localhost"), before);
    // The renewal finished: the HUP applies it.
    std::fs::copy(dir.join("rsa.key"), &key).unwrap();
    server.signal(Signal::SIGHUP);
    server.wait_for_log("reload complete", Duration::from_secs(15));
    assert_eq!(
        fingerprint_served(server.addr, "localhost"),
        fingerprint_of(&dir.join("rsa.pem"))
    );
}

#[test]
fn a_new_certificate_is_applied_by_hup_under_keep_alive_load_without_a_failed_request() {
    let dir = certs("tls-hup-load");
    let (cert, key) = live(&dir);
    let server = start_live(&cert, &key);
    // HTTP/1.1 keep-alive over TLS, 16 connections, for 4 s: h2load does not
    // retry a request on a new connection, so every request a reload cut would
    // count as failed.
    let load = Command::new("h2load")
        .args(["--h1", "-c", "16", "-D", "4", "--warm-up-time", "0"])
        .arg(format!("https://127.0.0.1:{}/", server.addr.port()))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("run h2load");
    std::thread::sleep(Duration::from_millis(1000));
    std::fs::copy(dir.join("rsa.pem"), &cert).unwrap();
    std::fs::copy(dir.join("rsa.key"), &key).unwrap();
    server.signal(Signal::SIGHUP);
    server.wait_for_log("reload complete", Duration::from_secs(15));
    let text = wait_output(load, Duration::from_secs(20));
    let done = text
        .lines()
        .find(|line| line.starts_with("requests:"))
        .unwrap_or_else(|| panic!("no h2load summary: {text}"));
    assert!(done.contains(" 0 failed, 0 errored"), "{done}");
    assert_eq!(
        fingerprint_served(server.addr, "localhost"),
        fingerprint_of(&dir.join("rsa.pem"))
    );
}

#[test]
fn the_axum_example_serves_over_tls_with_the_same_flags() {
    let dir = certs("tls-axum");
    let server = start(example("axum_app"), &dir, &["server"], &["--workers", "2"]);
    let (ok, text) = curl(&server, &dir, "/json", &["--http2", "-w", " %{http_version}"]);
    assert!(ok, "{text}");
    assert!(text.starts_with("{\"pid\":") && text.ends_with(" 2"), "{text}");
    let (ok, text) = curl(&server, &dir, "/echo", &["--http1.1", "-d", "over tls"]);
    assert!(ok, "{text}");
    assert_eq!(text, "over tls");
    let (ok, text) = curl(&server, &dir, "/sse?n=2&ms=10", &["--http2", "-N"]);
    assert!(ok && text.matches("data:").count() == 2, "{text}");
}

#[test]
fn an_idle_tls_connection_is_parked_and_its_next_request_answered() {
    let dir = certs("tls-park");
    let server = start(
        server_binary(),
        &dir,
        &["server"],
        &["--workers", "1", "--log-level", "debug"],
    );
    // Python's ssl: one TLS connection, a request, 1.5 s idle (parked after 1 s), three times.
    let script = r#"
import socket, ssl, sys, time
ctx = ssl.create_default_context(cafile=sys.argv[1])
c = ctx.wrap_socket(socket.create_connection(("127.0.0.1", int(sys.argv[2]))), server_hostname="localhost")
for i in range(3):
    c.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
    data = b""
    while b"\n" not in data.split(b"\r\n\r\n", 1)[-1] or b"\r\n\r\n" not in data:
        data += c.recv(4096)
    print(data.split(b"\r\n\r\n", 1)[1].decode().strip())
    time.sleep(1.5)
"#;
    let output = Command::new("python3")
        .args(["-c", script])
        .arg(dir.join("ca.pem"))
        .arg(server.addr.port().to_string())
        .output()
        .expect("run python3");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let answers: Vec<&str> = text.lines().collect();
    assert_eq!(answers.len(), 3, "{text}");
    assert!(
        answers.iter().all(|answer| answer.starts_with("Hello from worker")),
        "{text}"
    );
    server.wait_for_log_count("an idle keep-alive connection is parked", 2, Duration::from_secs(5));
}

/// The `plain HTTP on ADDR` of the ready line.
fn plain_addr(server: &Server) -> SocketAddr {
    let line = server.ready_line();
    let addr = line
        .split("plain HTTP on ")
        .nth(1)
        .and_then(|rest| rest.split([',', ' ']).next());
    addr.and_then(|addr| addr.parse().ok())
        .unwrap_or_else(|| panic!("no plain port in {line}"))
}

#[test]
fn a_plain_port_beside_the_tls_one_serves_the_app_or_redirects_to_https() {
    let dir = certs("tls-plain-port");
    let mut server = start(
        example_binary(),
        &dir,
        &["server"],
        &["--workers", "2", "--plain-port", "0"],
    );
    let plain = plain_addr(&server);
    assert_ne!(plain.port(), server.addr.port());
    let response = get(plain, "/tls").expect("the plain port answers");
    assert_eq!((response.status, response.body.trim()), (200, "plain"));
    let (ok, text) = curl(&server, &dir, "/tls", &["--http1.1"]);
    assert!(ok && text.starts_with("TLSv1.3"), "{text}");
    // Through an upgrade, the plain port is handed over with the others.
    server.signal(Signal::SIGUSR2);
    server.follow_upgrade(Duration::from_secs(20));
    assert_eq!(get(plain, "/tls").expect("after the upgrade").body.trim(), "plain");
    drop(server);

    let server = start(
        server_binary(),
        &dir,
        &["server"],
        &["--workers", "1", "--plain-port", "0", "--plain-redirect"],
    );
    let plain = plain_addr(&server);
    let mut stream = TcpStream::connect(plain).unwrap();
    stream
        .write_all(b"GET /a/b?c=d HTTP/1.1\r\nHost: localhost:8080\r\n\r\n")
        .unwrap();
    let response = read_response(&mut stream).expect("an answer");
    assert_eq!(response.status, 308);
    let https = format!("https://localhost:{}/a/b?c=d", server.addr.port());
    assert_eq!(response.header("location"), Some(https.as_str()));
    // ...and the connection closes: its next request goes to HTTPS (left open,
    // it would be parked, and served again as any other).
    assert_eq!(response.header("connection"), Some("close"));
    let mut rest = Vec::new();
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert_eq!(
        stream.read_to_end(&mut rest).map(|_| rest.len()).ok(),
        Some(0),
        "closed after the 308"
    );
    // curl follows it to the TLS port.
    let output = Command::new("curl")
        .args(["-sSL", "--cacert"])
        .arg(dir.join("ca.pem"))
        .arg(format!("http://localhost:{}/", plain.port()))
        .output()
        .expect("run curl");
    assert!(String::from_utf8_lossy(&output.stdout).starts_with("Hello from worker"));
    // A plain port needs TLS beside it; a redirect, a plain port.
    for (args, expected) in [
        (
            vec!["--plain-port", "8080"],
            "--plain-port is a plain port beside a TLS one",
        ),
        (vec!["--plain-redirect"], "give --plain-port too"),
    ] {
        let (status, _, stderr) = run_to_exit(command(server_binary(), &args), Duration::from_secs(10));
        assert_eq!(status.code(), Some(2), "{stderr}");
        assert!(stderr.contains(expected), "{stderr}");
    }
}

#[test]
fn with_client_certificates_every_connection_is_verified_and_none_resumes() {
    let dir = certs("tls-mtls");
    let ca = dir.join("ca.pem").display().to_string();
    let server = start(
        example_binary(),
        &dir,
        &["server"],
        &[
            "--workers",
            "1",
            "--tls-client-ca",
            &ca,
            "--tls-client-auth",
            "optional",
        ],
    );
    let session = dir.join("session.pem");
    let (cert, key) = (dir.join("client.pem"), dir.join("client.key"));
    let with_cert = ["-cert", &cert.display().to_string(), "-key", &key.display().to_string()].map(str::to_owned);
    let with_cert: Vec<&str> = with_cert.iter().map(String::as_str).collect();
    for n in 0..3 {
        let answer = s_client(server.addr, &session, &with_cert);
        assert!(answer.starts_with("New,"), "connection {n} was resumed: {answer}");
    }
    let (ok, text) = curl(
        &server,
        &dir,
        "/tls",
        &[
            "--cert",
            &cert.display().to_string(),
            "--key",
            &key.display().to_string(),
        ],
    );
    // (curl may send the CA after the client's own certificate: a chain of 2.)
    let shown: usize = text.trim().rsplit(' ').next().and_then(|n| n.parse().ok()).unwrap_or(0);
    assert!(ok && shown >= 1, "{text}");
    let (ok, text) = curl(&server, &dir, "/tls", &[]);
    assert!(ok && text.trim().ends_with("client certificates 0"), "optional: {text}");
}

#[test]
fn a_client_offering_only_protocols_the_server_does_not_speak_gets_http1() {
    let dir = certs("tls-alpn");
    let server = start(example_binary(), &dir, &["server"], &["--workers", "1"]);
    let output = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "printf 'GET /tls HTTP/1.1\\r\\nHost: localhost\\r\\nConnection: close\\r\\n\\r\\n' | \
             openssl s_client -connect {} -servername localhost -alpn http/1.0 -ign_eof 2>&1",
            server.addr
        ))
        .output()
        .expect("run openssl");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.contains("alpn none sni localhost"), "{text}");
}

#[test]
fn prefork_server_reload_refuses_a_half_done_renewal_before_signalling() {
    let dir = certs("tls-ctl");
    let (cert, key) = live(&dir);
    let pid_file = dir.join("server.pid");
    let file = dir.join("prefork.toml");
    std::fs::write(
        &file,
        format!(
            "tls_cert = {:?}\ntls_key = {:?}\npid_file = {:?}\n",
            cert.display().to_string(),
            key.display().to_string(),
            pid_file.display().to_string()
        ),
    )
    .unwrap();
    let config = file.display().to_string();
    let server = Server::start(&["--workers", "1", "--config", &config]);
    let reload = || {
        run_to_exit(
            bare_command(server_binary(), &["--config", &config, "reload"]),
            Duration::from_secs(10),
        )
    };
    std::fs::copy(dir.join("rsa.pem"), &cert).unwrap();
    let (status, _, stderr) = reload();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("not reloading") && stderr.contains("is not the key of the certificate"),
        "{stderr}"
    );
    assert!(
        !server.logs().contains("master: reload"),
        "no signal was sent: {}",
        server.logs()
    );
    std::fs::copy(dir.join("rsa.key"), &key).unwrap();
    let (status, _, stderr) = reload();
    assert_eq!(status.code(), Some(0), "{stderr}");
    server.wait_for_log("reload complete", Duration::from_secs(15));
    assert_eq!(
        fingerprint_served(server.addr, "localhost"),
        fingerprint_of(&dir.join("rsa.pem"))
    );
}

#[test]
fn the_admin_views_say_when_each_certificate_expires() {
    let dir = certs("tls-expiry");
    let server = start(
        server_binary(),
        &dir,
        &["server", "other"],
        &["--workers", "1", "--admin", "127.0.0.1:0"],
    );
    let admin = server.admin_addr();
    let metrics = get(admin, "/metrics").expect("/metrics").body;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    // scripts/make-certs.sh signs for 825 days.
    let day = 24 * 3600;
    for name in ["localhost", "other.test"] {
        let line = metrics
            .lines()
            .find(|line| {
                line.starts_with("prefork_tls_certificate_expiry_timestamp_seconds{")
                    && line.contains(&format!("name=\"{name}\""))
            })
            .unwrap_or_else(|| panic!("no expiry for {name} in {metrics}"));
        let at: u64 = line.rsplit(' ').next().and_then(|n| n.parse().ok()).expect("a number");
        assert!(at > now + 824 * day && at < now + 826 * day, "{line}");
    }
    let status: serde_json::Value = serde_json::from_str(&get(admin, "/status").expect("/status").body).unwrap();
    let tls = status["config"]["tls"].as_array().expect("config.tls");
    assert_eq!(tls.len(), 2, "{tls:?}");
    assert!(tls[0]["file"].as_str().unwrap().ends_with("server.pem"), "{tls:?}");
}
