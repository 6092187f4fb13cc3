//! The bus with BBR congestion control over the lossy WAN link delivers every record
//! exactly once (issue 4 §1, `congestion = "bbr"`).
//!
//! A poller sidecar in namespace `a` streams to a primary process in `b` across the
//! userspace WAN emulator (no tc netem in this kernel): 100 ms, 1% loss and 10 Mbit/s in the
//! data direction, and 100 ms with 1% loss on the way back as well, so acknowledgements and
//! retransmissions are lost too. Under a steady load of events posted to the poller's
//! ingest, the link is cut for a few seconds mid-run (the backlog then replays over the lossy
//! link behind live records). At the end the primary holds every event of the poller's log
//! exactly once. BBR does not back off on loss; the test is about correctness (QUIC loss
//! recovery and the bus's dedupe under that controller), not speed.
//!
//! Root; addresses only from 198.18.0.0/15.

use std::{
    collections::HashSet,
    fs,
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use opha_common::wire::{EventId, TenantId};
use opha_store::{EventFilter, PageRequest, Store, StoreConfig};
use opha_tests::checker::{Checker, RecordKey};
use opha_tests::netns::{NetNs, PollerOptions, PollerSidecar, TempDir, sidecar_binary};
use opha_tests::pins::unique_instance;
use opha_tests::privilege::privileged;
use opha_tests::wan::{LinkConfig, WanPair, WanPairConfig, Way};

const TENANT: u32 = 1;
const PRIMARY: &str = "primary-bbr";
const PORT: u16 = 7443;
const MARK: &str = "bus-bbr ";
/// Load: one event per request, this often, this many.
const LOAD_EVERY: Duration = Duration::from_millis(5);
const LOAD_EVENTS: u64 = 2000;
const CUT: Duration = Duration::from_secs(3);
const TRANSPORT: &str = "congestion = \"bbr\"\nkeep_alive_ms = 250\nidle_timeout_ms = 2000\n\
                         bandwidth_bits_per_sec = 10000000\nrtt_ms = 200\n";
const DRAIN_LIMIT: Duration = Duration::from_secs(60);

/// The primary process in namespace `b`. Drop kills it.
struct Primary {
    store: PathBuf,
    child: Option<Child>,
    output: Arc<Mutex<String>>,
}

impl Primary {
    fn start(ns: &NetNs, dir: &Path, poller: &str, listen: String) -> Self {
        let config = dir.join(format!("{PRIMARY}.toml"));
        let store = dir.join(format!("store-{PRIMARY}"));
        let text = format!(
            "peer_id = \"{PRIMARY}\"\nrole = \"primary\"\nlisten = \"{listen}\"\n\
             [tls]\ncertificate = \"certs/{PRIMARY}.pem\"\nkey = \"certs/{PRIMARY}.key\"\n\
             ca = \"ca/ca.pem\"\n[store]\ndir = \"{}\"\n[transport]\n{TRANSPORT}\
             [[poller]]\nid = \"{poller}\"\ntenants = [{TENANT}]\n[metrics]\nlisten = \"off\"\n",
            store.display()
        );
        fs::write(&config, text).unwrap();
        let mut cmd = ns.command(sidecar_binary().unwrap());
        cmd.arg("primary")
            .arg("--config")
            .arg(&config)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("starting the primary");
        let output = Arc::new(Mutex::new(String::new()));
        for pipe in [
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
            child.stderr.take().map(|p| Box::new(p) as _),
        ]
        .into_iter()
        .flatten()
        {
            let out = Arc::clone(&output);
            thread::spawn(move || {
                for line in BufReader::new(pipe).lines() {
                    let Ok(line) = line else { break };
                    let mut o = out.lock().unwrap_or_else(|e| e.into_inner());
                    o.push_str(&line);
                    o.push('\n');
                }
            });
        }
        let mut p = Primary {
            store,
            child: Some(child),
            output,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !p.output().contains("listening on") {
            if let Some(status) = p.child.as_mut().unwrap().try_wait().unwrap() {
                thread::sleep(Duration::from_millis(100));
                panic!("the primary exited ({status}) at start:\n{}", p.output());
            }
            assert!(
                Instant::now() < deadline,
                "the primary is not listening within 30 s:\n{}",
                p.output()
            );
            thread::sleep(Duration::from_millis(20));
        }
        p
    }

    fn output(&self) -> String {
        self.output
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// SIGTERM and wait (at most 10 s), so the store is closed before the test opens it.
    fn stop(&mut self) {
        let mut c = self.child.take().expect("primary running");
        // SAFETY: kill(2) on our own unreaped child.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while c.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                panic!("the primary ignored SIGTERM for 10 s:\n{}", self.output());
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Every stored event of ours: one item per stored copy.
    fn held(&self) -> Vec<EventId> {
        let store = Store::open(&self.store, StoreConfig::default()).unwrap();
        let db = store.tenant(TenantId(TENANT)).unwrap();
        let mut out = Vec::new();
        let mut page = PageRequest::first(1000);
        loop {
            let p = db.events(&EventFilter::default(), &page).unwrap();
            out.extend(
                p.items
                    .into_iter()
                    .filter(|e| e.event.details.starts_with(MARK))
                    .map(|e| e.event.id),
            );
            match p.next {
                Some(c) => page.after = Some(c),
                None => break,
            }
        }
        out
    }
}

impl Drop for Primary {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if thread::panicking() {
            eprintln!("{}", self.output());
        }
    }
}

fn sidecar(args: &[&str]) {
    let out = Command::new(sidecar_binary().unwrap())
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "opha-sidecar {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `opha_bus_<name>{receiver="PRIMARY",...} value` from the poller's metrics.
fn metric(text: &str, name: &str) -> Option<f64> {
    let label = format!("receiver=\"{PRIMARY}\"");
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with('{'))
        .find(|l| l.contains(&label))
        .and_then(|l| l.rsplit_once(' '))
        .and_then(|(_, v)| v.trim().parse().ok())
}

fn wait_metrics(poller: &PollerSidecar, what: &str, limit: Duration, f: impl Fn(&str) -> bool) {
    let deadline = Instant::now() + limit;
    loop {
        let m = poller.metrics_text().unwrap_or_default();
        if f(&m) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not within {limit:?}:\n{m}"
        );
        thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn bbr_over_a_lossy_wan_delivers_every_record_exactly_once() {
    if !privileged("bbr_over_a_lossy_wan_delivers_every_record_exactly_once") {
        return;
    }
    let pair = WanPair::new(&WanPairConfig::new("bbr", 0xbb2)).expect("building the WAN pair");
    let lossy = LinkConfig::default()
        .delay(Duration::from_millis(100))
        .loss(0.01);
    pair.link
        .set(Way::AtoB, lossy.clone().rate(10_000_000))
        .unwrap();
    pair.link.set(Way::BtoA, lossy).unwrap();

    let instance = unique_instance("busbbr");
    let opts = PollerOptions::new(&pair.a_if, &instance);
    let poller_id = opts.poller_id.clone();
    let dir = TempDir::new("busbbr").unwrap();
    let root = dir.path();
    let (ca, certs) = (root.join("ca"), root.join("certs"));
    let (ca_s, certs_s) = (ca.to_str().unwrap(), certs.to_str().unwrap());
    sidecar(&["certs", "init", "--dir", ca_s, "--days", "2"]);
    sidecar(&[
        "certs", "issue", "--ca", ca_s, "--out", certs_s, "--peer", PRIMARY, "--role", "primary",
        "--days", "2",
    ]);
    sidecar(&[
        "certs", "issue", "--ca", ca_s, "--out", certs_s, "--peer", &poller_id, "--role", "poller",
        "--tenant", "1", "--days", "2",
    ]);
    let b = pair.b_addr;
    let mut primary = Primary::start(&pair.b, root, &poller_id, format!("{b}:{PORT}"));
    let opts = opts.extra(&format!(
        "[bus]\ncert = \"{certs_s}/{poller_id}.pem\"\nkey = \"{certs_s}/{poller_id}.key\"\n\
         ca = \"{ca_s}/ca.pem\"\nreconnect_min = \"50ms\"\nreconnect_max = \"500ms\"\n\
         retransmit_after = \"2s\"\n[bus.transport]\n{TRANSPORT}\
         [[receiver]]\npeer = \"{PRIMARY}\"\nrole = \"primary\"\naddress = \"{b}:{PORT}\"\n"
    ));
    let mut poller = PollerSidecar::start(&pair.a, opts).expect("starting the poller");
    wait_metrics(&poller, "connected", Duration::from_secs(30), |m| {
        metric(m, "opha_bus_connected") == Some(1.0)
    });

    // Steady load; the link is cut for CUT a third of the way in.
    let start = Instant::now();
    let mut accepted = Vec::new();
    let mut cut_at: Option<Instant> = None;
    for i in 0..LOAD_EVENTS {
        if i == LOAD_EVENTS / 3 {
            pair.link.cut();
            cut_at = Some(Instant::now());
        }
        if cut_at.is_some_and(|t| t.elapsed() >= CUT) {
            pair.link.heal();
            cut_at = None;
        }
        let id = EventId::from_u128((0xbb2u128 << 64) | u128::from(i) | 1 << 100);
        let body = serde_json::json!({
            "source": "opha-bus-bbr",
            "event": "Node Reset",
            "severity": "major",
            "address": format!("198.18.{}.{}", 16 + i % 8, 1 + i % 200),
            "details": format!("{MARK}{i}"),
            "id": id.to_string(),
        });
        let r = poller
            .ingest_unix("POST", "/v1/events", body.to_string().as_bytes())
            .expect("posting an event");
        assert_eq!(r.status, 200, "ingest refused event {i}");
        accepted.push(id);
        let due = start + LOAD_EVERY * (i as u32 + 1);
        thread::sleep(due.saturating_duration_since(Instant::now()));
    }
    if cut_at.is_some() {
        thread::sleep(CUT.saturating_sub(cut_at.map_or(CUT, |t| t.elapsed())));
        pair.link.heal();
    }
    wait_metrics(&poller, "drained", DRAIN_LIMIT, |m| {
        metric(m, "opha_bus_connected") == Some(1.0)
            && metric(m, "opha_bus_lag_records") == Some(0.0)
    });
    let m = poller.metrics_text().unwrap();
    let connects = metric(&m, "opha_bus_connects_total").unwrap_or(0.0);
    poller
        .terminate(Duration::from_secs(10))
        .expect("stopping the poller");
    primary.stop();

    let log_ids: Vec<EventId> = poller
        .dump_log()
        .expect("dumping the poller's log")
        .iter()
        .filter_map(|e| e.event())
        .filter(|e| e.details.starts_with(MARK))
        .map(|e| e.id)
        .collect();
    let in_log: HashSet<EventId> = log_ids.iter().copied().collect();
    assert_eq!(in_log.len(), log_ids.len(), "an event twice in the log");
    assert!(
        accepted.iter().all(|id| in_log.contains(id)),
        "an acknowledged event is not in the poller's log"
    );
    let mut ledger = Checker::new();
    for id in &log_ids {
        ledger.expect_event(*id);
    }
    let report = ledger.check(PRIMARY, primary.held().into_iter().map(RecordKey::from));
    let (ab, ba) = (pair.link.stats(Way::AtoB), pair.link.stats(Way::BtoA));
    eprintln!(
        "{report}\nbus_bbr_wan: {} events, {connects} connects; a->b {} forwarded, {} lost, {} \
         cut; b->a {} forwarded, {} lost, {} cut",
        log_ids.len(),
        ab.forwarded,
        ab.dropped_loss,
        ab.dropped_cut,
        ba.forwarded,
        ba.dropped_loss,
        ba.dropped_cut
    );
    // The impairments were real on the wire, both ways, and the link came back after the cut.
    assert!(
        ab.dropped_loss > 0 && ba.dropped_loss > 0,
        "no loss one way"
    );
    assert!(
        ab.dropped_cut + ba.dropped_cut > 0,
        "the cut dropped nothing"
    );
    assert!(connects >= 2.0, "no reconnect after the cut: {connects}");
    assert_eq!(log_ids.len() as u64, LOAD_EVENTS);
    report.ensure_exact().unwrap();
}
