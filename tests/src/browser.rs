//! A headless Chromium driven through WebDriver, for tests of the pages opha serves.
//!
//! [`Browser::start`] runs Debian's `chromedriver` on a free 127.0.0.1 port (its own process
//! group, killed on drop) and opens one headless Chromium session in a fresh profile
//! directory (removed on drop). The browser resolves no name and reaches nothing but
//! 127.0.0.1, and its background services (updates, sync, metrics) are off: it only ever
//! talks to the server under test.
//!
//! The WebDriver calls are plain HTTP/1.1 on loopback with JSON bodies (`Connection: close`,
//! one short request each): a few dozen lines instead of a WebDriver crate and its HTTP
//! client stack.
//!
//! Tests start with `let Some(mut b) = Browser::start_or_skip("name")? else { return };`:
//! outside CI the test is skipped (with the reason printed) when not root or when chromium or
//! chromedriver is missing; in CI (`CI=true`) both are required and a missing one fails.

use anyhow::{Context as _, Result, anyhow, bail};
use base64::Engine as _;
use serde_json::{Value, json};
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// The W3C WebDriver key of an element reference.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";
/// One WebDriver command (a navigation or a script) may take this long.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
/// chromedriver answers `/status` within this after it starts.
const DRIVER_START: Duration = Duration::from_secs(20);
/// Between two polls of [`Browser::wait_for`].
const POLL: Duration = Duration::from_millis(50);

/// Where the binaries are looked for, unless `OPHA_CHROMIUM` / `OPHA_CHROMEDRIVER` name them.
const CHROMIUM: &[&str] = &["/usr/bin/chromium", "/usr/bin/chromium-browser"];
const CHROMEDRIVER: &[&str] = &["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"];

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn find(env: &str, candidates: &[&str]) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(env) {
        return Some(PathBuf::from(p)).filter(|p| p.is_file());
    }
    candidates.iter().map(PathBuf::from).find(|p| p.is_file())
}

/// The workspace's `target/` (or `CARGO_TARGET_DIR`), where screenshots go.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) => PathBuf::from(d),
        None => {
            let tests = Path::new(env!("CARGO_MANIFEST_DIR"));
            tests.parent().unwrap_or(tests).join("target")
        }
    }
}

/// How a test finds the browser: `None` (with the reason printed) when it should skip.
/// Panics in CI when something is missing: CI must run the browser tests.
pub fn browser_paths(test: &str) -> Option<(PathBuf, PathBuf)> {
    let ci = in_ci();
    if !is_root() {
        if ci {
            panic!("{test}: needs root, and CI must run it as root");
        }
        eprintln!("skipped {test}: the browser tests run as root (or in CI)");
        return None;
    }
    let chromium = find("OPHA_CHROMIUM", CHROMIUM);
    let driver = find("OPHA_CHROMEDRIVER", CHROMEDRIVER);
    match (chromium, driver) {
        (Some(c), Some(d)) => Some((c, d)),
        (c, d) => {
            let missing: Vec<&str> = [("chromium", c.is_none()), ("chromium-driver", d.is_none())]
                .into_iter()
                .filter_map(|(n, m)| m.then_some(n))
                .collect();
            let msg = format!(
                "{test}: Debian package(s) {} not installed (`cargo xtask setup` installs them)",
                missing.join(" and ")
            );
            if ci {
                panic!("{msg}; CI must run the browser tests");
            }
            eprintln!("skipped {msg}");
            None
        }
    }
}

/// A directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Result<TempDir> {
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "opha-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&p).with_context(|| format!("creating {}", p.display()))?;
        Ok(TempDir(p))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// chromedriver in its own process group: dropping it kills the driver and every browser
/// process it started (they are in the group), then reaps the driver.
struct Driver {
    child: Child,
    addr: SocketAddr,
}

impl Driver {
    fn start(binary: &Path, log: &Path) -> Result<Driver> {
        // A free port: bound, read, released; chromedriver takes it a moment later.
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .context("finding a free loopback port")?
            .port();
        let log_file = std::fs::File::create(log).context("chromedriver log file")?;
        let child = Command::new(binary)
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().context("chromedriver log file")?)
            .stderr(log_file)
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let mut d = Driver {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        };
        let deadline = Instant::now() + DRIVER_START;
        loop {
            if let Some(status) = d.child.try_wait().context("waiting for chromedriver")? {
                bail!(
                    "chromedriver exited at start ({status}); its log:\n{}",
                    std::fs::read_to_string(log).unwrap_or_default()
                );
            }
            if let Ok((200, v)) = http(d.addr, "GET", "/status", None, Duration::from_secs(2))
                && v["value"]["ready"] == json!(true)
            {
                return Ok(d);
            }
            if Instant::now() > deadline {
                bail!("chromedriver did not answer /status within {DRIVER_START:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            // SAFETY: kill has no memory preconditions; the group is the one this child leads.
            unsafe {
                libc::kill(-pid, libc::SIGKILL);
            }
        }
        let _ = self.child.wait();
    }
}

/// One HTTP/1.1 request on loopback; returns the status and the JSON body (Null if empty).
fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&Value>,
    timeout: Duration,
) -> Result<(u16, Value)> {
    let mut sock = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .with_context(|| format!("connecting to chromedriver at {addr}"))?;
    sock.set_read_timeout(Some(timeout))?;
    sock.set_write_timeout(Some(timeout))?;
    let body = body.map(Value::to_string).unwrap_or_default();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Type: application/json; charset=utf-8\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    sock.write_all(head.as_bytes())?;
    sock.write_all(body.as_bytes())?;
    let mut r = BufReader::new(sock);
    let mut status_line = String::new();
    r.read_line(&mut status_line)?;
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("bad status line from chromedriver: {status_line:?}"))?;
    let mut chunked = false;
    let mut length: Option<usize> = None;
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            bail!("chromedriver closed the connection in the response head");
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
            if k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked") {
                chunked = true;
            } else if k == "content-length" {
                length = v.parse().ok();
            }
        }
    }
    let mut raw = Vec::new();
    if chunked {
        loop {
            let mut size = String::new();
            r.read_line(&mut size)?;
            let n = usize::from_str_radix(size.trim().split(';').next().unwrap_or(""), 16)
                .with_context(|| format!("bad chunk size {size:?}"))?;
            if n == 0 {
                break;
            }
            let at = raw.len();
            raw.resize(at + n + 2, 0);
            r.read_exact(&mut raw[at..])?;
            raw.truncate(at + n);
        }
    } else if let Some(n) = length {
        raw.resize(n, 0);
        r.read_exact(&mut raw)?;
    } else {
        r.read_to_end(&mut raw)?;
    }
    let v = if raw.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&raw).with_context(|| {
            format!(
                "chromedriver answered {path} with non-JSON: {}",
                String::from_utf8_lossy(&raw)
            )
        })?
    };
    Ok((status, v))
}

/// A headless Chromium session. Dropping it ends the session, the browser and the driver,
/// and removes the profile.
pub struct Browser {
    session: String,
    // Field order is drop order: the session is deleted in Drop, then the driver (and its
    // process group) goes, then the profile directory.
    driver: Driver,
    dir: TempDir,
}

impl Browser {
    /// `None` when the test should skip (see [`browser_paths`]).
    pub fn start_or_skip(test: &str) -> Result<Option<Browser>> {
        match browser_paths(test) {
            Some((chromium, driver)) => Browser::start(&chromium, &driver).map(Some),
            None => Ok(None),
        }
    }

    pub fn start(chromium: &Path, chromedriver: &Path) -> Result<Browser> {
        let dir = TempDir::new("browser")?;
        let profile = dir.0.join("profile");
        let driver = Driver::start(chromedriver, &dir.0.join("chromedriver.log"))?;
        let mut args = vec![
            "--headless=new".to_string(),
            "--disable-gpu".into(),
            "--disable-dev-shm-usage".into(),
            format!("--user-data-dir={}", profile.display()),
            "--window-size=1400,1100".into(),
            // Nothing but the server under test: no name resolves, only 127.0.0.1 is reached.
            "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1".into(),
            "--proxy-server=direct://".into(),
            // The browser's own traffic (updates, sync, field trials, metrics) is off: this
            // machine's network is closed and the tests must not depend on it.
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--disable-quic".into(),
            "--disable-extensions".into(),
            "--disable-default-apps".into(),
            "--no-first-run".into(),
            "--no-default-browser-check".into(),
            "--metrics-recording-only".into(),
            "--disable-features=Translate,OptimizationHints,MediaRouter,AutofillServerCommunication"
                .into(),
        ];
        if is_root() {
            // Chromium's sandbox refuses to run as root.
            args.push("--no-sandbox".into());
        }
        let caps = json!({
            "capabilities": {
                "alwaysMatch": {
                    "browserName": "chrome",
                    "pageLoadStrategy": "normal",
                    "timeouts": {"script": 30_000, "pageLoad": 30_000, "implicit": 0},
                    "goog:chromeOptions": {
                        "binary": chromium.display().to_string(),
                        "args": args,
                    },
                }
            }
        });
        let (status, v) = http(
            driver.addr,
            "POST",
            "/session",
            Some(&caps),
            COMMAND_TIMEOUT,
        )?;
        let session = v["value"]["sessionId"]
            .as_str()
            .filter(|_| status == 200)
            .ok_or_else(|| {
                anyhow!(
                    "chromedriver refused a session ({status}): {v}; its log:\n{}",
                    std::fs::read_to_string(dir.0.join("chromedriver.log")).unwrap_or_default()
                )
            })?
            .to_string();
        Ok(Browser {
            session,
            driver,
            dir,
        })
    }

    /// One WebDriver command of this session; returns its `value`.
    fn cmd(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value> {
        let full = format!("/session/{}{path}", self.session);
        let (status, v) = http(
            self.driver.addr,
            method,
            &full,
            body.as_ref(),
            COMMAND_TIMEOUT,
        )?;
        if status != 200 {
            bail!("WebDriver {method} {path}: {status}: {}", v["value"]);
        }
        Ok(v["value"].clone())
    }

    pub fn goto(&self, url: &str) -> Result<()> {
        self.cmd("POST", "/url", Some(json!({ "url": url })))
            .map(drop)
            .with_context(|| format!("opening {url}"))
    }

    /// Runs `script` (a function body: `arguments[i]` are `args`) in the page; its `return`.
    pub fn eval(&self, script: &str, args: &[Value]) -> Result<Value> {
        self.cmd(
            "POST",
            "/execute/sync",
            Some(json!({ "script": script, "args": args })),
        )
    }

    fn element(&self, css: &str) -> Result<String> {
        let v = self
            .cmd(
                "POST",
                "/element",
                Some(json!({"using": "css selector", "value": css})),
            )
            .with_context(|| format!("finding {css:?}"))?;
        v[ELEMENT_KEY]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| anyhow!("no element reference for {css:?}: {v}"))
    }

    /// The visible text of the first element matching `css`.
    pub fn text(&self, css: &str) -> Result<String> {
        let e = self.element(css)?;
        let v = self.cmd("GET", &format!("/element/{e}/text"), None)?;
        Ok(v.as_str().unwrap_or_default().to_string())
    }

    /// An attribute of every element matching `css`, in document order (`None`: absent).
    pub fn attrs(&self, css: &str, attr: &str) -> Result<Vec<Option<String>>> {
        let v = self.eval(
            "return Array.from(document.querySelectorAll(arguments[0]))\
             .map((e) => e.getAttribute(arguments[1]));",
            &[json!(css), json!(attr)],
        )?;
        Ok(v.as_array()
            .map(|a| a.iter().map(|x| x.as_str().map(str::to_string)).collect())
            .unwrap_or_default())
    }

    /// How many elements match `css`.
    pub fn count(&self, css: &str) -> Result<usize> {
        let v = self.eval(
            "return document.querySelectorAll(arguments[0]).length;",
            &[json!(css)],
        )?;
        Ok(v.as_u64().unwrap_or(0) as usize)
    }

    pub fn click(&self, css: &str) -> Result<()> {
        let e = self.element(css)?;
        self.cmd("POST", &format!("/element/{e}/click"), Some(json!({})))
            .map(drop)
            .with_context(|| format!("clicking {css:?}"))
    }

    /// Clears the field matching `css` and types `text` into it.
    pub fn type_into(&self, css: &str, text: &str) -> Result<()> {
        let e = self.element(css)?;
        self.cmd("POST", &format!("/element/{e}/clear"), Some(json!({})))?;
        self.cmd(
            "POST",
            &format!("/element/{e}/value"),
            Some(json!({ "text": text })),
        )
        .map(drop)
        .with_context(|| format!("typing into {css:?}"))
    }

    /// Waits until some element matching `css` has an `attr` for which `pred` holds (`None`:
    /// no such attribute), polling every 50 ms for at most `timeout`; returns that value.
    /// On a timeout the error lists what was there, and a screenshot `<what>-timeout.png`
    /// is saved under target/.
    pub fn wait_for(
        &self,
        css: &str,
        attr: &str,
        pred: impl Fn(Option<&str>) -> bool,
        timeout: Duration,
    ) -> Result<Option<String>> {
        let deadline = Instant::now() + timeout;
        loop {
            let seen = self.attrs(css, attr)?;
            if let Some(v) = seen.iter().find(|v| pred(v.as_deref())) {
                return Ok(v.clone());
            }
            if Instant::now() >= deadline {
                let shot = self.screenshot("browser-wait-timeout").ok();
                bail!(
                    "{css:?} [{attr}]: not as expected within {timeout:?}; there: {seen:?}{}",
                    shot.map(|p| format!(" (screenshot {})", p.display()))
                        .unwrap_or_default()
                );
            }
            std::thread::sleep(POLL);
        }
    }

    /// [`Browser::wait_for`] with an attribute equal to `value`.
    pub fn wait_attr(&self, css: &str, attr: &str, value: &str, timeout: Duration) -> Result<()> {
        self.wait_for(css, attr, |v| v == Some(value), timeout)
            .map(drop)
    }

    /// Waits until exactly `n` elements match `css`.
    pub fn wait_count(&self, css: &str, n: usize, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let have = self.count(css)?;
            if have == n {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("{css:?}: {have} elements, expected {n}, after {timeout:?}");
            }
            std::thread::sleep(POLL);
        }
    }

    /// A screenshot of the viewport as `target/<name>.png`; returns its path.
    pub fn screenshot(&self, name: &str) -> Result<PathBuf> {
        let v = self.cmd("GET", "/screenshot", None)?;
        let b64 = v
            .as_str()
            .ok_or_else(|| anyhow!("screenshot answer is not a string"))?;
        let png = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .context("decoding the screenshot")?;
        let dir = target_dir();
        std::fs::create_dir_all(&dir)?;
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }

    /// Resizes the window (the screenshot's size).
    pub fn window_size(&self, width: u32, height: u32) -> Result<()> {
        self.cmd(
            "POST",
            "/window/rect",
            Some(json!({"width": width, "height": height})),
        )
        .map(drop)
    }

    /// The profile directory (removed on drop), e.g. for the driver's log.
    pub fn dir(&self) -> &Path {
        &self.dir.0
    }

    /// The chromedriver log so far (for a failure's report).
    pub fn driver_log(&self) -> String {
        std::fs::read_to_string(self.dir.0.join("chromedriver.log")).unwrap_or_default()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Best effort: closes Chromium cleanly; the driver's Drop kills whatever is left.
        let _ = http(
            self.driver.addr,
            "DELETE",
            &format!("/session/{}", self.session),
            None,
            Duration::from_secs(10),
        );
    }
}
