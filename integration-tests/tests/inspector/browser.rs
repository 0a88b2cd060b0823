//! The inspector's pages driven by headless Chromium.

use super::*;

/// Checks that the page is no wider than the 390 px viewport, and saves a screenshot.
async fn fits_and_shot(b: &Browser, name: &str) {
    let wide = b
        .exec("return document.documentElement.scrollWidth", vec![])
        .await
        .expect("width");
    assert!(
        wide.as_u64().is_some_and(|w| w <= 390),
        "{name}: scrollWidth {wide} at 390 px"
    );
    b.screenshot(name).await.expect("screenshot");
}

/// Presses Tab until the focused element's text is `text` (at most 30 times).
async fn tab_to(b: &Browser, text: &str) -> Result<()> {
    for _ in 0..30 {
        b.send_keys_to_active(TAB).await?;
        if b.active_element_text().await?.trim() == text {
            return Ok(());
        }
    }
    Err(anyhow!("Tab never reached `{text}`"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pages_work_in_a_browser() {
    let Some(b) = Browser::start("the_pages_work_in_a_browser")
        .await
        .expect("browser")
    else {
        return;
    };
    let s = setup("yamux", "").await.expect("setup");
    s.visit(
        "/webhook",
        &[
            "-H",
            "Cookie: session=abc123",
            "-H",
            "Content-Type: application/json",
            "--data",
            "{\"event\":\"push\",\"n\":1}",
        ],
    )
    .await
    .expect("visit");
    let base = format!("http://{}", s.inspector);
    b.goto(&format!("{base}/")).await.expect("list page");
    b.wait_text("#rows", WAIT, |t| t.contains("/webhook"))
        .await
        .expect("the request is listed");

    // A request arriving while the page is open appears without a reload.
    s.visit("/live", &[]).await.expect("visit");
    b.wait_text("#rows", WAIT, |t| t.contains("/live"))
        .await
        .expect("the list updates itself");
    b.clear_and_type("#filter", "webhook")
        .await
        .expect("filter");
    let shown = b
        .exec(
            "return [...document.querySelectorAll('#rows tr')].filter(r => !r.hidden).length",
            vec![],
        )
        .await
        .expect("rows");
    assert_eq!(shown, 1, "the filter leaves one row");
    b.screenshot("inspector-list-1280")
        .await
        .expect("screenshot");

    // From the keyboard: Tab to the request, Enter opens it.
    b.goto(&format!("{base}/")).await.expect("list page");
    b.wait_for("#rows a", WAIT).await.expect("rows");
    tab_to(&b, "/webhook").await.expect("tab");
    b.send_keys_to_active(ENTER).await.expect("enter");
    b.wait_text("#response-status", WAIT, |t| t.contains("200"))
        .await
        .expect("the detail page");
    let body = b.text("#request-body").await.expect("body");
    assert!(
        body.contains("\"event\": \"push\""),
        "JSON is pretty-printed: {body}"
    );
    let cookie = b.text("#request-headers").await.expect("headers");
    assert!(
        cookie.contains("masked") && !cookie.contains("abc123"),
        "{cookie}"
    );
    b.click("#request-headers button.reveal")
        .await
        .expect("reveal");
    b.wait_text("#request-headers", WAIT, |t| t.contains("session=abc123"))
        .await
        .expect("revealed");

    // Replay: the service receives it again; the replay shows beside the original.
    tab_to(&b, "Replay").await.expect("tab to Replay");
    b.send_keys_to_active(ENTER).await.expect("replay");
    b.wait_text("#compare-h", WAIT, |t| t.contains("Replay of"))
        .await
        .expect("the replay page");
    b.wait_text("#replayed-status", WAIT, |t| t.contains("200"))
        .await
        .expect("its answer");
    let webhooks = s
        .received()
        .iter()
        .filter(|r| *r == "POST /webhook")
        .count();
    assert_eq!(webhooks, 2, "{:?}", s.received());
    b.screenshot("inspector-replay-1280")
        .await
        .expect("screenshot");

    // 390 px wide: nothing wider than the viewport.
    b.set_size(390, 844).await.expect("resize");
    let url = b.current_url().await.expect("url");
    b.goto(&url).await.expect("reload");
    b.wait_for("#replayed-status", WAIT).await.expect("page");
    fits_and_shot(&b, "inspector-replay-390").await;
    b.goto(&format!("{base}/")).await.expect("list");
    b.wait_for("#rows a", WAIT).await.expect("rows");
    fits_and_shot(&b, "inspector-list-390").await;
}
