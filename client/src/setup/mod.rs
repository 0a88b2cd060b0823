//! tunnelc's pipe2me-style workflow: `setup` registers a tunnel through the provisioning API
//! and writes everything needed to run it; `list`, `env` and `test` work from those files.

/// `println!` that stops quietly when stdout is closed (`tunnelc list | head`) instead of
/// panicking.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}

pub mod api_client;
pub mod echo;
pub mod env;
pub mod files;
pub mod list;
pub mod selftest;
pub mod ssh;

use crate::provision_api::{ServerInfo, SignedCert, TunnelInfo};
use anyhow::{bail, Context};
use api_client::ApiClient;
use files::{SetupRecord, CA, CERT, CONFIG, KEY, RECORD};
use http::Method;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// What `tunnelc setup` takes.
#[derive(Debug, Clone)]
pub struct SetupArgs {
    /// The provisioning API, `https://host[:port]`.
    pub server: String,
    pub token: String,
    pub name: Option<String>,
    pub protocols: Vec<String>,
    pub ports: Vec<u16>,
    pub dir: Option<PathBuf>,
    pub ca: Option<PathBuf>,
    pub pin: Option<String>,
    pub server_name: Option<String>,
    /// `ssh` (stock OpenSSH, no tunnelc) or tunneld's own transport; default: the server's
    /// `control.transport`.
    pub transport: Option<String>,
}

/// The local port a protocol uses when `--ports` does not say.
pub fn default_port(protocol: &str) -> u16 {
    match protocol {
        "http" => 8080,
        "tcp" => 2222,
        _ => 9443,
    }
}

/// `tunnelc setup`: prints the public endpoints and where the files went.
pub async fn setup(args: SetupArgs) -> anyhow::Result<()> {
    let (protocols, ports) = protocols_and_ports(&args)?;
    let dir = match &args.dir {
        Some(d) => d.clone(),
        None => files::default_dir()?,
    };
    if let Some(n) = &args.name {
        if dir.join(n).join(RECORD).exists() {
            bail!("{} already holds tunnel `{n}`", dir.join(n).display());
        }
    }
    let api = ApiClient::new(
        &args.server,
        &crate::client::trust_of(args.ca.as_ref(), args.pin.as_ref()),
        args.server_name.as_deref(),
        Some(args.token.clone()),
    )?;
    let info: ServerInfo = api.json(Method::GET, "/v1/config", None).await?;
    let ssh = ssh::chosen(args.transport.as_deref(), &info)?;
    if ssh.is_some() {
        ssh::check_keygen()?;
    }
    let created: TunnelInfo = api
        .json(
            Method::POST,
            "/v1/tunnels",
            Some(&serde_json::json!({ "name": args.name, "protocols": protocols })),
        )
        .await?;
    let name = created.name.clone();
    let (key, signed) = certify(&api, &created).await?;

    let tdir = dir.join(&name);
    std::fs::create_dir_all(&tdir).with_context(|| format!("{}", tdir.display()))?;
    let tdir = tdir.canonicalize()?;
    files::write(&tdir.join(KEY), key.serialize_pem().as_bytes(), true)?;
    files::write(
        &tdir.join(CERT),
        format!("{}{}", signed.certificate, signed.ca).as_bytes(),
        false,
    )?;
    files::write(&tdir.join(CA), signed.ca.as_bytes(), false)?;
    let local: BTreeMap<String, u16> = protocols
        .iter()
        .cloned()
        .zip(ports.iter().copied())
        .collect();
    let ssh_record = match &ssh {
        Some(s) => {
            ssh::install(s, &api, &created, &local, &tdir, &args.token).await?;
            Some(ssh::SshRecord {
                endpoint: format!("{}:{}", s.host, s.port),
                pin: args.pin.clone(),
                server_name: args.server_name.clone(),
            })
        }
        None => {
            write_client_config(&args, &info, &api, &created, &local, &tdir)?;
            None
        }
    };
    let record = SetupRecord {
        server: args.server.clone(),
        tunnel: created.clone(),
        local: local.clone(),
        ssh: ssh_record,
    };
    files::write(
        &tdir.join(RECORD),
        &serde_json::to_vec_pretty(&record)?,
        false,
    )?;

    say!("tunnel {name} is set up in {}", tdir.display());
    for e in &created.endpoints {
        say!(
            "  {:<5} {} -> 127.0.0.1:{}",
            e.protocol,
            e.url,
            local.get(&e.protocol).copied().unwrap_or(0)
        );
    }
    say!(
        "certificate for {} until {}: {}",
        signed.names.join(", "),
        tunneld_core::clock::rfc3339(signed.not_after),
        tdir.join(CERT).display()
    );
    if ssh.is_some() {
        ssh::print_run(&tdir, &name);
    } else {
        say!("run it:   tunnelc --config {}", tdir.join(CONFIG).display());
        say!("check it: tunnelc test {name} --dir {}", dir.display());
    }
    Ok(())
}

/// The protocols asked for (https when none) and one local port for each.
fn protocols_and_ports(args: &SetupArgs) -> anyhow::Result<(Vec<String>, Vec<u16>)> {
    let protocols = if args.protocols.is_empty() {
        vec!["https".to_string()]
    } else {
        args.protocols.clone()
    };
    let ports: Vec<u16> = if args.ports.is_empty() {
        protocols.iter().map(|p| default_port(p)).collect()
    } else if args.ports.len() == protocols.len() {
        args.ports.clone()
    } else {
        bail!(
            "--ports lists {} port(s) for {} protocol(s) ({}): give one local port per protocol, in the same order",
            args.ports.len(),
            protocols.len(),
            protocols.join(",")
        );
    };
    Ok((protocols, ports))
}

/// A fresh key, and the certificate tunneld's CA signs for the tunnel's name with it.
async fn certify(
    api: &ApiClient,
    created: &TunnelInfo,
) -> anyhow::Result<(rcgen::KeyPair, SignedCert)> {
    let key = rcgen::KeyPair::generate().context("generating a key")?;
    let csr = rcgen::CertificateParams::new(vec![created.fqdn.clone()])
        .and_then(|p| p.serialize_request(&key))
        .and_then(|c| c.pem())
        .context("making a certificate request")?;
    let path = format!("/v1/tunnels/{}/certificate", created.name);
    let (status, answer) = api
        .call(Method::POST, &path, "application/pkcs10", csr.into_bytes())
        .await?;
    api_client::check(status, &answer, &Method::POST, &path)?;
    let signed: SignedCert = serde_json::from_slice(&answer).context("certificate answer")?;
    Ok((key, signed))
}

/// tunnelc's config for the tunnel (`tunnelc --config <dir>/<name>/client.yaml`).
fn write_client_config(
    args: &SetupArgs,
    info: &ServerInfo,
    api: &ApiClient,
    created: &TunnelInfo,
    local: &BTreeMap<String, u16>,
    tdir: &std::path::Path,
) -> anyhow::Result<()> {
    let mut tunnels = serde_json::Map::new();
    for e in &created.endpoints {
        let port = local.get(&e.protocol).copied().unwrap_or(0);
        tunnels.insert(
            e.tunnel.clone(),
            serde_json::json!({ "type": e.kind, "local": format!("127.0.0.1:{port}") }),
        );
    }
    let host = info.transport_host.clone().unwrap_or(api.url.host.clone());
    let mut tls = serde_json::Map::new();
    if let Some(p) = &args.pin {
        tls.insert("pin".into(), p.clone().into());
    } else if info.transport_local_ca {
        tls.insert("ca".into(), tdir.join(CA).display().to_string().into());
    }
    let cfg = serde_json::json!({
        "server": format!("{host}:{}", info.transport_port),
        "server_name": args.server_name.clone().unwrap_or(host.clone()),
        "transport": info.transport,
        "token": args.token,
        "tls": tls,
        "tunnels": tunnels,
    });
    let yaml = serde_yaml_ng::to_string(&cfg)?;
    let header = format!(
        "# Written by `tunnelc setup` for tunnel {} ({}).\n# Run it: tunnelc --config {}\n",
        created.name,
        created.fqdn,
        tdir.join(CONFIG).display()
    );
    files::write(
        &tdir.join(CONFIG),
        format!("{header}{yaml}").as_bytes(),
        true,
    )
}
