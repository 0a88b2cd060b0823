//! Cluster mode with real parts: `redis-server`, three tunneld processes on loopback (ports
//! frontends on 127.0.0.1-3 with one range, so "the same port" is the same number), tunnelc
//! over yamux and h2-reverse spread over them, and visitors at every node.

mod common;
mod failover;
mod link;
mod provisioning;
mod visitors;
