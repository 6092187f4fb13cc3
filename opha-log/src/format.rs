//! The on-disk format of a segment and the scan that recovery is built on.
//!
//! Pure: bytes in, values out. No file system, no clock, so every truncation and bit flip can be
//! tried in a unit test.
//!
//! Byte layout (all integers little endian):
//!
//! ```text
//! segment header, 32 bytes
//!   0..8    magic "OPHA-LOG"
//!   8..10   format version (u16) = 1
//!   10..12  header length (u16) = 32
//!   12..20  first sequence number in this segment (u64); also the file name
//!   20..28  creation time, Unix milliseconds (u64), as supplied by the driver
//!   28..32  CRC32C of bytes 0..28
//! record frame, 20 bytes + payload, repeated until the end of the file
//!   0..4    CRC32C of bytes 4..(20 + payload length): covers the length, so a flipped length
//!           is caught too
//!   4..8    payload length (u32), at most MAX_PAYLOAD_LEN
//!   8..16   sequence number (u64): the segment's first sequence, then +1 per record, no gaps
//!   16      record class: 1 event, 2 metric
//!   17..20  reserved, zero
//!   20..    payload
//! ```

/// First bytes of every segment file.
pub const SEGMENT_MAGIC: [u8; 8] = *b"OPHA-LOG";
/// The format version this crate writes and reads.
pub const FORMAT_VERSION: u16 = 1;
/// Length of the segment header.
pub const SEGMENT_HEADER_LEN: usize = 32;
/// Length of a record frame without its payload.
pub const FRAME_HEADER_LEN: usize = 20;
/// Largest payload a record may carry. Bounds the memory a reader needs, and lets the scan reject
/// a garbage length without checking a CRC over gigabytes.
pub const MAX_PAYLOAD_LEN: usize = 4 << 20;

/// What a record is, so that the disk budget can thin metrics and never touch events.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum RecordClass {
    /// Events (state changes, traps, syslog, alarms): never dropped.
    Event = 1,
    /// Periodic metrics: may be thinned when the disk budget is exhausted.
    Metric = 2,
}

impl RecordClass {
    /// The class stored in a frame's class byte, if the byte names one.
    pub fn from_byte(byte: u8) -> Option<Self> {
        match byte {
            1 => Some(Self::Event),
            2 => Some(Self::Metric),
            _ => None,
        }
    }

    /// The byte stored in a frame.
    pub fn as_byte(self) -> u8 {
        self as u8
    }
}

/// The decoded segment header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentHeader {
    /// Sequence number of the segment's first record (also of the next record when it is empty).
    pub first_seq: u64,
    /// When the driver created the segment, Unix milliseconds.
    pub created_unix_ms: u64,
}

/// Why a segment header was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error("segment is {len} bytes, shorter than its {SEGMENT_HEADER_LEN}-byte header")]
    Short { len: usize },
    #[error("segment does not start with the magic bytes \"OPHA-LOG\"")]
    BadMagic,
    #[error(
        "segment format version {version} is not supported (this build reads {FORMAT_VERSION})"
    )]
    UnsupportedVersion { version: u16 },
    #[error("segment header length {len} is not {SEGMENT_HEADER_LEN}")]
    BadHeaderLength { len: u16 },
    #[error("segment header checksum mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    BadChecksum { stored: u32, computed: u32 },
    #[error("segment header says it starts at sequence {found}, its file name says {expected}")]
    FirstSeqMismatch { expected: u64, found: u64 },
}

impl SegmentHeader {
    /// The 32 header bytes.
    pub fn encode(&self) -> [u8; SEGMENT_HEADER_LEN] {
        let mut out = [0u8; SEGMENT_HEADER_LEN];
        out[0..8].copy_from_slice(&SEGMENT_MAGIC);
        out[8..10].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        out[10..12].copy_from_slice(&(SEGMENT_HEADER_LEN as u16).to_le_bytes());
        out[12..20].copy_from_slice(&self.first_seq.to_le_bytes());
        out[20..28].copy_from_slice(&self.created_unix_ms.to_le_bytes());
        let crc = crc32c::crc32c(&out[0..28]);
        out[28..32].copy_from_slice(&crc.to_le_bytes());
        out
    }

    /// Decodes the header at the start of `bytes` (which may hold the whole segment).
    pub fn decode(bytes: &[u8]) -> Result<Self, HeaderError> {
        let Some(header) = bytes.get(..SEGMENT_HEADER_LEN) else {
            return Err(HeaderError::Short { len: bytes.len() });
        };
        if header[0..8] != SEGMENT_MAGIC {
            return Err(HeaderError::BadMagic);
        }
        let stored = read_u32(header, 28);
        let computed = crc32c::crc32c(&header[0..28]);
        if stored != computed {
            return Err(HeaderError::BadChecksum { stored, computed });
        }
        let version = read_u16(header, 8);
        if version != FORMAT_VERSION {
            return Err(HeaderError::UnsupportedVersion { version });
        }
        let len = read_u16(header, 10);
        if usize::from(len) != SEGMENT_HEADER_LEN {
            return Err(HeaderError::BadHeaderLength { len });
        }
        Ok(Self {
            first_seq: read_u64(header, 12),
            created_unix_ms: read_u64(header, 20),
        })
    }
}

/// Bytes a record with a payload of `payload_len` bytes takes on disk.
pub fn frame_len(payload_len: usize) -> usize {
    FRAME_HEADER_LEN + payload_len
}

/// Appends one record frame to `out`. The caller guarantees `payload.len() <= MAX_PAYLOAD_LEN`
/// (the driver refuses larger payloads with a typed error before it gets here).
pub fn encode_frame(out: &mut Vec<u8>, seq: u64, class: RecordClass, payload: &[u8]) {
    debug_assert!(payload.len() <= MAX_PAYLOAD_LEN);
    let start = out.len();
    out.extend_from_slice(&[0u8; 4]);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&[class.as_byte(), 0, 0, 0]);
    out.extend_from_slice(payload);
    let crc = crc32c::crc32c(&out[start + 4..]);
    out[start..start + 4].copy_from_slice(&crc.to_le_bytes());
}

/// One record, borrowed from the bytes it was decoded from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordRef<'a> {
    pub seq: u64,
    pub class: RecordClass,
    pub payload: &'a [u8],
    /// Offset of the frame in the bytes that were scanned (the segment file offset for a scan).
    pub offset: usize,
}

/// Why the bytes at some offset are not the record that was expected there.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("incomplete record: {needed} bytes needed, {available} present")]
    Incomplete { needed: usize, available: usize },
    #[error("record length {len} exceeds the maximum {MAX_PAYLOAD_LEN}")]
    LengthTooLarge { len: usize },
    #[error("record checksum mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    BadChecksum { stored: u32, computed: u32 },
    #[error("record has an unknown class byte {0}")]
    BadClass(u8),
    #[error("record has non-zero reserved bytes")]
    BadReserved,
    #[error("record has sequence {found}, {expected} expected")]
    BadSequence { expected: u64, found: u64 },
}

/// Decodes the frame at the start of `bytes`, which must carry `expected_seq`. Returns the record
/// and the frame's length.
pub fn decode_frame(bytes: &[u8], expected_seq: u64) -> Result<(RecordRef<'_>, usize), FrameError> {
    let Some(header) = bytes.get(..FRAME_HEADER_LEN) else {
        return Err(FrameError::Incomplete {
            needed: FRAME_HEADER_LEN,
            available: bytes.len(),
        });
    };
    let len = read_u32(header, 4) as usize;
    if len > MAX_PAYLOAD_LEN {
        return Err(FrameError::LengthTooLarge { len });
    }
    let total = frame_len(len);
    let Some(frame) = bytes.get(..total) else {
        return Err(FrameError::Incomplete {
            needed: total,
            available: bytes.len(),
        });
    };
    let stored = read_u32(frame, 0);
    let computed = crc32c::crc32c(&frame[4..]);
    if stored != computed {
        return Err(FrameError::BadChecksum { stored, computed });
    }
    let class = RecordClass::from_byte(frame[16]).ok_or(FrameError::BadClass(frame[16]))?;
    if frame[17..20] != [0, 0, 0] {
        return Err(FrameError::BadReserved);
    }
    let seq = read_u64(frame, 8);
    if seq != expected_seq {
        return Err(FrameError::BadSequence {
            expected: expected_seq,
            found: seq,
        });
    }
    let record = RecordRef {
        seq,
        class,
        payload: &frame[FRAME_HEADER_LEN..],
        offset: 0,
    };
    Ok((record, total))
}

/// Iterates the records of `bytes[start..]`, expecting contiguous sequence numbers from
/// `first_seq`. Stops at the end of the bytes or at the first frame that does not decode; then
/// `stopped` says why.
pub struct Records<'a> {
    bytes: &'a [u8],
    offset: usize,
    next_seq: u64,
    stopped: Option<FrameError>,
}

impl<'a> Records<'a> {
    pub fn new(bytes: &'a [u8], start: usize, first_seq: u64) -> Self {
        Self {
            bytes,
            offset: start.min(bytes.len()),
            next_seq: first_seq,
            stopped: None,
        }
    }

    /// Offset just past the last record returned.
    pub fn offset(&self) -> usize {
        self.offset
    }

    /// Sequence number the next record must carry.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Why iteration stopped before the end of the bytes, if it did.
    pub fn stopped(&self) -> Option<&FrameError> {
        self.stopped.as_ref()
    }
}

impl<'a> Iterator for Records<'a> {
    type Item = RecordRef<'a>;

    fn next(&mut self) -> Option<RecordRef<'a>> {
        if self.stopped.is_some() || self.offset >= self.bytes.len() {
            return None;
        }
        match decode_frame(&self.bytes[self.offset..], self.next_seq) {
            Ok((mut record, len)) => {
                record.offset = self.offset;
                self.offset += len;
                // Wrapping: a forged first sequence near u64::MAX must not panic; the wrapped
                // value simply fails the next sequence check.
                self.next_seq = self.next_seq.wrapping_add(1);
                Some(record)
            }
            Err(error) => {
                self.stopped = Some(error);
                None
            }
        }
    }
}

/// What lies after the first damaged frame of a segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AfterDamage {
    /// Nothing that decodes as a record: the signature of a torn write at the tail.
    Nothing,
    /// Frames with a valid checksum follow the damage: corruption inside the segment, or (in the
    /// last segment) pages of an unsynced batch that reached the disk out of order.
    ValidLooking { records: u64, max_seq: u64 },
    /// The search for valid-looking frames hit its work bound; treated like `ValidLooking`.
    Undetermined,
}

/// The first damaged frame of a segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Damage {
    /// Offset of the first byte that is not part of a valid record.
    pub offset: usize,
    /// Bytes from `offset` to the end of the segment.
    pub dropped_bytes: usize,
    /// Why the frame at `offset` was refused.
    pub error: FrameError,
    /// Whether valid-looking frames follow.
    pub after: AfterDamage,
}

impl Damage {
    /// True when nothing valid-looking follows the damage, i.e. it looks like a torn write.
    pub fn is_torn_tail(&self) -> bool {
        self.after == AfterDamage::Nothing
    }
}

/// The result of scanning one segment's bytes.
#[derive(Clone, Debug)]
pub struct SegmentScan<'a> {
    pub header: SegmentHeader,
    bytes: &'a [u8],
    /// Length of the valid prefix: header plus every record up to the first damage.
    pub valid_len: usize,
    /// Number of valid records.
    pub records: u64,
    /// Sequence number after the last valid record.
    pub next_seq: u64,
    /// The first damage, if the valid prefix is not the whole segment.
    pub damage: Option<Damage>,
}

impl<'a> SegmentScan<'a> {
    /// The valid records, in order.
    pub fn records(&self) -> Records<'a> {
        Records::new(
            &self.bytes[..self.valid_len],
            SEGMENT_HEADER_LEN,
            self.header.first_seq,
        )
    }
}

/// Scans a whole segment: checks the header (and, when given, that it starts at the sequence
/// its file name says), then every record. Never panics, whatever the bytes.
pub fn scan_segment(
    bytes: &[u8],
    expected_first_seq: Option<u64>,
) -> Result<SegmentScan<'_>, HeaderError> {
    let header = SegmentHeader::decode(bytes)?;
    if let Some(expected) = expected_first_seq
        && expected != header.first_seq
    {
        return Err(HeaderError::FirstSeqMismatch {
            expected,
            found: header.first_seq,
        });
    }
    let mut records = Records::new(bytes, SEGMENT_HEADER_LEN, header.first_seq);
    let mut count = 0u64;
    for _ in records.by_ref() {
        count += 1;
    }
    let valid_len = records.offset();
    let damage = records.stopped().map(|error| Damage {
        offset: valid_len,
        dropped_bytes: bytes.len() - valid_len,
        error: error.clone(),
        after: search_after_damage(bytes, valid_len, header.first_seq, records.next_seq()),
    });
    Ok(SegmentScan {
        header,
        bytes,
        valid_len,
        records: count,
        next_seq: records.next_seq(),
        damage,
    })
}

/// Looks for frames with a valid checksum after the damage at `damaged_at`. Candidates are first
/// filtered on cheap fields (class, reserved bytes, length, a plausible sequence number), so the
/// checksum work stays near linear; it is bounded anyway, for adversarial bytes.
fn search_after_damage(
    bytes: &[u8],
    damaged_at: usize,
    first_seq: u64,
    next_seq: u64,
) -> AfterDamage {
    let mut crc_budget = bytes.len().saturating_mul(16).saturating_add(1 << 20);
    // A later record can be at most one per FRAME_HEADER_LEN bytes ahead of the expected one.
    let max_plausible_seq = next_seq.saturating_add((bytes.len() / FRAME_HEADER_LEN) as u64 + 1);
    let mut position = damaged_at + 1;
    while position + FRAME_HEADER_LEN <= bytes.len() {
        let header = &bytes[position..position + FRAME_HEADER_LEN];
        let len = read_u32(header, 4) as usize;
        let seq = read_u64(header, 8);
        let plausible = RecordClass::from_byte(header[16]).is_some()
            && header[17..20] == [0, 0, 0]
            && len <= MAX_PAYLOAD_LEN
            && position + frame_len(len) <= bytes.len()
            && seq >= first_seq
            && seq <= max_plausible_seq;
        if plausible {
            let Some(remaining) = crc_budget.checked_sub(frame_len(len)) else {
                return AfterDamage::Undetermined;
            };
            crc_budget = remaining;
            if let Ok((record, len)) = decode_frame(&bytes[position..], seq) {
                let mut chain = Records::new(bytes, position + len, record.seq.wrapping_add(1));
                let mut records = 1u64;
                let mut max_seq = record.seq;
                for later in chain.by_ref() {
                    records += 1;
                    max_seq = later.seq;
                }
                return AfterDamage::ValidLooking { records, max_seq };
            }
        }
        position += 1;
    }
    AfterDamage::Nothing
}

/// Where a segment sits in the log, which decides what its damage means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SegmentRole {
    /// Rolled over: it was fsynced completely before the next segment was created, so any
    /// damage is corruption, not a crash.
    Sealed,
    /// The segment being appended to: a crash may have torn its tail.
    Last,
}

/// What recovery does with a segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Intact: keep as is.
    Clean,
    /// Last segment with a torn tail: cut it at `valid_len`. When valid-looking frames followed
    /// the damage, the dropped bytes are kept aside (`preserve_dropped`) since they might be
    /// more than an unacknowledged batch.
    TruncateTail {
        valid_len: usize,
        dropped_bytes: usize,
        preserve_dropped: bool,
    },
    /// Corrupt: move the file aside. When `salvage_len` is set, the valid prefix (header and
    /// records up to the damage) is kept in place of the file.
    Quarantine {
        salvage_len: Option<usize>,
        reason: String,
    },
    /// Last segment whose header never fully reached the disk (crash while creating it): it
    /// holds no record, remove it.
    DiscardTornCreation,
}

/// Decides what recovery does with a segment, from its bytes and its role. Pure policy.
pub fn judge_segment(bytes: &[u8], expected_first_seq: Option<u64>, role: SegmentRole) -> Verdict {
    judge_scan(&scan_segment(bytes, expected_first_seq), bytes, role)
}

/// `judge_segment` for a scan already made of `bytes`.
pub fn judge_scan(
    scan: &Result<SegmentScan<'_>, HeaderError>,
    bytes: &[u8],
    role: SegmentRole,
) -> Verdict {
    match scan {
        Ok(scan) => match (&scan.damage, role) {
            (None, _) => Verdict::Clean,
            (Some(damage), SegmentRole::Last) => Verdict::TruncateTail {
                valid_len: scan.valid_len,
                dropped_bytes: damage.dropped_bytes,
                preserve_dropped: !damage.is_torn_tail(),
            },
            (Some(damage), SegmentRole::Sealed) => Verdict::Quarantine {
                salvage_len: (scan.records > 0).then_some(scan.valid_len),
                reason: format!(
                    "sealed segment damaged at offset {}: {}; {} valid records before it",
                    damage.offset, damage.error, scan.records
                ),
            },
        },
        Err(error) => {
            // A header shorter than its length, or all zeros (space allocated, data never
            // written), is what a crash between creating the file and syncing its header
            // leaves; nothing in it was ever acknowledged.
            let never_written = bytes.len() <= SEGMENT_HEADER_LEN || bytes.iter().all(|b| *b == 0);
            if role == SegmentRole::Last && never_written {
                Verdict::DiscardTornCreation
            } else {
                Verdict::Quarantine {
                    salvage_len: None,
                    reason: format!("unreadable segment header: {error}"),
                }
            }
        }
    }
}

fn read_u16(bytes: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([bytes[at], bytes[at + 1]])
}

fn read_u32(bytes: &[u8], at: usize) -> u32 {
    let mut word = [0u8; 4];
    word.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(word)
}

fn read_u64(bytes: &[u8], at: usize) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(word)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn segment(first_seq: u64, payloads: &[(RecordClass, Vec<u8>)]) -> Vec<u8> {
        let mut bytes = SegmentHeader {
            first_seq,
            created_unix_ms: 1_700_000_000_000,
        }
        .encode()
        .to_vec();
        for (i, (class, payload)) in payloads.iter().enumerate() {
            encode_frame(&mut bytes, first_seq + i as u64, *class, payload);
        }
        bytes
    }

    fn sample_payloads() -> Vec<(RecordClass, Vec<u8>)> {
        (0..10u8)
            .map(|i| {
                let class = if i % 3 == 0 {
                    RecordClass::Event
                } else {
                    RecordClass::Metric
                };
                (class, vec![i; usize::from(i) * 7])
            })
            .collect()
    }

    #[test]
    fn header_round_trips_and_refuses_damage() {
        let header = SegmentHeader {
            first_seq: 42,
            created_unix_ms: 7,
        };
        let bytes = header.encode();
        assert_eq!(SegmentHeader::decode(&bytes), Ok(header));
        assert_eq!(
            SegmentHeader::decode(&bytes[..31]),
            Err(HeaderError::Short { len: 31 })
        );
        let mut bad = bytes;
        bad[0] ^= 1;
        assert_eq!(SegmentHeader::decode(&bad), Err(HeaderError::BadMagic));
        let mut bad = bytes;
        bad[13] ^= 1;
        assert!(matches!(
            SegmentHeader::decode(&bad),
            Err(HeaderError::BadChecksum { .. })
        ));
    }

    #[test]
    fn clean_segment_scans_every_record() {
        let payloads = sample_payloads();
        let bytes = segment(100, &payloads);
        let scan = scan_segment(&bytes, Some(100)).unwrap();
        assert_eq!(scan.records, 10);
        assert_eq!(scan.next_seq, 110);
        assert_eq!(scan.valid_len, bytes.len());
        assert!(scan.damage.is_none());
        let read: Vec<_> = scan
            .records()
            .map(|r| (r.seq, r.class, r.payload.to_vec()))
            .collect();
        let expected: Vec<_> = payloads
            .iter()
            .enumerate()
            .map(|(i, (c, p))| (100 + i as u64, *c, p.clone()))
            .collect();
        assert_eq!(read, expected);
        assert_eq!(
            judge_segment(&bytes, Some(100), SegmentRole::Sealed),
            Verdict::Clean
        );
    }

    #[test]
    fn name_and_header_must_agree() {
        let bytes = segment(5, &sample_payloads());
        assert_eq!(
            scan_segment(&bytes, Some(6)).unwrap_err(),
            HeaderError::FirstSeqMismatch {
                expected: 6,
                found: 5
            }
        );
    }

    #[test]
    fn torn_tail_is_cut_at_the_last_whole_record() {
        let bytes = segment(1, &sample_payloads());
        let full = scan_segment(&bytes, None).unwrap();
        let offsets: Vec<usize> = full.records().map(|r| r.offset).collect();
        let cut = offsets[7] + 5;
        let scan = scan_segment(&bytes[..cut], None).unwrap();
        assert_eq!(scan.records, 7);
        assert_eq!(scan.valid_len, offsets[7]);
        let damage = scan.damage.clone().unwrap();
        assert_eq!(damage.dropped_bytes, 5);
        assert!(damage.is_torn_tail());
        assert_eq!(
            judge_segment(&bytes[..cut], None, SegmentRole::Last),
            Verdict::TruncateTail {
                valid_len: offsets[7],
                dropped_bytes: 5,
                preserve_dropped: false
            }
        );
    }

    #[test]
    fn zeroed_tail_is_a_torn_tail() {
        let mut bytes = segment(1, &sample_payloads());
        let valid = bytes.len();
        bytes.extend_from_slice(&[0u8; 4096]);
        let scan = scan_segment(&bytes, None).unwrap();
        assert_eq!(scan.valid_len, valid);
        assert!(scan.damage.unwrap().is_torn_tail());
    }

    #[test]
    fn bad_record_in_the_middle_of_a_sealed_segment_quarantines_it() {
        let mut bytes = segment(1, &sample_payloads());
        let offsets: Vec<usize> = scan_segment(&bytes, None)
            .unwrap()
            .records()
            .map(|r| r.offset)
            .collect();
        bytes[offsets[4] + FRAME_HEADER_LEN + 2] ^= 0x40;
        let scan = scan_segment(&bytes, None).unwrap();
        assert_eq!(scan.records, 4);
        let damage = scan.damage.unwrap();
        assert!(matches!(damage.error, FrameError::BadChecksum { .. }));
        assert_eq!(
            damage.after,
            AfterDamage::ValidLooking {
                records: 5,
                max_seq: 10
            }
        );
        match judge_segment(&bytes, None, SegmentRole::Sealed) {
            Verdict::Quarantine { salvage_len, .. } => assert_eq!(salvage_len, Some(offsets[4])),
            other => panic!("expected quarantine, got {other:?}"),
        }
        // In the last segment the same damage is cut, but the dropped bytes are kept aside.
        assert!(matches!(
            judge_segment(&bytes, None, SegmentRole::Last),
            Verdict::TruncateTail {
                preserve_dropped: true,
                ..
            }
        ));
    }

    #[test]
    fn record_with_wrong_sequence_is_refused() {
        let mut bytes = SegmentHeader {
            first_seq: 10,
            created_unix_ms: 0,
        }
        .encode()
        .to_vec();
        encode_frame(&mut bytes, 10, RecordClass::Event, b"a");
        encode_frame(&mut bytes, 12, RecordClass::Event, b"b");
        let scan = scan_segment(&bytes, None).unwrap();
        assert_eq!(scan.records, 1);
        assert_eq!(
            scan.damage.unwrap().error,
            FrameError::BadSequence {
                expected: 11,
                found: 12
            }
        );
    }

    #[test]
    fn header_torn_at_creation_is_discarded_only_in_the_last_segment() {
        let header = SegmentHeader {
            first_seq: 1,
            created_unix_ms: 0,
        }
        .encode();
        for cut in 0..SEGMENT_HEADER_LEN {
            assert_eq!(
                judge_segment(&header[..cut], Some(1), SegmentRole::Last),
                Verdict::DiscardTornCreation
            );
        }
        assert_eq!(
            judge_segment(&[0u8; 8192], Some(1), SegmentRole::Last),
            Verdict::DiscardTornCreation
        );
        assert!(matches!(
            judge_segment(&header[..10], Some(1), SegmentRole::Sealed),
            Verdict::Quarantine {
                salvage_len: None,
                ..
            }
        ));
    }

    fn arbitrary_records() -> impl Strategy<Value = Vec<(bool, Vec<u8>)>> {
        prop::collection::vec(
            (any::<bool>(), prop::collection::vec(any::<u8>(), 0..64)),
            0..24,
        )
    }

    fn build(first_seq: u64, records: &[(bool, Vec<u8>)]) -> Vec<u8> {
        let payloads: Vec<_> = records
            .iter()
            .map(|(event, p)| {
                (
                    if *event {
                        RecordClass::Event
                    } else {
                        RecordClass::Metric
                    },
                    p.clone(),
                )
            })
            .collect();
        segment(first_seq, &payloads)
    }

    /// The records a scan returns must be exactly a prefix of the records written.
    fn assert_prefix_of_written(
        bytes: &[u8],
        first_seq: u64,
        written: &[(bool, Vec<u8>)],
    ) -> usize {
        match scan_segment(bytes, Some(first_seq)) {
            Ok(scan) => {
                let read: Vec<_> = scan.records().collect();
                assert_eq!(read.len() as u64, scan.records);
                assert!(read.len() <= written.len());
                for (i, record) in read.iter().enumerate() {
                    assert_eq!(record.seq, first_seq + i as u64);
                    let (event, payload) = &written[i];
                    let class = if *event {
                        RecordClass::Event
                    } else {
                        RecordClass::Metric
                    };
                    assert_eq!(record.class, class);
                    assert_eq!(record.payload, &payload[..]);
                }
                read.len()
            }
            Err(_) => 0,
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn truncation_yields_a_prefix_and_never_panics(
            first_seq in 1u64..1_000_000,
            records in arbitrary_records(),
            cut_fraction in 0.0f64..=1.0,
        ) {
            let bytes = build(first_seq, &records);
            let cut = ((bytes.len() as f64) * cut_fraction) as usize;
            let kept = assert_prefix_of_written(&bytes[..cut], first_seq, &records);
            // Every record that lies wholly before the cut survives.
            let whole = scan_segment(&bytes, None).unwrap().records().filter(|r| r.offset + frame_len(r.payload.len()) <= cut).count();
            prop_assert_eq!(kept, whole);
            let _ = judge_segment(&bytes[..cut], Some(first_seq), SegmentRole::Last);
            let _ = judge_segment(&bytes[..cut], Some(first_seq), SegmentRole::Sealed);
        }

        #[test]
        fn bit_flips_never_yield_an_unwritten_record(
            first_seq in 1u64..1_000_000,
            records in arbitrary_records(),
            flips in prop::collection::vec((any::<prop::sample::Index>(), 0u8..8), 1..4),
        ) {
            let mut bytes = build(first_seq, &records);
            let mut first_flip = usize::MAX;
            for (index, bit) in &flips {
                let at = index.index(bytes.len());
                bytes[at] ^= 1 << bit;
                first_flip = first_flip.min(at);
            }
            let kept = assert_prefix_of_written(&bytes, first_seq, &records);
            // No record containing a flipped byte is returned: CRC32C catches up to 3 bit errors
            // in frames this short, and a flip in the header refuses the whole segment.
            if let Ok(scan) = scan_segment(&bytes, Some(first_seq)) {
                for record in scan.records() {
                    prop_assert!(record.offset + frame_len(record.payload.len()) <= first_flip);
                }
            }
            let _ = kept;
            let _ = judge_segment(&bytes, Some(first_seq), SegmentRole::Last);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512), seq in any::<u64>()) {
            let _ = scan_segment(&bytes, None);
            let _ = judge_segment(&bytes, Some(seq), SegmentRole::Last);
            let _ = decode_frame(&bytes, seq);
            let mut with_header = SegmentHeader { first_seq: seq, created_unix_ms: 0 }.encode().to_vec();
            with_header.extend_from_slice(&bytes);
            if let Ok(scan) = scan_segment(&with_header, Some(seq)) {
                prop_assert!(scan.valid_len <= with_header.len());
                let _ = scan.records().count();
            }
        }
    }
}
