//! Fuzz entry points for what visitors and operators send: CONNECT targets, visitor request
//! heads, config files and SSH requests.

use super::*;

/// `frontends/rendezvous/src/connect_access.rs`: the `host:port` of a CONNECT target, and
/// `frontends/rendezvous/src/park.rs`'s `uuid:<ID>?response=` target, from the bytes as a target
/// and from the target of the request head they parse as.
pub fn connect_target(data: &[u8]) {
    use tunneld_frontend_rendezvous::connect_access::authority;
    let text = String::from_utf8_lossy(data);
    let _ = authority(&text);
    // The hidden server's `CONNECT uuid:<ID>?response=<CODE>` target.
    let _ = tunneld_frontend_rendezvous::park::parse_target(&text);
    if let Ok(Some((head, _))) = http1::parse(data) {
        let _ = authority(&head.target);
        let _ = tunneld_frontend_rendezvous::park::parse_target(&head.target);
    }
}

/// The small readers of a visitor's first request that route it:
/// `transports/websocket/src/head.rs` (`read_head` in small reads, `absolute_authority`,
/// `strip_port`, `origin` with a trusted proxy), `frontends/https/src/visitor.rs`
/// (`host_of`, from an absolute-form target and from `Host`) and
/// `frontends/rendezvous/src` (`query_id`, `forbidden_host`).
pub fn visitor_heads(data: &[u8]) {
    use tunneld_frontend_https::fuzzing::host_of;
    use tunneld_frontend_rendezvous::fuzzing::{forbidden_host, query_id};
    use tunneld_transport_websocket::config::Cidr;
    use tunneld_transport_websocket::head;
    let peer = SocketAddr::from(([127, 0, 0, 1], 40000));
    let proxies: Vec<Cidr> = ["127.0.0.0/8", "::1/128"]
        .iter()
        .filter_map(|c| c.parse().ok())
        .collect();
    let use_head = |h: &RequestHead| {
        let _ = head::absolute_authority(&h.target);
        if let Some(host) = h.header("host") {
            let _ = head::strip_port(host);
            let _ = forbidden_host(head::strip_port(host));
        }
        for own in ["http", "https"] {
            let o = head::origin(h, peer, own, &proxies);
            let _ = (o.visitor, o.scheme);
        }
        let _ = query_id(h);
        let mut req = http::Request::builder();
        if let Ok(uri) = h.target.parse::<http::Uri>() {
            req = req.uri(uri);
        }
        if let Some(host) = h.header("host") {
            req = req.header(http::header::HOST, host);
        }
        if let Ok(req) = req.body(()) {
            let _ = host_of(&req);
        }
    };
    let read = block_on(async {
        let mut r = Trickle::new(data, split_of(data));
        head::read_head(&mut r, 1024).await
    });
    match read {
        Some(Ok((h, _, _))) => use_head(&h),
        Some(Err((code, msg))) => {
            let _ = (code, msg.len());
        }
        None => {}
    }
    let text = String::from_utf8_lossy(data);
    let _ = head::absolute_authority(&text);
    let _ = head::strip_port(&text);
    let _ = forbidden_host(&text);
}

/// `daemon/src/config/server.rs`: the bytes as tunneld's YAML config (the file layer of
/// `ServerConfig::load`, without environment and `--set` layers), then validated.
pub fn config_loader(data: &[u8]) {
    use figment::providers::Format;
    use tunneld_client::config::yaml::Yaml;
    use tunneld_daemon::config::server::{Raw, ServerConfig};
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match figment::Figment::from(Yaml::string(text)).extract::<Raw>() {
        Ok(raw) => {
            if let Err(e) = ServerConfig::validate(raw, None) {
                let _ = e.to_string();
            }
        }
        Err(e) => {
            let _ = tunneld_client::config::load::describe(e, "").to_string();
        }
    }
}

/// `ssh_requests`: the first line as an OpenSSH public key line (`ssh_keys::parse_line`; a
/// parsed key's canonical form parses again to the same fingerprint), every further line as
/// a remote forward request `<address> <port>` (`forwards::wanted`).
pub fn ssh_requests(data: &[u8]) {
    use tunneld_core::ssh_keys::parse_line;
    let text = String::from_utf8_lossy(data);
    let mut lines = text.split('\n');
    if let Some(first) = lines.next() {
        if let Ok(k) = parse_line(first) {
            let again = parse_line(&k.canonical()).map(|k| k.fingerprint);
            assert_eq!(again.as_deref(), Ok(k.fingerprint.as_str()));
        }
    }
    for l in lines.take(64) {
        let (address, port) = l.rsplit_once(' ').unwrap_or((l, "0"));
        let port = port.trim().parse::<u32>().unwrap_or(u32::MAX);
        let _ = tunneld_transport_ssh::forwards::wanted(address, port);
    }
}
