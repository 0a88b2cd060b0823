//! One SSH connection: public-key authentication against tunneld's keys, then remote
//! forwards as claims on the frontends. Everything else an SSH server usually offers
//! (commands, shells, sftp, local forwards, agent and X11 forwarding) is refused; a shell or
//! `-t` request gets the public URLs printed instead, and `-N` stays quiet.

use crate::channel_io::{Drained, Pumps};
use crate::forwards::{Forwards, SshOpener};
use crate::metrics::SshMetrics;
use russh::keys::HashAlg;
use russh::server::{Auth, ChannelOpenHandle, Msg, PublicKeyOffer, Session, VerifiedPublicKey};
use russh::{Channel, ChannelId, ChannelOpenFailure, Sig};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use tunneld_core::auth::Authenticator;
use tunneld_core::hub::SessionGuard;
use tunneld_core::proto::{Hello, VERSION};
use tunneld_core::ssh_keys::KeyGrant;
use tunneld_core::transport::TransportContext;

/// Session channels (for printed URLs) one connection may open.
const MAX_SESSION_CHANNELS: usize = 2;

pub(crate) struct Conn {
    pub(crate) cx: TransportContext,
    pub(crate) auth: Arc<Authenticator>,
    pub(crate) metrics: Arc<SshMetrics>,
    pub(crate) peer: SocketAddr,
    pub(crate) max_forwards: usize,
    pub(crate) opener: Arc<SshOpener>,
    pub(crate) forwards: Arc<Forwards>,
    /// The forwarded channels' queues, drained by the callbacks below.
    pub(crate) pumps: Arc<Pumps>,
    /// Cancelled once the client is authenticated and admitted (ends the handshake deadline).
    pub(crate) admitted: CancellationToken,
    pub(crate) grant: Option<KeyGrant>,
    pub(crate) guard: Option<SessionGuard>,
    pub(crate) next_tunnel: u32,
    pub(crate) session_channels: Vec<ChannelId>,
    pub(crate) shells: Vec<ChannelId>,
    /// Bytes of data handled since the session's task last let other tasks run.
    pub(crate) data_since_yield: usize,
}

/// Bytes of data the session's task handles before it lets the visitors' relays run.
///
/// russh reads every packet already in the socket before its task yields (up to a channel
/// window's worth, 64 packets of 32 KiB), and it allocates a zero-filled buffer for each
/// packet's data. The relays free those buffers only once they run, so the allocator's
/// per-thread cache (20 blocks of each size from 16 KiB up) overflowed at every burst and
/// the next burst took its blocks from the arena, where jemalloc zero-fills a reused block
/// by handing its pages back to the kernel: most of a download's pages faulted in anew.
/// Yielding after 8 full packets lets the relays free each buffer while the cache still has
/// room for it; small messages (requests, answers) seldom add up to a yield.
const DATA_BEFORE_YIELD: usize = 8 * 32 * 1024;

impl Drop for Conn {
    /// The session is over: each visitor's reader sees the end of its channel.
    fn drop(&mut self) {
        self.pumps.end();
    }
}

impl Conn {
    /// Drains a forwarded channel's queue: russh has just queued something for it.
    fn pump(&self, channel: ChannelId, session: &mut Session) {
        if self.pumps.drain(channel) == Drained::Cut {
            let _ = session.close(channel);
        }
    }

    fn count_auth(&self, outcome: &str) {
        self.metrics
            .auth_total
            .with_label_values(&[&self.cx.name, outcome])
            .inc();
    }

    fn refuse(&self, request: &str) {
        self.metrics
            .refused_total
            .with_label_values(&[&self.cx.name, request])
            .inc();
    }

    async fn grant_of(&mut self, key: &russh::keys::PublicKey) -> Option<KeyGrant> {
        if self.cx.hub.throttle.check(self.peer.ip()).is_err() {
            self.count_auth("throttled");
            return None;
        }
        let fp = key.fingerprint(HashAlg::Sha256).to_string();
        match self.auth.authenticate_ssh_key(&fp).await {
            Ok(g) => Some(g),
            Err(e) => {
                self.count_auth(e.reason());
                if self.cx.hub.refusal_log.allow() {
                    tracing::info!(transport = %self.cx.name, peer = %self.peer, fingerprint = %fp, "SSH key refused: {e}");
                }
                None
            }
        }
    }
}

impl russh::server::Handler for Conn {
    type Error = russh::Error;

    async fn auth_publickey_offered(
        &mut self,
        _user: &str,
        offer: PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        // Unknown keys are refused before the client signs anything (no signature check
        // spent on them); known ones are looked up again once verified.
        Ok(match self.grant_of(offer.public_key).await {
            Some(_) => Auth::Accept,
            None => Auth::reject(),
        })
    }

    async fn auth_publickey(
        &mut self,
        _user: &str,
        key: VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        match self.grant_of(key.public_key).await {
            Some(g) => {
                self.grant = Some(g);
                Ok(Auth::Accept)
            }
            None => Ok(Auth::reject()),
        }
    }

    async fn auth_succeeded(&mut self, session: &mut Session) -> Result<(), Self::Error> {
        let Some(grant) = self.grant.clone() else {
            return Err(russh::Error::NotAuthenticated);
        };
        let _ = self.opener.handle.set(session.handle());
        // The client's version text, for logs; words that would read as tunnelc's
        // capabilities (`+keepalive`, ...) are dropped: an SSH client has none of them.
        let agent = String::from_utf8_lossy(session.remote_sshid())
            .split_whitespace()
            .filter(|w| !w.starts_with('+'))
            .collect::<Vec<_>>()
            .join(" ");
        let hello = Hello {
            version: VERSION,
            token: None,
            tunnels: Vec::new(),
            accept_server_mappings: false,
            agent,
            max_streams: None,
            instance: None,
        };
        let admitted = self
            .cx
            .hub
            .admit_identity(
                grant.identity().clone(),
                &hello,
                &self.cx.name,
                "ssh",
                self.peer,
                self.opener.clone(),
            )
            .await;
        match admitted {
            Ok((guard, _)) => {
                self.count_auth("ok");
                // The session ends when the hub ends it (token revoked, shutdown, replaced).
                let (closed, handle) = (guard.session.closed.clone(), session.handle());
                tokio::spawn(async move {
                    closed.cancelled().await;
                    let _ = handle
                        .disconnect(
                            russh::Disconnect::ByApplication,
                            "tunneld ended this session".into(),
                            "en".into(),
                        )
                        .await;
                });
                self.guard = Some(guard);
                self.admitted.cancel();
                Ok(())
            }
            Err(rej) => {
                tracing::warn!(transport = %self.cx.name, peer = %self.peer, outcome = rej.outcome, "SSH client rejected: {}", rej.reason);
                let _ = session.disconnect(russh::Disconnect::ByApplication, &rej.reason, "en");
                Err(russh::Error::Disconnect)
            }
        }
    }

    async fn tcpip_forward(
        &mut self,
        address: &str,
        port: &mut u32,
        session: &mut Session,
    ) -> Result<bool, Self::Error> {
        self.open_forward(address, port, session).await
    }

    async fn cancel_tcpip_forward(
        &mut self,
        address: &str,
        port: u32,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        let (Some(tunnel), Some(guard)) =
            (self.forwards.remove_by_request(address, port), &self.guard)
        else {
            return Ok(false);
        };
        self.cx.hub.release_added(&guard.session, &tunnel);
        tracing::info!(transport = %self.cx.name, tunnel = %tunnel, "SSH forward cancelled");
        Ok(true)
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        if self.session_channels.len() >= MAX_SESSION_CHANNELS {
            reply.reject(ChannelOpenFailure::ResourceShortage).await;
            return Ok(());
        }
        // Requests and data on it come through the callbacks below; the channel's own queue
        // is dropped so it never fills.
        self.session_channels.push(channel.id());
        drop(channel);
        reply.accept().await;
        Ok(())
    }

    async fn channel_close(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.pump(channel, session);
        self.session_channels.retain(|c| *c != channel);
        self.shells.retain(|c| *c != channel);
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    async fn pty_request(
        &mut self,
        channel: ChannelId,
        _term: &str,
        _col: u32,
        _row: u32,
        _pw: u32,
        _ph: u32,
        _modes: &[(russh::Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.pump(channel, session);
        session.channel_success(channel)
    }

    async fn shell_request(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.pump(channel, session);
        session.channel_success(channel)?;
        self.shells.push(channel);
        let text = format!(
            "{}tunneld: this session only forwards ports; Ctrl-C or q ends it.\n",
            self.url_lines()
        );
        let _ = session.data(channel, text.replace('\n', "\r\n").into_bytes());
        Ok(())
    }

    async fn data(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.pump(channel, session);
        self.data_since_yield += data.len();
        if self.data_since_yield >= DATA_BEFORE_YIELD {
            self.data_since_yield = 0;
            tokio::task::yield_now().await;
        }
        if self.shells.contains(&channel) && data.iter().any(|b| matches!(b, 3 | 4 | b'q')) {
            self.shells.retain(|c| *c != channel);
            let _ = session.exit_status_request(channel, 0);
            let _ = session.eof(channel);
            let _ = session.close(channel);
        }
        Ok(())
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        _data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.pump(channel, session);
        self.refuse("exec");
        let _ = session.extended_data(
            channel,
            1,
            b"tunneld runs no commands: use ssh -N -R ...\r\n".to_vec(),
        );
        session.channel_failure(channel)
    }

    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        _name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.pump(channel, session);
        self.refuse("subsystem");
        session.channel_failure(channel)
    }

    #[allow(clippy::too_many_arguments)]
    async fn x11_request(
        &mut self,
        channel: ChannelId,
        _single: bool,
        _proto: &str,
        _cookie: &str,
        _screen: u32,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.pump(channel, session);
        self.refuse("x11");
        session.channel_failure(channel)
    }

    async fn agent_request(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<bool, Self::Error> {
        self.pump(channel, session);
        self.refuse("agent");
        Ok(false)
    }

    async fn extended_data(
        &mut self,
        channel: ChannelId,
        _code: u32,
        _data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.pump(channel, session);
        Ok(())
    }

    async fn channel_eof(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.pump(channel, session);
        Ok(())
    }

    /// A forwarded channel's window follows what its visitor reads: its reader grants it
    /// (channel_io.rs). Session channels (printed URLs) keep russh's refill on arrival.
    fn channel_window_target(&mut self, channel: ChannelId, _received: usize, target: u32) -> u32 {
        if self.session_channels.contains(&channel) {
            target
        } else {
            0
        }
    }

    async fn window_adjusted(
        &mut self,
        channel: ChannelId,
        _new_size: u32,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.pump(channel, session);
        Ok(())
    }

    async fn env_request(
        &mut self,
        channel: ChannelId,
        _name: &str,
        _value: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.pump(channel, session);
        Ok(())
    }

    async fn window_change_request(
        &mut self,
        channel: ChannelId,
        _col: u32,
        _row: u32,
        _pw: u32,
        _ph: u32,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.pump(channel, session);
        Ok(())
    }

    async fn signal(
        &mut self,
        channel: ChannelId,
        _signal: Sig,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.pump(channel, session);
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    async fn channel_open_direct_tcpip(
        &mut self,
        _channel: Channel<Msg>,
        _host: &str,
        _port: u32,
        _orig: &str,
        _orig_port: u32,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.refuse("direct-tcpip");
        reply
            .reject(ChannelOpenFailure::AdministrativelyProhibited)
            .await;
        Ok(())
    }

    async fn channel_open_x11(
        &mut self,
        _channel: Channel<Msg>,
        _orig: &str,
        _orig_port: u32,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.refuse("x11");
        reply
            .reject(ChannelOpenFailure::AdministrativelyProhibited)
            .await;
        Ok(())
    }

    async fn streamlocal_forward(
        &mut self,
        _path: &str,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        self.refuse("streamlocal");
        Ok(false)
    }
}
