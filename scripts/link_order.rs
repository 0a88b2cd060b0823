// The link-time symbol order of a binary, shared by daemon/build.rs and client/build.rs
// (included there). `symbol-order.txt` beside the package's Cargo.toml lists the functions
// the binary runs from start-up to idle (written by `scripts/symbol-order`); the linker puts
// them first in the program's code, so an idle process maps a few megabytes of its program
// instead of most of it (the kernel maps 64 KiB around every page that runs).
//
// Only where the linker is LLD, which reads `--symbol-ordering-file`: Rust 1.90 and later
// link x86_64-unknown-linux-gnu with its own LLD unless told otherwise. Elsewhere, with a
// linker of one's own (`-C linker=`, `-C linker-features=-lld`), or with
// `TUNNELD_NO_SYMBOL_ORDER` set, nothing changes. Names the binary no longer has are skipped
// quietly: a stale list costs pages, never correctness.

/// Emits the linker arguments for this package's binaries, when they apply.
fn link_order() {
    let dir = std::env::var_os("CARGO_MANIFEST_DIR").map(std::path::PathBuf::from);
    let Some(order) = dir.map(|d| d.join("symbol-order.txt")) else {
        return;
    };
    println!("cargo:rerun-if-changed={}", order.display());
    println!("cargo:rerun-if-env-changed=TUNNELD_NO_SYMBOL_ORDER");
    if std::env::var_os("TUNNELD_NO_SYMBOL_ORDER").is_some() || !order.exists() {
        return;
    }
    if std::env::var("TARGET").as_deref() != Ok("x86_64-unknown-linux-gnu") {
        return;
    }
    let flags = std::env::var("CARGO_ENCODED_RUSTFLAGS").unwrap_or_default();
    if flags.contains("linker") {
        return;
    }
    if !rustc_links_with_lld() {
        return;
    }
    println!(
        "cargo:rustc-link-arg-bins=-Wl,--symbol-ordering-file={}",
        order.display()
    );
    println!("cargo:rustc-link-arg-bins=-Wl,--no-warn-symbol-ordering");
}

/// Whether the compiler building this is Rust 1.90 or later (its own LLD by default).
fn rustc_links_with_lld() -> bool {
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let Ok(out) = std::process::Command::new(rustc).arg("-V").output() else {
        return false;
    };
    let version = String::from_utf8_lossy(&out.stdout);
    // "rustc 1.95.0 (59807616e 2026-04-14)"
    let minor = version
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.split('.').nth(1))
        .and_then(|m| m.parse::<u32>().ok());
    matches!(minor, Some(m) if m >= 90)
}
