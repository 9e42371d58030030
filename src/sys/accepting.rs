//! Exec mode: whether a program waits for connections on its socket, read
//! from `/proc` (for `--exec-ready accepting`, the readiness of programs that
//! do not speak the notify protocol).
//!
//! A process waits on the socket when one of its threads is blocked in
//! `accept(2)` on it, or when it watches it for reading: registered in one of
//! its epoll instances (every event loop: Node.js, asyncio, Go, uvicorn), or
//! in the fd list of a `poll(2)` or `select(2)` it is blocked in (gunicorn's
//! sync workers). The program itself and the processes it started are looked
//! at (gunicorn accepts in its workers, not its arbiter). The socket is known
//! by its inode, whatever fd number the program moved it to.
//!
//! Reading another process's `/proc/<pid>/syscall` and memory takes the right
//! to trace it, which the master has over its own descendants (same user, or
//! root).

use std::collections::HashSet;
use std::fs;

use nix::sys::uio::{process_vm_readv, RemoteIoVec};
use nix::unistd::Pid;

/// The most processes looked at per program (a program forking hundreds is
/// judged by its first ones).
const MOST_PROCESSES: usize = 64;

/// What `/proc` tells of a program and its socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// It, or a process it started, waits for connections on the socket.
    Waiting,
    /// Not yet.
    NotWaiting,
    /// The master may not look: `/proc/<pid>` refused it (a master without
    /// `CAP_SYS_PTRACE` over a command of another user, `hidepid`, a strict
    /// Yama `ptrace_scope`).
    Hidden,
}

/// Whether `pid`, or a process it started, waits for connections on the
/// socket whose inode is `socket`.
pub fn waits_on(pid: Pid, socket: u64) -> Seen {
    // The same check as the fds' links (ptrace access), on a link every
    // process has: the directory itself may be listed all the same.
    if let Err(err) = fs::read_link(format!("/proc/{pid}/exe")) {
        if err.kind() == std::io::ErrorKind::PermissionDenied {
            return Seen::Hidden;
        }
    }
    let waiting = super::process::family(pid, MOST_PROCESSES)
        .into_iter()
        .any(|process| process_waits_on(process, socket));
    if waiting {
        Seen::Waiting
    } else {
        Seen::NotWaiting
    }
}

fn process_waits_on(pid: Pid, socket: u64) -> bool {
    let Ok(entries) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    let target = format!("socket:[{socket}]");
    let mut socket_fds = HashSet::new();
    let mut epolls = Vec::new();
    for entry in entries.flatten() {
        let Ok(link) = fs::read_link(entry.path()) else {
            continue;
        };
        let Some(fd) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        match link.to_str() {
            Some(link) if link == target => {
                socket_fds.insert(fd);
            }
            Some("anon_inode:[eventpoll]") => epolls.push(fd),
            _ => {}
        }
    }
    if socket_fds.is_empty() {
        return false;
    }
    epolls.iter().any(|epoll| watched_by_epoll(pid, *epoll, &socket_fds))
        || super::process::tasks(pid)
            .iter()
            .any(|task| blocked_on(pid, task, &socket_fds))
}

/// `tfd: N` lines of an epoll fd's `fdinfo`: the fds it watches.
fn watched_by_epoll(pid: Pid, epoll: i32, fds: &HashSet<i32>) -> bool {
    let Ok(info) = fs::read_to_string(format!("/proc/{pid}/fdinfo/{epoll}")) else {
        return false;
    };
    info.lines()
        .filter_map(|line| line.strip_prefix("tfd:")?.split_whitespace().next()?.parse().ok())
        .any(|fd: i32| fds.contains(&fd))
}

/// Whether the thread `task` is blocked in accept, poll or select on one of `fds`,
/// from `/proc/<pid>/task/<task>/syscall` ("number arg0 arg1 ...", in hex).
fn blocked_on(pid: Pid, task: &str, fds: &HashSet<i32>) -> bool {
    let Ok(syscall) = fs::read_to_string(format!("/proc/{pid}/task/{task}/syscall")) else {
        return false;
    };
    let mut fields = syscall.split_whitespace();
    let Some(number) = fields.next().and_then(|n| n.parse::<i64>().ok()) else {
        return false; // "running", or "-1 ..." (not in a system call)
    };
    let args: Vec<u64> = fields
        .take(3)
        .filter_map(|arg| u64::from_str_radix(arg.trim_start_matches("0x"), 16).ok())
        .collect();
    let [arg0, arg1, arg2] = args[..] else { return false };
    match number {
        libc::SYS_accept | libc::SYS_accept4 => fds.contains(&(arg0 as i32)),
        #[cfg(target_arch = "x86_64")]
        libc::SYS_poll => polls(pid, arg0, arg1, fds),
        libc::SYS_ppoll => polls(pid, arg0, arg1, fds),
        #[cfg(target_arch = "x86_64")]
        libc::SYS_select => selects(pid, arg0, arg1, fds),
        libc::SYS_pselect6 => selects(pid, arg0, arg1, fds),
        _ => {
            let _ = arg2;
            false
        }
    }
}

/// `poll(fds, nfds, ...)`: whether one of `fds` is in the array, for reading.
fn polls(pid: Pid, array: u64, count: u64, fds: &HashSet<i32>) -> bool {
    let count = count.min(1024) as usize;
    let mut raw = vec![0u8; count * size_of::<libc::pollfd>()];
    if !read_memory(pid, array, &mut raw) {
        return false;
    }
    raw.chunks_exact(size_of::<libc::pollfd>()).any(|entry| {
        let fd = i32::from_ne_bytes([entry[0], entry[1], entry[2], entry[3]]);
        let events = i16::from_ne_bytes([entry[4], entry[5]]);
        fds.contains(&fd) && events & libc::POLLIN != 0
    })
}

/// `select(nfds, readfds, ...)`: whether one of `fds` is set in `readfds`.
fn selects(pid: Pid, nfds: u64, readfds: u64, fds: &HashSet<i32>) -> bool {
    if readfds == 0 {
        return false;
    }
    let nfds = nfds.min(libc::FD_SETSIZE as u64) as usize;
    let mut set = vec![0u8; nfds.div_ceil(64) * 8];
    if !read_memory(pid, readfds, &mut set) {
        return false;
    }
    fds.iter()
        .filter(|fd| (0..nfds as i32).contains(fd))
        .any(|fd| set[*fd as usize / 8] & (1 << (*fd % 8)) != 0)
}

fn read_memory(pid: Pid, address: u64, into: &mut [u8]) -> bool {
    let length = into.len();
    let remote = [RemoteIoVec {
        base: address as usize,
        len: length,
    }];
    let mut local = [std::io::IoSliceMut::new(into)];
    process_vm_readv(pid, &mut local, &remote).is_ok_and(|read| read == length)
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;
    use std::os::unix::fs::MetadataExt;
    use std::time::{Duration, Instant};

    use super::*;

    fn inode(listener: &TcpListener) -> u64 {
        use std::os::fd::AsRawFd;
        fs::metadata(format!("/proc/self/fd/{}", listener.as_raw_fd()))
            .unwrap()
            .ino()
    }

    fn eventually(what: impl Fn() -> bool) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if what() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }

    #[test]
    fn a_thread_blocked_in_accept_waits_on_the_socket() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let socket = inode(&listener);
        let me = Pid::this();
        assert_eq!(waits_on(me, socket), Seen::NotWaiting, "nobody accepts yet");
        let addr = listener.local_addr().unwrap();
        let acceptor = std::thread::spawn(move || listener.accept().map(|_| ()));
        assert!(
            eventually(|| waits_on(me, socket) == Seen::Waiting),
            "blocked in accept"
        );
        std::net::TcpStream::connect(addr).unwrap();
        acceptor.join().unwrap().unwrap();
    }

    #[test]
    fn a_thread_polling_the_socket_waits_on_it() {
        use std::os::fd::AsFd;
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let socket = inode(&listener);
        let me = Pid::this();
        let addr = listener.local_addr().unwrap();
        let poller = std::thread::spawn(move || {
            let mut fds = [nix::poll::PollFd::new(listener.as_fd(), nix::poll::PollFlags::POLLIN)];
            nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(5000u16)).map(|_| ())
        });
        assert!(eventually(|| waits_on(me, socket) == Seen::Waiting), "blocked in poll");
        std::net::TcpStream::connect(addr).unwrap();
        poller.join().unwrap().unwrap();
    }
}
