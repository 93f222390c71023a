//! A store's one writer: batches drafts and user-layer writes into transactions (group
//! commit) and hands the outcomes to the commit log, in commit order.
//!
//! The batching is the same for every database; what a transaction does is the
//! database's own, behind [`Backend`].

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use super::{
    Commit, CommitLog, Committed, Completion, Draft, StoreError, StoreStats, WriteOp, WriteOutcome,
};
use crate::metrics::Metrics;

/// Most messages committed in one transaction.
const MAX_BATCH: usize = 1024;
/// How long a write nobody waits for may be held, to ride along with others (a storm
/// of connects is a storm of profile upserts: each its own transaction would cost a
/// commit, a sync of the disk, each).
const LATER_DELAY: Duration = Duration::from_millis(200);
/// Held writes that make a batch on their own.
const MAX_LATER: usize = 512;
/// How often expired idempotency keys are deleted.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

// Drafts travel by value: boxing them would cost an allocation per message.
#[allow(clippy::large_enum_variant)]
pub(super) enum Job {
    Append(Draft, Completion),
    Write(WriteOp, Reply),
    /// A write nobody waits for: held until the next batch, or `LATER_DELAY`.
    Later(WriteOp),
    Close(oneshot::Sender<()>),
}

/// Where a write's outcome goes; dropped unanswered, it reads as `Closed`.
pub(super) type Reply = oneshot::Sender<Result<WriteOutcome, StoreError>>;

/// One item of a batch.
#[allow(clippy::large_enum_variant)]
pub(super) enum Work {
    Append(Draft),
    Write(WriteOp),
}

/// Who hears how an item of a batch went.
enum Waiter {
    Append(Completion),
    Write(Reply),
    Nobody,
}

/// An item of a batch as a database writes it.
pub(super) enum Item<'a> {
    Message(&'a Draft),
    /// A run of profile upserts, which goes in one statement.
    Profiles(Vec<&'a WriteOp>),
    Write(&'a WriteOp),
}

/// The items of `work`, in order, with each run of profile upserts taken together.
pub(super) fn items(work: &[Work]) -> impl Iterator<Item = Item<'_>> {
    let mut i = 0;
    std::iter::from_fn(move || {
        let w = work.get(i)?;
        i += 1;
        Some(match w {
            Work::Append(d) => Item::Message(d),
            Work::Write(op @ WriteOp::UpsertUser { .. }) => {
                let mut run = vec![op];
                while let Some(Work::Write(next @ WriteOp::UpsertUser { .. })) = work.get(i) {
                    run.push(next);
                    i += 1;
                }
                Item::Profiles(run)
            }
            Work::Write(op) => Item::Write(op),
        })
    })
}

pub(super) enum Outcome {
    Message(Committed),
    Write(WriteOutcome),
}

/// A repeat of `original`'s idempotency key: nothing is stored, nothing published.
pub(super) fn duplicate_of(original: &Committed) -> Committed {
    Committed {
        id: original.id.clone(),
        room: original.room.clone(),
        position: original.position.clone(),
        payload: Default::default(),
        duplicate: true,
        private: None,
    }
}

#[derive(Default)]
pub(super) struct Counters {
    commits: AtomicU64,
    messages: AtomicU64,
}

impl Counters {
    pub(super) fn stats(&self) -> StoreStats {
        StoreStats {
            commits: self.commits.load(Ordering::Relaxed),
            messages: self.messages.load(Ordering::Relaxed),
        }
    }
}

/// What the writer needs of a database.
pub(super) trait Backend {
    /// Writes `work` in one transaction, in order: one outcome per item, or nothing is
    /// written.
    async fn write(&mut self, work: &[Work]) -> Result<Vec<Outcome>, StoreError>;

    /// While the database is known to be unreachable, the error every item is answered
    /// with at once, untried: a queue that waits for it would only grow.
    fn unreachable(&self) -> Option<StoreError> {
        None
    }

    /// Deletes idempotency keys older than the window.
    async fn prune(&mut self);

    /// Lets go of the database: the writer stops.
    async fn close(self);
}

pub(super) struct Writer<B> {
    backend: B,
    commits: CommitLog,
    counters: Arc<Counters>,
    metrics: Arc<Metrics>,
    pruned: Instant,
}

impl<B: Backend> Writer<B> {
    pub(super) fn new(
        backend: B,
        commits: CommitLog,
        counters: Arc<Counters>,
        metrics: Arc<Metrics>,
    ) -> Writer<B> {
        Writer {
            backend,
            commits,
            counters,
            metrics,
            pruned: Instant::now(),
        }
    }

    pub(super) async fn run(mut self, mut jobs: mpsc::Receiver<Job>) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        let mut jobs_buf = Vec::with_capacity(MAX_BATCH);
        // Writes nobody waits for, and when the first of them came.
        let mut later: Vec<WriteOp> = Vec::new();
        let mut held_since: Option<tokio::time::Instant> = None;
        loop {
            let mut due = false;
            let received = match held_since {
                None => jobs.recv_many(&mut jobs_buf, MAX_BATCH).await,
                // `recv_many` is cancel-safe: nothing is lost when the delay wins.
                Some(since) => tokio::select! {
                    n = jobs.recv_many(&mut jobs_buf, MAX_BATCH) => n,
                    _ = tokio::time::sleep_until(since + LATER_DELAY) => {
                        due = true;
                        usize::MAX
                    }
                },
            };
            let mut closing = None;
            for job in jobs_buf.drain(..) {
                match job {
                    Job::Append(d, done) => batch.push((Work::Append(d), Waiter::Append(done))),
                    Job::Write(op, reply) => batch.push((Work::Write(op), Waiter::Write(reply))),
                    Job::Later(op) => {
                        held_since.get_or_insert_with(tokio::time::Instant::now);
                        later.push(op);
                    }
                    Job::Close(tx) => closing = Some(tx),
                }
            }
            // Every sender is gone (or closing): what is held is written first.
            let ending = received == 0 || closing.is_some();
            if !later.is_empty() && (due || ending || !batch.is_empty() || later.len() >= MAX_LATER)
            {
                // Held writes came before what is queued now: they go first.
                let held = later.drain(..).map(|op| (Work::Write(op), Waiter::Nobody));
                batch.splice(0..0, held);
                held_since = None;
            }
            if !batch.is_empty() {
                let outcomes = self.commit(&mut batch).await;
                // The hub is gone (shutting down): dropping the outcomes answers every
                // sender with `Closed`.
                let _ = self.commits.send(outcomes).await;
            }
            if received == 0 {
                self.backend.close().await;
                return;
            }
            if self.pruned.elapsed() >= PRUNE_EVERY {
                self.pruned = Instant::now();
                self.backend.prune().await;
            }
            if let Some(tx) = closing {
                // What is still queued behind the close is answered, not forgotten:
                // each dropped job's completion says `Closed`.
                jobs.close();
                while jobs.try_recv().is_ok() {}
                self.backend.close().await;
                let _ = tx.send(());
                return;
            }
        }
    }

    /// Commits `batch` in one transaction. If that fails for one of its items, each
    /// item is tried on its own, so one bad row does not fail the messages it was
    /// batched with; while the database is unreachable, every item is answered so at
    /// once. Writes are answered here; messages' outcomes go back for the commit log,
    /// in order.
    async fn commit(&mut self, batch: &mut Vec<(Work, Waiter)>) -> Vec<Commit> {
        let (work, waiters): (Vec<Work>, Vec<Waiter>) = batch.drain(..).unzip();
        let results: Vec<Result<Outcome, StoreError>> = if let Some(e) = self.backend.unreachable()
        {
            // Said once when it turned unreachable; not again for every batch refused.
            tracing::debug!(error = %e, items = work.len(), "batch refused");
            work.iter().map(|_| Err(e.clone())).collect()
        } else {
            let started = Instant::now();
            let written = self.write(&work).await;
            self.metrics
                .store_commit_latency
                .record(started.elapsed().as_secs_f64());
            match written {
                Ok(outcomes) => outcomes.into_iter().map(Ok).collect(),
                Err(e) if work.len() == 1 || self.backend.unreachable().is_some() => {
                    tracing::error!(error = %e, items = work.len(), "store write failed");
                    work.iter().map(|_| Err(e.clone())).collect()
                }
                Err(e) => {
                    tracing::warn!(error = %e, items = work.len(), "batch failed; committing its items one by one");
                    let mut results = Vec::with_capacity(work.len());
                    for w in &work {
                        let result = match self.backend.unreachable() {
                            Some(e) => Err(e),
                            None => self
                                .write(std::slice::from_ref(w))
                                .await
                                .map(|mut c| c.remove(0)),
                        };
                        if let Err(e) = &result {
                            tracing::error!(error = %e, "store write failed");
                        }
                        results.push(result);
                    }
                    results
                }
            }
        };
        let stored = results
            .iter()
            .filter(|r| matches!(r, Ok(Outcome::Message(c)) if !c.duplicate))
            .count();
        if stored > 0 {
            self.metrics.store_batch_size.record(stored as f64);
            self.metrics.messages_stored.increment(stored as u64);
            self.counters
                .messages
                .fetch_add(stored as u64, Ordering::Relaxed);
        }
        let mut commits = Vec::with_capacity(results.len());
        for (result, waiter) in results.into_iter().zip(waiters) {
            match waiter {
                Waiter::Append(done) => {
                    let result = result.and_then(|o| match o {
                        Outcome::Message(c) => Ok(c),
                        Outcome::Write(_) => Err(StoreError::Rejected("mismatched outcome".into())),
                    });
                    commits.push(Commit { result, done });
                }
                Waiter::Write(reply) => {
                    let result = result.and_then(|o| match o {
                        Outcome::Write(w) => Ok(w),
                        Outcome::Message(_) => {
                            Err(StoreError::Rejected("mismatched outcome".into()))
                        }
                    });
                    let _ = reply.send(result);
                }
                Waiter::Nobody => {}
            }
        }
        commits
    }

    /// One transaction, counted once it has committed.
    async fn write(&mut self, work: &[Work]) -> Result<Vec<Outcome>, StoreError> {
        let written = self.backend.write(work).await;
        if written.is_ok() {
            self.counters.commits.fetch_add(1, Ordering::Relaxed);
        }
        written
    }
}
