//! `[[peer]]` in a receiver's file: where a primary fetches gaps; errors name the key.

use std::path::Path;

use opha_sidecar::config::receiver::{ReceiverFileConfig, ReceiverRole};

const GOOD: &str = r#"
peer_id = "primary-1"
role = "primary"
[tls]
certificate = "c.pem"
key = "c.key"
ca = "ca.pem"
[store]
dir = "store"
[[poller]]
id = "poller-1"
tenants = [1]
[[peer]]
id = "mirror-1"
role = "mirror"
address = "mirror-1.example:7443"
[[peer]]
id = "primary-2"
role = "primary"
address = "[2001:db8::2]:7443"
"#;

fn problem_keys(text: &str) -> Vec<String> {
    let err = ReceiverFileConfig::from_toml(text, "t.toml", Path::new("/etc/opha")).unwrap_err();
    err.problems().iter().map(|p| p.key.clone()).collect()
}

#[test]
fn peers_parse_in_order_and_round_trip() {
    let c = ReceiverFileConfig::from_toml(GOOD, "t.toml", Path::new("/etc/opha")).unwrap();
    let ids: Vec<&str> = c.peers.iter().map(|p| p.id.as_str()).collect();
    assert_eq!(ids, ["mirror-1", "primary-2"]);
    assert_eq!(c.peers[0].role, ReceiverRole::Mirror);
    assert_eq!(c.peers[1].address, "[2001:db8::2]:7443");
    let again = ReceiverFileConfig::from_toml(&c.to_toml().unwrap(), "t", Path::new("/")).unwrap();
    assert_eq!(again, c);
    // Without [[peer]]: none, and none written back.
    let bare = GOOD.split("[[peer]]").next().unwrap();
    let c = ReceiverFileConfig::from_toml(bare, "t.toml", Path::new("/")).unwrap();
    assert!(c.peers.is_empty());
    assert!(!c.to_toml().unwrap().contains("peer]]"));
}

#[test]
fn peer_errors_name_the_key() {
    let mirror = GOOD.replace("role = \"primary\"\n[tls]", "role = \"mirror\"\n[tls]");
    assert_eq!(problem_keys(&mirror), ["peer[0]", "peer[1]"]);
    let twice = GOOD.replace("id = \"primary-2\"", "id = \"mirror-1\"");
    assert_eq!(problem_keys(&twice), ["peer[1].id"]);
    let own = GOOD.replace("id = \"primary-2\"", "id = \"primary-1\"");
    assert_eq!(problem_keys(&own), ["peer[1].id"]);
    let poller = GOOD.replace("id = \"mirror-1\"", "id = \"poller-1\"");
    assert_eq!(problem_keys(&poller), ["peer[0].id"]);
    let addr = GOOD.replace("mirror-1.example:7443", "mirror-1.example");
    assert_eq!(problem_keys(&addr), ["peer[0].address"]);
    let port0 = GOOD.replace("[2001:db8::2]:7443", "[2001:db8::2]:0");
    assert_eq!(problem_keys(&port0), ["peer[1].address"]);
    let role = GOOD.replace("role = \"mirror\"\naddress", "role = \"poller\"\naddress");
    assert_eq!(problem_keys(&role), ["peer[0].role"]);
    let unknown = GOOD.replace(
        "role = \"mirror\"\naddress",
        "role = \"mirror\"\norder = 1\naddress",
    );
    assert_eq!(problem_keys(&unknown), ["peer[0].order"]);
}
