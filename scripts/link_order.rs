// The link-time symbol order of a binary, shared by daemon/build.rs and client/build.rs
// (included there). `symbol-order.txt` beside the package's Cargo.toml lists the functions
// the binary runs from start-up to idle (written by `scripts/symbol-order`); the linker puts
// them first in the program's code, so an idle process maps a few megabytes of its program
// instead of most of it (the kernel maps 64 KiB around every page that runs).
//
// Only LLD reads `--symbol-ordering-file` (Rust's own linker on x86_64 Linux since 1.90);
// GNU ld, gold and mold stop at it. So before asking for it, this links a tiny program the
// way the binaries will be linked (the same compiler, target, flags and configured linker)
// with the same arguments, and asks for nothing when that fails. With
// `TUNNELD_NO_SYMBOL_ORDER` set (to anything) it asks for nothing either. Names the binary
// no longer has are skipped quietly: a stale list costs pages, never correctness.

/// Emits the linker arguments for this package's binaries, when the linker takes them.
fn link_order() {
    println!("cargo:rerun-if-env-changed=TUNNELD_NO_SYMBOL_ORDER");
    // What decides the linker (cargo reruns this script when they change).
    for var in [
        "RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS",
        "CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_LINKER",
    ] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    let dir = std::env::var_os("CARGO_MANIFEST_DIR").map(std::path::PathBuf::from);
    let Some(order) = dir.map(|d| d.join("symbol-order.txt")) else {
        return;
    };
    println!("cargo:rerun-if-changed={}", order.display());
    if std::env::var_os("TUNNELD_NO_SYMBOL_ORDER").is_some() || !order.exists() {
        return;
    }
    // The list holds this target's names only.
    if std::env::var("TARGET").as_deref() != Ok("x86_64-unknown-linux-gnu") {
        return;
    }
    let args = [
        format!("-Wl,--symbol-ordering-file={}", order.display()),
        "-Wl,--no-warn-symbol-ordering".to_string(),
    ];
    if !linker_takes(&args) {
        return;
    }
    for a in args {
        println!("cargo:rustc-link-arg-bins={a}");
    }
}

/// Whether a program links with `args` added, linked as this package's binaries will be.
fn linker_takes(args: &[String]) -> bool {
    let Some(out) = std::env::var_os("OUT_DIR").map(std::path::PathBuf::from) else {
        return false;
    };
    let source = out.join("link_order_probe.rs");
    if std::fs::write(&source, "fn main() {}\n").is_err() {
        return false;
    }
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let mut probe = std::process::Command::new(rustc);
    probe
        .arg(&source)
        .args(["--crate-type", "bin", "--crate-name", "link_order_probe"])
        .arg("-o")
        .arg(out.join("link_order_probe"));
    if let Ok(target) = std::env::var("TARGET") {
        probe.args(["--target", &target]);
    }
    let flags = std::env::var("CARGO_ENCODED_RUSTFLAGS").unwrap_or_default();
    probe.args(flags.split('\u{1f}').filter(|f| !f.is_empty()));
    if let Some(linker) = std::env::var_os("RUSTC_LINKER") {
        let mut l = std::ffi::OsString::from("linker=");
        l.push(linker);
        probe.arg("-C").arg(l);
    }
    for a in args {
        probe.arg("-C").arg(format!("link-arg={a}"));
    }
    probe
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}
