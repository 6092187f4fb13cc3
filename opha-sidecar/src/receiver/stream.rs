//! Bus frames on QUIC streams: a stream is a sequence of frames, each delimited by its own
//! header (magic, version, kind, payload length), so no extra length prefix is needed.
//!
//! The header is checked as soon as it is in (magic, version, kind, length bound) before the
//! payload is read, so a stream of junk costs 10 bytes and is refused.

use opha_bus::message::{BusError, BusFrame, BusMessage};
use opha_common::wire::HEADER_LEN;
use quinn::{ReadExactError, RecvStream, SendStream};

/// Why a frame could not be read from a stream.
#[derive(Debug, thiserror::Error)]
pub enum FrameReadError {
    #[error("stream ended inside a frame ({0} bytes of its header)")]
    Truncated(usize),
    #[error("stream: {0}")]
    Read(#[from] quinn::ReadError),
    #[error("frame: {0}")]
    Frame(#[from] BusError),
}

/// The next whole frame (header and payload), `None` at a clean end of the stream.
pub async fn read_frame(
    recv: &mut RecvStream,
    frame: &BusFrame,
) -> Result<Option<Vec<u8>>, FrameReadError> {
    let mut header = [0u8; HEADER_LEN];
    match recv.read_exact(&mut header).await {
        Ok(()) => {}
        Err(ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(ReadExactError::FinishedEarly(n)) => return Err(FrameReadError::Truncated(n)),
        Err(ReadExactError::ReadError(e)) => return Err(e.into()),
    }
    let h = frame.header(&header)?;
    let mut buf = Vec::with_capacity(HEADER_LEN + h.len as usize);
    buf.extend_from_slice(&header);
    buf.resize(HEADER_LEN + h.len as usize, 0);
    match recv.read_exact(&mut buf[HEADER_LEN..]).await {
        Ok(()) => Ok(Some(buf)),
        Err(ReadExactError::FinishedEarly(n)) => Err(FrameReadError::Truncated(HEADER_LEN + n)),
        Err(ReadExactError::ReadError(e)) => Err(e.into()),
    }
}

/// Encodes and writes one message.
pub async fn write_message(
    send: &mut SendStream,
    frame: &BusFrame,
    msg: &BusMessage,
) -> anyhow::Result<()> {
    let bytes = frame.encode(msg)?;
    send.write_all(&bytes).await?;
    Ok(())
}
