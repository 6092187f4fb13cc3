//! The Home view's poller config status and form in a real browser (issue 5 §3): headless
//! Chromium through chromedriver, against `opha_api` served in process over a store with two
//! pollers' heartbeats and a fake `ConfigOps` the test drives (the poller's answers). The
//! operator sees each poller's applied version on its card, opens the form from the card,
//! gets refusals listed by key, pushes, and sees the push pending, then applied, then a
//! rejected version with its reason; a tenant token sees no config at all (and asks for none).

use anyhow::{Result, anyhow, ensure};
use opha_api::poller_config::{
    ConfigFailure, ConfigOps, ConfigProblem, ConfigStatus, PollerConfigView, PushRefusal,
};
use opha_api::{Api, ApiConfig, mint};
use opha_common::wire::{
    PeerId, PeerRole, PeerStatus, Record, ReplayLogStatus, TenantId, TenantNodes,
};
use opha_store::{Store, StoreConfig};
use opha_tests::browser::{Browser, browser_paths};
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const LOAD: Duration = Duration::from_secs(20);
/// The page polls the status every 2 s.
const LIVE: Duration = Duration::from_secs(5);

#[derive(Default)]
struct Fake(Mutex<BTreeMap<String, PollerConfigView>>);

impl Fake {
    fn update(&self, poller: &str, f: impl FnOnce(&mut ConfigStatus)) {
        f(&mut self.0.lock().unwrap().get_mut(poller).unwrap().status);
    }
}

impl ConfigOps for Fake {
    fn statuses(&self) -> Vec<ConfigStatus> {
        self.0
            .lock()
            .unwrap()
            .values()
            .map(|v| v.status.clone())
            .collect()
    }
    fn get(&self, poller: &PeerId) -> Option<PollerConfigView> {
        self.0.lock().unwrap().get(poller.as_str()).cloned()
    }
    fn push(&self, poller: &PeerId, text: &str) -> Result<u64, PushRefusal> {
        let mut m = self.0.lock().unwrap();
        let v = m
            .get_mut(poller.as_str())
            .ok_or(PushRefusal::UnknownPoller)?;
        if !text.contains(&format!("poller_id = \"{poller}\"")) {
            return Err(PushRefusal::Invalid(vec![ConfigProblem::new(
                "poller_id",
                "must name this poller",
            )]));
        }
        let version = v.desired.as_ref().map_or(0, |d| d.0) + 1;
        v.desired = Some((version, text.to_string()));
        v.status.desired_version = Some(version);
        v.status.pending_version = Some(version);
        Ok(version)
    }
}

fn heartbeat(peer: &str, tenant: u32, now: u64) -> Record {
    Record::PeerStatus(PeerStatus {
        peer: PeerId::new(peer).unwrap(),
        role: PeerRole::Poller,
        version: "0.1.0".into(),
        protocol: opha_common::wire::PROTOCOL_VERSION,
        uptime_ms: 1000,
        region: "lab".into(),
        time_ms: now,
        nodes: vec![TenantNodes {
            tenant: TenantId(tenant),
            nodes: 3,
        }],
        replay_log: ReplayLogStatus::default(),
        kernel: vec![],
    })
}

struct Server {
    url: String,
    api: Arc<Api>,
    fake: Arc<Fake>,
    operator: String,
    tenant: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    _rt: tokio::runtime::Runtime,
    _dir: tempfile::TempDir,
}

impl Server {
    fn start() -> Result<Server> {
        let dir = tempfile::tempdir()?;
        let store = Arc::new(Store::open(dir.path(), StoreConfig::default())?);
        let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis() as u64;
        let sys = store.system()?;
        let fake = Arc::new(Fake::default());
        for (i, p) in ["poller-a", "poller-b"].into_iter().enumerate() {
            sys.commit_batch(&PeerId::new(p)?, 1, &[(1, heartbeat(p, i as u32 + 1, now))])?;
            fake.0.lock().unwrap().insert(
                p.into(),
                PollerConfigView {
                    desired: None,
                    status: ConfigStatus {
                        poller: p.into(),
                        running_version: Some(0),
                        connected: true,
                        acting: true,
                        ..ConfigStatus::default()
                    },
                },
            );
        }
        let op = mint("noc", None)?;
        let t1 = mint("portal-1", Some(TenantId(1)))?;
        let cfg = ApiConfig {
            tokens: vec![op.entry.clone(), t1.entry.clone()],
            ..ApiConfig::default()
        };
        let api = Arc::new(Api::new(store, cfg)?.with_config_ops(fake.clone()));
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
        let addr = listener.local_addr()?;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        rt.spawn(opha_api::server::serve(api.clone(), listener, async {
            let _ = rx.await;
        }));
        Ok(Server {
            url: format!("http://{addr}/"),
            api,
            fake,
            operator: op.token,
            tenant: t1.token,
            stop: Some(tx),
            _rt: rt,
            _dir: dir,
        })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

const CARD_A: &str = r#"#peers article[data-peer="poller-a"] dd.config"#;

fn connect(b: &Browser, token: &str, scope: &str) -> Result<()> {
    b.type_into("#token", token)?;
    b.click("#connect")?;
    b.wait_attr("#scope", "data-scope", scope, LOAD)?;
    b.wait_attr("#app", "data-ready", "true", LOAD)?;
    Ok(())
}

fn hidden(b: &Browser, css: &str) -> Result<bool> {
    b.eval(
        "const e = document.querySelector(arguments[0]); return e ? e.hidden : null;",
        &[json!(css)],
    )?
    .as_bool()
    .ok_or_else(|| anyhow!("no {css}"))
}

fn attr(b: &Browser, css: &str, name: &str) -> Result<Option<String>> {
    Ok(b.attrs(css, name)?.into_iter().next().flatten())
}

fn scenario(s: &Server, b: &Browser) -> Result<()> {
    b.goto(&s.url)?;
    connect(b, &s.operator, "operator")?;
    // Each poller's card shows the version it runs.
    b.wait_attr(CARD_A, "data-config-applied", "0", LIVE)?;
    ensure!(
        !hidden(b, CARD_A)?,
        "the config row is hidden for the operator"
    );
    ensure!(attr(b, CARD_A, "data-config-pending")?.is_none());

    // The form, from the card.
    ensure!(
        hidden(b, "#config-section")?,
        "the form shows before it is asked for"
    );
    b.click(r#"#peers article[data-peer="poller-a"] button.config-open"#)?;
    b.wait_attr("#config-poller", "data-poller", "poller-a", LOAD)?;
    ensure!(!hidden(b, "#config-section")?, "the form did not open");

    // Refused: the problems are listed by key.
    b.type_into("#config-text", "poller_id = \"poller-z\"\n")?;
    b.click("#config-push")?;
    b.wait_count("#config-errors li[data-key=\"poller_id\"]", 1, LIVE)?;
    b.wait_attr("#config-result", "data-result", "error", LIVE)?;

    // Accepted: stored, pending on the card, then applied when the poller says so.
    b.type_into("#config-text", "poller_id = \"poller-a\"\ninterval = 5\n")?;
    b.click("#config-push")?;
    b.wait_attr("#config-result", "data-result", "stored", LIVE)?;
    b.wait_attr(CARD_A, "data-config-pending", "1", LIVE)?;
    ensure!(
        b.count("#config-errors li")? == 0,
        "old errors still listed"
    );
    s.fake.update("poller-a", |st| {
        st.running_version = Some(1);
        st.pending_version = None;
    });
    b.wait_attr(CARD_A, "data-config-applied", "1", LIVE)?;
    b.wait_for(CARD_A, "data-config-pending", |v| v.is_none(), LIVE)?;

    // Rejected by the poller: the failure and its reason; the previous version still runs.
    b.type_into(
        "#config-text",
        "poller_id = \"poller-a\"\ninterface = \"eth9\"\n",
    )?;
    b.click("#config-push")?;
    b.wait_attr(CARD_A, "data-config-pending", "2", LIVE)?;
    s.fake.update("poller-a", |st| {
        st.pending_version = None;
        st.last_failure = Some(ConfigFailure {
            version: 2,
            kind: "rejected".into(),
            reason: "interface: cannot change while the poller runs".into(),
        });
    });
    let reason = b.wait_for(CARD_A, "data-config-error", |v| v.is_some(), LIVE)?;
    ensure!(
        reason.as_deref().is_some_and(|r| r.contains("interface")),
        "{reason:?}"
    );
    ensure!(attr(b, CARD_A, "data-config-applied")?.as_deref() == Some("1"));
    ensure!(b.text("#config-status")?.contains("rejected"));
    let shot = b.screenshot("home-config-browser")?;
    eprintln!("screenshot: {}", shot.display());

    // A tenant token: no config row, no form, and no config request (none refused).
    let forbidden = s.api.metrics().forbidden_total();
    connect(b, &s.tenant, "tenant-1")?;
    b.wait_count("#peers article.peer", 1, LOAD)?;
    ensure!(hidden(
        b,
        r#"#peers article[data-peer="poller-a"] dd.config"#
    )?);
    ensure!(hidden(b, "#config-section")?);
    std::thread::sleep(Duration::from_millis(2500));
    ensure!(
        s.api.metrics().forbidden_total() == forbidden,
        "the page asked for configs with a tenant token"
    );
    Ok(())
}

#[test]
fn home_config_in_a_browser() {
    let Some((chromium, driver)) = browser_paths("home_config_in_a_browser") else {
        return;
    };
    let server = Server::start().expect("in-process API");
    let browser = Browser::start(&chromium, &driver).expect("browser starts");
    if let Err(e) = scenario(&server, &browser) {
        let shot = browser.screenshot("home-config-browser-failure").ok();
        panic!("{e:#}\nscreenshot: {shot:?}");
    }
}
