//! A load from inside the test: `connections` clients, each sending `GET /`
//! back to back on one connection, reconnecting when told `Connection: close`
//! (or, [`Load::start_closing`], on a new connection every time). Bounded in
//! time; every failure is recorded.

use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::util::{eventually, read_response, send_request};

/// The load never runs longer than this, whatever the test does.
const LIMIT: Duration = Duration::from_secs(120);

pub struct Load {
    stop: Arc<AtomicBool>,
    /// Requests answered so far, by every client of this load.
    progress: Arc<AtomicU64>,
    clients: Vec<JoinHandle<Tally>>,
}

#[derive(Debug, Default)]
pub struct Tally {
    pub ok: u64,
    pub closes: u64,
    pub failures: Vec<String>,
    /// The longest any request took, from its connect (or its write, on a
    /// kept-alive connection) to the end of its response.
    pub slowest: Duration,
}

impl Tally {
    /// Panics unless every request was answered and there were at least
    /// `at_least` of them (less traffic proves nothing). `what` names the run.
    pub fn assert_clean(&self, what: &str, at_least: u64) {
        assert!(
            self.failures.is_empty(),
            "{what}: {} failed requests, e.g. {:?}",
            self.failures.len(),
            &self.failures[..3.min(self.failures.len())]
        );
        assert!(
            self.ok >= at_least,
            "{what}: too little traffic to prove anything: {self:?}"
        );
    }
}

impl Load {
    pub fn start(addr: SocketAddr, connections: usize) -> Load {
        Load::spawn(addr, connections, Clients::KeepAlive)
    }

    /// Clients that stop when told `Connection: close` instead of reconnecting.
    pub fn start_without_reconnecting(addr: SocketAddr, connections: usize) -> Load {
        Load::spawn(addr, connections, Clients::StopAtClose)
    }

    /// Clients that open a new connection for every request and send
    /// `Connection: close`.
    pub fn start_closing(addr: SocketAddr, connections: usize) -> Load {
        Load::spawn(addr, connections, Clients::Closing)
    }

    fn spawn(addr: SocketAddr, connections: usize, clients: Clients) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let progress = Arc::new(AtomicU64::new(0));
        let clients = (0..connections)
            .map(|_| {
                let (stop, progress) = (Arc::clone(&stop), Arc::clone(&progress));
                thread::spawn(move || client(addr, &stop, &progress, clients))
            })
            .collect();
        Load {
            stop,
            progress,
            clients,
        }
    }

    /// Waits until this load has had `more` requests answered from now.
    pub fn wait_for_traffic(&self, more: u64) {
        let start = self.progress.load(Ordering::SeqCst);
        eventually(Duration::from_secs(10), "the load makes progress", || {
            (self.progress.load(Ordering::SeqCst) >= start + more).then_some(())
        });
    }

    /// Stops every client and adds up what they saw.
    pub fn finish(self) -> Tally {
        self.stop.store(true, Ordering::SeqCst);
        let mut total = Tally::default();
        for client in self.clients {
            let tally = client.join().expect("a client thread panicked");
            total.ok += tally.ok;
            total.closes += tally.closes;
            total.failures.extend(tally.failures);
            total.slowest = total.slowest.max(tally.slowest);
        }
        total
    }
}

/// How a client uses its connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Clients {
    /// Keep-alive; a new connection when told `Connection: close`.
    KeepAlive,
    /// Keep-alive; stop when told `Connection: close`.
    StopAtClose,
    /// A new connection per request, with `Connection: close`.
    Closing,
}

fn client(addr: SocketAddr, stop: &AtomicBool, progress: &AtomicU64, clients: Clients) -> Tally {
    let mut tally = Tally::default();
    let mut stream: Option<TcpStream> = None;
    let started = Instant::now();
    while !stop.load(Ordering::SeqCst) && started.elapsed() < LIMIT {
        let begun = Instant::now();
        let conn = match stream.take() {
            Some(conn) => conn,
            None => match TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
                Ok(conn) => {
                    let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
                    conn
                }
                Err(err) => {
                    tally.failures.push(format!("connect: {err}"));
                    continue;
                }
            },
        };
        let mut conn = conn;
        let keep_alive = clients != Clients::Closing;
        let result = send_request(&mut conn, "GET", "/", keep_alive).and_then(|()| read_response(&mut conn));
        tally.slowest = tally.slowest.max(begun.elapsed());
        match result {
            Ok(response) if response.status == 200 => {
                tally.ok += 1;
                progress.fetch_add(1, Ordering::SeqCst);
                if clients == Clients::Closing {
                    // Asked for: a new connection next time.
                } else if response.header("connection") == Some("close") {
                    tally.closes += 1; // the server asked: reconnect, or stop
                    if clients == Clients::StopAtClose {
                        break;
                    }
                } else {
                    stream = Some(conn);
                }
            }
            Ok(response) => tally.failures.push(format!("status {}", response.status)),
            Err(err) => tally.failures.push(format!("request: {err}")),
        }
    }
    tally
}
