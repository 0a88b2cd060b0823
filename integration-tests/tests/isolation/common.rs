//! What the isolation tests share: one test at a time, and one HTTPS request's status.

use anyhow::{Context, Result};
use std::time::Duration;
use tokio::net::TcpStream;
use tunneld_integration_tests::attack;
use tunneld_integration_tests::TestServer;

/// The tests of this file run one at a time: each measures latency, and two 10 s attacks on
/// the same 2 cores would measure each other.
pub static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Bound of one attacking visitor's own wait for an answer.
pub const VISITOR_WAIT: Duration = Duration::from_secs(10);

/// One HTTP/1.1 request over TLS to `<name>.localhost`; the answer's status. The request is
/// written by its own task while the answer is read, so a server that answers before it
/// read the whole request is seen.
pub async fn status_of(s: &TestServer, name: &str, request: Vec<u8>) -> Result<u16> {
    let tcp = TcpStream::connect(s.web()).await.context("connect web")?;
    let tls = attack::tls_to(s, &format!("{name}.localhost"), b"http/1.1", tcp).await?;
    attack::status_code(&attack::status_line(tls, request, VISITOR_WAIT).await?)
}
