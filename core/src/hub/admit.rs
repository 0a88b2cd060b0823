//! Admission: a hello checked (version, throttle, credentials, names, allowed transports),
//! the session made and registered, its tunnels claimed, and the answer on the wire.

use super::*;

impl Hub {
    pub(super) fn refuse(
        &self,
        transport: &str,
        outcome: &'static str,
        reason: String,
        permanent: bool,
    ) -> Rejection {
        self.metrics
            .handshakes_total
            .with_label_values(&[transport, outcome])
            .inc();
        Rejection {
            reason,
            permanent,
            outcome,
        }
    }

    /// Authenticates a hello, replaces an older session of the same client, claims the
    /// requested tunnels and registers the session.
    #[allow(clippy::too_many_arguments)]
    pub async fn admit(
        self: &Arc<Self>,
        hello: &Hello,
        cert_cn: Option<&str>,
        transport: &str,
        transport_kind: &'static str,
        remote: SocketAddr,
        opener: Arc<dyn OpenStream>,
    ) -> Result<(SessionGuard, Vec<TunnelStatus>), Rejection> {
        if hello.version != VERSION {
            return Err(self.refuse(
                transport,
                "bad_version",
                format!(
                    "protocol version {} is not supported (this tunneld speaks {VERSION})",
                    hello.version
                ),
                true,
            ));
        }
        if let Some(why) = self.leaving.get() {
            return Err(self.refuse(transport, "leaving", why.clone(), false));
        }
        if let Err(wait) = self.throttle.check(remote.ip()) {
            return Err(self.refuse(
                transport,
                "throttled",
                throttled_reason(remote.ip(), wait),
                false,
            ));
        }
        let identity = self
            .auth
            .authenticate_async(hello.token.as_deref(), cert_cn)
            .await
            .map_err(|e: AuthError| {
                if e.is_guess() {
                    self.throttle.failed(remote.ip());
                }
                self.refuse(transport, e.reason(), e.to_string(), e.is_permanent())
            })?;
        self.admit_identity(identity, hello, transport, transport_kind, remote, opener)
            .await
    }

    /// [`Hub::admit`], then the answer on the wire for native transports: the `Welcome`
    /// frame, or the `Rejected` frame (and a shutdown) written to `io`. `None` when the
    /// session did not start.
    #[allow(clippy::too_many_arguments)]
    pub async fn admit_answering<W: tokio::io::AsyncWrite + Unpin>(
        self: &Arc<Self>,
        io: &mut W,
        hello: &Hello,
        cert_cn: Option<&str>,
        transport: &str,
        transport_kind: &'static str,
        remote: SocketAddr,
        opener: Arc<dyn OpenStream>,
    ) -> Option<SessionGuard> {
        use crate::proto::{write_frame, ServerHello};
        const ANSWER_WAIT: std::time::Duration = std::time::Duration::from_secs(2);
        match self
            .admit(hello, cert_cn, transport, transport_kind, remote, opener)
            .await
        {
            Ok((guard, tunnels)) => {
                let welcome = self.welcome(&guard.session, tunnels);
                let written = tokio::time::timeout(ANSWER_WAIT, write_frame(io, &welcome))
                    .await
                    .unwrap_or_else(|_| {
                        Err(crate::proto::FrameError::Io(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            "the client read no welcome in time",
                        )))
                    });
                match written {
                    Ok(()) => Some(guard),
                    Err(e) => {
                        tracing::warn!(transport, %remote, error = %e, "could not send welcome");
                        None
                    }
                }
            }
            Err(rej) => {
                if self.refusal_log.allow() {
                    tracing::warn!(transport, %remote, outcome = rej.outcome, "client rejected: {}", rej.reason);
                }
                let reply = ServerHello::Rejected {
                    reason: rej.reason,
                    permanent: rej.permanent,
                };
                let _ = tokio::time::timeout(ANSWER_WAIT, write_frame(io, &reply)).await;
                let _ =
                    tokio::time::timeout(ANSWER_WAIT, tokio::io::AsyncWriteExt::shutdown(io)).await;
                None
            }
        }
    }

    /// The welcome for an admitted session.
    pub fn welcome(
        &self,
        session: &LiveSession,
        tunnels: Vec<TunnelStatus>,
    ) -> crate::proto::ServerHello {
        let limits = session.announced;
        crate::proto::ServerHello::Welcome {
            client_id: session.info.client_id.clone(),
            tunnels,
            keepalive_secs: limits.keepalive_secs(),
            max_request_head: u32::try_from(limits.max_request_head).ok(),
            max_response_head: u32::try_from(limits.max_response_head).ok(),
        }
    }

    /// Admits a session whose identity the transport established itself (a compatibility
    /// dialect that authenticates by client certificate or header). `hello` carries the
    /// tunnels to claim and whether server mappings are accepted.
    pub async fn admit_identity(
        self: &Arc<Self>,
        identity: Identity,
        hello: &Hello,
        transport: &str,
        transport_kind: &'static str,
        remote: SocketAddr,
        opener: Arc<dyn OpenStream>,
    ) -> Result<(SessionGuard, Vec<TunnelStatus>), Rejection> {
        self.check_request(&identity, hello, transport, transport_kind)?;
        self.replace_same_instance(&identity, hello);
        let (session, notifications) = self.new_session(
            &identity,
            hello,
            (transport, transport_kind),
            remote,
            opener,
        );
        let (statuses, retry) = self.claim_hello(&session, &identity, hello).await;
        *lock(&session.tunnels) = statuses.clone();
        self.sessions.insert(session.clone());
        // A frontend a reload removed while this hello claimed on it: those claims go now
        // (the reload's release saw no session yet).
        let statuses = self.drop_claims_on_removed(&session).unwrap_or(statuses);
        // From here on the guard ends the session however this future ends.
        let guard = SessionGuard {
            hub: self.clone(),
            session: session.clone(),
            notifications,
        };
        self.metrics
            .handshakes_total
            .with_label_values(&[transport, "ok"])
            .inc();
        self.metrics
            .sessions_total
            .with_label_values(&[transport])
            .inc();
        self.metrics
            .sessions_active
            .with_label_values(&[transport])
            .inc();
        tracing::info!(
            client = %identity.client_id, session = session.info.id, transport, %remote,
            auth = identity.method, "session established"
        );
        for t in retry {
            self.retry_claim(&session, &identity, t);
        }
        let mut all = statuses;
        all.extend(self.server_mapping_statuses(&identity.client_id).await);
        Ok((guard, all))
    }

    /// Refuses a hello asking for too many tunnels, a bad or repeated name, a malformed
    /// instance id, or a transport its token does not allow.
    fn check_request(
        &self,
        identity: &Identity,
        hello: &Hello,
        transport: &str,
        transport_kind: &str,
    ) -> Result<(), Rejection> {
        if hello.tunnels.len() > MAX_TUNNELS_PER_SESSION {
            return Err(self.refuse(
                transport,
                "bad_request",
                format!("at most {MAX_TUNNELS_PER_SESSION} tunnels per session"),
                true,
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for t in &hello.tunnels {
            if !valid_tunnel_name(&t.name) {
                return Err(self.refuse(
                    transport,
                    "bad_request",
                    format!(
                        "tunnel name `{}` is invalid: use 1-63 letters, digits, `-`, `_` or `.`",
                        t.name
                    ),
                    true,
                ));
            }
            if !seen.insert(t.name.as_str()) {
                return Err(self.refuse(
                    transport,
                    "bad_request",
                    format!("tunnel name `{}` appears twice", t.name),
                    true,
                ));
            }
        }
        if let Some(i) = &hello.instance {
            if i.is_empty() || i.len() > MAX_INSTANCE_ID || !i.bytes().all(|b| b.is_ascii_graphic())
            {
                return Err(self.refuse(
                    transport,
                    "bad_request",
                    format!(
                        "instance id is invalid: use 1-{MAX_INSTANCE_ID} printable ASCII characters"
                    ),
                    true,
                ));
            }
        }

        if let Some(allowed) = &identity.transports {
            if !allowed
                .iter()
                .any(|a| a == transport || a == transport_kind)
            {
                return Err(self.refuse(
                    transport,
                    "transport_not_allowed",
                    format!(
                        "the token of `{}` does not allow transport `{transport}` (it allows: {})",
                        identity.client_id,
                        allowed.join(", ")
                    ),
                    true,
                ));
            }
        }
        Ok(())
    }

    /// The same tunnelc reconnecting (same instance id) takes its claims back at once.
    fn replace_same_instance(&self, identity: &Identity, hello: &Hello) {
        if let Some(instance) = hello.instance.as_deref() {
            for old in self.sessions.all(&identity.client_id) {
                if old.info.instance.as_deref() == Some(instance) {
                    tracing::info!(client = %identity.client_id, old_session = old.info.id, "the same tunnelc reconnected: its new session replaces the old one");
                    self.metrics
                        .session_conflicts_total
                        .with_label_values(&["replaced"])
                        .inc();
                    old.replace();
                }
            }
        }
    }

    /// A new session (not yet registered) and the receiver of its control messages.
    fn new_session(
        &self,
        identity: &Identity,
        hello: &Hello,
        (transport, transport_kind): (&str, &'static str),
        remote: SocketAddr,
        opener: Arc<dyn OpenStream>,
    ) -> (Arc<LiveSession>, mpsc::UnboundedReceiver<Control>) {
        let (notify, notifications) = mpsc::unbounded_channel();
        let c = &self.metrics.kept_streams_total;
        let kept = crate::kept_streams::KeptStreams::for_hello(
            hello,
            opener.stream_cap(),
            (
                c.with_label_values(&[transport, "reused"]),
                c.with_label_values(&[transport, "opened"]),
                c.with_label_values(&[transport, "evicted"]),
                c.with_label_values(&[transport, "displaced"]),
            ),
        );
        let session = Arc::new(LiveSession {
            who: identity.clone(),
            tells_retrying: hello.has_capability(crate::proto::CAP_RETRYING),
            takes_handover: hello.has_capability(crate::proto::CAP_HANDOVER),
            info: SessionInfo {
                id: self.next_id.fetch_add(1, Ordering::Relaxed),
                client_id: identity.client_id.clone(),
                transport: transport.to_string(),
                transport_kind,
                remote,
                auth_method: identity.method,
                connected_at: SystemTime::now(),
                instance: hello.instance.clone(),
            },
            opener,
            kept,
            closed: CancellationToken::new(),
            accept_server_mappings: hello.accept_server_mappings,
            tunnels: Mutex::new(Vec::new()),
            claims: Mutex::new(Vec::new()),
            leased: Mutex::new(Vec::new()),
            budget: StreamBudget::new(&self.limits),
            limits: self.limits.clone(),
            announced: self.limits.get(),
            transport_name: transport.to_string(),
            refused: self.metrics.streams_refused_total.clone(),
            stalled: self
                .metrics
                .streams_stalled_total
                .with_label_values(&[transport]),
            notify,
        });
        (session, notifications)
    }

    /// Claims a hello's tunnels: their statuses, and the tunnels to claim again later (their
    /// port is busy).
    async fn claim_hello(
        &self,
        session: &Arc<LiveSession>,
        identity: &Identity,
        hello: &Hello,
    ) -> (Vec<TunnelStatus>, Vec<TunnelRequest>) {
        let mut statuses = Vec::with_capacity(hello.tunnels.len());
        let mut retry = Vec::new();
        // Only a client that says it reads `retrying` is sent it (older tunnelc refuse
        // unknown fields); the claim is retried for every client.
        let tells_retrying = hello.has_capability(crate::proto::CAP_RETRYING);
        for t in &hello.tunnels {
            match self.claim_for(session, identity, t).await {
                Ok((endpoint, subdomain)) => {
                    statuses.push(TunnelStatus::up(&t.name, endpoint, subdomain));
                }
                Err(e) => {
                    let retrying = claim_retry::retriable(&e);
                    tracing::warn!(client = %identity.client_id, tunnel = %t.name, error = %e, retrying, "tunnel refused");
                    if retrying {
                        retry.push(t.clone());
                    }
                    statuses.push(TunnelStatus::refused(
                        &t.name,
                        e.to_string(),
                        retrying && tells_retrying,
                    ));
                }
            }
        }
        (statuses, retry)
    }
}
