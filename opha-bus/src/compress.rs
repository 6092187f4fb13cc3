//! Batch body compression: pure functions over byte slices.
//!
//! zstd (level configurable, or off). A body is sent compressed only when that makes it
//! smaller, so incompressible data costs nothing but the attempt. Decompression is bounded:
//! a small hostile body cannot expand into a large allocation (a "zip bomb").

use serde::{Deserialize, Serialize};

/// How batch bodies are compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Compression {
    /// Bodies go as they are.
    Off,
    /// zstd at this level (1 is fast; 3 is zstd's default; negative levels are faster still).
    Zstd { level: i32 },
}

impl Default for Compression {
    /// Level 3: for metrics and events it removes most redundancy at a cost far below the
    /// cost of making a record durable.
    fn default() -> Self {
        Compression::Zstd { level: 3 }
    }
}

/// How a batch body is encoded on the wire (a field of [`crate::message::Batch`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum BodyCodec {
    Raw,
    Zstd,
}

/// Why a body could not be decompressed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecompressError {
    #[error("compressed body is invalid: {0}")]
    Invalid(String),
    #[error("body expands beyond the limit of {max} bytes")]
    TooLarge { max: usize },
}

/// Compresses `raw` as configured; returns the codec used and the bytes to send.
pub fn compress(raw: &[u8], compression: Compression) -> (BodyCodec, Vec<u8>) {
    match compression {
        Compression::Off => (BodyCodec::Raw, raw.to_vec()),
        Compression::Zstd { level } => match zstd::bulk::compress(raw, level) {
            Ok(z) if z.len() < raw.len() => (BodyCodec::Zstd, z),
            // Not smaller (tiny or random bodies), or zstd refused the level: send raw.
            _ => (BodyCodec::Raw, raw.to_vec()),
        },
    }
}

/// Decompresses a body, refusing anything that would expand beyond `max` bytes.
pub fn decompress(codec: BodyCodec, body: &[u8], max: usize) -> Result<Vec<u8>, DecompressError> {
    match codec {
        BodyCodec::Raw if body.len() > max => Err(DecompressError::TooLarge { max }),
        BodyCodec::Raw => Ok(body.to_vec()),
        BodyCodec::Zstd => {
            // The frame header may declare its content size; refuse early when it is too big
            // (the bulk decoder would also stop at `max`, this just gives the clearer error).
            if let Ok(Some(size)) = zstd::zstd_safe::get_frame_content_size(body)
                && size > max as u64
            {
                return Err(DecompressError::TooLarge { max });
            }
            zstd::bulk::decompress(body, max).map_err(|e| {
                if e.to_string().contains("Destination buffer is too small") {
                    DecompressError::TooLarge { max }
                } else {
                    DecompressError::Invalid(e.to_string())
                }
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_off_switch() {
        let raw: Vec<u8> = (0..4000u32).flat_map(|i| (i % 17).to_le_bytes()).collect();
        let (codec, z) = compress(&raw, Compression::default());
        assert_eq!(codec, BodyCodec::Zstd);
        assert!(z.len() < raw.len() / 4);
        assert_eq!(decompress(codec, &z, raw.len()).unwrap(), raw);
        assert_eq!(
            decompress(codec, &z, raw.len() - 1),
            Err(DecompressError::TooLarge { max: raw.len() - 1 })
        );
        let (codec, same) = compress(&raw, Compression::Off);
        assert_eq!((codec, same.as_slice()), (BodyCodec::Raw, raw.as_slice()));
    }

    #[test]
    fn incompressible_goes_raw_and_junk_is_refused() {
        let (codec, _) = compress(&[1, 2, 3], Compression::Zstd { level: 19 });
        assert_eq!(codec, BodyCodec::Raw);
        assert!(matches!(
            decompress(BodyCodec::Zstd, b"not zstd at all", 1 << 20),
            Err(DecompressError::Invalid(_))
        ));
    }
}
