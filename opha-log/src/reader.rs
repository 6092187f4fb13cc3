//! Reading records back, from any position (a consumer's cursor), up to the durable end.

use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::PathBuf;
use std::sync::Arc;

use crate::error::Error;
use crate::format::{
    FRAME_HEADER_LEN, MAX_PAYLOAD_LEN, RecordClass, SEGMENT_HEADER_LEN, SegmentHeader,
    decode_frame, frame_len,
};
use crate::log::Inner;
use crate::recovery::segment_path;

/// A record read back from the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub seq: u64,
    pub class: RecordClass,
    pub payload: Vec<u8>,
}

/// Iterates durable records in sequence order from a starting sequence number.
///
/// Returns `None` at the durable end; calling `next` again later continues with records
/// appended since. Records missing from the log (deleted, or lost with a quarantined segment)
/// are reported once as `Error::Gap` and skipped. A damaged record ends the iteration with
/// `Error::CorruptRecord`. A reader keeps the log directory open (and locked) until dropped.
pub struct LogReader {
    inner: Arc<Inner>,
    next_seq: u64,
    open: Option<OpenSegment>,
    failed: bool,
    frame: Vec<u8>,
}

struct OpenSegment {
    first_seq: u64,
    path: PathBuf,
    reader: BufReader<File>,
    /// File offset of the next frame.
    offset: u64,
    /// Sequence number of the next frame.
    next_seq_in_file: u64,
    /// Bytes of the segment known durable when last looked up.
    end_bytes: u64,
}

enum Step {
    Ready,
    End,
    Yield(Result<Record, Error>),
}

impl LogReader {
    pub(crate) fn new(inner: Arc<Inner>, from_seq: u64) -> Self {
        Self {
            inner,
            next_seq: from_seq,
            open: None,
            failed: false,
            frame: Vec::new(),
        }
    }

    /// Sequence number of the next record this reader returns.
    pub fn position(&self) -> u64 {
        self.next_seq
    }

    /// Looks up where the next record is, opening its segment if needed.
    fn locate(&mut self) -> Step {
        loop {
            let (segment, end_bytes) = {
                let state = crate::log::lock_state(&self.inner);
                if let Some(open) = &self.open {
                    self.next_seq = self.next_seq.max(open.next_seq_in_file);
                }
                let durable = state.durable;
                if self.next_seq >= durable.next_seq {
                    return Step::End;
                }
                let oldest = state.book.oldest_seq();
                let segment = state.book.segment_for(self.next_seq, &durable);
                let target = segment.map(|s| s.first_seq).unwrap_or(oldest).max(oldest);
                if self.next_seq < target {
                    let gap = Error::Gap {
                        from: self.next_seq,
                        to: target,
                    };
                    self.next_seq = target;
                    self.open = None;
                    return Step::Yield(Err(gap));
                }
                let Some(segment) = segment else {
                    return Step::End;
                };
                let end_bytes = if segment.first_seq == durable.active_first_seq {
                    durable.active_bytes
                } else {
                    segment.bytes
                };
                (segment, end_bytes)
            };
            match &mut self.open {
                Some(open) if open.first_seq == segment.first_seq => {
                    open.end_bytes = end_bytes;
                    if open.offset + (FRAME_HEADER_LEN as u64) <= end_bytes {
                        return Step::Ready;
                    }
                    // The segment holds fewer records than its successor's start implies (only
                    // possible when it was not verified on open): report what is missing.
                    let (from, to) = (open.next_seq_in_file, segment.end_seq);
                    self.open = None;
                    self.next_seq = self.next_seq.max(to);
                    if from < to {
                        return Step::Yield(Err(Error::Gap { from, to }));
                    }
                }
                _ => match self.open_segment(segment.first_seq, end_bytes) {
                    Ok(open) => {
                        self.open = Some(open);
                        return Step::Ready;
                    }
                    Err(error) if error.kind() == io::ErrorKind::NotFound => {
                        // Deleted since it was looked up (every cursor passed it): look again,
                        // unless the book still lists it, which means it vanished underneath us.
                        let state = crate::log::lock_state(&self.inner);
                        if state.book.oldest_seq() <= segment.first_seq {
                            let path = segment_path(&self.inner.dir, segment.first_seq);
                            return Step::Yield(Err(Error::io(
                                format!("opening {}", path.display()),
                                error,
                            )));
                        }
                    }
                    Err(error) => {
                        let path = segment_path(&self.inner.dir, segment.first_seq);
                        return Step::Yield(Err(Error::io(
                            format!("opening {}", path.display()),
                            error,
                        )));
                    }
                },
            }
        }
    }

    fn open_segment(&self, first_seq: u64, end_bytes: u64) -> io::Result<OpenSegment> {
        let path = segment_path(&self.inner.dir, first_seq);
        let mut reader = BufReader::with_capacity(256 << 10, File::open(&path)?);
        let mut header = [0u8; SEGMENT_HEADER_LEN];
        reader.read_exact(&mut header)?;
        match SegmentHeader::decode(&header) {
            Ok(decoded) if decoded.first_seq == first_seq => {}
            Ok(_) | Err(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "segment header is damaged or does not match its name",
                ));
            }
        }
        Ok(OpenSegment {
            first_seq,
            path,
            reader,
            offset: SEGMENT_HEADER_LEN as u64,
            next_seq_in_file: first_seq,
            end_bytes,
        })
    }

    fn read_frame(&mut self) -> Result<Record, Error> {
        let Some(open) = self.open.as_mut() else {
            return Err(Error::Closed);
        };
        let corrupt = |open: &OpenSegment, error| Error::CorruptRecord {
            path: open.path.clone(),
            offset: open.offset,
            error,
        };
        self.frame.resize(FRAME_HEADER_LEN, 0);
        open.reader
            .read_exact(&mut self.frame)
            .map_err(|e| Error::io(format!("reading {}", open.path.display()), e))?;
        let len = u32::from_le_bytes([self.frame[4], self.frame[5], self.frame[6], self.frame[7]])
            as usize;
        if len > MAX_PAYLOAD_LEN {
            return Err(corrupt(
                open,
                crate::format::FrameError::LengthTooLarge { len },
            ));
        }
        let total = frame_len(len);
        if open.offset + total as u64 > open.end_bytes {
            return Err(corrupt(
                open,
                crate::format::FrameError::Incomplete {
                    needed: total,
                    available: (open.end_bytes - open.offset) as usize,
                },
            ));
        }
        self.frame.resize(total, 0);
        open.reader
            .read_exact(&mut self.frame[FRAME_HEADER_LEN..])
            .map_err(|e| Error::io(format!("reading {}", open.path.display()), e))?;
        let record = match decode_frame(&self.frame, open.next_seq_in_file) {
            Ok((record, _)) => Record {
                seq: record.seq,
                class: record.class,
                payload: record.payload.to_vec(),
            },
            Err(error) => return Err(corrupt(open, error)),
        };
        open.offset += total as u64;
        open.next_seq_in_file += 1;
        Ok(record)
    }
}

impl Iterator for LogReader {
    type Item = Result<Record, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        loop {
            let at_end = self
                .open
                .as_ref()
                .is_none_or(|open| open.offset + (FRAME_HEADER_LEN as u64) > open.end_bytes);
            if at_end {
                match self.locate() {
                    Step::Ready => {}
                    Step::End => return None,
                    Step::Yield(item) => return Some(item),
                }
            }
            match self.read_frame() {
                Ok(record) if record.seq < self.next_seq => continue,
                Ok(record) => {
                    self.next_seq = record.seq + 1;
                    return Some(Ok(record));
                }
                Err(error) => {
                    self.failed = true;
                    return Some(Err(error));
                }
            }
        }
    }
}
