// Linker arguments of the binaries, shared by daemon/build.rs and client/build.rs (included
// there): the symbol order and packed relocations.
//
// The symbol order: `symbol-order.txt` beside the package's Cargo.toml lists the functions
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

/// Emits the symbol-order arguments for this package's binaries, when the linker takes them.
fn link_order() {
    println!("cargo:rerun-if-env-changed=TUNNELD_NO_SYMBOL_ORDER");
    rerun_if_linker_changes();
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
    if !linker_takes(&args, false) {
        return;
    }
    for a in args {
        println!("cargo:rustc-link-arg-bins={a}");
    }
}

/// Asks cargo to rerun the build script when what decides the linker and its flags changes.
fn rerun_if_linker_changes() {
    let target = std::env::var("TARGET")
        .unwrap_or_default()
        .to_uppercase()
        .replace('-', "_");
    for var in [
        "RUSTFLAGS".to_string(),
        "CARGO_BUILD_RUSTFLAGS".to_string(),
        format!("CARGO_TARGET_{target}_RUSTFLAGS"),
        format!("CARGO_TARGET_{target}_LINKER"),
    ] {
        println!("cargo:rerun-if-env-changed={var}");
    }
}

/// Packed relative relocations (`-z pack-relative-relocs`, ELF's DT_RELR): a position-
/// independent binary lists every pointer the loader must move by the load address, 24 bytes
/// each (tunneld: 20,147 of them, 472 KiB, all read at every start and so all resident); packed,
/// a bitmap covers 63 neighbouring pointers in 8 bytes. The binary stays position-independent.
/// It then needs a loader that reads DT_RELR (glibc 2.36 and later), so the probe program
/// must not only link but run here; with `TUNNELD_NO_PACKED_RELOCS` set (to anything), or
/// when the probe fails, the relocations stay as they were.
fn packed_relocations() {
    println!("cargo:rerun-if-env-changed=TUNNELD_NO_PACKED_RELOCS");
    rerun_if_linker_changes();
    if std::env::var_os("TUNNELD_NO_PACKED_RELOCS").is_some() {
        return;
    }
    // An ELF flag: other linkers (link.exe, ld64) would warn at every link and do nothing.
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() != Ok("linux") {
        return;
    }
    // A cross build cannot run its probe here.
    if std::env::var_os("TARGET") != std::env::var_os("HOST") {
        return;
    }
    let args = ["-Wl,-z,pack-relative-relocs".to_string()];
    if linker_takes(&args, true) {
        for a in args {
            println!("cargo:rustc-link-arg-bins={a}");
        }
    }
}

/// Whether a program links with `args` added, linked as this package's binaries will be
/// (and, with `run`, whether it then runs).
fn linker_takes(args: &[String], run: bool) -> bool {
    let Some(out) = std::env::var_os("OUT_DIR").map(std::path::PathBuf::from) else {
        return false;
    };
    let source = out.join("link_args_probe.rs");
    // A pointer in a static, so the probe has a relative relocation to pack.
    let program = "static HELLO: &str = \"probe\";\nfn main() { assert_eq!(std::hint::black_box(HELLO), \"probe\"); }\n";
    if std::fs::write(&source, program).is_err() {
        return false;
    }
    let binary = out.join("link_args_probe");
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let mut probe = std::process::Command::new(rustc);
    probe
        .arg(&source)
        .args(["--crate-type", "bin", "--crate-name", "link_args_probe"])
        .arg("-o")
        .arg(&binary);
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
    let quiet = |c: &mut std::process::Command| {
        c.stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    quiet(&mut probe) && (!run || quiet(&mut std::process::Command::new(&binary)))
}
