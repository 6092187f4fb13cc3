//! Serving gap fetches ("catchup") to another primary: the driver of
//! [`opha_bus::fetch::FetchServe`] on [`opha_store::Store::records_in`].
//!
//! A connection whose certificate says `primary` is not a poller: it is a primary fetching
//! what it missed of some poller's stream ([`super::gap`] is the other end). It must be
//! allowed to open a catchup stream to this role (`Trust::authorize_stream(.., Catchup)`:
//! primaries may, towards primaries and mirrors). On each bidirectional stream it opens it
//! sends requests one after the other; each is answered with the stored records (as the
//! poller's log held them), then a `FetchDone` naming exactly what was not sent.
//!
//! Only the files the poller may write here are read (its tenants in this receiver's
//! `[[poller]]` registry, plus the system scope); a poller not in the registry has nothing to
//! serve. The fetching primary checks every record's tenant against its own registry and the
//! poller's certificate before storing it.

use std::sync::Arc;

use opha_bus::fetch::{
    FetchFrame, FetchMessage, FetchRefuse, FetchRefuseReason, FetchRequest, FetchServe,
};
use opha_bus::message::Entry;
use opha_common::wire::{Bytes, HEADER_LEN};
use opha_identity::verify::CLOSE_REFUSED;
use opha_identity::{PeerIdentity, StreamKind};
use quinn::{ReadExactError, RecvStream, SendStream};

use super::Shared;
use super::metrics::Metrics;
use super::stream::FrameReadError;

/// Rows read from the store per query (below the store's page bound).
const QUERY_ROWS: usize = 2048;
/// Streams one fetching peer may have open at once.
const MAX_STREAMS: usize = 4;

/// Serves one connection of a primary fetching gaps, to its end.
pub async fn serve(shared: Arc<Shared>, conn: quinn::Connection, id: PeerIdentity) {
    if let Err(e) = shared
        .trust
        .authorize_stream(shared.role, &id, StreamKind::Catchup)
    {
        log::warn!("{e}");
        shared.metrics.reject("wrong_role", 1);
        conn.close(CLOSE_REFUSED, b"catchup not allowed");
        return;
    }
    log::info!("{}: serving gap fetches", id.peer_id);
    let mut streams = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            s = conn.accept_bi() => match s {
                Ok((send, recv)) => {
                    if streams.len() >= MAX_STREAMS {
                        shared.metrics.reject("catchup_streams", 1);
                        conn.close(CLOSE_REFUSED, b"too many catchup streams");
                        break;
                    }
                    let (s, p) = (shared.clone(), id.peer_id.clone());
                    streams.spawn(async move {
                        if let Err(e) = serve_stream(&s, send, recv).await {
                            log::info!("{p}: catchup stream ended: {e:#}");
                        }
                    });
                }
                Err(_) => break,
            },
            Some(_) = streams.join_next(), if !streams.is_empty() => {}
        }
    }
    streams.abort_all();
    while streams.join_next().await.is_some() {}
}

async fn serve_stream(
    shared: &Arc<Shared>,
    mut send: SendStream,
    mut recv: RecvStream,
) -> anyhow::Result<()> {
    let frame = FetchFrame::default();
    loop {
        let bytes = match read_fetch_frame(&mut recv, &frame).await {
            Ok(Some(b)) => b,
            Ok(None) => break,
            Err(FrameReadError::Read(e)) => return Err(e.into()),
            Err(e) => {
                refuse(
                    shared,
                    &mut send,
                    FetchRefuseReason::Malformed,
                    e.to_string(),
                )
                .await?;
                return Ok(());
            }
        };
        match frame.decode(&bytes) {
            Ok(FetchMessage::Request(r)) => answer(shared, &mut send, r).await?,
            other => {
                let detail = match other {
                    Ok(m) => format!("expected a fetch request, got {:?}", m.kind()),
                    Err(e) => e.to_string(),
                };
                refuse(shared, &mut send, FetchRefuseReason::Malformed, detail).await?;
                return Ok(());
            }
        }
    }
    let _ = send.finish();
    Ok(())
}

async fn refuse(
    shared: &Shared,
    send: &mut SendStream,
    reason: FetchRefuseReason,
    detail: String,
) -> anyhow::Result<()> {
    shared.metrics.reject("catchup_malformed", 1);
    let mut detail = detail;
    detail.truncate(opha_bus::fetch::MAX_DETAIL);
    write_fetch(send, &FetchMessage::Refuse(FetchRefuse { reason, detail })).await?;
    let _ = send.finish();
    Ok(())
}

/// One request: stored records in bounded queries, then the done.
async fn answer(
    shared: &Arc<Shared>,
    send: &mut SendStream,
    req: FetchRequest,
) -> anyhow::Result<()> {
    let scopes = shared
        .registry
        .get(&req.poller)
        .map(Shared::scopes)
        .unwrap_or_default();
    let (poller, epoch) = (req.poller.clone(), req.epoch);
    let mut serve = FetchServe::new(req);
    while !serve.is_finished() && !scopes.is_empty() {
        let (s, p, sc) = (shared.clone(), poller.clone(), scopes.clone());
        let pending = serve.pending().clone();
        let rows = tokio::task::spawn_blocking(move || {
            s.store.records_in(&p, epoch, &pending, &sc, QUERY_ROWS)
        })
        .await?;
        let rows = match rows {
            Ok(r) => r,
            Err(e) => {
                log::warn!("catchup: reading {poller}/{epoch}: {e}");
                shared.metrics.reject("catchup_store_failed", 1);
                let detail = e.to_string();
                write_fetch(
                    send,
                    &FetchMessage::Refuse(FetchRefuse {
                        reason: FetchRefuseReason::StoreFailed,
                        detail: detail.chars().take(opha_bus::fetch::MAX_DETAIL).collect(),
                    }),
                )
                .await?;
                return Ok(());
            }
        };
        let exhausted = rows.len() < QUERY_ROWS;
        let entries = rows
            .into_iter()
            .map(|r| Entry {
                seq: r.seq,
                payload: Bytes(r.payload),
            })
            .collect();
        for m in serve.found(entries, exhausted) {
            write_fetch(send, &m).await?;
        }
    }
    write_fetch(send, &serve.done()).await?;
    Metrics::add(&shared.metrics.gap_served, serve.sent());
    Ok(())
}

/// Encodes and writes one fetch message.
pub(crate) async fn write_fetch(send: &mut SendStream, msg: &FetchMessage) -> anyhow::Result<()> {
    let bytes = FetchFrame::default().encode(msg)?;
    send.write_all(&bytes).await?;
    Ok(())
}

/// The next whole fetch frame, `None` at a clean end of the stream (as
/// [`super::stream::read_frame`] for bus frames: the header is checked before the payload is
/// read).
pub(crate) async fn read_fetch_frame(
    recv: &mut RecvStream,
    frame: &FetchFrame,
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
