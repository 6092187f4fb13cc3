//! Roles for mirror promotion: a mirror may open its own record stream to a primary (which
//! then checks the pairing in its registry); nobody else may, and a mirror still may not
//! pretend to be a poller.
mod common;

use common::*;
use opha_common::wire::PeerRole;
use opha_identity::{RefusalReason, StreamKind};

#[test]
fn only_mirrors_open_mirror_record_streams_and_only_to_primaries() {
    let ca = new_ca("opha test CA");
    let t = trust(&ca);
    let mirror = issue(&ca, "mirror-1", PeerRole::Mirror, &[1]).identity;
    let poller = issue(&ca, "poller-1", PeerRole::Poller, &[1]).identity;
    let primary = issue(&ca, "primary-2", PeerRole::Primary, &[1]).identity;

    assert!(
        t.authorize_stream(PeerRole::Primary, &mirror, StreamKind::MirrorRecords)
            .is_ok()
    );
    // Not to another mirror, not to a poller.
    for local in [PeerRole::Mirror, PeerRole::Poller] {
        assert!(
            t.authorize_stream(local, &mirror, StreamKind::MirrorRecords)
                .is_err()
        );
    }
    // Pollers and primaries do not open mirror streams; a mirror does not open poller ones.
    for (remote, kind) in [
        (&poller, StreamKind::MirrorRecords),
        (&primary, StreamKind::MirrorRecords),
        (&mirror, StreamKind::PollerRecords),
    ] {
        let e = t
            .authorize_stream(PeerRole::Primary, remote, kind)
            .expect_err("refused");
        assert_eq!(e.remote, remote.role);
    }
    assert_eq!(t.counters().get(RefusalReason::WrongRole), 5);
}
