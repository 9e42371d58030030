//! A keep-alive load from inside the test: `connections` clients, each sending
//! `GET /` back to back on one connection, reconnecting when told
//! `Connection: close`. Bounded in time; every failure is recorded.

use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::util::{read_response, send_request};

/// The load never runs longer than this, whatever the test does.
const LIMIT: Duration = Duration::from_secs(120);

pub struct Load {
    stop: Arc<AtomicBool>,
    clients: Vec<JoinHandle<Tally>>,
}

#[derive(Debug, Default)]
pub struct Tally {
    pub ok: u64,
    pub closes: u64,
    pub failures: Vec<String>,
}

impl Load {
    pub fn start(addr: SocketAddr, connections: usize) -> Load {
        Load::spawn(addr, connections, true)
    }

    /// Clients that stop when told `Connection: close` instead of reconnecting.
    pub fn start_without_reconnecting(addr: SocketAddr, connections: usize) -> Load {
        Load::spawn(addr, connections, false)
    }

    fn spawn(addr: SocketAddr, connections: usize, reconnect: bool) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let clients = (0..connections)
            .map(|_| {
                let stop = Arc::clone(&stop);
                thread::spawn(move || client(addr, &stop, reconnect))
            })
            .collect();
        Load { stop, clients }
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
        }
        total
    }
}

/// Shared by the clients: how many requests succeeded so far (to wait for traffic).
pub static PROGRESS: Mutex<u64> = Mutex::new(0);

fn client(addr: SocketAddr, stop: &AtomicBool, reconnect: bool) -> Tally {
    let mut tally = Tally::default();
    let mut stream: Option<TcpStream> = None;
    let started = Instant::now();
    while !stop.load(Ordering::SeqCst) && started.elapsed() < LIMIT {
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
        let result = send_request(&mut conn, "GET", "/", true).and_then(|()| read_response(&mut conn));
        match result {
            Ok(response) if response.status == 200 => {
                tally.ok += 1;
                *PROGRESS.lock().unwrap() += 1;
                if response.header("connection") == Some("close") {
                    tally.closes += 1; // the server asked: reconnect, or stop
                    if !reconnect {
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
