//! Replays the fuzz corpus (`fuzz/corpus/<target>/*`) through the fuzz targets on stable, so
//! every input a fuzzer ever kept (and every crash reproducer, once fixed) is checked by
//! `cargo test`. A directory that names no target fails the test, as does a fuzz target
//! (`fuzz/fuzz_targets/<target>.rs`) this file does not know.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use tunneld_fuzz_targets as t;

fn target(name: &str) -> Option<fn(&[u8])> {
    Some(match name {
        "proto_frames" => t::proto_frames,
        "http1_head" => t::http1_head,
        "framing_guard" => t::framing_guard,
        "host_rewrite" => t::host_rewrite,
        "inspect_tap" => t::inspect_tap,
        "sni_client_hello" => t::sni_client_hello,
        "proxy_protocol" => t::proxy_protocol,
        "hostglob" => t::hostglob,
        "visitor_auth" => t::visitor_auth,
        "totp" => t::totp,
        "websocket_wire" => t::websocket_wire,
        "threshold_head" => t::threshold_head,
        "connect_target" => t::connect_target,
        "config_loader" => t::config_loader,
        "visitor_heads" => t::visitor_heads,
        "ssh_requests" => t::ssh_requests,
        _ => return None,
    })
}

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

fn sorted_entries(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .collect();
    out.sort();
    out
}

fn name_of(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

#[test]
fn every_corpus_input_replays_without_panicking() {
    let mut unknown = Vec::new();
    let mut panicked = Vec::new();
    let mut inputs = 0;
    for dir in sorted_entries(&fuzz_dir().join("corpus")) {
        let name = name_of(&dir);
        if !dir.is_dir() {
            unknown.push(format!("{name} (not a directory)"));
            continue;
        }
        let Some(run) = target(&name) else {
            unknown.push(name);
            continue;
        };
        for file in sorted_entries(&dir) {
            if !file.is_file() {
                continue;
            }
            let data = std::fs::read(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            inputs += 1;
            if catch_unwind(AssertUnwindSafe(|| run(&data))).is_err() {
                panicked.push(format!("{name}/{}", name_of(&file)));
            }
        }
    }
    assert!(
        unknown.is_empty(),
        "fuzz/corpus has directories that name no fuzz target: {unknown:?}"
    );
    assert!(
        panicked.is_empty(),
        "corpus inputs that panic: {panicked:?}"
    );
    assert!(inputs > 0, "fuzz/corpus holds no inputs");
}

#[test]
fn every_fuzz_target_is_known_and_has_a_corpus() {
    let corpus = fuzz_dir().join("corpus");
    let mut problems = Vec::new();
    for file in sorted_entries(&fuzz_dir().join("fuzz_targets")) {
        let Some(stem) = file
            .file_stem()
            .filter(|_| file.extension().is_some_and(|e| e == "rs"))
        else {
            continue;
        };
        let stem = stem.to_string_lossy();
        if target(&stem).is_none() {
            problems.push(format!(
                "fuzz_targets/{stem}.rs is not replayed by this test"
            ));
        }
        if !corpus.join(&*stem).is_dir() {
            problems.push(format!(
                "fuzz target {stem} has no corpus/{stem}/ directory"
            ));
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
}
