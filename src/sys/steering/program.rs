//! The steering program: `SK_REUSEPORT` bytecode, written here with a small
//! assembler instead of compiled from C, so that building and running need no
//! clang, bpf-linker or kernel headers.
//!
//! For each new connection (its SYN) the kernel runs it with the
//! connection's hash. It picks two candidates from the slots the master lists
//! as ready (the first from the hash, the second another one from the hash's
//! high bits), scores each, and selects the lower score's socket:
//!
//! ```text
//! score = (in flight + queued + (stale heartbeat ? STALE : 0)) << 16
//!         + min(open connections, 65535)
//! queued = steered there - taken from its queue (never below 0)
//! ```
//!
//! Between equal loads the one with fewer open connections wins (keep-alive
//! connections spread evenly), and a full tie goes to the first candidate, as
//! the hash would. Nothing listed, a map lookup that fails or a socket the selection
//! cannot use: it passes without selecting, and the kernel's hash decides as
//! without a program. No loop, so that the verifier accepts it from a process
//! with `CAP_BPF` alone.

use std::collections::HashMap;
use std::mem::offset_of;
use std::os::fd::{AsRawFd, BorrowedFd};

use super::memory::{Header, Shared, SlotLoad, MAX_SLOTS};
use crate::sys::bpf::Insn;

/// What a stale heartbeat adds to a load: more than any real one, so a
/// stalled slot wins only against another stalled one. (Shifted by 16 with
/// the load, the score still fits: loads are far below 2^40.)
const STALE: i32 = 1 << 20;

// Registers.
const R0: u8 = 0;
const R1: u8 = 1;
const R2: u8 = 2;
const R3: u8 = 3;
const R4: u8 = 4;
const R5: u8 = 5;
const R6: u8 = 6;
const R7: u8 = 7;
const R8: u8 = 8;
const R9: u8 = 9;
const FP: u8 = 10;

// Opcodes (class | operation | source), as in `linux/bpf.h`.
const ADD_IMM: u8 = 0x07;
const ADD_REG: u8 = 0x0f;
const SUB_REG: u8 = 0x1f;
const MOD_REG: u8 = 0x9f;
const AND_IMM: u8 = 0x57;
const LSH_IMM: u8 = 0x67;
const RSH_IMM: u8 = 0x77;
const MOV_IMM: u8 = 0xb7;
const MOV_REG: u8 = 0xbf;
const LDX_W: u8 = 0x61;
const LDX_DW: u8 = 0x79;
const ST_W: u8 = 0x62;
const STX_W: u8 = 0x63;
/// `lock *(u64 *)(dst + off) += src` (`BPF_STX | BPF_ATOMIC | BPF_DW`, `BPF_ADD`).
const XADD_DW: u8 = 0xdb;
const LD_IMM64: u8 = 0x18;
const JEQ_IMM: u8 = 0x15;
const JNE_IMM: u8 = 0x55;
const JGT_IMM: u8 = 0x25;
const JLE_IMM: u8 = 0xb5;
const JSGT_IMM: u8 = 0x65;
const JSGT_REG: u8 = 0x6d;
const JLE_REG: u8 = 0xbd;
const JA: u8 = 0x05;
const CALL: u8 = 0x85;
const EXIT: u8 = 0x95;

// Helpers.
const MAP_LOOKUP_ELEM: i32 = 1;
const KTIME_GET_NS: i32 = 5;
const SK_SELECT_REUSEPORT: i32 = 82;

/// `BPF_PSEUDO_MAP_FD`: the immediate of a 64-bit load is a map's fd.
const PSEUDO_MAP_FD: u8 = 1;
/// `SK_PASS`: let the connection in (selected, or by the kernel's hash).
const SK_PASS: i32 = 1;
/// The offset of `hash` in `struct sk_reuseport_md`.
const CTX_HASH: i16 = 32;

fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: dst | (src << 4),
        off,
        imm,
    }
}

fn offset(bytes: usize) -> i16 {
    i16::try_from(bytes).unwrap_or(i16::MAX)
}

/// Instructions with named jump targets, resolved at the end.
#[derive(Default)]
struct Asm {
    insns: Vec<Insn>,
    labels: HashMap<&'static str, usize>,
    jumps: Vec<(usize, &'static str)>,
}

impl Asm {
    fn op(&mut self, code: u8, dst: u8, src: u8, off: i16, imm: i32) {
        self.insns.push(insn(code, dst, src, off, imm));
    }

    fn jump(&mut self, code: u8, dst: u8, src: u8, imm: i32, to: &'static str) {
        self.jumps.push((self.insns.len(), to));
        self.op(code, dst, src, 0, imm);
    }

    fn label(&mut self, name: &'static str) {
        self.labels.insert(name, self.insns.len());
    }

    fn load_map(&mut self, dst: u8, map: BorrowedFd<'_>) {
        self.op(LD_IMM64, dst, PSEUDO_MAP_FD, 0, map.as_raw_fd());
        self.op(0, 0, 0, 0, 0);
    }

    /// `dst = the address of the load of the slot whose index is in `slot``,
    /// less the offset of the slots in the element (`R8` holds the element).
    fn slot_address(&mut self, dst: u8, slot: u8) {
        self.op(MOV_REG, dst, slot, 0, 0);
        self.op(
            LSH_IMM,
            dst,
            0,
            0,
            std::mem::size_of::<SlotLoad>().trailing_zeros() as i32,
        );
        self.op(ADD_REG, dst, R8, 0, 0);
    }

    /// `dst = score of the slot whose index is in `slot``, with `tmp` clobbered
    /// and R5 the slot's address; `R8` holds the shared memory, `R1` the cutoff
    /// below which a heartbeat is stale.
    fn score(&mut self, dst: u8, slot: u8, tmp: u8, labels: [&'static str; 3]) {
        let [fresh, positive, few] = labels;
        let base = offset_of!(Shared, slots);
        let field = |name: usize| offset(base + name);
        self.slot_address(R5, slot);
        self.op(LDX_DW, dst, R5, field(offset_of!(SlotLoad, steered)), 0);
        self.op(LDX_DW, tmp, R5, field(offset_of!(SlotLoad, taken)), 0);
        self.op(SUB_REG, dst, tmp, 0, 0);
        // More taken than steered (a connection accepted after the queue was
        // found empty): nothing queued.
        self.jump(JSGT_IMM, dst, 0, 0, positive);
        self.op(MOV_IMM, dst, 0, 0, 0);
        self.label(positive);
        self.op(LDX_W, tmp, R5, field(offset_of!(SlotLoad, in_flight)), 0);
        self.op(ADD_REG, dst, tmp, 0, 0);
        self.op(LDX_DW, tmp, R5, field(offset_of!(SlotLoad, beat_ns)), 0);
        // Signed: a beat written a little after `now` was read is fresh.
        self.jump(JSGT_REG, tmp, R1, 0, fresh);
        self.op(ADD_IMM, dst, 0, 0, STALE);
        self.label(fresh);
        self.op(LSH_IMM, dst, 0, 0, 16);
        self.op(LDX_W, tmp, R5, field(offset_of!(SlotLoad, connections)), 0);
        self.jump(JLE_IMM, tmp, 0, 0xffff, few);
        self.op(MOV_IMM, tmp, 0, 0, 0xffff);
        self.label(few);
        self.op(ADD_REG, dst, tmp, 0, 0);
    }

    /// `reg = list[reg] & (MAX_SLOTS - 1)`: the slot listed at that place,
    /// bounded for the verifier.
    fn listed(&mut self, reg: u8) {
        self.op(LSH_IMM, reg, 0, 0, 2);
        self.op(ADD_REG, reg, R8, 0, 0);
        self.op(LDX_W, reg, reg, offset(offset_of!(Shared, list)), 0);
        self.op(AND_IMM, reg, 0, 0, MAX_SLOTS as i32 - 1);
    }

    fn finish(mut self) -> Vec<Insn> {
        for (at, to) in std::mem::take(&mut self.jumps) {
            let target = self.labels[to];
            self.insns[at].off = offset(target - at - 1);
        }
        self.insns
    }
}

/// The program, for the maps `shared` (the array whose memory the master and
/// workers write) and `sockets` (the `REUSEPORT_SOCKARRAY` of the slots).
pub fn program(shared: BorrowedFd<'_>, sockets: BorrowedFd<'_>) -> Vec<Insn> {
    let mut asm = Asm::default();
    let header = |field: usize| offset(offset_of!(Shared, header) + field);
    asm.op(MOV_REG, R6, R1, 0, 0); // the context, kept across calls
    asm.op(LDX_W, R7, R6, CTX_HASH, 0);
    // The shared memory: element 0 of the array.
    asm.op(ST_W, FP, 0, -4, 0);
    asm.load_map(R1, shared);
    asm.op(MOV_REG, R2, FP, 0, 0);
    asm.op(ADD_IMM, R2, 0, 0, -4);
    asm.op(CALL, 0, 0, 0, MAP_LOOKUP_ELEM);
    asm.jump(JEQ_IMM, R0, 0, 0, "pass");
    asm.op(MOV_REG, R8, R0, 0, 0);
    // How many slots are listed.
    asm.op(LDX_W, R9, R8, header(offset_of!(Header, count)), 0);
    asm.jump(JEQ_IMM, R9, 0, 0, "pass");
    asm.jump(JGT_IMM, R9, 0, MAX_SLOTS as i32, "pass");
    // The cutoff: a heartbeat before `now - stall` is stale.
    asm.op(CALL, 0, 0, 0, KTIME_GET_NS);
    asm.op(LDX_DW, R1, R8, header(offset_of!(Header, stall_ns)), 0);
    asm.op(SUB_REG, R0, R1, 0, 0);
    asm.op(MOV_REG, R1, R0, 0, 0);
    // The first candidate's place in the list: hash % count.
    asm.op(MOV_REG, R2, R7, 0, 0);
    asm.op(MOD_REG, R2, R9, 0, 0);
    asm.op(AND_IMM, R2, 0, 0, MAX_SLOTS as i32 - 1);
    // The second's: another place, from the hash's high bits.
    asm.op(MOV_REG, R3, R2, 0, 0);
    asm.jump(JEQ_IMM, R9, 0, 1, "places");
    asm.op(MOV_REG, R3, R7, 0, 0);
    asm.op(RSH_IMM, R3, 0, 0, 16);
    asm.op(MOV_REG, R4, R9, 0, 0);
    asm.op(ADD_IMM, R4, 0, 0, -1);
    asm.op(MOD_REG, R3, R4, 0, 0);
    asm.op(ADD_IMM, R3, 0, 0, 1);
    asm.op(ADD_REG, R3, R2, 0, 0);
    asm.op(MOD_REG, R3, R9, 0, 0);
    asm.op(AND_IMM, R3, 0, 0, MAX_SLOTS as i32 - 1);
    asm.label("places");
    // The candidates: the slots at those places.
    asm.listed(R2);
    asm.listed(R3);
    // Their scores: R4 the first's, R9 the second's (R7 is free now).
    asm.score(R4, R2, R7, ["first fresh", "first queued", "first few"]);
    asm.score(R9, R3, R7, ["second fresh", "second queued", "second few"]);
    // The lower; a tie to the first.
    asm.op(MOV_REG, R7, R2, 0, 0);
    asm.jump(JLE_REG, R4, R9, 0, "chosen");
    asm.op(MOV_REG, R7, R3, 0, 0);
    asm.label("chosen");
    // Select its socket.
    asm.op(STX_W, FP, R7, -8, 0);
    asm.op(MOV_REG, R1, R6, 0, 0);
    asm.load_map(R2, sockets);
    asm.op(MOV_REG, R3, FP, 0, 0);
    asm.op(ADD_IMM, R3, 0, 0, -8);
    asm.op(MOV_IMM, R4, 0, 0, 0);
    asm.op(CALL, 0, 0, 0, SK_SELECT_REUSEPORT);
    asm.jump(JNE_IMM, R0, 0, 0, "unselected");
    // Count it as steered there: queued until its worker takes it.
    asm.slot_address(R1, R7);
    asm.op(MOV_IMM, R2, 0, 0, 1);
    let steered = offset(offset_of!(Shared, slots) + offset_of!(SlotLoad, steered));
    asm.op(XADD_DW, R1, R2, steered, 0);
    asm.jump(JA, 0, 0, 0, "pass");
    // The socket could not be selected (not in the map yet, or closed): the
    // kernel's hash decides; counted, for `/status`.
    asm.label("unselected");
    asm.op(MOV_IMM, R2, 0, 0, 1);
    asm.op(XADD_DW, R8, R2, header(offset_of!(Header, unselected)), 0);
    asm.label("pass");
    asm.op(MOV_IMM, R0, 0, 0, SK_PASS);
    asm.op(EXIT, 0, 0, 0, 0);
    asm.finish()
}
