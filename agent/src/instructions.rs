//! Reading a function's machine code: where its entry probe goes and whether the kernel must
//! single-step the instruction there, and where the function returns. x86-64 through iced-x86;
//! aarch64's fixed-width `ret` by its encoding.

use iced_x86::{Code, Decoder, DecoderOptions, Instruction, Mnemonic, OpKind};

/// Where and at what cost a function's entry probe goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Entry {
    /// Bytes skipped from the function's start: a landing pad (`endbr64`, `bti c`) that changes
    /// no register, so the probe after it sees the arguments and return address unchanged.
    pub skip: u64,
    /// The kernel cannot emulate the instruction at the probe and single-steps it out of line:
    /// two traps per call instead of one.
    pub single_stepped: bool,
    /// x86 uprobes refuse LOCK-prefixed instructions, and the attach does not say so.
    pub lock_prefix: bool,
}

/// A function's returns, as offsets from its start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Exits {
    /// Each true return instruction (not tail calls: those jump away and leave the frame to the
    /// kernel's stack-pointer rule).
    pub returns: Vec<u64>,
    /// It calls nothing and jumps nowhere outside itself, so no exception or `longjmp` can
    /// pass through its frame, and a return probe on it is safe.
    pub leaf: bool,
}

/// The code did not decode into whole, valid instructions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Undecodable;

/// `code`: the function's bytes from its first instruction (at least the first two).
pub(crate) fn entry(code: &[u8]) -> Entry {
    if cfg!(target_arch = "aarch64") {
        aarch64_entry(code)
    } else {
        x86_entry(code)
    }
}

/// `code`: the function's bytes, exactly its symbol's size.
pub(crate) fn exits(code: &[u8]) -> Result<Exits, Undecodable> {
    if cfg!(target_arch = "aarch64") {
        aarch64_exits(code)
    } else {
        x86_exits(code)
    }
}

fn x86_entry(code: &[u8]) -> Entry {
    let mut decoder = Decoder::with_ip(64, code, 0, DecoderOptions::NONE);
    let first = decoder.decode();
    let (skip, at) = if first.code() == Code::Endbr64 {
        (first.len() as u64, decoder.decode())
    } else {
        (0, first)
    };
    let probed = code.get(skip as usize..).unwrap_or_default();
    Entry {
        skip,
        single_stepped: at.is_invalid() || !x86_emulated(&at, probed),
        lock_prefix: at.has_lock_prefix() || starts_with_lock_prefix(probed),
    }
}

/// What the kernel's x86 uprobes emulate instead of single-stepping (`branch_setup_xol_ops`,
/// `push_setup_xol_ops` in arch/x86/kernel/uprobes.c): `push` of a 64-bit register (with no
/// prefix but REX.B), relative jumps, calls and conditional jumps without an operand-size
/// prefix, and nops.
fn x86_emulated(instruction: &Instruction, bytes: &[u8]) -> bool {
    match instruction.mnemonic() {
        Mnemonic::Nop => true,
        Mnemonic::Push => {
            instruction.code() == Code::Push_r64
                && (instruction.len() == 1 || bytes.first() == Some(&0x41))
        }
        // Relative branches the kernel does not take: loops, jump-if-rcx-zero, xbegin.
        Mnemonic::Loop
        | Mnemonic::Loope
        | Mnemonic::Loopne
        | Mnemonic::Jrcxz
        | Mnemonic::Jecxz
        | Mnemonic::Xbegin => false,
        // jmp, call and jcc with a relative target.
        _ => instruction.op0_kind() == OpKind::NearBranch64,
    }
}

/// x86 uprobes refuse instructions with a LOCK prefix; the attach itself does not fail, the
/// breakpoint is silently never installed, so such functions must be found beforehand. Read
/// from the bytes too, for code the decoder does not take.
pub(crate) fn starts_with_lock_prefix(code: &[u8]) -> bool {
    const LOCK: u8 = 0xf0;
    const LEGACY_PREFIXES: [u8; 11] = [
        LOCK, 0xf2, 0xf3, 0x2e, 0x36, 0x3e, 0x26, 0x64, 0x65, 0x66, 0x67,
    ];
    cfg!(target_arch = "x86_64")
        && code
            .iter()
            .take(4)
            .take_while(|byte| LEGACY_PREFIXES.contains(byte))
            .any(|&byte| byte == LOCK)
}

fn x86_exits(code: &[u8]) -> Result<Exits, Undecodable> {
    let end = code.len() as u64;
    let mut exits = Exits {
        returns: Vec::new(),
        leaf: true,
    };
    let mut decoder = Decoder::with_ip(64, code, 0, DecoderOptions::NONE);
    let mut instruction = Instruction::default();
    while decoder.can_decode() {
        decoder.decode_out(&mut instruction);
        if instruction.is_invalid() {
            return Err(Undecodable);
        }
        let leaves = match (instruction.mnemonic(), instruction.op0_kind()) {
            (Mnemonic::Ret, _) => {
                exits.returns.push(instruction.ip());
                false
            }
            (Mnemonic::Call | Mnemonic::Retf | Mnemonic::Iretq, _) => true,
            // Direct jumps, conditional or not, may leave (a tail call).
            (_, OpKind::NearBranch64) => instruction.near_branch_target() >= end,
            // Indirect and far jumps.
            (Mnemonic::Jmp, _) => true,
            _ => false,
        };
        exits.leaf &= !leaves;
    }
    Ok(exits)
}

// aarch64 encodings (Arm ARM, C6): `bti c` and `paciasp` change no argument register.
const BTI_C: u32 = 0xd503_245f;
const RET_MASK: u32 = 0xffff_fc1f;
const RET: u32 = 0xd65f_0000;
const RETAA: u32 = 0xd65f_0bff;
const RETAB: u32 = 0xd65f_0fff;
const BL_MASK: u32 = 0xfc00_0000;
const BL: u32 = 0x9400_0000;
const B: u32 = 0x1400_0000;
const BLR: u32 = 0xd63f_0000;
const BR: u32 = 0xd61f_0000;

fn words(code: &[u8]) -> impl Iterator<Item = (u64, u32)> + '_ {
    code.as_chunks::<4>()
        .0
        .iter()
        .enumerate()
        .map(|(i, word)| (4 * i as u64, u32::from_le_bytes(*word)))
}

/// aarch64 uprobes simulate branches and single-step most else; the cost is not flowtap's to
/// say there, so only `bti c` is skipped.
fn aarch64_entry(code: &[u8]) -> Entry {
    let skip = match words(code).next() {
        Some((_, BTI_C)) => 4,
        _ => 0,
    };
    Entry {
        skip,
        single_stepped: false,
        lock_prefix: false,
    }
}

/// The byte distance of a direct branch: `b`, `b.cond`, `cbz`/`cbnz`, `tbz`/`tbnz`.
fn aarch64_branch_delta(word: u32) -> Option<i64> {
    // (mask, value, immediate's lowest bit, its width)
    const BRANCHES: [(u32, u32, u32, u32); 4] = [
        (0xfc00_0000, B, 0, 26),
        (0xff00_0010, 0x5400_0000, 5, 19),
        (0x7e00_0000, 0x3400_0000, 5, 19),
        (0x7e00_0000, 0x3600_0000, 5, 14),
    ];
    BRANCHES
        .iter()
        .find(|&&(mask, value, _, _)| word & mask == value)
        .map(|&(_, _, low, width)| {
            let field = (word >> low) & ((1 << width) - 1);
            // Sign-extend the immediate, in words.
            (((field << (32 - width)) as i32) >> (32 - width)) as i64 * 4
        })
}

fn aarch64_exits(code: &[u8]) -> Result<Exits, Undecodable> {
    if !code.len().is_multiple_of(4) {
        return Err(Undecodable);
    }
    let mut exits = Exits {
        returns: Vec::new(),
        leaf: true,
    };
    for (offset, word) in words(code) {
        if word & RET_MASK == RET || word == RETAA || word == RETAB {
            exits.returns.push(offset);
        }
        let calls = word & BL_MASK == BL || word & RET_MASK == BLR || word & RET_MASK == BR;
        let jumps_out = aarch64_branch_delta(word)
            .is_some_and(|delta| !(0..code.len() as i64).contains(&(offset as i64 + delta)));
        exits.leaf &= !(calls || jumps_out);
    }
    Ok(exits)
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;

    #[test]
    fn lock_prefixed_entries_are_not_probeable() {
        assert!(starts_with_lock_prefix(&[0xf0, 0x48, 0x83, 0x05]));
        assert!(starts_with_lock_prefix(&[0x66, 0xf0, 0x0f, 0xb1]));
        assert!(!starts_with_lock_prefix(&[0x55, 0x48, 0x89, 0xe5]));
        assert!(!starts_with_lock_prefix(&[0xf3, 0x0f, 0x1e, 0xfa]));
        assert!(!starts_with_lock_prefix(&[]));
        // lock addq $1, 0x10(%rip) after endbr64: the probe's instruction is what counts.
        let after_endbr = [
            0xf3, 0x0f, 0x1e, 0xfa, 0xf0, 0x48, 0x83, 0x05, 0x10, 0, 0, 0, 1,
        ];
        assert!(entry(&after_endbr).lock_prefix);
    }

    #[test]
    fn entries_skip_endbr64_and_tell_single_stepped_instructions() {
        // push %rbp; mov %rsp,%rbp
        let push = entry(&[0x55, 0x48, 0x89, 0xe5]);
        assert_eq!((push.skip, push.single_stepped), (0, false));
        // push %r12
        assert!(!entry(&[0x41, 0x54]).single_stepped);
        // endbr64; push %rbp
        let endbr = entry(&[0xf3, 0x0f, 0x1e, 0xfa, 0x55]);
        assert_eq!((endbr.skip, endbr.single_stepped), (4, false));
        // endbr64; sub $0x18,%rsp
        let sub = entry(&[0xf3, 0x0f, 0x1e, 0xfa, 0x48, 0x83, 0xec, 0x18]);
        assert_eq!((sub.skip, sub.single_stepped), (4, true));
        // movabs $..,%rax; lea (%rdi,%rsi),%eax; ret
        assert!(entry(&[0x48, 0xb8, 1, 2, 3, 4, 5, 6, 7, 8]).single_stepped);
        assert!(entry(&[0x8d, 0x04, 0x37]).single_stepped);
        assert!(entry(&[0xc3]).single_stepped);
        // jmp rel32, nopl 0x0(%rax), jcc rel8
        assert!(!entry(&[0xe9, 0, 0, 0, 0]).single_stepped);
        assert!(!entry(&[0x0f, 0x1f, 0x40, 0x00]).single_stepped);
        assert!(!entry(&[0x74, 0x02]).single_stepped);
    }

    #[test]
    fn exits_are_the_return_instructions() {
        // push %rbp; mov %rsp,%rbp; call +0; test %eax,%eax; je +1; ret; pop %rbp; ret
        let code = [
            0x55, 0x48, 0x89, 0xe5, 0xe8, 0, 0, 0, 0, 0x85, 0xc0, 0x74, 0x01, 0xc3, 0x5d, 0xc3,
        ];
        let found = exits(&code).unwrap();
        assert_eq!(found.returns, vec![13, 15]);
        assert!(!found.leaf);
    }

    #[test]
    fn tail_calls_are_not_returns_and_leaves_are_told() {
        // lea 1(%rdi),%eax; ret
        let leaf = exits(&[0x8d, 0x47, 0x01, 0xc3]).unwrap();
        assert_eq!(
            leaf,
            Exits {
                returns: vec![3],
                leaf: true
            }
        );
        // test %edi,%edi; je +2 (inside); jmp rel32 out of the function (a tail call); ret
        let tail = exits(&[0x85, 0xff, 0x74, 0x05, 0xe9, 0x10, 0, 0, 0, 0xc3]).unwrap();
        assert_eq!(
            tail,
            Exits {
                returns: vec![9],
                leaf: false
            }
        );
        // jmp *%rax
        assert!(!exits(&[0xff, 0xe0]).unwrap().leaf);
    }

    #[test]
    fn code_that_does_not_decode_is_refused() {
        // A truncated movabs.
        assert_eq!(exits(&[0xc3, 0x48, 0xb8, 1, 2]), Err(Undecodable));
        assert_eq!(exits(&[0x06]), Err(Undecodable));
    }

    #[test]
    fn aarch64_returns_and_calls_by_encoding() {
        // bti c; bl +8; ret; b -8 (inside); retaa
        let code: Vec<u8> = [BTI_C, BL | 2, RET | (30 << 5), B | 0x03ff_fffe, RETAA]
            .iter()
            .flat_map(|w| w.to_le_bytes())
            .collect();
        assert_eq!(aarch64_entry(&code).skip, 4);
        let found = aarch64_exits(&code).unwrap();
        assert_eq!(found.returns, vec![8, 16]);
        assert!(!found.leaf);
        let leaf: Vec<u8> = [RET | (30 << 5)]
            .iter()
            .flat_map(|w| w.to_le_bytes())
            .collect();
        assert!(aarch64_exits(&leaf).unwrap().leaf);
        // cbz x0, +0x100: a conditional tail call out of a 4-byte function.
        let out: Vec<u8> = [0xb400_0000 | (0x40 << 5), RET | (30 << 5)]
            .iter()
            .flat_map(|w| w.to_le_bytes())
            .collect();
        assert!(!aarch64_exits(&out).unwrap().leaf);
        assert_eq!(aarch64_exits(&[0; 6]), Err(Undecodable));
    }
}
