//! Named consumer cursors and their encoding. Pure.
//!
//! A cursor is the sequence number of the next record its consumer (one receiver) still needs:
//! every record below it has been acknowledged by that consumer. The driver keeps all cursors in
//! one small file, rewritten atomically (temporary file, fsync, rename, fsync of the directory).
//!
//! Byte layout (little endian):
//!
//! ```text
//!   0..8    magic "OPHACURS"
//!   8..10   format version (u16) = 1
//!   10..14  number of cursors (u32)
//!   then per cursor, sorted by name:
//!           name length (u16), name (UTF-8), position (u64)
//!   last 4  CRC32C of every byte before it
//! ```

use std::collections::BTreeMap;

/// First bytes of the cursor file.
pub const CURSOR_MAGIC: [u8; 8] = *b"OPHACURS";
/// The cursor file version this crate writes and reads.
pub const CURSOR_VERSION: u16 = 1;
/// Longest cursor name, in bytes.
pub const MAX_CURSOR_NAME_LEN: usize = 255;
/// Most cursors a log keeps: one per receiver, so a handful in practice.
pub const MAX_CURSORS: usize = 1024;

/// Cursor positions by name.
pub type Cursors = BTreeMap<String, u64>;

/// Why a cursor name is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CursorNameError {
    #[error("cursor name is empty")]
    Empty,
    #[error("cursor name is {len} bytes, longer than {MAX_CURSOR_NAME_LEN}")]
    TooLong { len: usize },
    #[error("cursor name {name:?} contains a control character")]
    ControlCharacter { name: String },
}

/// Checks that `name` can be stored as a cursor name.
pub fn validate_cursor_name(name: &str) -> Result<(), CursorNameError> {
    if name.is_empty() {
        return Err(CursorNameError::Empty);
    }
    if name.len() > MAX_CURSOR_NAME_LEN {
        return Err(CursorNameError::TooLong { len: name.len() });
    }
    if name.chars().any(char::is_control) {
        return Err(CursorNameError::ControlCharacter {
            name: name.to_owned(),
        });
    }
    Ok(())
}

/// Why cursor file bytes were refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CursorDecodeError {
    #[error("cursor file is {len} bytes, too short")]
    Short { len: usize },
    #[error("cursor file does not start with the magic bytes \"OPHACURS\"")]
    BadMagic,
    #[error("cursor file checksum mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    BadChecksum { stored: u32, computed: u32 },
    #[error("cursor file version {version} is not supported (this build reads {CURSOR_VERSION})")]
    UnsupportedVersion { version: u16 },
    #[error("cursor file claims {count} cursors, more than {MAX_CURSORS}")]
    TooMany { count: u32 },
    #[error("cursor file ends inside cursor {index}")]
    Truncated { index: u32 },
    #[error("cursor {index} has an invalid name: {reason}")]
    BadName { index: u32, reason: String },
    #[error("cursor name {name:?} appears twice")]
    Duplicate { name: String },
    #[error("cursor file has {extra} bytes after its last cursor")]
    TrailingBytes { extra: usize },
}

/// Encodes cursors (at most MAX_CURSORS, names validated by the caller) into the file's bytes.
pub fn encode_cursors(cursors: &Cursors) -> Vec<u8> {
    let mut out = Vec::with_capacity(18 + cursors.len() * 32);
    out.extend_from_slice(&CURSOR_MAGIC);
    out.extend_from_slice(&CURSOR_VERSION.to_le_bytes());
    out.extend_from_slice(&(cursors.len() as u32).to_le_bytes());
    for (name, position) in cursors {
        out.extend_from_slice(&(name.len() as u16).to_le_bytes());
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(&position.to_le_bytes());
    }
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// Decodes the cursor file's bytes. Never panics, whatever the bytes.
pub fn decode_cursors(bytes: &[u8]) -> Result<Cursors, CursorDecodeError> {
    if bytes.len() < 18 {
        return Err(CursorDecodeError::Short { len: bytes.len() });
    }
    if bytes[0..8] != CURSOR_MAGIC {
        return Err(CursorDecodeError::BadMagic);
    }
    let (body, crc) = bytes.split_at(bytes.len() - 4);
    let stored = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
    let computed = crc32c::crc32c(body);
    if stored != computed {
        return Err(CursorDecodeError::BadChecksum { stored, computed });
    }
    let version = u16::from_le_bytes([body[8], body[9]]);
    if version != CURSOR_VERSION {
        return Err(CursorDecodeError::UnsupportedVersion { version });
    }
    let count = u32::from_le_bytes([body[10], body[11], body[12], body[13]]);
    if count as usize > MAX_CURSORS {
        return Err(CursorDecodeError::TooMany { count });
    }
    let mut rest = &body[14..];
    let mut cursors = Cursors::new();
    for index in 0..count {
        let truncated = CursorDecodeError::Truncated { index };
        let (len_bytes, after) = rest.split_at_checked(2).ok_or(truncated.clone())?;
        let len = usize::from(u16::from_le_bytes([len_bytes[0], len_bytes[1]]));
        let (name_bytes, after) = after.split_at_checked(len).ok_or(truncated.clone())?;
        let (position_bytes, after) = after.split_at_checked(8).ok_or(truncated)?;
        let name = std::str::from_utf8(name_bytes).map_err(|e| CursorDecodeError::BadName {
            index,
            reason: e.to_string(),
        })?;
        validate_cursor_name(name).map_err(|e| CursorDecodeError::BadName {
            index,
            reason: e.to_string(),
        })?;
        let mut position = [0u8; 8];
        position.copy_from_slice(position_bytes);
        if cursors
            .insert(name.to_owned(), u64::from_le_bytes(position))
            .is_some()
        {
            return Err(CursorDecodeError::Duplicate {
                name: name.to_owned(),
            });
        }
        rest = after;
    }
    if !rest.is_empty() {
        return Err(CursorDecodeError::TrailingBytes { extra: rest.len() });
    }
    Ok(cursors)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn empty_and_named_cursors_round_trip() {
        let empty = Cursors::new();
        assert_eq!(decode_cursors(&encode_cursors(&empty)), Ok(empty));
        let cursors: Cursors = [
            ("primary-main".to_owned(), 17),
            ("mirror/eu".to_owned(), u64::MAX),
        ]
        .into();
        assert_eq!(decode_cursors(&encode_cursors(&cursors)), Ok(cursors));
    }

    #[test]
    fn names_are_validated() {
        assert_eq!(validate_cursor_name(""), Err(CursorNameError::Empty));
        assert!(validate_cursor_name(&"x".repeat(256)).is_err());
        assert!(validate_cursor_name("a\nb").is_err());
        assert!(validate_cursor_name("primäry").is_ok());
    }

    #[test]
    fn damage_is_detected() {
        let cursors: Cursors = [("a".to_owned(), 5)].into();
        let bytes = encode_cursors(&cursors);
        for cut in 0..bytes.len() {
            assert!(decode_cursors(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        for at in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[at] ^= 0x10;
            assert!(decode_cursors(&bad).is_err(), "flip at {at}");
        }
    }

    proptest! {
        #[test]
        fn arbitrary_cursors_round_trip(entries in prop::collection::btree_map("[a-z0-9:/._-]{1,40}", any::<u64>(), 0..16)) {
            prop_assert_eq!(decode_cursors(&encode_cursors(&entries)), Ok(entries));
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode_cursors(&bytes);
            let mut with_magic = CURSOR_MAGIC.to_vec();
            with_magic.extend_from_slice(&bytes);
            let _ = decode_cursors(&with_magic);
        }
    }
}
