//! `tunnelc env [NAME]`: `export KEY=value` lines a POSIX shell can `eval` or `.`-source, so
//! the programs it starts see them too.

use super::files::{TunnelDir, CA, CERT, CONFIG, KEY};
use super::ssh;

/// Single-quotes `v` for sh.
pub fn sh_quote(v: &str) -> String {
    format!("'{}'", v.replace('\'', r"'\''"))
}

/// The lines for one tunnel (`TUNNEL_` prefix; with several tunnels, `<NAME>_` follows it).
pub fn lines(t: &TunnelDir, prefix: &str) -> Vec<String> {
    let r = &t.record;
    let mut out = vec![
        format!("{prefix}NAME={}", sh_quote(&r.tunnel.name)),
        format!("{prefix}FQDN={}", sh_quote(&r.tunnel.fqdn)),
        format!("{prefix}SERVER={}", sh_quote(&r.server)),
    ];
    for (i, e) in r.tunnel.endpoints.iter().enumerate() {
        out.push(format!("{prefix}URLS_{i}={}", sh_quote(&e.url)));
        let p = e.protocol.to_ascii_uppercase();
        out.push(format!("{prefix}{p}_URL={}", sh_quote(&e.url)));
        if let Some(port) = e
            .url
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse::<u16>().ok())
        {
            out.push(format!("{prefix}{p}_PORT={port}"));
        }
        if let Some(l) = r.local.get(&e.protocol) {
            out.push(format!("{prefix}{p}_LOCAL_PORT={l}"));
        }
    }
    let name = &r.tunnel.name;
    let mut files: Vec<(&str, String)> = vec![
        ("CERT", CERT.into()),
        ("KEY", KEY.into()),
        ("CA", CA.into()),
    ];
    match &r.ssh {
        None => files.push(("CONFIG", CONFIG.into())),
        Some(s) => {
            out.push(format!("{prefix}SSH_ENDPOINT={}", sh_quote(&s.endpoint)));
            files.extend([
                ("SSH_CONFIG", ssh::config_file(name)),
                ("SSH_KEY", ssh::key_file(name)),
                ("SSH_KNOWN_HOSTS", ssh::known_hosts_file(name)),
            ]);
        }
    }
    for (k, f) in files {
        out.push(format!(
            "{prefix}{k}={}",
            sh_quote(&t.file(&f).display().to_string())
        ));
    }
    out
}

/// The output of `tunnelc env`.
pub fn render(tunnels: &[TunnelDir]) -> String {
    let mut out = String::new();
    for t in tunnels {
        let prefix = if tunnels.len() == 1 {
            "TUNNEL_".to_string()
        } else {
            let n: String = t
                .record
                .tunnel
                .name
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() {
                        c.to_ascii_uppercase()
                    } else {
                        '_'
                    }
                })
                .collect();
            format!("TUNNEL_{n}_")
        };
        for l in lines(t, &prefix) {
            out.push_str("export ");
            out.push_str(&l);
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn quoting() {
        assert_eq!(super::sh_quote("a b"), "'a b'");
        assert_eq!(super::sh_quote("it's"), r"'it'\''s'");
    }
}
