//! The commands that need no client config: `setup`, `list`, `env`, `test` and the docs.

use clap::CommandFactory;
use std::path::PathBuf;

use crate::{Cli, Quick};

/// `setup`, `list`, `env`, `test` and the docs, which need no client config; `None` otherwise.
pub(crate) fn workflow(q: &Quick) -> Option<anyhow::Result<bool>> {
    use tunneld_client::setup::{self, files};
    let dir_or_default = |d: &Option<PathBuf>| match d {
        Some(d) => Ok(d.clone()),
        None => files::default_dir(),
    };
    let rt = || {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)
    };
    let r = match q {
        Quick::Setup(a) => rt().and_then(|rt| {
            rt.block_on(setup::setup(setup::SetupArgs {
                server: a.server.clone(),
                token: a.token.clone(),
                name: a.name.clone(),
                protocols: a.protocols.clone(),
                ports: a.ports.clone(),
                dir: a.dir.clone(),
                ca: a.trust.ca.clone(),
                pin: a.trust.pin.clone(),
                server_name: a.trust.server_name.clone(),
                transport: a.transport.clone(),
            }))
            .map(|()| true)
        }),
        Quick::List { dir, json } => dir_or_default(dir)
            .and_then(|d| files::load(&d, None))
            .and_then(|t| rt().map(|rt| rt.block_on(setup::list::run(&t, *json))))
            .map(|()| true),
        Quick::Env { name, dir } => dir_or_default(dir)
            .and_then(|d| files::load(&d, name.as_deref()))
            .map(|t| {
                use std::io::Write as _;
                // A closed stdout (`tunnelc env | head`) is not an error worth a panic.
                let _ = std::io::stdout().write_all(setup::env::render(&t).as_bytes());
                true
            }),
        Quick::Test { name, dir } => dir_or_default(dir)
            .and_then(|d| files::load(&d, name.as_deref()))
            .and_then(|t| rt().and_then(|rt| rt.block_on(setup::selftest::run(&t)))),
        Quick::Docs(d) => d.run_and_exit(Cli::command()),
        _ => return None,
    };
    Some(r)
}
