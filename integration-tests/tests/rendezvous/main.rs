//! node-rendezvous on tunneld: the `connect` transport (hidden servers parking connections)
//! and the `rendezvous` frontend (visitors by Digest/Basic username or `?rendezvous=`, and
//! `CONNECT <tunnel>:<port>` to named tunnels). Real peers: curl, oathtool, Node, a Rust
//! TLS client speaking the hidden-server wire byte for byte, tokio-tungstenite.

mod common;
mod connect;
mod hidden_servers;
mod ids;
mod visitors;
