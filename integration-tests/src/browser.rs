//! A headless Chromium driven through ChromeDriver, for the tests of pages (tunneld's
//! dashboard, tunnelc's request inspector): a small W3C WebDriver client over HTTP/1.1 on
//! loopback. [`Browser::start`] skips the test when Debian's `chromium` or `chromium-driver`
//! is missing (fails under CI, where scripts/test installs them). Every request and every
//! wait is bounded; waits poll, nothing sleeps to synchronize.

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};
use tokio::time::Instant;

/// The WebDriver key Tab, for [`Browser::send_keys_to_active`].
pub const TAB: &str = "\u{E004}";
/// The WebDriver key Enter.
pub const ENTER: &str = "\u{E007}";

/// Upper bound for one WebDriver request.
const REQUEST: Duration = Duration::from_secs(30);
/// How long chromedriver may take to listen and say it is ready.
const READY: Duration = Duration::from_secs(20);
/// The key of an element reference in W3C WebDriver JSON.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";
const INSTALL: &str = "apt-get install chromium chromium-driver";
/// Chromium's flags (and a fresh profile). Without the `--disable-*` of background work
/// Chromium dials out, and is refused on a closed network.
const ARGS: &str = "--headless=new --no-sandbox --disable-gpu --disable-dev-shm-usage \
    --disable-quic --no-first-run --disable-background-networking --disable-component-update \
    --disable-sync --disable-extensions --window-size=1280,900";

/// An element of the current page (its WebDriver reference).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Element(pub String);

impl Element {
    /// The element as an argument of [`Browser::exec`] (`arguments[i]` in the script).
    pub fn json(&self) -> Value {
        json!({ ELEMENT: self.0 })
    }

    fn at(&self, what: &str) -> String {
        format!("/element/{}/{what}", self.0)
    }
}

/// A chromedriver with one Chromium session. Dropping it kills chromedriver and every
/// process of this Chromium, and removes its profile.
pub struct Browser {
    driver: Child,
    port: u16,
    session: String,
    /// Profile, chromedriver's log and Chromium's config dir (crash reports).
    dir: PathBuf,
}

impl Browser {
    /// A fresh headless Chromium (1280x900), or `None` when chromium or chromedriver is not
    /// installed (see [`crate::process::tool_or_skip`]).
    pub async fn start(test: &str) -> Result<Option<Self>> {
        use crate::process::tool_or_skip;
        if !tool_or_skip("chromedriver", "--version", INSTALL, test)
            || !tool_or_skip("chromium", "--version", INSTALL, test)
        {
            return Ok(None);
        }
        // From a private block below the ephemeral range (as pebble's); another test process
        // may hold it, then chromedriver exits and the next block is tried.
        for _ in 0..3 {
            let mut b = Self::spawn(crate::port_block().0)?;
            if b.ready().await? {
                b.new_session().await?;
                return Ok(Some(b));
            }
        }
        bail!("chromedriver found no free port in three tries")
    }

    fn spawn(port: u16) -> Result<Self> {
        let dir = crate::temp_dir("browser");
        let log = std::fs::File::create(dir.join("chromedriver.log"))?;
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            // Chromium's crash handler keeps its database under the config dir.
            .env("XDG_CONFIG_HOME", dir.join("config"))
            .env("XDG_CACHE_HOME", dir.join("cache"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .context("spawn chromedriver")?;
        Ok(Self {
            driver,
            port,
            session: String::new(),
            dir,
        })
    }

    /// Waits until chromedriver listens and `/status` says ready; `false` when it exited
    /// first (its port was taken).
    async fn ready(&mut self) -> Result<bool> {
        let deadline = Instant::now() + READY;
        let mut pause = Duration::from_millis(10);
        loop {
            let log = std::fs::read_to_string(self.dir.join("chromedriver.log"))?;
            if self.driver.try_wait()?.is_some() {
                return Ok(false);
            }
            // Only then is it our chromedriver that answers on the port.
            if log.contains("started successfully") {
                let status = self.call("GET", "/status", None);
                let status = tokio::time::timeout(Duration::from_secs(2), status).await;
                if matches!(status, Ok(Ok(v)) if v["ready"] == true) {
                    return Ok(true);
                }
            }
            if Instant::now() + pause > deadline {
                bail!("chromedriver not ready within {READY:?}; its log: {log}");
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(200));
        }
    }

    async fn new_session(&mut self) -> Result<()> {
        let mut args: Vec<String> = ARGS.split_whitespace().map(String::from).collect();
        args.push(format!(
            "--user-data-dir={}",
            self.dir.join("profile").display()
        ));
        let mut options = json!({ "args": args });
        if Path::new("/usr/bin/chromium").exists() {
            options["binary"] = "/usr/bin/chromium".into();
        }
        // Page loads and scripts answer within a request's bound, as WebDriver errors.
        let timeouts = json!({ "pageLoad": 20_000, "script": 20_000, "implicit": 0 });
        let caps = json!({ "capabilities": { "alwaysMatch": {
            "goog:chromeOptions": options, "timeouts": timeouts } } });
        let v = self.call("POST", "/session", Some(caps)).await?;
        self.session = v["sessionId"]
            .as_str()
            .ok_or_else(|| anyhow!("no sessionId in {v}"))?
            .to_string();
        Ok(())
    }

    /// Opens `url` and waits for it to load.
    pub async fn goto(&self, url: &str) -> Result<()> {
        self.post("/url", json!({ "url": url })).await.map(drop)
    }

    pub async fn current_url(&self) -> Result<String> {
        string(self.get("/url").await?)
    }

    /// Sets the window's size. The viewport is as wide, and 143 px shorter (headless
    /// Chromium's window frame): 1280x900 shows 1280x757.
    pub async fn set_size(&self, width: u32, height: u32) -> Result<()> {
        let rect = json!({ "width": width, "height": height });
        self.post("/window/rect", rect).await.map(drop)
    }

    /// The first element matching the CSS selector `css` (an error when none does).
    pub async fn find(&self, css: &str) -> Result<Element> {
        let by = json!({ "using": "css selector", "value": css });
        element(&self.post("/element", by).await?)
    }

    /// Every element matching `css`, in document order.
    pub async fn find_all(&self, css: &str) -> Result<Vec<Element>> {
        let by = json!({ "using": "css selector", "value": css });
        let v = self.post("/elements", by).await?;
        let all = v.as_array().ok_or_else(|| anyhow!("not a list: {v}"))?;
        all.iter().map(element).collect()
    }

    pub async fn click(&self, css: &str) -> Result<()> {
        let e = self.find(css).await?;
        self.post(&e.at("click"), json!({})).await.map(drop)
    }

    /// Empties the input `css` and types `text` into it.
    pub async fn clear_and_type(&self, css: &str, text: &str) -> Result<()> {
        let e = self.find(css).await?;
        self.post(&e.at("clear"), json!({})).await?;
        self.keys(&e, text).await
    }

    /// The visible text of the first element matching `css`.
    pub async fn text(&self, css: &str) -> Result<String> {
        let e = self.find(css).await?;
        self.text_of(&e).await
    }

    pub async fn text_of(&self, e: &Element) -> Result<String> {
        string(self.get(&e.at("text")).await?)
    }

    /// The attribute `name` of the first element matching `css`; `None` when it has none.
    pub async fn attr(&self, css: &str, name: &str) -> Result<Option<String>> {
        let e = self.find(css).await?;
        Ok(match self.get(&e.at(&format!("attribute/{name}"))).await? {
            Value::Null => None,
            Value::String(s) => Some(s),
            v => Some(v.to_string()),
        })
    }

    /// Runs `script` (a function body; `arguments[i]` are `args`) and answers what it returns.
    pub async fn exec(&self, script: &str, args: Vec<Value>) -> Result<Value> {
        let body = json!({ "script": script, "args": args });
        self.post("/execute/sync", body).await
    }

    /// Types `text` into the focused element: keys such as [`TAB`] and [`ENTER`] included.
    pub async fn send_keys_to_active(&self, text: &str) -> Result<()> {
        let e = element(&self.get("/element/active").await?)?;
        self.keys(&e, text).await
    }

    /// The visible text of the focused element.
    pub async fn active_element_text(&self) -> Result<String> {
        let e = element(&self.get("/element/active").await?)?;
        self.text_of(&e).await
    }

    /// Waits (polling every 100 ms, up to `timeout`) for an element to match `css`.
    pub async fn wait_for(&self, css: &str, timeout: Duration) -> Result<Element> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.find(css).await {
                Ok(e) => return Ok(e),
                Err(e) if Instant::now() >= deadline => {
                    bail!("no `{css}` within {timeout:?}: {e:#}")
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// Waits (polling every 100 ms, up to `timeout`) until the text of `css` satisfies `ok`;
    /// answers that text.
    pub async fn wait_text(
        &self,
        css: &str,
        timeout: Duration,
        ok: impl Fn(&str) -> bool,
    ) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let last = match self.text(css).await {
                Ok(t) if ok(&t) => return Ok(t),
                Ok(t) => format!("last text {t:?}"),
                Err(e) => format!("last error: {e:#}"),
            };
            if Instant::now() >= deadline {
                bail!("the text of `{css}` did not match within {timeout:?}; {last}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Saves a PNG of the viewport as `target/screenshots/<name>.png`; answers its path.
    pub async fn screenshot(&self, name: &str) -> Result<PathBuf> {
        let b64 = string(self.get("/screenshot").await?)?;
        let png = data_encoding::BASE64.decode(b64.as_bytes())?;
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let root = root.parent().unwrap_or(root);
        let target =
            std::env::var_os("CARGO_TARGET_DIR").map_or(root.join("target"), |t| root.join(t));
        let dir = target.join("screenshots");
        std::fs::create_dir_all(&dir)?;
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png)?;
        Ok(path)
    }

    /// Accepts the open `alert`/`confirm` dialog.
    pub async fn accept_alert(&self) -> Result<()> {
        self.post("/alert/accept", json!({})).await.map(drop)
    }

    async fn keys(&self, e: &Element, text: &str) -> Result<()> {
        let body = json!({ "text": text });
        self.post(&e.at("value"), body).await.map(drop)
    }

    async fn get(&self, path: &str) -> Result<Value> {
        let path = format!("/session/{}{path}", self.session);
        self.call("GET", &path, None).await
    }

    async fn post(&self, path: &str, body: Value) -> Result<Value> {
        let path = format!("/session/{}{path}", self.session);
        self.call("POST", &path, Some(body)).await
    }

    /// One request to chromedriver; answers the `value` of its answer, or its error.
    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value> {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let exchange = async {
            let mut s = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await?;
            let req = request(method, path, self.port, &body);
            s.write_all(req.as_bytes()).await?;
            // chromedriver answers `Connection: close` but keeps the connection open.
            let mut raw = Vec::new();
            loop {
                if let Some((status, body)) = response(&raw)? {
                    return anyhow::Ok((status, raw[body].to_vec()));
                }
                if s.read_buf(&mut raw).await? == 0 {
                    bail!("connection closed after {} bytes", raw.len());
                }
            }
        };
        let (status, body) = tokio::time::timeout(REQUEST, exchange)
            .await
            .map_err(|_| anyhow!("{method} {path}: no answer within {REQUEST:?}"))?
            .with_context(|| format!("{method} {path}"))?;
        let v: Value = serde_json::from_slice(&body)
            .with_context(|| format!("{method} {path}: HTTP {status}, not JSON"))?;
        let value = v.get("value").cloned().unwrap_or(Value::Null);
        if status != 200 || value.get("error").is_some() {
            let error = value["error"].as_str().unwrap_or("?");
            let message = value["message"].as_str().unwrap_or_default();
            bail!("{method} {path}: HTTP {status}: {error}: {message}");
        }
        Ok(value)
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Killing chromedriver leaves Chromium running: its processes (the crash handler
        // outside the process group too) are found by their arguments, which all name this
        // browser's directory. Nothing of a throwaway profile needs a clean exit.
        let _ = self.driver.start_kill();
        let needle = [self.dir.as_os_str().as_bytes(), b"/"].concat();
        let ours = |cmd: Vec<u8>| cmd.windows(needle.len()).any(|w| w == needle);
        let pids: Vec<_> = (std::fs::read_dir("/proc").into_iter().flatten().flatten())
            .filter(|e| std::fs::read(e.path().join("cmdline")).is_ok_and(ours))
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|pid| pid.bytes().all(|b| b.is_ascii_digit()))
            .collect();
        if !pids.is_empty() {
            let mut kill = std::process::Command::new("kill");
            let _ = kill.arg("-KILL").args(&pids).stderr(Stdio::null()).status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn request(method: &str, path: &str, port: u16, body: &str) -> String {
    format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// The status and the body's place in the HTTP/1.1 response `raw`, once all of it is there.
fn response(raw: &[u8]) -> Result<Option<(u16, std::ops::Range<usize>)>> {
    let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Ok(None);
    };
    let head = String::from_utf8_lossy(&raw[..end]);
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("bad status line in {head:?}"))?;
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .ok_or_else(|| anyhow!("no Content-Length in {head:?}"))?;
    let body = end + 4..end + 4 + length;
    Ok((raw.len() >= body.end).then_some((status, body)))
}

fn element(v: &Value) -> Result<Element> {
    let id = v[ELEMENT].as_str().map(|id| Element(id.to_string()));
    id.ok_or_else(|| anyhow!("not an element: {v}"))
}

fn string(v: Value) -> Result<String> {
    match v {
        Value::String(s) => Ok(s),
        v => Err(anyhow!("not a string: {v}")),
    }
}
