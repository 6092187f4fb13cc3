//! 10,000 junk UDP datagrams to the primary's QUIC port, some shaped like QUIC packets, do not
//! disturb an established connection, create no peer, and leave the port serving new peers.
mod common;

use common::*;
use opha_common::wire::PeerRole;
use opha_identity::RefusalReason;
use rand::{Rng, RngCore};
use std::time::{Duration, Instant};

const DATAGRAMS: usize = 10_000;

#[tokio::test]
async fn junk_datagrams_do_not_disturb_an_established_connection() {
    let ca = new_ca("opha test CA");
    let mut server = Server::start(&ca, trust(&ca));
    let poller = issue(&ca, "poller-a", PeerRole::Poller, &[1]);
    let (_, cfg) = client_cfg(&ca, &poller);
    let ep = client_endpoint();
    let conn = connect(&ep, server.addr, cfg.clone())
        .await
        .expect("connect");
    assert_eq!(echo(&conn, b"before").await.unwrap(), b"before");
    server.next().await.expect("accepted");

    let junk = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut rng = rand::rng();
    let mut buf = vec![0u8; 1500];
    let started = Instant::now();
    for i in 0..DATAGRAMS {
        let len = rng.random_range(1..=1400);
        rng.fill_bytes(&mut buf[..len]);
        match i % 4 {
            // Every 100th: a well-formed QUIC v1 Initial header with an undecryptable payload,
            // so the server certainly starts (and refuses) some connection attempts.
            0 if i % 100 == 0 => {
                let len = 1200;
                rng.fill_bytes(&mut buf[..len]);
                buf[0] = 0xc3;
                buf[1..5].copy_from_slice(&1u32.to_be_bytes());
                buf[5] = 8; // DCID length, then 8 random DCID bytes
                buf[14] = 0; // SCID length
                buf[15] = 0; // token length
                let rest = (len - 18) as u16;
                buf[16..18].copy_from_slice(&(0x4000 | rest).to_be_bytes());
                let _ = junk.send_to(&buf[..len], server.addr).await;
                continue;
            }
            // Long header, QUIC v1, Initial: the server must try and fail to decrypt it.
            0 if len >= 7 => {
                buf[0] = 0xc0 | (buf[0] & 0x0f);
                buf[1..5].copy_from_slice(&1u32.to_be_bytes());
                buf[5] = 8;
            }
            // Short header: an unknown connection id.
            1 => buf[0] = 0x40 | (buf[0] & 0x3f),
            _ => {}
        }
        // A full socket buffer drops junk, which is fine; the loop stays bounded either way.
        let _ = junk.send_to(&buf[..len], server.addr).await;
        if i % 500 == 0 {
            // Let the endpoint drain, so the flood reaches it instead of the socket buffer's end.
            tokio::task::yield_now().await;
        }
    }
    assert!(started.elapsed() < Duration::from_secs(10));

    assert!(conn.close_reason().is_none(), "{:?}", conn.close_reason());
    assert_eq!(echo(&conn, b"after").await.unwrap(), b"after");
    let again = attempt(server.addr, cfg).await;
    assert_eq!(again.unwrap(), b"ping");
    // Junk shaped like a QUIC Initial becomes a connection attempt that fails to decrypt: the
    // server reports and counts it as malformed. Skip those to find the new peer.
    let mut junk_attempts = 0u64;
    loop {
        match server.next().await {
            Ok(id) => {
                assert_eq!(id.peer_id.as_str(), "poller-a");
                break;
            }
            Err(e) => {
                assert!(e.contains("alert None"), "{e}");
                junk_attempts += 1;
            }
        }
    }

    let c = server.trust.counters();
    let deadline = Instant::now() + Duration::from_secs(2);
    while c.get(RefusalReason::Malformed) == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(c.accepted(), 2);
    assert!(c.get(RefusalReason::Malformed) >= junk_attempts.max(1));
    for (reason, n) in c.snapshot() {
        if reason != RefusalReason::Malformed {
            assert_eq!(n, 0, "{}", reason.name());
        }
    }
    println!(
        "junk attempts counted as malformed: {}",
        c.get(RefusalReason::Malformed)
    );
}
