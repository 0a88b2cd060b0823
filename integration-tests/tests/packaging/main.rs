//! Packaging (docs/operations.md#installing): the systemd units pass `systemd-analyze verify`
//! (and a broken unit does not), the sysusers file makes the users they run as, the installed
//! configs pass `--check` and point the state at /var/lib/tunneld, the completion scripts load
//! in bash and complete subcommands, the man pages are clean roff, and the Dockerfile copies
//! only what exists and builds the binaries its runtime stage runs as a non-root user.
//!
//! The tools (`systemd-analyze`, `systemd-sysusers`, `groff`, `bash`) come from Debian's
//! systemd, groff-base and bash; scripts/test installs them. A missing one skips its test with
//! a note, and fails it under CI (`CI=true`).

mod common;
mod dockerfile;
mod shells_and_man;
mod systemd;
