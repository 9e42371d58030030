//! `prefork-server top`: the status table redrawn every interval, with the
//! requests per second and the p99 of each worker over the last interval
//! (from the difference of two `/status`: the server keeps no history), as
//! PM2's `monit` shows its processes.

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::table::{render, Rates};
use super::{fetch_status, Found};

/// Clears a terminal and puts the cursor at its top left.
const CLEAR: &str = "\x1b[H\x1b[2J";

/// Polls until interrupted, or `count` frames. On a terminal each frame
/// replaces the last; into a pipe they follow one another.
pub fn top(admin: &Found<SocketAddr>, interval: Duration, count: Option<u64>) -> Result<(), String> {
    let terminal = std::io::stdout().is_terminal();
    let mut previous = None;
    let mut drawn = 0;
    loop {
        let status = fetch_status(admin)?;
        let now = Instant::now();
        let rates = (previous.as_ref()).map(|(before, at): &(serde_json::Value, Instant)| {
            Rates::between(before, &status, (now - *at).as_secs_f64())
        });
        let mut frame = render(&status, rates.as_ref());
        if terminal {
            frame.insert_str(0, CLEAR);
        } else {
            frame.push('\n');
        }
        let mut stdout = std::io::stdout();
        if stdout
            .write_all(frame.as_bytes())
            .and_then(|()| stdout.flush())
            .is_err()
        {
            return Ok(()); // the reader went away (`| head`)
        }
        drawn += 1;
        if count.is_some_and(|count| drawn >= count) {
            return Ok(());
        }
        previous = Some((status, now));
        std::thread::sleep(interval);
    }
}
