//! One ACME order for one name: the account, the order, one challenge answered per pending
//! authorization, the CSR, the certificate, stored and parsed.

use super::challenges::alpn_certificate;
use super::store::{self, Held, StoreError};
use super::AcmeIssuer;
use instant_acme::{
    Account, AuthorizationStatus, ChallengeType, Identifier, NewAccount, NewOrder, OrderStatus,
    RetryPolicy,
};
use std::time::Duration;
use tunneld_frontend_https::config::ChallengeKind;

/// How long the CA may take to validate, and then to issue.
const POLL: RetryPolicy = RetryPolicy::new()
    .initial_delay(Duration::from_millis(250))
    .backoff(1.5)
    .timeout(Duration::from_secs(90));

#[derive(Debug, thiserror::Error)]
pub enum OrderError {
    #[error("ACME: {0}")]
    Acme(#[from] instant_acme::Error),
    #[error("{kind} challenge failed: {detail}")]
    Challenge { kind: &'static str, detail: String },
    #[error("the CA offered none of the enabled challenge types ({0})")]
    NoChallenge(String),
    #[error("no answer from the CA within {0:?}")]
    Timeout(Duration),
    #[error("the order ended {0:?} without saying why")]
    Unexpected(OrderStatus),
    #[error("key or CSR: {0}")]
    Key(#[from] rcgen::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl OrderError {
    /// The challenge type that failed, for the log.
    pub(super) fn challenge(&self) -> Option<&'static str> {
        match self {
            OrderError::Challenge { kind, .. } => Some(kind),
            _ => None,
        }
    }
}

fn acme_type(k: ChallengeKind) -> ChallengeType {
    match k {
        ChallengeKind::Http01 => ChallengeType::Http01,
        ChallengeKind::TlsAlpn01 => ChallengeType::TlsAlpn01,
    }
}

/// The account (made, or read back from the state dir, once).
pub(super) async fn account(is: &AcmeIssuer) -> Result<Account, OrderError> {
    let mut slot = is.account.lock().await;
    if let Some(a) = &*slot {
        return Ok(a.clone());
    }
    let builder = || match &is.cfg.ca {
        Some(p) => Account::builder_with_root(p),
        None => Account::builder(),
    };
    let account = match store::load_account(&is.dir, &is.cfg.directory) {
        Some(creds) => builder()?.from_credentials(creds).await?,
        None => {
            let contact: Vec<String> = is.cfg.contact_uri().into_iter().collect();
            let contact: Vec<&str> = contact.iter().map(String::as_str).collect();
            let new = NewAccount {
                contact: &contact,
                terms_of_service_agreed: true,
                only_return_existing: false,
            };
            let (a, creds) = builder()?
                .create(&new, is.cfg.directory.clone(), None)
                .await?;
            store::save_account(&is.dir, &creds)?;
            tracing::info!(frontend = %is.frontend, directory = %is.cfg.directory, "ACME account created");
            a
        }
    };
    *slot = Some(account.clone());
    Ok(account)
}

/// Removes the answers an order put up, however it ends.
struct Answers<'a> {
    is: &'a AcmeIssuer,
    name: &'a str,
    tokens: Vec<String>,
}

impl Drop for Answers<'_> {
    fn drop(&mut self) {
        for t in &self.tokens {
            self.is.challenges.remove_http(t);
        }
        self.is.challenges.remove_tls(self.name);
    }
}

/// Orders, validates and fetches a certificate for `name`, and stores it.
pub(super) async fn order(is: &AcmeIssuer, name: &str) -> Result<Held, OrderError> {
    let account = account(is).await?;
    let ids = [Identifier::Dns(name.to_string())];
    let mut order = account.new_order(&NewOrder::new(&ids)).await?;
    let mut answers = Answers {
        is,
        name,
        tokens: Vec::new(),
    };
    let mut used = None;
    let mut auths = order.authorizations();
    while let Some(a) = auths.next().await {
        let mut a = a?;
        if a.status == AuthorizationStatus::Valid {
            continue;
        }
        let offered: Vec<ChallengeType> = a.challenges.iter().map(|c| c.r#type.clone()).collect();
        let Some(kind) = is
            .cfg
            .challenges
            .iter()
            .copied()
            .find(|k| offered.contains(&acme_type(*k)))
        else {
            return Err(OrderError::NoChallenge(format!("{offered:?}")));
        };
        let Some(mut ch) = a.challenge(acme_type(kind)) else {
            return Err(OrderError::NoChallenge(format!("{offered:?}")));
        };
        let ka = ch.key_authorization();
        match kind {
            ChallengeKind::Http01 => {
                is.challenges.put_http(&ch.token, ka.as_str());
                answers.tokens.push(ch.token.clone());
            }
            ChallengeKind::TlsAlpn01 => {
                let digest = ka.digest();
                is.challenges
                    .put_tls(name, alpn_certificate(name, digest.as_ref())?);
            }
        }
        used = Some(kind.as_str());
        ch.set_ready().await?;
    }
    let status = match order.poll_ready(&POLL).await {
        Ok(s) => s,
        Err(instant_acme::Error::Api(p)) => {
            return Err(why_invalid(&mut order, used, Some(problem(&p))).await)
        }
        Err(e) => return Err(e.into()),
    };
    if status != OrderStatus::Ready {
        return Err(why_invalid(&mut order, used, None).await);
    }
    drop(answers);
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(vec![name.to_string()])?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    let csr = params.serialize_request(&key)?;
    order.finalize_csr(csr.der()).await?;
    let chain = order.poll_certificate(&POLL).await?;
    let key_pem = key.serialize_pem();
    store::save_cert(&is.dir, name, &chain, &key_pem)?;
    Ok(store::held(
        chain.as_bytes(),
        key_pem.as_bytes(),
        is.cfg.renew_before,
    )?)
}

/// The CA's own words on a failed validation: the first challenge error of the order's
/// authorizations, else `fallback` (the order's problem).
async fn why_invalid(
    order: &mut instant_acme::Order,
    used: Option<&'static str>,
    fallback: Option<String>,
) -> OrderError {
    let mut auths = order.authorizations();
    while let Some(Ok(mut a)) = auths.next().await {
        let Ok(state) = a.refresh().await else {
            continue;
        };
        for c in &state.challenges {
            if let Some(p) = &c.error {
                let kind = match c.r#type {
                    ChallengeType::Http01 => "http-01",
                    ChallengeType::TlsAlpn01 => "tls-alpn-01",
                    _ => used.unwrap_or("unknown"),
                };
                return OrderError::Challenge {
                    kind,
                    detail: problem(p),
                };
            }
        }
    }
    match fallback {
        Some(detail) => OrderError::Challenge {
            kind: used.unwrap_or("unknown"),
            detail,
        },
        None => OrderError::Unexpected(OrderStatus::Invalid),
    }
}

/// The CA's detail and problem type: `Failed to connect to ... (urn:...:unauthorized)`.
fn problem(p: &instant_acme::Problem) -> String {
    match (&p.detail, &p.r#type) {
        (Some(d), Some(t)) => format!("{d} ({t})"),
        (Some(d), None) => d.clone(),
        _ => p.to_string(),
    }
}
