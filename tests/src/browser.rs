//! A real headless browser for the explorer's tests, and `sagactl ui` running for a stack.
//!
//! [`Browser`] is Debian's `chromium` driven through `chromedriver` (WebDriver): each test
//! starts a chromedriver of its own on a free port, in a process group of its own so that
//! the browser it starts ends with it, even when the test fails. `scripts/test.sh`
//! installs both packages when they are missing.
//!
//! [`Explorer`] is the real `sagactl ui` binary, configured like every other sagactl run of
//! the harness, listening on a port the system picks.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use fantoccini::elements::Element;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::Stack;
use crate::poll::eventually;
use crate::stack::{binary_path, free_port};

/// How long a page has to show what a test waits for.
pub const PAGE_DEADLINE: Duration = Duration::from_secs(20);

const CHROMEDRIVER: &str = "chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";

/// Where screenshots are kept: `target/explorer-screenshots/` (CI keeps `target/`).
pub fn screenshot_dir() -> PathBuf {
    binary_path("sagactl")
        .parent()
        .and_then(Path::parent)
        .map(|target| target.join("explorer-screenshots"))
        .unwrap_or_else(|| PathBuf::from("explorer-screenshots"))
}

pub struct Browser {
    client: Client,
    driver: tokio::process::Child,
}

impl Browser {
    /// A fresh headless chromium, 1360×1000.
    pub async fn start() -> Browser {
        let addr = free_port();
        let mut command = tokio::process::Command::new(CHROMEDRIVER);
        command
            .arg(format!("--port={}", addr.port()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its own process group: dropping the browser kills chromedriver and every
            // chromium process it started, in one signal.
            .process_group(0)
            .kill_on_drop(true);
        let driver = command.spawn().unwrap_or_else(|e| {
            panic!(
                "cannot start {CHROMEDRIVER} ({e}); install Debian's chromium and chromium-driver \
                 (scripts/test.sh does, as root)"
            )
        });
        let webdriver = format!("http://{addr}");
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".to_owned(),
            json!({
                "binary": CHROMIUM,
                // --no-sandbox: chromium refuses to run as root with its sandbox on, and CI
                // runs as root. The pages are the test's own.
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1360,1000",
                         "--force-device-scale-factor=1", "--lang=en-GB"],
            }),
        );
        let client = eventually(PAGE_DEADLINE, || {
            let capabilities = capabilities.clone();
            let webdriver = webdriver.clone();
            async move {
                ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
                    .capabilities(capabilities)
                    .connect(&webdriver)
                    .await
                    .map_err(|e| format!("chromedriver at {webdriver}: {e}"))
            }
        })
        .await;
        Browser { client, driver }
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    pub async fn goto(&self, url: &str) {
        self.client
            .goto(url)
            .await
            .unwrap_or_else(|e| panic!("cannot open {url}: {e}"));
    }

    /// The elements matching `css` now (none is an answer too).
    pub async fn find_all(&self, css: &str) -> Vec<Element> {
        self.client
            .find_all(Locator::Css(css))
            .await
            .unwrap_or_default()
    }

    /// The first element matching `css`, waiting for it to appear.
    pub async fn wait_for(&self, css: &str) -> Element {
        eventually(PAGE_DEADLINE, || async move {
            self.client
                .find(Locator::Css(css))
                .await
                .map_err(|e| format!("no {css} on the page: {e}"))
        })
        .await
    }

    /// `attribute` of every element matching `css`, in document order.
    pub async fn attributes(&self, css: &str, attribute: &str) -> Vec<String> {
        let mut values = Vec::new();
        for element in self.find_all(css).await {
            if let Ok(Some(v)) = element.attr(attribute).await {
                values.push(v);
            }
        }
        values
    }

    /// The visible text of the first element matching `css`, or "" when there is none.
    pub async fn text(&self, css: &str) -> String {
        match self.client.find(Locator::Css(css)).await {
            Ok(element) => element.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    }

    /// Clicks the first element matching `css`, waiting for it to appear. Pages that
    /// refresh themselves may replace the element between finding and clicking: then the
    /// new one is clicked.
    pub async fn click(&self, css: &str) {
        eventually(PAGE_DEADLINE, || async move {
            match self.client.find(Locator::Css(css)).await {
                Ok(element) => element
                    .click()
                    .await
                    .map_err(|e| format!("cannot click {css}: {e}")),
                Err(e) => Err(format!("no {css} on the page: {e}")),
            }
        })
        .await
    }

    /// Answers "OK" to the confirm dialog the page opened, waiting for it to open, and
    /// returns its question.
    pub async fn confirm(&self) -> String {
        let question = eventually(PAGE_DEADLINE, || async move {
            self.client
                .get_alert_text()
                .await
                .map_err(|e| format!("no dialog open: {e}"))
        })
        .await;
        self.client
            .accept_alert()
            .await
            .unwrap_or_else(|e| panic!("cannot accept the dialog: {e}"));
        question
    }

    /// Saves the window as `target/explorer-screenshots/<name>.png` and returns the path.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let png = self
            .client
            .screenshot()
            .await
            .unwrap_or_else(|e| panic!("screenshot {name}: {e}"));
        let dir = screenshot_dir();
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        path
    }

    /// Ends the browser session, then chromedriver.
    pub async fn close(self) {
        let _ = self.client.clone().close().await;
        drop(self);
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Some(pid) = self.driver.id() {
            // SAFETY: a plain kill(2) of the process group this browser started.
            unsafe {
                libc::kill(-(pid as i32), libc::SIGKILL);
            }
        }
    }
}

/// `sagactl ui` for one stack.
pub struct Explorer {
    url: String,
    _process: tokio::process::Child,
}

impl Explorer {
    pub async fn start(stack: &Stack) -> Explorer {
        Explorer::start_as(stack, "operator").await
    }

    /// `sagactl ui` acting as the operator `name` (its tokens' `sub`, which the services
    /// record in their audit logs).
    pub async fn start_as(stack: &Stack, name: &str) -> Explorer {
        let mut command = stack.sagactl_command(
            &["ui", "--listen", "127.0.0.1:0"],
            &[("SAGA_AUTH_SUB", name)],
        );
        command.stdout(Stdio::piped());
        let mut process = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start sagactl ui: {e}"));
        let stdout = process.stdout.take().expect("stdout was piped");
        let mut first = String::new();
        let read =
            tokio::time::timeout(PAGE_DEADLINE, BufReader::new(stdout).read_line(&mut first)).await;
        let url = first
            .split_whitespace()
            .find(|w| w.starts_with("http://"))
            .unwrap_or_else(|| panic!("sagactl ui printed no URL ({read:?}): {first:?}"))
            .trim_end_matches('/')
            .to_owned();
        Explorer {
            url,
            _process: process,
        }
    }

    /// The full URL of a path of the explorer (`/dlq`, say).
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }
}
