//! The node's one ordered line to Redis: every presence operation of this node is a job
//! on one bounded queue, run by one task in the order it was queued, many per pipeline.
//!
//! Order is the point: a leave queued from a `Drop` and the re-join that follows it
//! reach Redis in that order, and a heartbeat's snapshot lands after every operation
//! queued before it was taken and before every one queued after. Batching keeps the
//! cost at one round trip per batch, however many jobs wait.
//!
//! When the queue is full (Redis far slower than the node), a job that answers fails at
//! once with `Unavailable`; a removal is left to the heartbeat (see [`Local`]).

use std::sync::Arc;
use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::{Cmd, Pipeline, Script, ServerErrorKind, Value};
use tokio::sync::{mpsc, oneshot};

use super::local::Local;
use crate::presence::PresenceError;

/// Jobs waiting for Redis at most; beyond, see the module doc.
pub(super) const CAPACITY: usize = 16 * 1024;
/// Jobs sent in one pipeline at most.
const BATCH: usize = 256;

pub(super) type Reply = Result<Value, PresenceError>;

pub(super) struct Job {
    /// Script calls, run in order; the job's answer is the last one's.
    pub cmds: Vec<Cmd>,
    pub reply: Option<oneshot::Sender<Reply>>,
    /// Connections (client id, user id) this job removes: if it fails, they are
    /// retried by the next heartbeat unless they are back on this node.
    pub removals: Vec<(Arc<str>, Box<str>)>,
}

pub(super) fn unavailable(why: impl std::fmt::Display) -> PresenceError {
    PresenceError::Unavailable(why.to_string())
}

/// Starts the task that runs the jobs; it ends when every sender is gone.
pub(super) fn spawn(
    conn: ConnectionManager,
    script: Arc<Script>,
    local: Arc<Local>,
    timeout: Arc<super::Timeout>,
) -> mpsc::Sender<Job> {
    let (tx, rx) = mpsc::channel(CAPACITY);
    tokio::spawn(run(rx, conn, script, local, timeout));
    tx
}

async fn run(
    mut rx: mpsc::Receiver<Job>,
    mut conn: ConnectionManager,
    script: Arc<Script>,
    local: Arc<Local>,
    timeout: Arc<super::Timeout>,
) {
    let mut jobs = Vec::with_capacity(BATCH);
    while rx.recv_many(&mut jobs, BATCH).await > 0 {
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        let mut sizes = Vec::with_capacity(jobs.len());
        for job in jobs.iter_mut() {
            sizes.push(job.cmds.len());
            for cmd in job.cmds.drain(..) {
                pipe.add_command(cmd);
            }
        }
        let n = pipe.len();
        let results =
            match tokio::time::timeout(timeout.get(), execute(&mut conn, &script, pipe)).await {
                Ok(Ok(results)) => results,
                Ok(Err(e)) => vec![Err(unavailable(e)); n],
                Err(_) => vec![Err(unavailable("redis did not answer in time")); n],
            };
        let mut results = results.into_iter();
        for (job, size) in jobs.drain(..).zip(sizes) {
            let mut answer: Reply = Ok(Value::Nil);
            for _ in 0..size {
                let r = results
                    .next()
                    .unwrap_or_else(|| Err(unavailable("missing reply")));
                if answer.is_ok() {
                    answer = r;
                }
            }
            if let Err(e) = &answer {
                tracing::debug!(error = %e, "presence operation failed");
                for (client, user) in job.removals {
                    local.removal_failed(client, user);
                }
            }
            if let Some(reply) = job.reply {
                let _ = reply.send(answer);
            }
        }
    }
}

/// Runs a pipeline of script calls; if Redis lost the script (a restart), loads it and
/// runs again the calls it refused, in their order.
async fn execute(
    conn: &mut ConnectionManager,
    script: &Script,
    pipe: Pipeline,
) -> redis::RedisResult<Vec<Reply>> {
    let values: Vec<Value> = pipe.query_async(conn).await?;
    let mut results: Vec<Reply> = Vec::with_capacity(values.len());
    let mut missing = Vec::new();
    for (i, v) in values.into_iter().enumerate() {
        match v {
            Value::ServerError(e) if e.kind() == Some(ServerErrorKind::NoScript) => {
                missing.push(i);
                results.push(Ok(Value::Nil));
            }
            Value::ServerError(e) => results.push(Err(unavailable(e))),
            v => results.push(Ok(v)),
        }
    }
    if missing.is_empty() {
        return Ok(results);
    }
    script.load_async(conn).await?;
    let cmds: Vec<&Cmd> = pipe.cmd_iter().collect();
    let mut again = redis::pipe();
    again.ignore_errors();
    for &i in &missing {
        again.add_command(cmds[i].clone());
    }
    let values: Vec<Value> = again.query_async(conn).await?;
    for (i, v) in missing.into_iter().zip(values) {
        results[i] = match v {
            Value::ServerError(e) => Err(unavailable(e)),
            v => Ok(v),
        };
    }
    Ok(results)
}

/// Sends jobs to the queue without waiting.
pub(super) fn try_send(tx: &mpsc::Sender<Job>, job: Job) -> Result<(), PresenceError> {
    tx.try_send(job).map_err(|e| match e {
        mpsc::error::TrySendError::Full(_) => unavailable("presence queue full"),
        mpsc::error::TrySendError::Closed(_) => unavailable("presence stopped"),
    })
}

/// Waits for a job's answer, at most `timeout`.
pub(super) async fn answer(rx: oneshot::Receiver<Reply>, timeout: Duration) -> Reply {
    match tokio::time::timeout(timeout, rx).await {
        Ok(Ok(reply)) => reply,
        Ok(Err(_)) => Err(unavailable("presence stopped")),
        Err(_) => Err(unavailable("redis did not answer in time")),
    }
}
