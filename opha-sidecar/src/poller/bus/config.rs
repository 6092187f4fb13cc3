//! Config push on the wire, poller side: one bidirectional stream per primary link.
//!
//! Once a primary link streams, this task opens a stream, says which config version runs
//! ([`ConfigState`]), then answers every [`ConfigPush`] with one [`ConfigResult`]. A push is
//! looked at only when the fencing arbiter accepts its term from this primary
//! (`opha_bus::fencing::Arbiter::accepts`: the current term, and this primary is the active
//! one); otherwise it is refused ("not active", counted) without being parsed. Accepted
//! pushes go to [`crate::poller::config_apply::LiveConfig::handle`] on the blocking pool.
//!
//! The task ends with its connection (the link aborts it) or on a malformed frame (logged;
//! the data stream is not affected).

use std::sync::Arc;

use anyhow::{Context, anyhow};
use opha_bus::config_push::{
    ConfigFrame, ConfigMessage, ConfigOutcome, ConfigPush, ConfigResult, ConfigState,
};
use opha_common::wire::HEADER_LEN;

use super::{BusStatus, LinkStatus};
use crate::poller::shared::lock;

impl BusStatus {
    /// Whether a config push from primary link `link` with `term` is accepted now; the reason
    /// when not.
    pub fn accepts_push(&self, link: usize, term: u64) -> Result<(), String> {
        let Some(p) = self.primaries.iter().position(|&l| l == link) else {
            return Err("config pushes are taken from primaries only".into());
        };
        let f = lock(&self.fencing);
        if f.arbiter.accepts(term, p) {
            return Ok(());
        }
        let active = f
            .arbiter
            .active()
            .and_then(|i| self.primaries.get(i))
            .and_then(|&l| self.links.get(l))
            .map_or("none".to_string(), |l| l.receiver.peer.to_string());
        Err(format!(
            "not the active primary: push with term {term}, the current term is {} (active primary: {active})",
            f.arbiter.term()
        ))
    }
}

/// Serves the config stream of primary link `link` until it fails.
pub async fn run(
    link: usize,
    conn: quinn::Connection,
    bus: Arc<BusStatus>,
    status: Arc<LinkStatus>,
) {
    let peer = status.receiver.peer.to_string();
    if let Err(e) = serve(link, &conn, &bus, &peer).await {
        log::debug!("bus: config stream of {peer}: {e:#}");
    }
}

async fn serve(
    link: usize,
    conn: &quinn::Connection,
    bus: &Arc<BusStatus>,
    peer: &str,
) -> anyhow::Result<()> {
    let frame = ConfigFrame::default();
    let (mut send, mut recv) = conn.open_bi().await.context("opening the config stream")?;
    let mut versions = bus.config.get().map(|c| c.subscribe());
    let running = versions.as_mut().map_or(0, |v| *v.borrow_and_update());
    write(
        &mut send,
        &frame,
        &ConfigMessage::State(ConfigState { running }),
    )
    .await?;
    let (tx, mut pushes) = tokio::sync::mpsc::channel(4);
    let reader = tokio::spawn(async move {
        loop {
            let r = read(&mut recv, &frame).await;
            let end = !matches!(r, Ok(Some(_)));
            if tx.send(r).await.is_err() || end {
                return;
            }
        }
    });
    let _reader = AbortOnDrop(reader);
    loop {
        tokio::select! {
            m = pushes.recv() => match m {
                Some(Ok(Some(ConfigMessage::Push(push)))) => {
                    let result = handle(link, bus, peer, push).await;
                    write(&mut send, &frame, &ConfigMessage::Result(result)).await?;
                }
                Some(Ok(Some(m))) => {
                    return Err(anyhow!("expected a config push, got a {:?}", m.kind()));
                }
                Some(Ok(None)) | None => return Ok(()),
                Some(Err(e)) => return Err(e),
            },
            // Applied from another primary: this one's view (and numbering) follows.
            Some(running) = changed(&mut versions) => {
                write(&mut send, &frame, &ConfigMessage::State(ConfigState { running })).await?;
            }
        }
    }
}

/// The next running version; never resolves without a config.
async fn changed(v: &mut Option<tokio::sync::watch::Receiver<u64>>) -> Option<u64> {
    match v {
        Some(v) => match v.changed().await {
            Ok(()) => Some(*v.borrow_and_update()),
            Err(_) => std::future::pending().await,
        },
        None => std::future::pending().await,
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn handle(link: usize, bus: &Arc<BusStatus>, peer: &str, push: ConfigPush) -> ConfigResult {
    let Some(live) = bus.config.get().cloned() else {
        return ConfigResult {
            version: push.version,
            running: 0,
            outcome: ConfigOutcome::Rejected("this poller does not take config pushes".into()),
        };
    };
    if let Err(why) = bus.accepts_push(link, push.term) {
        log::warn!(
            "bus: config push version {} from {peer} refused: {why}",
            push.version
        );
        return live.not_active(&push, &why);
    }
    let (l, p, version) = (live.clone(), peer.to_string(), push.version);
    match tokio::task::spawn_blocking(move || l.handle(&push, &p)).await {
        Ok(r) => r,
        Err(e) => ConfigResult {
            version,
            running: live.version(),
            outcome: ConfigOutcome::Rejected(format!("applying: {e}")),
        },
    }
}

/// Reads one config frame; `None` at a clean end of the stream.
pub async fn read(
    recv: &mut quinn::RecvStream,
    frame: &ConfigFrame,
) -> anyhow::Result<Option<ConfigMessage>> {
    let mut head = [0u8; HEADER_LEN];
    match recv.read_exact(&mut head).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(e) => return Err(anyhow!("reading a config frame: {e}")),
    }
    // The header check bounds the payload before anything is allocated for it.
    let h = frame.header(&head)?;
    let mut buf = vec![0u8; HEADER_LEN + h.len as usize];
    buf[..HEADER_LEN].copy_from_slice(&head);
    recv.read_exact(&mut buf[HEADER_LEN..])
        .await
        .map_err(|e| anyhow!("reading a config frame: {e}"))?;
    Ok(Some(frame.decode(&buf)?))
}

/// Writes one config frame.
pub async fn write(
    send: &mut quinn::SendStream,
    frame: &ConfigFrame,
    msg: &ConfigMessage,
) -> anyhow::Result<()> {
    let bytes = frame.encode(msg)?;
    send.write_all(&bytes).await?;
    Ok(())
}
