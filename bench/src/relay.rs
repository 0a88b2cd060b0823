//! `tunneld-bench relay --to ADDR`: a plain userspace TCP relay, two of which chained make the
//! cost floor of any tunnel (two extra hops, no multiplexing, no crypto).

use std::net::SocketAddr;
use tokio::net::{TcpListener, TcpStream};

pub async fn run(to: SocketAddr) -> anyhow::Result<()> {
    let l = TcpListener::bind("127.0.0.1:0").await?;
    println!("listening addr={}", l.local_addr()?);
    loop {
        let (mut a, _) = l.accept().await?;
        tokio::spawn(async move {
            let Ok(mut b) = TcpStream::connect(to).await else {
                return;
            };
            let _ = a.set_nodelay(true);
            let _ = b.set_nodelay(true);
            let _ = tokio::io::copy_bidirectional(&mut a, &mut b).await;
        });
    }
}
