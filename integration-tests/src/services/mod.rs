//! Local services that tunnels expose in tests.

mod blocks;
mod http;
mod stream;
mod tls;

pub use http::*;
pub use stream::*;
pub use tls::*;
