//! The NATS JetStream peer of `opha-bench bus`: Debian's `nats-server` (`-js`, file storage
//! in a scratch directory on the build disk, 127.0.0.1, a free port), and the `async-nats`
//! client publishing the same 100-byte records as the opha run, each publish acknowledgement
//! awaited, pipelined like a real producer with at most [`IN_FLIGHT`] acknowledgements
//! outstanding (opha's default window is 8,192 records too).
//!
//! nats-server 2.9 does not fsync every write: JetStream flushes its file store on an
//! interval (`sync_interval`, 2 minutes by default) and acknowledges before that; opha
//! acknowledges only after the primary's commit with synchronous=FULL. The comparison is
//! made against NATS as it is.

use std::{
    collections::VecDeque,
    net::{Ipv4Addr, SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use async_nats::jetstream::{self, stream::StorageType};

use crate::bus_env::{self, Proc, record_100, wait_until};

/// Publish acknowledgements outstanding at most.
pub const IN_FLIGHT: usize = 8192;

pub struct NatsResult {
    pub records_per_sec: f64,
    pub version: String,
    pub in_flight: usize,
}

fn nats_server() -> Result<PathBuf> {
    for dir in ["/usr/sbin", "/usr/bin", "/usr/local/bin"] {
        let p = Path::new(dir).join("nats-server");
        if p.is_file() {
            return Ok(p);
        }
    }
    bail!(
        "nats-server is not installed (Debian package nats-server; `cargo xtask setup` installs it)"
    )
}

pub fn run(root: &Path, rt: &tokio::runtime::Runtime, records: u64) -> Result<NatsResult> {
    let bin = nats_server()?;
    let version = Command::new(&bin)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let store = root.join("nats");
    std::fs::create_dir_all(&store)?;
    let port = bus_env::free_tcp_port(Ipv4Addr::LOCALHOST)?;
    let mut cmd = bus_env::command(&bin, None)?;
    cmd.args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
        .arg(&store);
    let server = Proc::spawn("nats-server", cmd, Some("Server is ready"))?;
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    ensure!(
        wait_until(Duration::from_secs(10), Duration::from_millis(10), || {
            TcpStream::connect(addr).is_ok()
        }),
        "nats-server does not accept connections:\n{}",
        server.output()
    );
    let payloads: Vec<Vec<u8>> = (0..records).map(record_100).collect();
    let rate = rt
        .block_on(publish(addr, payloads))
        .with_context(|| server.output())?;
    drop(server);
    Ok(NatsResult {
        records_per_sec: rate,
        version,
        in_flight: IN_FLIGHT,
    })
}

async fn publish(addr: SocketAddr, payloads: Vec<Vec<u8>>) -> Result<f64> {
    let client = async_nats::connect(addr.to_string())
        .await
        .map_err(|e| anyhow!("connecting to nats-server: {e}"))?;
    let js = jetstream::context::ContextBuilder::new()
        .max_ack_inflight(IN_FLIGHT)
        .build(client);
    js.create_stream(jetstream::stream::Config {
        name: "BENCH".to_string(),
        subjects: vec!["bench.>".to_string()],
        storage: StorageType::File,
        ..Default::default()
    })
    .await
    .map_err(|e| anyhow!("creating the stream: {e}"))?;
    let n = payloads.len();
    let t0 = Instant::now();
    let mut acks = VecDeque::with_capacity(IN_FLIGHT);
    for p in payloads {
        if acks.len() >= IN_FLIGHT
            && let Some(a) = acks.pop_front()
        {
            let a: jetstream::context::PublishAckFuture = a;
            a.await.map_err(|e| anyhow!("publish ack: {e}"))?;
        }
        let a = js
            .publish("bench.records", p.into())
            .await
            .map_err(|e| anyhow!("publishing: {e}"))?;
        acks.push_back(a);
    }
    for a in acks {
        a.await.map_err(|e| anyhow!("publish ack: {e}"))?;
    }
    let secs = t0.elapsed().as_secs_f64();
    let info = js
        .get_stream("BENCH")
        .await
        .map_err(|e| anyhow!("stream info: {e}"))?
        .info()
        .await
        .map_err(|e| anyhow!("stream info: {e}"))?
        .state
        .messages;
    ensure!(
        info == n as u64,
        "the stream holds {info} messages, {n} were published"
    );
    Ok(n as f64 / secs)
}
