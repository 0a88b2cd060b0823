//! The control plane over loopback with the real binaries: tokens from `tunneld token add`,
//! quotas, single use, expiry and revocation cutting live sessions, the provisioning API,
//! CSR signing (refused for names the caller does not own), `tunnelc setup/test/env/list`,
//! `openssl verify` on issued certificates and through SNI passthrough, the plain web
//! port's 302, and state surviving a restart and a `kill -9` in the middle of writes.

mod common;
mod lifecycle;
mod quotas;
mod setup;
