//! The threshold shapes of the admin API: `PUT /tunnels` with threshold's listener objects,
//! `GET /tunnels` and `GET /clients` as threshold answered them. Both shapes act on the same
//! mappings; the native shape stays the primary one (see docs/admin-api.md).

use crate::mappings::{AdminMappings, Mapping};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::net::IpAddr;
use tunneld_core::hub::Hub;
use tunneld_core::proxy_protocol::Version;

/// Which shape a request or answer uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Shape {
    #[default]
    Tunneld,
    Threshold,
}

/// A `?shape=` the API does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("shape `{0}` is unknown: use `tunneld` or `threshold`")]
pub struct UnknownShape(pub String);

impl Shape {
    /// `?shape=threshold|tunneld` overrides the configured default.
    pub fn from_query(query: Option<&str>, default: Shape) -> Result<Shape, UnknownShape> {
        for pair in query.unwrap_or("").split('&') {
            if let Some(v) = pair.strip_prefix("shape=") {
                return match v {
                    "threshold" => Ok(Shape::Threshold),
                    "tunneld" => Ok(Shape::Tunneld),
                    other => Err(UnknownShape(other.to_string())),
                };
            }
        }
        Ok(default)
    }
}

/// One listener as threshold's `PUT /tunnels` takes it. Unknown fields are ignored, as
/// threshold's JSON decoder did.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Listener {
    #[serde(rename = "ClientIdentifier", alias = "ClientId", default)]
    pub client_identifier: String,
    #[serde(rename = "ListenPort")]
    pub listen_port: u16,
    #[serde(rename = "ListenAddress", default)]
    pub listen_address: String,
    #[serde(rename = "ListenHostnameGlob", default)]
    pub listen_hostname_glob: String,
    #[serde(rename = "BackEndService", default)]
    pub back_end_service: String,
    #[serde(rename = "HaProxyProxyProtocol", default)]
    pub ha_proxy_proxy_protocol: bool,
}

/// Whether a parsed body uses threshold's field names.
pub fn is_threshold_body(v: &Value) -> bool {
    v.as_array().is_some_and(|a| {
        a.iter().any(|e| {
            e.as_object()
                .is_some_and(|o| o.contains_key("ListenPort") || o.contains_key("ClientIdentifier"))
        })
    })
}

/// Converts threshold listeners to mappings; errors are (status, message) as threshold gave.
pub fn to_mappings(list: Vec<Listener>) -> Result<Vec<Mapping>, (u16, String)> {
    list.into_iter()
        .map(|l| {
            let listen_address = match l.listen_address.trim() {
                "" => None,
                a => Some(a.parse::<IpAddr>().map_err(|_| {
                    (
                        400,
                        format!(
                            "Bad Request: \"{}\" is not an IP address.",
                            l.listen_address
                        ),
                    )
                })?),
            };
            if l.client_identifier.is_empty() {
                return Err((400, "Bad Request: ClientIdentifier is required".to_string()));
            }
            if l.back_end_service.is_empty() {
                return Err((400, "Bad Request: BackEndService is required".to_string()));
            }
            Ok(Mapping {
                client: Some(l.client_identifier),
                clients: Vec::new(),
                listen_port: l.listen_port,
                listen_address,
                hostname_glob: match l.listen_hostname_glob.trim() {
                    "" => None,
                    g => Some(g.to_string()),
                },
                target: l.back_end_service,
                proxy_protocol: l.ha_proxy_proxy_protocol.then_some(Version::V1),
                frontend: None,
            })
        })
        .collect()
}

/// Mappings in threshold's listener shape (a pool shows its first member).
pub fn listeners(list: &[(Mapping, String)]) -> Value {
    let v: Vec<Listener> = list
        .iter()
        .map(|(m, _)| Listener {
            client_identifier: m.members().first().cloned().unwrap_or_default(),
            listen_port: m.listen_port,
            listen_address: m.listen_address.map(|a| a.to_string()).unwrap_or_default(),
            listen_hostname_glob: m.hostname_glob.clone().unwrap_or_default(),
            back_end_service: m.target.clone(),
            ha_proxy_proxy_protocol: m.proxy_protocol.is_some(),
        })
        .collect();
    serde_json::to_value(v).unwrap_or(Value::Array(Vec::new()))
}

/// `GET /clients` as threshold answered it: `{ "<id>": { "CurrentState", "LastState" } }`:
/// - connected: `ClientConnected`, after `ClientUnknown` (first connection since tunneld
///   started) or `ClientClosed` (it had disconnected before);
/// - disconnected (every session ended): `ClientClosed` after `ClientConnected`;
/// - named by a mapping and never connected: `ClientUnknown` twice.
pub async fn clients(hub: &Hub, mappings: &AdminMappings) -> Value {
    let mut states: BTreeMap<String, (&str, &str)> = BTreeMap::new();
    for (m, _) in mappings.mappings().await {
        for c in m.members() {
            states.insert(c, ("ClientUnknown", "ClientUnknown"));
        }
    }
    let departed: std::collections::HashSet<String> =
        hub.departed_clients().into_iter().map(|(c, _)| c).collect();
    for c in &departed {
        states.insert(c.clone(), ("ClientClosed", "ClientConnected"));
    }
    for s in hub.sessions() {
        let last = if departed.contains(&s.info.client_id) {
            "ClientClosed"
        } else {
            "ClientUnknown"
        };
        states.insert(s.info.client_id.clone(), ("ClientConnected", last));
    }
    let mut out = Map::new();
    for (id, (current, last)) in states {
        let mut o = Map::new();
        o.insert("CurrentState".into(), Value::String(current.into()));
        o.insert("LastState".into(), Value::String(last.into()));
        out.insert(id, Value::Object(o));
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threshold_listeners_convert() {
        let body = r#"[{"ClientIdentifier":"node1","ListenPort":9000,"ListenAddress":"127.0.0.1",
            "ListenHostnameGlob":"*.example.test","BackEndService":"web","HaProxyProxyProtocol":true,
            "Extra":1}]"#;
        let v: Value = serde_json::from_str(body).expect("json");
        assert!(is_threshold_body(&v));
        let list: Vec<Listener> = serde_json::from_value(v).expect("listeners");
        let maps = to_mappings(list.clone()).expect("mappings");
        assert_eq!(maps[0].client.as_deref(), Some("node1"));
        assert_eq!(maps[0].hostname_glob.as_deref(), Some("*.example.test"));
        assert_eq!(maps[0].proxy_protocol, Some(Version::V1));
        let back = listeners(&[(maps[0].clone(), String::new())]);
        let again: Vec<Listener> = serde_json::from_value(back).expect("round trip");
        assert_eq!(again, list);
        let mut bad = list;
        bad[0].listen_address = "nowhere".into();
        assert_eq!(to_mappings(bad).unwrap_err().0, 400);
        assert!(!is_threshold_body(
            &serde_json::json!([{"client":"a","listen_port":1,"target":"x:1"}])
        ));
        assert_eq!(
            Shape::from_query(Some("a=1&shape=threshold"), Shape::Tunneld),
            Ok(Shape::Threshold)
        );
        assert!(Shape::from_query(Some("shape=xml"), Shape::Tunneld).is_err());
    }
}
