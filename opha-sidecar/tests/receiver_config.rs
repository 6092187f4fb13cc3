//! Receiver config files: errors name the key; the examples parse.

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
"#;

fn problem_keys(text: &str) -> Vec<String> {
    let err = ReceiverFileConfig::from_toml(text, "t.toml", Path::new("/etc/opha")).unwrap_err();
    err.problems().iter().map(|p| p.key.clone()).collect()
}

#[test]
fn good_config_resolves_paths_and_defaults() {
    let c = ReceiverFileConfig::from_toml(GOOD, "t.toml", Path::new("/etc/opha")).unwrap();
    assert_eq!(c.role, ReceiverRole::Primary);
    assert_eq!(c.tls.ca, Path::new("/etc/opha/ca.pem"));
    assert_eq!(c.store.dir, Path::new("/etc/opha/store"));
    assert_eq!(c.listen.port(), 7443);
    assert!(c.metrics.listen.unwrap().ip().is_loopback());
    assert_eq!(c.transport.idle_timeout_ms, 5000);
    // The effective config parses back to itself.
    let again = ReceiverFileConfig::from_toml(&c.to_toml().unwrap(), "t", Path::new("/")).unwrap();
    assert_eq!(again, c);
}

#[test]
fn errors_name_the_key() {
    let unknown = GOOD.replace("[store]\n", "[store]\ncolour = 1\n");
    assert_eq!(problem_keys(&unknown), ["store.colour"]);
    let missing = GOOD.replace("dir = \"store\"\n", "");
    assert_eq!(problem_keys(&missing), ["store.dir"]);
    let role = GOOD.replace("role = \"primary\"", "role = \"poller\"");
    assert_eq!(problem_keys(&role), ["role"]);
    let age = GOOD.replace("[store]\n", "[store]\nmax_age = \"30\"\n");
    assert_eq!(problem_keys(&age), ["store.max_age"]);
    let transport = format!("{GOOD}[transport]\nkeep_alive_ms = 9000\n");
    assert_eq!(problem_keys(&transport), ["transport.idle_timeout_ms"]);
    let bad_transport = format!("{GOOD}[transport]\nkeepalive = 1\n");
    assert_eq!(problem_keys(&bad_transport), ["transport.keepalive"]);
    let congestion = format!("{GOOD}[transport]\ncongestion = \"reno\"\n");
    assert_eq!(problem_keys(&congestion), ["transport.congestion"]);
    let tenant0 = GOOD.replace("tenants = [1]", "tenants = [1, 0]");
    assert_eq!(problem_keys(&tenant0), ["poller[0].tenants[1]"]);
    let twice = format!("{GOOD}[[poller]]\nid = \"poller-1\"\ntenants = [2]\n");
    assert_eq!(problem_keys(&twice), ["poller[1].id"]);
    let serial = format!("{GOOD}[deny]\nserials = [\"xyz\"]\n");
    assert_eq!(problem_keys(&serial), ["deny.serials[0]"]);
    let peer = GOOD.replace("id = \"poller-1\"", "id = \"Poller 1\"");
    assert_eq!(problem_keys(&peer), ["poller[0].id"]);
}

#[test]
fn congestion_control_is_chosen_in_transport() {
    use opha_identity::Congestion;
    let c = ReceiverFileConfig::from_toml(GOOD, "t.toml", Path::new("/etc/opha")).unwrap();
    assert_eq!(c.transport.congestion, Congestion::Cubic);
    for (name, want) in [
        ("cubic", Congestion::Cubic),
        ("bbr", Congestion::Bbr),
        ("newreno", Congestion::NewReno),
    ] {
        let text = format!("{GOOD}[transport]\ncongestion = \"{name}\"\n");
        let c = ReceiverFileConfig::from_toml(&text, "t.toml", Path::new("/etc/opha")).unwrap();
        assert_eq!(c.transport.congestion, want);
        // The effective config keeps it.
        let again =
            ReceiverFileConfig::from_toml(&c.to_toml().unwrap(), "t", Path::new("/")).unwrap();
        assert_eq!(again.transport.congestion, want);
    }
}

#[test]
fn examples_parse() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let p = ReceiverFileConfig::load(&root.join("primary.toml")).unwrap();
    assert_eq!(p.role, ReceiverRole::Primary);
    assert!(!p.pollers.is_empty());
    let m = ReceiverFileConfig::load(&root.join("mirror.toml")).unwrap();
    assert_eq!(m.role, ReceiverRole::Mirror);
    assert_eq!(m.store.max_size, Some(20 << 30));
}
