#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tunneld_fuzz_targets::inspect_tap(data));
