//! The `https-subdomain` frontend and the `h2-reverse` transport on loopback, with curl,
//! openssl, a WebSocket client, a raw HTTP/2 client and Node's 2ptth-style initiator.

mod common;
mod connections;
mod routing;
mod sessions;
