//! Webhook pushes of new notification entries, for the application to forward to FCM,
//! APNs or Web Push.
//!
//! The outbox is durable (the store's `pushes` table, written in the same transaction
//! as the entry), so a restart loses no pending push. One worker sends what is due,
//! a few requests at a time, each a signed JSON `POST` with a timeout: `{userId,
//! notification}` with `X-Switchboard-Signature: t=<unix>,v1=<hex hmac-sha256(secret,
//! t + "." + body)>`. A 2xx answer ends a push; anything else is retried with
//! exponential backoff and jitter until `notifications.webhook_max_attempts`. Delivery
//! is at least once: a receiver dedupes by the entry's id. The worker runs apart from
//! message delivery, which a failing endpoint never slows.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use hmac::{Hmac, Mac};
use rand::Rng;
use sha2::Sha256;
use switchboard_protocol::now_millis;
use tokio::sync::Notify;

use crate::config::NotificationsConfig;
use crate::store::{PushRecord, Store, WriteOp};

/// Requests in flight at once.
const CONCURRENCY: usize = 8;
/// Pushes read from the outbox at once.
const BATCH: u32 = 64;
/// How often the outbox is looked at when nothing woke the worker (retries come due).
const POLL: Duration = Duration::from_secs(1);
/// The first retry's delay; each later one doubles, up to `MAX_DELAY`.
const BASE_DELAY_MS: u64 = 500;
const MAX_DELAY_MS: u64 = 10 * 60 * 1000;

/// `t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`.
pub fn signature(secret: &str, t: u64, body: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key");
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body.as_bytes());
    let digest = mac.finalize().into_bytes();
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("t={t},v1={hex}")
}

/// The delay before attempt `attempts + 1`: doubling from `BASE_DELAY_MS`, capped, with
/// the upper half random so that retries of many pushes spread out.
fn backoff_ms(attempts: u32) -> u64 {
    let full = BASE_DELAY_MS
        .saturating_mul(1u64 << attempts.saturating_sub(1).min(30))
        .min(MAX_DELAY_MS);
    full / 2 + rand::rng().random_range(0..=full / 2)
}

pub struct Pusher {
    url: String,
    secret: String,
    max_attempts: u32,
    client: reqwest::Client,
    store: Arc<dyn Store>,
    due: Arc<Notify>,
}

impl Pusher {
    /// A pusher for `cfg`, or None when no webhook is configured.
    pub fn new(
        cfg: &NotificationsConfig,
        store: Arc<dyn Store>,
        due: Arc<Notify>,
    ) -> Option<Pusher> {
        let url = cfg.webhook_url.clone()?;
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(cfg.webhook_timeout_secs))
            .connect_timeout(Duration::from_secs(cfg.webhook_timeout_secs))
            .build()
            .ok()?;
        Some(Pusher {
            url,
            secret: cfg.webhook_secret.clone().unwrap_or_default(),
            max_attempts: cfg.webhook_max_attempts,
            client,
            store,
            due,
        })
    }

    /// Sends what is due, forever (the caller aborts it at shutdown).
    pub async fn run(self) {
        loop {
            let due = match self.store.due_pushes(now_millis(), BATCH).await {
                Ok(due) => due,
                Err(e) => {
                    tracing::warn!(error = %e, "reading the push outbox failed");
                    Vec::new()
                }
            };
            if due.is_empty() {
                let _ = tokio::time::timeout(POLL, self.due.notified()).await;
                continue;
            }
            futures_util::stream::iter(due)
                .for_each_concurrent(CONCURRENCY, |push| self.attempt(push))
                .await;
        }
    }

    async fn attempt(&self, push: PushRecord) {
        let t = now_millis() / 1000;
        let sent = self
            .client
            .post(&self.url)
            .header("content-type", "application/json")
            .header(
                "x-switchboard-signature",
                signature(&self.secret, t, &push.body),
            )
            .body(push.body.clone())
            .send()
            .await;
        let attempts = push.attempts + 1;
        let failure = match sent {
            Ok(r) if r.status().is_success() => None,
            Ok(r) => Some(format!("status {}", r.status())),
            Err(e) => Some(e.to_string()),
        };
        let retry_at = match &failure {
            None => None,
            Some(_) if attempts >= self.max_attempts => None,
            Some(_) => Some(now_millis() + backoff_ms(attempts)),
        };
        if let Some(why) = &failure {
            if retry_at.is_none() {
                tracing::warn!(push = push.id, attempts, error = %why, "push given up");
            } else {
                tracing::debug!(push = push.id, attempts, error = %why, "push failed; will retry");
            }
        }
        let recorded = self
            .store
            .write(WriteOp::PushAttempted {
                id: push.id,
                attempts,
                retry_at,
            })
            .await;
        if let Err(e) = recorded {
            tracing::warn!(error = %e, push = push.id, "recording a push attempt failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_are_hmac_sha256_of_time_and_body() {
        // printf '1700000000.{}' | openssl dgst -sha256 -hmac s
        assert_eq!(
            signature("s", 1_700_000_000, "{}"),
            "t=1700000000,v1=e9232c9945da8456c2dea6b39da7786c07b00bca7a64d5dd1283674713a7b72a"
        );
    }

    #[test]
    fn backoff_doubles_within_a_cap() {
        for attempts in 1..40 {
            let full = (BASE_DELAY_MS << (attempts - 1).min(30)).min(MAX_DELAY_MS);
            let d = backoff_ms(attempts);
            assert!((full / 2..=full).contains(&d), "{attempts}: {d}");
        }
    }
}
