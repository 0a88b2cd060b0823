//! Hot reload with the real binaries: a SIGHUP that adds a token and a transport and removes
//! another token loses no visitor of an untouched tunnel (round trips in a loop and one
//! long-lived connection); the new transport and token work; the removed token's session is
//! cut; an invalid file changes nothing (the log and `POST /reload` name the key path); and
//! tunnelc's SIGHUP brings a new tunnel up beside a running one.
//!
//! `tunneld_sighup` and `tunnelc_sighup` run the binaries (`common` starts them);
//! `in_process` reloads a tunneld run inside the test.

mod common;
mod in_process;
mod tunnelc_sighup;
mod tunneld_sighup;
