//! Load-aware steering of new connections (`--balance steered`): an
//! `SK_REUSEPORT` program attached to the reuseport group of the slots'
//! sockets picks, for each new connection, the less loaded of two ready slots
//! (see `program`), from memory the workers write (see `memory`).
//!
//! - `mod.rs`      the maps, the program, loading and attaching them; why not
//! - `program.rs`  the bytecode
//! - `memory.rs`   the shared memory: the listed slots and each slot's load
//!
//! Two maps: the shared memory (an mmapable array of one element) and the
//! `REUSEPORT_SOCKARRAY` of the slots' sockets, by slot. A socket can be in
//! one such map only, so a new master takes over the old master's maps and
//! program on a hot upgrade (their fds are handed down with the sockets)
//! rather than building its own.

mod memory;
mod program;

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

pub use memory::{Shared, SlotLoad, MAX_SLOTS};

use super::bpf;

/// Steering in force: the maps and the program, and the shared memory.
pub struct Steering {
    memory_map: OwnedFd,
    sockets_map: OwnedFd,
    program: OwnedFd,
    shared: &'static Shared,
}

impl std::fmt::Debug for Steering {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Steering")
            .field("listed", &self.shared.listed())
            .finish()
    }
}

/// How long a worker may go without a heartbeat before the program takes it
/// as stalled: three of its housekeeping ticks.
pub const STALL: std::time::Duration = std::time::Duration::from_millis(750);

impl Steering {
    /// Creates the maps and loads the program. The error says why the kernel
    /// would not, in words an operator can act on.
    pub fn load() -> Result<Steering, String> {
        // Before Linux 5.11 maps and programs are charged to RLIMIT_MEMLOCK,
        // often 64 KiB (the maps need about 300): raised as far as allowed.
        raise_memlock();
        let memory_map = bpf::create_map(
            bpf::MAP_TYPE_ARRAY,
            4,
            memory::SIZE as u32,
            1,
            bpf::F_MMAPABLE,
            "prefork_load",
        )
        .map_err(|err| match err.raw_os_error() {
            Some(libc::EINVAL) => {
                format!("cannot create the load map: {err} (a kernel before 5.5 has no mmapable BPF arrays)")
            }
            _ => cannot("create the load map", &err),
        })?;
        let sockets_map = bpf::create_map(
            bpf::MAP_TYPE_REUSEPORT_SOCKARRAY,
            4,
            8,
            MAX_SLOTS as u32,
            0,
            "prefork_sockets",
        )
        .map_err(|err| cannot("create the socket map", &err))?;
        let shared = map_shared(memory_map.as_fd())?;
        shared
            .header
            .magic
            .store(memory::MAGIC, std::sync::atomic::Ordering::Relaxed);
        shared
            .header
            .stall_ns
            .store(STALL.as_nanos() as u64, std::sync::atomic::Ordering::Relaxed);
        let insns = program::program(memory_map.as_fd(), sockets_map.as_fd());
        let program =
            bpf::load_program(bpf::PROG_TYPE_SK_REUSEPORT, &insns, "prefork_steer").map_err(|refused| match refused
                .error
                .raw_os_error()
            {
                Some(libc::EPERM) => cannot("load the program", &refused.error),
                _ => format!(
                    "the kernel refused the steering program ({}): {}",
                    refused.error, refused.log
                ),
            })?;
        Ok(Steering {
            memory_map,
            sockets_map,
            program,
            shared,
        })
    }

    /// Takes over the maps and the program an old master handed down (a hot
    /// upgrade): the same memory, so that its workers and this master's steer
    /// as one until it has handed over.
    pub fn inherit([memory_map, sockets_map, program]: [OwnedFd; 3]) -> Result<Steering, String> {
        let shared = map_shared(memory_map.as_fd())?;
        if shared.header.magic.load(std::sync::atomic::Ordering::Relaxed) != memory::MAGIC {
            return Err("the old master's steering memory has another layout (an upgrade across versions)".into());
        }
        Ok(Steering {
            memory_map,
            sockets_map,
            program,
            shared,
        })
    }

    /// The fds to hand down to a new master (see [`Steering::inherit`]).
    pub fn fds(&self) -> [BorrowedFd<'_>; 3] {
        [self.memory_map.as_fd(), self.sockets_map.as_fd(), self.program.as_fd()]
    }

    /// Makes `socket` the one the program selects for `slot`. `EBUSY`: the
    /// socket is in another program's map (a socket is in one at most), which
    /// frees it only once that program is gone.
    /// A socket already at its key is left there: taking it out, even for a
    /// moment, would let the kernel's hash place that moment's connections.
    pub fn put(&self, slot: usize, socket: BorrowedFd<'_>) -> io::Result<()> {
        let key = u32::try_from(slot).map_err(io::Error::other)?;
        let map = self.sockets_map.as_fd();
        if bpf::socket_at(map, key)? == Some(bpf::cookie(socket)?) {
            return Ok(());
        }
        bpf::take_socket(map, key)?;
        bpf::put_socket(map, key, socket)
    }

    /// Attaches the program to the reuseport group of `socket`.
    pub fn attach(&self, socket: BorrowedFd<'_>) -> io::Result<()> {
        bpf::attach_reuseport(socket, self.program.as_fd())
    }

    pub fn shared(&self) -> &'static Shared {
        self.shared
    }
}

/// Detaches any steering program from the group of `socket` (the kernel's
/// hash again).
pub fn detach(socket: BorrowedFd<'_>) -> io::Result<()> {
    bpf::detach_reuseport(socket)
}

fn raise_memlock() {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit reads the struct given; a refusal (not root) changes nothing.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } != 0 {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes the struct given, then setrlimit reads it.
        unsafe {
            if libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) == 0 {
                limit.rlim_cur = limit.rlim_max;
                libc::setrlimit(libc::RLIMIT_MEMLOCK, &limit);
            }
        }
    }
}

fn map_shared(map: BorrowedFd<'_>) -> Result<&'static Shared, String> {
    let memory = bpf::map_memory(map, memory::SIZE).map_err(|err| cannot("map the load map's memory", &err))?;
    // SAFETY: the mapping is at least `SIZE` bytes, page-aligned, shared, and
    // never unmapped; `Shared` is atomics only (any bit pattern is valid, and
    // the kernel zeroes a new map), written concurrently only through them.
    Ok(unsafe { memory.cast::<Shared>().as_ref() })
}

/// `cannot <what>: <why>`, with the usual causes named.
fn cannot(what: &str, err: &io::Error) -> String {
    let why = match err.raw_os_error() {
        Some(libc::EPERM) => "not permitted (loading BPF needs CAP_BPF, or CAP_SYS_ADMIN before Linux 5.8, or root; \
             a container may drop it or block bpf(2); before 5.11, RLIMIT_MEMLOCK may be too low)"
            .to_string(),
        Some(libc::ENOSYS) => "bpf(2) is not available (a kernel without BPF, or a seccomp filter)".to_string(),
        _ => err.to_string(),
    };
    format!("cannot {what}: {why}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use socket2::{Domain, Socket, Type};
    use std::net::{SocketAddr, TcpListener, TcpStream};
    use std::sync::atomic::Ordering::Relaxed;

    fn group(n: usize) -> Vec<TcpListener> {
        let mut addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
        (0..n)
            .map(|_| {
                let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
                socket.set_reuse_port(true).unwrap();
                socket.bind(&addr.into()).unwrap();
                socket.listen(64).unwrap();
                socket.set_nonblocking(true).unwrap();
                let listener: TcpListener = socket.into();
                addr = listener.local_addr().unwrap();
                listener
            })
            .collect()
    }

    /// Which listener each of `n` new connections lands on; each taken from
    /// its queue as a worker would count it, if `taken` says so.
    fn landings(listeners: &[TcpListener], n: usize, taken: Option<&Shared>) -> Vec<usize> {
        let addr = listeners[0].local_addr().unwrap();
        let mut counts = vec![0; listeners.len()];
        let mut held = Vec::new();
        for _ in 0..n {
            held.push(TcpStream::connect(addr).unwrap());
            let landed = (0..200).find_map(|_| {
                let found = listeners.iter().position(|listener| listener.accept().is_ok());
                if found.is_none() {
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
                found
            });
            let landed = landed.expect("accepted somewhere");
            if let Some(shared) = taken {
                shared.slots[landed].took_one();
            }
            counts[landed] += 1;
        }
        counts
    }

    #[test]
    fn the_program_loads_and_sends_each_connection_to_the_less_loaded_ready_slot() {
        let steering = match Steering::load() {
            Ok(steering) => steering,
            // Without the privilege this test is not about: said, not passed silently.
            Err(why) if !nix::unistd::geteuid().is_root() => return eprintln!("not run: {why}"),
            Err(why) => panic!("{why}"),
        };
        let listeners = group(3);
        for (slot, listener) in listeners.iter().enumerate() {
            steering.put(slot, listener.as_fd()).unwrap();
            steering.shared().slot(slot).unwrap().start();
        }
        steering.attach(listeners[0].as_fd()).unwrap();
        let shared = steering.shared();
        // Stale only where the test makes it so, however slow the machine.
        shared.header.stall_ns.store(60_000_000_000, Relaxed);
        shared.publish(&[0, 1, 2]);
        let load = |slot: usize| shared.slot(slot).unwrap();
        load(0).set_in_flight(5);
        load(2).set_in_flight(5);
        // Two candidates of three: slot 1 wins whenever it is one of them (2/3).
        let counts = landings(&listeners, 60, Some(shared));
        assert!(counts[1] >= 30, "the idle slot takes most: {counts:?}");
        // Unlisted (no ready worker): never chosen.
        load(1).queue_empty();
        shared.publish(&[0, 2]);
        let counts = landings(&listeners, 20, Some(shared));
        assert_eq!(counts[1], 0, "{counts:?}");
        // Stale heartbeat: loses to a fresh one whatever its load.
        shared.publish(&[0, 1]);
        load(1).set_in_flight(0);
        load(1).beat_ns.store(1, Relaxed);
        let counts = landings(&listeners, 20, Some(shared));
        assert_eq!(counts, [20, 0, 0], "the stalled slot 1 gets nothing");
        // Steered and not taken counts as queued: equal loads alternate.
        load(0).set_in_flight(0);
        load(0).queue_empty();
        load(1).start();
        let counts = landings(&listeners, 20, None);
        assert!(counts[0] >= 8 && counts[1] >= 8, "{counts:?}");
        assert_eq!(
            load(0).queued() + load(1).queued(),
            20,
            "none taken yet: all counted as queued"
        );
        // Equal loads: fewer open connections wins.
        load(0).queue_empty();
        load(1).queue_empty();
        load(0).set_connections(5);
        let counts = landings(&listeners, 10, Some(shared));
        assert_eq!(counts, [0, 10, 0], "the slot with fewer connections");
        // Nothing listed: the kernel's hash, over all three.
        shared.publish(&[]);
        let counts = landings(&listeners, 30, None);
        assert!(counts.iter().all(|n| *n > 0), "{counts:?}");
    }
}
