//! The few `bpf(2)` commands the steering needs, called directly: create a
//! map, put a socket in one or take it out, load a program (with the
//! verifier's log when it says no), attach it to a reuseport group, and map an
//! array map's memory. No libbpf, no ELF object, no kernel headers: the
//! program is bytecode written in `sys::steering`, as nginx ships its QUIC
//! reuseport program. The attribute layouts are the kernel's UAPI
//! (`union bpf_attr`), each field at its documented offset.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
const BPF_PROG_LOAD: libc::c_long = 5;

pub const MAP_TYPE_ARRAY: u32 = 2;
pub const MAP_TYPE_REUSEPORT_SOCKARRAY: u32 = 20;
pub const PROG_TYPE_SK_REUSEPORT: u32 = 21;
/// An array map whose memory user space may `mmap` (Linux 5.5).
pub const F_MMAPABLE: u32 = 1 << 10;

const SO_ATTACH_REUSEPORT_EBPF: libc::c_int = 52;
const SO_DETACH_REUSEPORT_BPF: libc::c_int = 68;

/// One instruction, as the kernel reads it (`struct bpf_insn`).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Insn {
    pub code: u8,
    /// The destination register in the low nibble, the source in the high one.
    pub regs: u8,
    pub off: i16,
    pub imm: i32,
}

#[repr(C)]
#[derive(Default)]
struct MapCreate {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
    inner_map_fd: u32,
    numa_node: u32,
    map_name: [u8; 16],
}

#[repr(C)]
#[derive(Default)]
struct MapElem {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

#[repr(C)]
#[derive(Default)]
struct ProgLoad {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

fn bpf<T>(command: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a `#[repr(C)]` prefix of `union bpf_attr` for this
    // command, valid for its size; the pointers inside it (keys, values, the
    // instructions, the log) are valid for what they describe for the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            command,
            attr as *mut T as *mut libc::c_void,
            std::mem::size_of::<T>() as libc::c_uint,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(rc)
}

fn owned(fd: libc::c_long) -> io::Result<OwnedFd> {
    let fd = RawFd::try_from(fd).map_err(io::Error::other)?;
    // SAFETY: the kernel just returned this fd (close-on-exec) to this process;
    // nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn name(text: &str) -> [u8; 16] {
    let mut name = [0u8; 16];
    for (to, from) in name.iter_mut().zip(text.bytes().take(15)) {
        *to = from;
    }
    name
}

/// Creates a map; returns its fd.
pub fn create_map(
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    flags: u32,
    label: &str,
) -> io::Result<OwnedFd> {
    let mut attr = MapCreate {
        map_type,
        key_size,
        value_size,
        max_entries,
        map_flags: flags,
        map_name: name(label),
        ..MapCreate::default()
    };
    owned(bpf(BPF_MAP_CREATE, &mut attr)?)
}

/// Puts `socket` in a `REUSEPORT_SOCKARRAY` at `key`, in place of what the
/// key held. A socket is in one such map at most: `EBUSY` if it is in one
/// already (this one included, at another key or the same).
pub fn put_socket(map: BorrowedFd<'_>, key: u32, socket: BorrowedFd<'_>) -> io::Result<()> {
    let value = socket.as_raw_fd() as u64;
    let mut attr = MapElem {
        map_fd: map.as_raw_fd() as u32,
        key: &key as *const u32 as u64,
        value: &value as *const u64 as u64,
        ..MapElem::default()
    };
    bpf(BPF_MAP_UPDATE_ELEM, &mut attr).map(drop)
}

/// The socket at `key` of a `REUSEPORT_SOCKARRAY`, as its cookie
/// (`SO_COOKIE`); `None` for an empty key.
pub fn socket_at(map: BorrowedFd<'_>, key: u32) -> io::Result<Option<u64>> {
    let mut cookie = 0u64;
    let mut attr = MapElem {
        map_fd: map.as_raw_fd() as u32,
        key: &key as *const u32 as u64,
        value: &mut cookie as *mut u64 as u64,
        ..MapElem::default()
    };
    match bpf(BPF_MAP_LOOKUP_ELEM, &mut attr) {
        Ok(_) => Ok(Some(cookie)),
        Err(err) if err.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        Err(err) => Err(err),
    }
}

/// A socket's cookie, the kernel's id for it (`SO_COOKIE`).
pub fn cookie(socket: BorrowedFd<'_>) -> io::Result<u64> {
    let mut cookie = 0u64;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: getsockopt on a socket this process holds, into a u64 of `len` bytes.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cookie)
}

/// Takes the socket at `key` out of a `REUSEPORT_SOCKARRAY`; an empty key is
/// no error.
pub fn take_socket(map: BorrowedFd<'_>, key: u32) -> io::Result<()> {
    let mut attr = MapElem {
        map_fd: map.as_raw_fd() as u32,
        key: &key as *const u32 as u64,
        ..MapElem::default()
    };
    match bpf(BPF_MAP_DELETE_ELEM, &mut attr) {
        Err(err) if err.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        other => other.map(drop),
    }
}

/// Why the kernel refused a program: the errno and, if it said more, the
/// verifier's last lines.
#[derive(Debug)]
pub struct Refused {
    pub error: io::Error,
    pub log: String,
}

/// Loads a program of `prog_type`. Without a log first (a full log buffer
/// turns any refusal into `ENOSPC`), then, if refused, again with one, for
/// the reason.
pub fn load_program(prog_type: u32, insns: &[Insn], label: &str) -> Result<OwnedFd, Refused> {
    let license = c"GPL";
    let attempt = |log: Option<&mut Vec<u8>>| {
        let mut attr = ProgLoad {
            prog_type,
            insn_cnt: insns.len() as u32,
            insns: insns.as_ptr() as u64,
            license: license.as_ptr() as u64,
            prog_name: name(label),
            ..ProgLoad::default()
        };
        if let Some(log) = log {
            attr.log_level = 1;
            attr.log_size = log.len() as u32;
            attr.log_buf = log.as_mut_ptr() as u64;
        }
        bpf(BPF_PROG_LOAD, &mut attr).and_then(owned)
    };
    match attempt(None) {
        Ok(fd) => Ok(fd),
        Err(error) => {
            let mut log = vec![0u8; 1 << 16];
            let _ = attempt(Some(&mut log));
            let text = String::from_utf8_lossy(&log);
            let text = text.trim_end_matches('\0').trim();
            let tail: Vec<&str> = text.lines().rev().take(3).collect();
            let log = tail.into_iter().rev().collect::<Vec<_>>().join(" / ");
            Err(Refused { error, log })
        }
    }
}

/// Attaches `program` to the reuseport group of `socket` (the whole group:
/// sockets that join it later are steered too), replacing any program there.
pub fn attach_reuseport(socket: BorrowedFd<'_>, program: BorrowedFd<'_>) -> io::Result<()> {
    set_int_option(socket, SO_ATTACH_REUSEPORT_EBPF, program.as_raw_fd())
}

/// Detaches whatever program steers the reuseport group of `socket`; none is
/// no error.
pub fn detach_reuseport(socket: BorrowedFd<'_>) -> io::Result<()> {
    match set_int_option(socket, SO_DETACH_REUSEPORT_BPF, 0) {
        Err(err) if err.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        other => other,
    }
}

/// `setsockopt(SOL_SOCKET, option, &value)` for an int option.
fn set_int_option(socket: BorrowedFd<'_>, option: libc::c_int, value: libc::c_int) -> io::Result<()> {
    // SAFETY: setsockopt on a socket this process holds, with a pointer to an
    // int valid for the call and its size.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            option,
            &value as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Maps the memory of an `F_MMAPABLE` array map, shared: what this process
/// writes there, the program reads, and so do the children forked after. Never
/// unmapped (as the scoreboard): the kernel frees it with the last process.
pub fn map_memory(map: BorrowedFd<'_>, len: usize) -> io::Result<NonNull<u8>> {
    let page = 4096;
    let len = len.div_ceil(page) * page;
    // SAFETY: a fresh shared mapping of the map's memory (its size rounded to
    // pages, as the kernel requires); nothing else is at the address it picks.
    let address = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            map.as_raw_fd(),
            0,
        )
    };
    if address == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    NonNull::new(address.cast()).ok_or_else(|| io::Error::other("mmap returned null"))
}
