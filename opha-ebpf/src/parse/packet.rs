//! Bounded byte access to the packet.

use aya_ebpf::programs::TcContext;

/// The highest offset any parser reads at. Polling packets have their headers well within it.
pub const MAX_OFF: usize = 1500;

pub struct Packet {
    data: usize,
    end: usize,
}

impl Packet {
    #[inline(always)]
    pub fn new(ctx: &TcContext) -> Self {
        Self {
            data: ctx.data(),
            end: ctx.data_end(),
        }
    }

    /// True when the first `len` bytes are in the linear part.
    #[inline(always)]
    pub fn has(&self, len: usize) -> bool {
        len <= MAX_OFF && self.data + len <= self.end
    }

    #[inline(always)]
    pub fn u8(&self, off: usize) -> Option<u8> {
        if off > MAX_OFF {
            return None;
        }
        let p = self.data + off;
        // LLVM folds `p + 1 > end` into `p >= end`, which proves no byte to the verifier
        // (range_right_open with offset 0). An opaque end-of-read pointer keeps the form.
        let last = core::hint::black_box(p + 1);
        if last > self.end {
            return None;
        }
        Some(unsafe { *(p as *const u8) })
    }

    /// Big-endian u16.
    #[inline(always)]
    pub fn be16(&self, off: usize) -> Option<u16> {
        if off > MAX_OFF {
            return None;
        }
        let p = self.data + off;
        if p + 2 > self.end {
            return None;
        }
        let b = unsafe { *(p as *const [u8; 2]) };
        Some(u16::from_be_bytes(b))
    }

    /// Big-endian u32.
    #[inline(always)]
    pub fn be32(&self, off: usize) -> Option<u32> {
        if off > MAX_OFF {
            return None;
        }
        let p = self.data + off;
        if p + 4 > self.end {
            return None;
        }
        let b = unsafe { *(p as *const [u8; 4]) };
        Some(u32::from_be_bytes(b))
    }

    /// `N` bytes at `off`.
    #[inline(always)]
    pub fn bytes<const N: usize>(&self, off: usize) -> Option<[u8; N]> {
        if off > MAX_OFF {
            return None;
        }
        let p = self.data + off;
        if p + N > self.end {
            return None;
        }
        Some(unsafe { *(p as *const [u8; N]) })
    }
}
