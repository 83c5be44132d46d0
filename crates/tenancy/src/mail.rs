//! Mail delivery: composing messages into the outbox, and the sender task
//! that delivers them.
//!
//! A flow that sends mail writes the sealed message into the outbox in the
//! same transaction as the change that asks for it (`Store::issue_link` and
//! friends), then wakes the local sender. The sender claims due rows (one
//! replica at a time per row: `FOR UPDATE SKIP LOCKED` and a lease), hands
//! each to the relay with `lettre` (plain SMTP, STARTTLS or implicit TLS) or,
//! on a laptop without SMTP, writes it as an `.eml` file, and deletes the
//! row once the relay accepted it. Failures are retried with exponential
//! backoff; a permanent refusal (5xx) or the last attempt abandons the mail.
//! Nothing is logged of a message but its id, kind and tenant: it holds a link.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use authd_core::crypto::SealContext;
use authd_core::{Error, Result, TenantId};
use authd_store::{OutboxMail, OutboxStats, QueuedMail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chrono::{DateTime, Utc};
use lettre::message::{Mailbox, MultiPart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{Address, AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, watch};

use crate::{Deps, metrics};

const SEAL_PURPOSE: &str = "mail-outbox";

/// Where mail goes.
pub enum Transport {
    /// An SMTP relay.
    Smtp(AsyncSmtpTransport<Tokio1Executor>),
    /// `.eml` files in this directory (the embedded default without SMTP).
    Files(PathBuf),
}

/// Timing of the sender.
#[derive(Clone, Copy, Debug)]
pub struct SenderTiming {
    /// The longest the sender sleeps when nothing is due and nothing woke
    /// it (for mail a replica queued before it stopped). It wakes at once
    /// for mail queued in this process, and when the next queued mail comes
    /// due (a retry, another sender's lease running out).
    pub poll_interval: Duration,
    /// The first retry's delay; each next one doubles, up to `retry_max`.
    pub retry_base: Duration,
    pub retry_max: Duration,
    /// Attempts before a mail is abandoned.
    pub max_attempts: u32,
    /// How long one delivery may take (the SMTP timeout); a claimed batch
    /// is only worked on while its lease leaves room for one more.
    pub send_timeout: Duration,
}

impl Default for SenderTiming {
    fn default() -> Self {
        Self {
            poll_interval: Duration::from_secs(60),
            retry_base: Duration::from_secs(2),
            retry_max: Duration::from_secs(600),
            max_attempts: 60,
            send_timeout: Duration::from_secs(10),
        }
    }
}

/// The mail side of the service: the sender address, the transport and the
/// sender's wake-up call.
pub struct Mailer {
    pub from: Address,
    pub transport: Transport,
    pub timing: SenderTiming,
    wake: Notify,
}

/// How `AUTHD_SMTP_URL` reads.
pub struct SmtpSettings {
    pub url: String,
    /// Extra trusted root certificates (PEM), for a relay with a private CA.
    pub ca_pem: Option<Vec<u8>>,
    pub timeout: Duration,
}

impl Mailer {
    pub fn new(from: Address, transport: Transport, timing: SenderTiming) -> Self {
        Self { from, transport, timing, wake: Notify::new() }
    }

    /// Parses `smtp://` (plain, for a local relay), `smtp+starttls://` and
    /// `smtps://` (implicit TLS) URLs, with credentials in the user info.
    pub fn smtp_transport(s: &SmtpSettings) -> Result<AsyncSmtpTransport<Tokio1Executor>> {
        let bad = |m: &str| Error::bad_input("AUTHD_SMTP_URL", m.to_owned());
        let url = url::Url::parse(&s.url).map_err(|_| bad("not a URL"))?;
        let host = url.host_str().ok_or_else(|| bad("no host"))?.trim_matches(['[', ']']).to_owned();
        let tls_params = || -> Result<TlsParameters> {
            let mut b = TlsParameters::builder(host.clone());
            if let Some(pem) = &s.ca_pem {
                let cert = Certificate::from_pem(pem).map_err(|e| bad(&format!("AUTHD_SMTP_CA_FILE: {e}")))?;
                b = b.add_root_certificate(cert);
            }
            b.build_rustls().map_err(|e| bad(&format!("TLS: {e}")))
        };
        let (tls, default_port) = match url.scheme() {
            "smtp" => (Tls::None, 25),
            "smtp+starttls" => (Tls::Required(tls_params()?), 587),
            "smtps" => (Tls::Wrapper(tls_params()?), 465),
            _ => return Err(bad("the scheme is smtp, smtp+starttls or smtps")),
        };
        let mut b = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host.as_str())
            .port(url.port().unwrap_or(default_port))
            .tls(tls)
            .timeout(Some(s.timeout));
        if !url.username().is_empty() {
            let decode = |v: &str| percent_encoding::percent_decode_str(v).decode_utf8_lossy().into_owned();
            let user = decode(url.username());
            let pass = decode(url.password().unwrap_or(""));
            b = b.credentials(Credentials::new(user, pass));
        }
        Ok(b.build())
    }

    /// Wakes the local sender (a mail was queued).
    pub fn wake(&self) {
        self.wake.notify_one();
    }
}

/// A composed message as sealed into the outbox.
#[derive(Serialize, Deserialize)]
struct Sealed {
    from: String,
    to: String,
    /// The RFC 5322 message, base64.
    raw: String,
}

/// A message to queue.
pub struct Compose<'a> {
    pub tenant: TenantId,
    pub tenant_name: &'a str,
    pub to: &'a str,
    pub kind: authd_core::mail::MailKind,
    pub rendered: &'a authd_core::mail::Rendered,
}

/// Builds the message (plain text and HTML alternatives, the tenant's name
/// as the sender's display name) and seals it for the outbox.
pub fn compose(deps: &Deps, mailer: &Mailer, c: &Compose<'_>) -> Result<OutboxMail> {
    let to: Address = c.to.parse().map_err(|_| Error::bad_input("email", "not a deliverable address"))?;
    let display = c.tenant_name.chars().filter(|ch| !ch.is_control()).collect::<String>();
    let message = lettre::Message::builder()
        .from(Mailbox::new(Some(display), mailer.from.clone()))
        .to(Mailbox::new(None, to.clone()))
        .subject(c.rendered.subject.clone())
        .multipart(MultiPart::alternative_plain_html(c.rendered.text.clone(), c.rendered.html.clone()))
        .map_err(|e| Error::internal(format!("composing a mail: {e}")))?;
    let sealed =
        Sealed { from: mailer.from.to_string(), to: to.to_string(), raw: STANDARD.encode(message.formatted()) };
    let id = uuid::Uuid::now_v7();
    let json = zeroize::Zeroizing::new(serde_json::to_vec(&sealed).map_err(Error::internal)?);
    let row = id.to_string();
    let message_sealed = deps.keyring.seal(&json, &SealContext { tenant: c.tenant, purpose: SEAL_PURPOSE, row: &row });
    Ok(OutboxMail { id, kind: c.kind.as_str().to_owned(), message_sealed, created_at: Utc::now() })
}

/// Why one delivery failed.
enum Failure {
    /// Try again later.
    Transient(String),
    /// The relay refused it for good, or it cannot be read.
    Permanent(String),
}

async fn deliver(deps: &Deps, mailer: &Mailer, mail: &QueuedMail) -> std::result::Result<(), Failure> {
    let row = mail.id.to_string();
    let ctx = SealContext { tenant: mail.tenant_id, purpose: SEAL_PURPOSE, row: &row };
    let json = deps.keyring.open(&mail.message_sealed, &ctx).map_err(|e| Failure::Permanent(e.to_string()))?;
    let sealed: Sealed = serde_json::from_slice(&json).map_err(|e| Failure::Permanent(e.to_string()))?;
    let raw = zeroize::Zeroizing::new(STANDARD.decode(&sealed.raw).map_err(|e| Failure::Permanent(e.to_string()))?);
    match &mailer.transport {
        Transport::Smtp(smtp) => {
            let from: Address = sealed.from.parse().map_err(|_| Failure::Permanent("bad sender".into()))?;
            let to: Address = sealed.to.parse().map_err(|_| Failure::Permanent("bad recipient".into()))?;
            let envelope =
                lettre::address::Envelope::new(Some(from), vec![to]).map_err(|e| Failure::Permanent(e.to_string()))?;
            match smtp.send_raw(&envelope, &raw).await {
                Ok(_) => Ok(()),
                Err(e) if e.is_permanent() => Err(Failure::Permanent(smtp_error(&e))),
                Err(e) => Err(Failure::Transient(smtp_error(&e))),
            }
        }
        Transport::Files(dir) => {
            let path = dir.join(format!("{}.eml", mail.id));
            let tmp = dir.join(format!(".{}.eml.tmp", mail.id));
            let write = async {
                tokio::fs::create_dir_all(dir).await?;
                tokio::fs::write(&tmp, &raw[..]).await?;
                tokio::fs::rename(&tmp, &path).await
            };
            write.await.map_err(|e| Failure::Transient(format!("{}: {e}", dir.display())))?;
            // The path, never the link: the developer opens the file.
            tracing::info!(tenant = %mail.tenant_id, kind = %mail.kind, path = %path.display(), "mail written");
            Ok(())
        }
    }
}

/// An SMTP error without the server's free text beyond its status line.
fn smtp_error(e: &lettre::transport::smtp::Error) -> String {
    let s = e.to_string();
    s.chars().take(200).collect()
}

fn backoff(timing: &SenderTiming, attempts: u32) -> Duration {
    let factor = 2u32.saturating_pow(attempts.saturating_sub(1).min(20));
    timing.retry_base.saturating_mul(factor).min(timing.retry_max)
}

const BATCH: u32 = 10;

/// How long a claimed batch is kept from other senders: room for every
/// mail of the batch to take the whole send timeout, and a margin.
fn lease(timing: &SenderTiming) -> Duration {
    timing.send_timeout.saturating_mul(BATCH) + Duration::from_secs(30)
}
/// How often the queue's size and age are read for the metrics while mail
/// waits in it (an empty queue is read each time the sender sleeps).
const STATS_EVERY: Duration = Duration::from_secs(10);

/// The shortest sleep: a mail that is due but could not be claimed (another
/// sender's claim in flight) is looked at again after this.
const MIN_WAIT: Duration = Duration::from_millis(50);

/// Delivers the outbox until `stop` turns true. One per process.
pub async fn run_sender(deps: Arc<Deps>, mailer: Arc<Mailer>, mut stop: watch::Receiver<bool>) {
    loop {
        if *stop.borrow() {
            return;
        }
        let lease = lease(&mailer.timing);
        let claimed_at = tokio::time::Instant::now();
        let claimed = match deps.store.claim_mail(Utc::now(), lease, BATCH).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "mail outbox unavailable");
                Vec::new()
            }
        };
        let full = claimed.len() == BATCH as usize;
        for mail in claimed {
            // Never send once the lease may have run out: another replica
            // may hold the row by then. Hand it back instead.
            if claimed_at.elapsed() + mailer.timing.send_timeout + Duration::from_secs(5) > lease {
                if let Err(e) = deps.store.mail_deferred(mail.id, Utc::now(), "lease ran short").await {
                    tracing::warn!(error = %e, mail = %mail.id, "could not hand a claimed mail back");
                }
                continue;
            }
            settle(&deps, &mailer, &mail).await;
        }
        if full {
            continue;
        }
        // Nothing more to claim now: sleep until the next queued mail comes
        // due, mail is queued in this process, or `poll_interval` passes.
        let wait = match deps.store.outbox_stats().await {
            Ok(stats) => {
                metrics::MAIL_QUEUED.store(stats.queued, Ordering::Relaxed);
                let age = stats.oldest.map(|t| (Utc::now() - t).num_seconds().max(0)).unwrap_or(0);
                metrics::MAIL_OLDEST_SECONDS.store(u64::try_from(age).unwrap_or(0), Ordering::Relaxed);
                idle_wait(&mailer.timing, &stats, Utc::now())
            }
            Err(e) => {
                tracing::warn!(error = %e, "mail outbox unavailable");
                mailer.timing.poll_interval.min(mailer.timing.retry_base).max(MIN_WAIT)
            }
        };
        tokio::select! {
            _ = mailer.wake.notified() => {}
            _ = tokio::time::sleep(wait) => {}
            _ = stop.changed() => {}
        }
    }
}

/// How long the sender sleeps with nothing to claim: until the next queued
/// mail comes due, at most `poll_interval`, and at most [`STATS_EVERY`]
/// while mail waits (so that the queue's gauges stay current).
fn idle_wait(timing: &SenderTiming, stats: &OutboxStats, now: DateTime<Utc>) -> Duration {
    let mut wait = timing.poll_interval;
    if stats.queued > 0 {
        wait = wait.min(STATS_EVERY);
    }
    if let Some(due) = stats.next_due {
        wait = wait.min((due - now).to_std().unwrap_or(Duration::ZERO));
    }
    wait.max(MIN_WAIT)
}

async fn settle(deps: &Deps, mailer: &Mailer, mail: &QueuedMail) {
    let outcome = deliver(deps, mailer, mail).await;
    let result = match outcome {
        Ok(()) => {
            metrics::MAIL_SENT.fetch_add(1, Ordering::Relaxed);
            deps.store.mail_delivered(mail.id).await
        }
        Err(Failure::Permanent(cause)) => {
            metrics::MAIL_FAILED.fetch_add(1, Ordering::Relaxed);
            tracing::error!(tenant = %mail.tenant_id, mail = %mail.id, kind = %mail.kind, cause, "mail refused for good; dropped");
            deps.store.mail_abandoned(mail.id).await
        }
        Err(Failure::Transient(cause)) if mail.attempts >= mailer.timing.max_attempts => {
            metrics::MAIL_FAILED.fetch_add(1, Ordering::Relaxed);
            tracing::error!(tenant = %mail.tenant_id, mail = %mail.id, kind = %mail.kind, attempts = mail.attempts, cause, "mail undeliverable after every attempt; dropped");
            deps.store.mail_abandoned(mail.id).await
        }
        Err(Failure::Transient(cause)) => {
            metrics::MAIL_RETRIES.fetch_add(1, Ordering::Relaxed);
            let delay = backoff(&mailer.timing, mail.attempts);
            tracing::warn!(tenant = %mail.tenant_id, mail = %mail.id, kind = %mail.kind, attempts = mail.attempts, retry_in_ms = delay.as_millis() as u64, cause, "mail delivery failed; will retry");
            let at = Utc::now() + chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::seconds(60));
            deps.store.mail_deferred(mail.id, at, &cause).await
        }
    };
    if let Err(e) = result {
        // The lease runs out and the mail is claimed again: for a delivered
        // one that means a duplicate, the one case at-least-once allows.
        tracing::warn!(error = %e, mail = %mail.id, "could not record the delivery outcome");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let t = SenderTiming {
            retry_base: Duration::from_secs(2),
            retry_max: Duration::from_secs(60),
            ..SenderTiming::default()
        };
        assert_eq!(backoff(&t, 1), Duration::from_secs(2));
        assert_eq!(backoff(&t, 2), Duration::from_secs(4));
        assert_eq!(backoff(&t, 5), Duration::from_secs(32));
        assert_eq!(backoff(&t, 6), Duration::from_secs(60));
        assert_eq!(backoff(&t, 60), Duration::from_secs(60));
    }

    /// With nothing to claim, the sender sleeps until the next mail comes
    /// due, never longer than `poll_interval`, at most STATS_EVERY while
    /// mail waits, and never a busy loop.
    #[test]
    fn the_idle_sender_sleeps_until_the_next_mail_is_due() {
        let t = SenderTiming { poll_interval: Duration::from_secs(60), ..SenderTiming::default() };
        let now = Utc::now();
        let stats = |queued, due: Option<i64>| OutboxStats {
            queued,
            oldest: None,
            next_due: due.map(|ms| now + chrono::Duration::milliseconds(ms)),
        };
        assert_eq!(idle_wait(&t, &stats(0, None), now), Duration::from_secs(60), "an empty outbox");
        assert_eq!(idle_wait(&t, &stats(1, Some(3_000)), now), Duration::from_secs(3), "a retry due in 3 s");
        assert_eq!(idle_wait(&t, &stats(1, Some(300_000)), now), STATS_EVERY, "the gauges stay current");
        assert_eq!(idle_wait(&t, &stats(1, Some(-5_000)), now), MIN_WAIT, "due already: soon, not at once");
        let short = SenderTiming { poll_interval: Duration::from_millis(100), ..t };
        assert_eq!(idle_wait(&short, &stats(1, Some(3_000)), now), Duration::from_millis(100));
    }

    #[test]
    fn smtp_urls() {
        let s = |url: &str| SmtpSettings { url: url.into(), ca_pem: None, timeout: Duration::from_secs(5) };
        assert!(Mailer::smtp_transport(&s("smtp://127.0.0.1:2525")).is_ok());
        assert!(Mailer::smtp_transport(&s("smtp+starttls://user:p%40ss@mail.example.com")).is_ok());
        assert!(Mailer::smtp_transport(&s("smtps://mail.example.com:465")).is_ok());
        assert!(Mailer::smtp_transport(&s("http://mail.example.com")).is_err());
        assert!(Mailer::smtp_transport(&s("not a url")).is_err());
    }
}
