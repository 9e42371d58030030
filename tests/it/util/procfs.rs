//! What /proc says about processes: children, liveness, threads, pending signals.

use nix::sys::signal::Signal;
use nix::unistd::Pid;

/// `(pid, state)` of every process whose parent is `parent`, from /proc.
pub fn children(parent: Pid) -> Vec<(Pid, char)> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| {
            let (state, ppid) = stat(Pid::from_raw(pid))?;
            (ppid == parent.as_raw()).then_some((Pid::from_raw(pid), state))
        })
        .collect()
}

/// True while `pid` exists and is not a zombie.
pub fn alive(pid: Pid) -> bool {
    stat(pid).is_some_and(|(state, _)| state != 'Z')
}

/// State and parent pid from /proc/<pid>/stat (parsed after the last ')', since
/// the command name may contain spaces).
fn stat(pid: Pid) -> Option<(char, i32)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut fields = text.rsplit_once(')')?.1.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((state, ppid))
}

pub fn thread_count(pid: Pid) -> usize {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .expect("Threads: line");
    line.trim().parse().expect("a number")
}

/// True if any of `signals` is pending for `pid` (queued, not yet delivered),
/// from the `ShdPnd`/`SigPnd` masks of /proc/<pid>/status.
pub fn signals_pending(pid: Pid, signals: &[Signal]) -> bool {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return false;
    };
    let mask = status
        .lines()
        .filter(|line| line.starts_with("ShdPnd:") || line.starts_with("SigPnd:"))
        .filter_map(|line| u64::from_str_radix(line.split_whitespace().nth(1)?, 16).ok())
        .fold(0, |all, mask| all | mask);
    signals.iter().any(|signal| mask & (1 << (*signal as i32 - 1)) != 0)
}

/// What `/proc/<pid>/fd` of `pid` points at, by fd (`socket:[inode]`, a path...).
pub fn fd_targets(pid: Pid) -> std::collections::BTreeMap<i32, String> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|entries| {
            entries
                .filter_map(|entry| {
                    let entry = entry.ok()?;
                    let fd = entry.file_name().to_str()?.parse().ok()?;
                    let target = std::fs::read_link(entry.path()).ok()?;
                    Some((fd, target.to_string_lossy().into_owned()))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// `socket:[inode]` of every TCP socket on local port `port` in `state`
/// (`/proc/net/tcp` and `tcp6`'s hex code: `0A` listening, `01` established).
fn tcp_sockets(port: u16, state: &str) -> Vec<String> {
    let local = format!(":{port:04X}");
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|table| std::fs::read_to_string(table).ok())
        .flat_map(|table| {
            table
                .lines()
                .skip(1)
                .filter_map(|line| {
                    // sl, local_address, rem_address, st, ..., inode (the 10th)
                    let fields: Vec<&str> = line.split_whitespace().collect();
                    (fields.len() > 9 && fields[1].ends_with(&local) && fields[3] == state)
                        .then(|| format!("socket:[{}]", fields[9]))
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

/// `socket:[inode]` of every socket listening on `port`.
pub fn listening_on(port: u16) -> Vec<String> {
    tcp_sockets(port, "0A")
}

/// How many established TCP connections on local port `port` process `pid`
/// holds.
pub fn established_connections(pid: Pid, port: u16) -> usize {
    let held: std::collections::HashSet<String> = fd_targets(pid).into_values().collect();
    tcp_sockets(port, "01")
        .iter()
        .filter(|socket| held.contains(*socket))
        .count()
}

/// Limits `pid` to the files it has open now and `room` more.
pub fn limit_files(pid: Pid, room: u64) {
    let open = std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count() as u64;
    let limit = libc::rlimit {
        rlim_cur: open + room,
        rlim_max: open + room,
    };
    // SAFETY: prlimit reads `limit` and writes nothing (no old-limit pointer).
    let rc = unsafe { libc::prlimit(pid.as_raw(), libc::RLIMIT_NOFILE, &limit, std::ptr::null_mut()) };
    assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
}

/// The most resident memory `pid` has had (`VmHWM`), in KiB.
pub fn peak_rss_kib(pid: Pid) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    (status.lines().find_map(|l| l.strip_prefix("VmHWM:")))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM: line")
}
