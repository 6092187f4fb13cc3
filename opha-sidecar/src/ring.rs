//! Reading the kernel's trap and syslog ring buffer in batches, advancing its consumer position
//! only when the caller says the records are durable.
//!
//! aya's `RingBuf` advances the consumer position as each item is dropped and allows one
//! outstanding item, which would cost one fsync per trap. This reader maps the same pages the
//! kernel documents for BPF ring buffers (`kernel/bpf/ringbuf.c`): one read-write page holding
//! the consumer position, then a read-only page holding the producer position followed by the
//! data area mapped twice, so that a record that wraps is still contiguous. Records are read from
//! the committed consumer position up to the producer position; `commit` publishes the new
//! consumer position. A reader killed before `commit` leaves the position where it was, so the
//! next reader (after a restart, the maps are pinned) reads the same records again: nothing read
//! but not yet durable is lost.

use std::{
    io,
    os::fd::{AsRawFd, BorrowedFd},
    sync::atomic::{AtomicU32, AtomicU64, Ordering},
};

use opha_common::ringbuf::RingRecord;

const BUSY_BIT: u32 = 1 << 31;
const DISCARD_BIT: u32 = 1 << 30;
const HDR_SZ: u64 = 8;

/// One mmap'ed region, unmapped on drop.
struct Mapping {
    ptr: *mut libc::c_void,
    len: usize,
}

impl Mapping {
    fn new(fd: BorrowedFd<'_>, len: usize, prot: libc::c_int, offset: usize) -> io::Result<Self> {
        let offset = libc::off_t::try_from(offset)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "mmap offset too large"))?;
        // SAFETY: a fresh shared mapping of the ring buffer map's fd; checked for MAP_FAILED.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                prot,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                offset,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Self { ptr, len })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `new` mapped.
        unsafe { libc::munmap(self.ptr, self.len) };
    }
}

/// Why a record in the ring buffer could not be taken as a `RingRecord`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RingItem {
    Record(Box<RingRecord>),
    /// A record of an unexpected size (a program of another version wrote it): its length. The
    /// caller reports it; it is consumed like any other.
    Unexpected(usize),
}

/// A batch reader of one BPF ring buffer map.
pub struct RingReader {
    consumer: Mapping,
    producer: Mapping,
    mask: u64,
    /// Position read up to (not yet committed).
    read_pos: u64,
}

// SAFETY: the mappings are plain shared memory; the reader is used from one thread at a time.
unsafe impl Send for RingReader {}

impl RingReader {
    /// Maps the ring buffer behind `fd`, whose data area is `byte_size` bytes (a power of two,
    /// a multiple of the page size).
    pub fn new(fd: BorrowedFd<'_>, byte_size: usize) -> io::Result<Self> {
        if !byte_size.is_power_of_two() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("ring buffer size {byte_size} is not a power of two"),
            ));
        }
        // SAFETY: sysconf has no preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) })
            .map_err(|_| io::Error::other("page size"))?;
        let consumer = Mapping::new(fd, page, libc::PROT_READ | libc::PROT_WRITE, 0)?;
        let producer = Mapping::new(fd, page + 2 * byte_size, libc::PROT_READ, page)?;
        let mut reader = Self {
            consumer,
            producer,
            mask: byte_size as u64 - 1,
            read_pos: 0,
        };
        reader.read_pos = reader.committed();
        Ok(reader)
    }

    fn consumer_pos(&self) -> &AtomicU64 {
        // SAFETY: the consumer position is the first word of the consumer page, 8-aligned.
        unsafe { &*(self.consumer.ptr as *const AtomicU64) }
    }

    fn producer_pos(&self) -> u64 {
        // SAFETY: the producer position is the first word of the producer page.
        unsafe { &*(self.producer.ptr as *const AtomicU64) }.load(Ordering::Acquire)
    }

    fn data(&self) -> *const u8 {
        // SAFETY: the data area starts one page into the producer mapping.
        unsafe {
            (self.producer.ptr as *const u8).add(self.producer.len - 2 * (self.mask as usize + 1))
        }
    }

    /// The position the kernel may reuse up to: everything before it has been consumed.
    pub fn committed(&self) -> u64 {
        self.consumer_pos().load(Ordering::Acquire)
    }

    /// Bytes produced but not yet committed.
    pub fn pending_bytes(&self) -> u64 {
        self.producer_pos().saturating_sub(self.committed())
    }

    /// Reads up to `max` records past those already read (and not committed). Stops at a record
    /// the kernel is still writing.
    pub fn read(&mut self, max: usize, out: &mut Vec<RingItem>) -> usize {
        let producer = self.producer_pos();
        let mut n = 0;
        while n < max && self.read_pos < producer {
            let off = (self.read_pos & self.mask) as usize;
            // SAFETY: the header is inside the (double-mapped) data area.
            let hdr = unsafe { &*(self.data().add(off) as *const AtomicU32) };
            let len_word = hdr.load(Ordering::Acquire);
            if len_word & BUSY_BIT != 0 {
                break;
            }
            let len = (len_word & !(BUSY_BIT | DISCARD_BIT)) as usize;
            if len_word & DISCARD_BIT == 0 {
                let start = (self.read_pos + HDR_SZ) & self.mask;
                // SAFETY: `len` bytes from `start` lie in the doubled data area (a record is at
                // most the ring's size), so a wrapped record reads contiguously.
                let bytes =
                    unsafe { std::slice::from_raw_parts(self.data().add(start as usize), len) };
                out.push(parse(bytes));
                n += 1;
            }
            self.read_pos += (HDR_SZ + len as u64).next_multiple_of(8);
        }
        n
    }

    /// Publishes everything read so far as consumed: call only once those records are durable.
    pub fn commit(&mut self) {
        self.consumer_pos().store(self.read_pos, Ordering::Release);
    }

    /// Forgets what was read since the last commit, so it is read again.
    pub fn rewind(&mut self) {
        self.read_pos = self.committed();
    }
}

fn parse(bytes: &[u8]) -> RingItem {
    if bytes.len() != size_of::<RingRecord>() {
        return RingItem::Unexpected(bytes.len());
    }
    // SAFETY: RingRecord is repr(C) plain data of exactly this size; read_unaligned copies it.
    let rec = unsafe { std::ptr::read_unaligned(bytes.as_ptr() as *const RingRecord) };
    RingItem::Record(Box::new(rec))
}
