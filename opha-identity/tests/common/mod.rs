//! Loopback harness: a CA, a primary's QUIC endpoint on 127.0.0.1 that echoes bidirectional
//! streams for every peer it accepts, and clients. Every wait is bounded by a timeout.
#![allow(dead_code)]

use opha_common::wire::{PeerId, PeerRole, TenantId};
use opha_identity::ca::{Ca, IssuedCert, PeerSpec, Validity};
use opha_identity::verify::ExpectPeer;
use opha_identity::{PeerIdentity, SERVER_NAME, TlsIdentity, TransportSettings, Trust};
use quinn::{Connection, Endpoint};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::timeout;

pub const PRIMARY: &str = "primary-1";
const WAIT: Duration = Duration::from_secs(5);

pub fn new_ca(name: &str) -> Ca {
    Ca::create(name, Validity::days_from_now(30)).expect("CA")
}

pub fn issue(ca: &Ca, id: &str, role: PeerRole, tenants: &[u32]) -> IssuedCert {
    issue_valid(ca, id, role, tenants, Validity::days_from_now(7))
}

pub fn issue_valid(
    ca: &Ca,
    id: &str,
    role: PeerRole,
    tenants: &[u32],
    validity: Validity,
) -> IssuedCert {
    ca.issue(&PeerSpec {
        peer_id: PeerId::new(id).unwrap(),
        role,
        tenants: tenants.iter().map(|&t| TenantId(t)).collect(),
        validity,
    })
    .expect("issue")
}

pub fn tls(issued: &IssuedCert) -> TlsIdentity {
    TlsIdentity::from_issued(issued).expect("identity")
}

pub fn trust(ca: &Ca) -> Trust {
    Trust::new(ca.cert_der().clone()).expect("trust")
}

/// What the client expects of the test primary.
pub fn expect_primary() -> ExpectPeer {
    ExpectPeer::receiver(PeerId::new(PRIMARY).unwrap(), &[PeerRole::Primary])
}

pub struct Server {
    pub endpoint: Endpoint,
    pub addr: SocketAddr,
    pub trust: Trust,
    results: mpsc::UnboundedReceiver<Result<PeerIdentity, String>>,
}

impl Server {
    /// A primary (`PRIMARY`, certificate from `ca`) trusting `trust`.
    pub fn start(ca: &Ca, trust: Trust) -> Server {
        let own = tls(&issue(ca, PRIMARY, PeerRole::Primary, &[]));
        let cfg = TransportSettings::default()
            .server_config(&trust, &own)
            .expect("server config");
        let endpoint = Endpoint::server(cfg, "127.0.0.1:0".parse().unwrap()).expect("bind");
        let addr = endpoint.local_addr().unwrap();
        let (tx, results) = mpsc::unbounded_channel();
        let (ep, tr) = (endpoint.clone(), trust.clone());
        tokio::spawn(async move {
            while let Some(incoming) = ep.accept().await {
                let (tx, tr) = (tx.clone(), tr.clone());
                tokio::spawn(async move {
                    match tr.accept(incoming).await {
                        Ok((conn, id)) => {
                            let _ = tx.send(Ok(id));
                            echo_streams(conn).await;
                        }
                        Err(e) => {
                            let _ = tx.send(Err(e.to_string()));
                        }
                    }
                });
            }
        });
        Server {
            endpoint,
            addr,
            trust,
            results,
        }
    }

    /// The outcome of the next connection attempt the server saw.
    pub async fn next(&mut self) -> Result<PeerIdentity, String> {
        timeout(WAIT, self.results.recv())
            .await
            .expect("server saw no connection attempt in time")
            .expect("server task ended")
    }
}

async fn echo_streams(conn: Connection) {
    while let Ok((mut send, mut recv)) = conn.accept_bi().await {
        tokio::spawn(async move {
            if let Ok(data) = recv.read_to_end(1 << 16).await {
                let _ = send.write_all(&data).await;
                let _ = send.finish();
            }
        });
    }
}

pub fn client_endpoint() -> Endpoint {
    Endpoint::client("127.0.0.1:0".parse().unwrap()).expect("client bind")
}

pub async fn connect(
    ep: &Endpoint,
    addr: SocketAddr,
    cfg: quinn::ClientConfig,
) -> Result<Connection, String> {
    let connecting = ep
        .connect_with(cfg, addr, SERVER_NAME)
        .map_err(|e| e.to_string())?;
    timeout(WAIT, connecting)
        .await
        .map_err(|_| "connect timed out".to_string())?
        .map_err(|e| e.to_string())
}

pub async fn echo(conn: &Connection, data: &[u8]) -> Result<Vec<u8>, String> {
    let work = async {
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
        send.write_all(data).await.map_err(|e| e.to_string())?;
        send.finish().map_err(|e| e.to_string())?;
        recv.read_to_end(1 << 16).await.map_err(|e| e.to_string())
    };
    timeout(WAIT, work)
        .await
        .map_err(|_| "echo timed out".to_string())?
}

/// Connects with `cfg` and echoes one message: Ok only if the peer was accepted end to end.
pub async fn attempt(addr: SocketAddr, cfg: quinn::ClientConfig) -> Result<Vec<u8>, String> {
    let ep = client_endpoint();
    let conn = connect(&ep, addr, cfg).await?;
    echo(&conn, b"ping").await
}

/// A client presenting `issued`, trusting `ca` for the server.
pub fn client_cfg(ca: &Ca, issued: &IssuedCert) -> (Trust, quinn::ClientConfig) {
    let t = trust(ca);
    let cfg = TransportSettings::default()
        .client_config(&t, &tls(issued), expect_primary())
        .expect("client config");
    (t, cfg)
}
