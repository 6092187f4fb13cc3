//! Bus frames on a QUIC stream: read one whole frame (header, then exactly its payload) and
//! write one. Shared by the sender and by receivers (and tests).

use opha_bus::message::{BusError, BusFrame, BusMessage};
use opha_common::wire::HEADER_LEN;

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("stream: {0}")]
    Stream(#[from] quinn::ReadError),
    #[error("the stream ended inside a frame")]
    Truncated,
    #[error("frame: {0}")]
    Frame(#[from] BusError),
}

/// Reads the next frame; `Ok(None)` when the peer finished the stream between frames.
pub async fn read_message(
    recv: &mut quinn::RecvStream,
    frame: &BusFrame,
) -> Result<Option<BusMessage>, ReadError> {
    let mut head = [0u8; HEADER_LEN];
    match recv.read_exact(&mut head).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(quinn::ReadExactError::FinishedEarly(_)) => return Err(ReadError::Truncated),
        Err(quinn::ReadExactError::ReadError(e)) => return Err(e.into()),
    }
    // The header check bounds the payload before anything is allocated for it.
    let h = frame.header(&head)?;
    let mut buf = vec![0u8; HEADER_LEN + h.len as usize];
    buf[..HEADER_LEN].copy_from_slice(&head);
    match recv.read_exact(&mut buf[HEADER_LEN..]).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(_)) => return Err(ReadError::Truncated),
        Err(quinn::ReadExactError::ReadError(e)) => return Err(e.into()),
    }
    Ok(Some(frame.decode(&buf)?))
}

/// Why a frame could not be written.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("stream: {0}")]
    Stream(#[from] quinn::WriteError),
    #[error("frame: {0}")]
    Frame(#[from] BusError),
}

/// Encodes and writes one message; returns the frame's length on the wire.
pub async fn write_message(
    send: &mut quinn::SendStream,
    frame: &BusFrame,
    msg: &BusMessage,
) -> Result<usize, WriteError> {
    let bytes = frame.encode(msg)?;
    send.write_all(&bytes).await?;
    Ok(bytes.len())
}
