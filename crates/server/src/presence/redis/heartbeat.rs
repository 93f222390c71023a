//! The heartbeat: re-asserts every connection of this node in Redis, so that its
//! entries outlive the TTL while the node lives, come back after Redis lost them, and
//! lose the rooms they left while Redis was unreachable; and retries the removals that
//! failed then.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use redis::Cmd;

use super::Inner;
use super::local::Shard;
use super::queue::Job;

/// Entries (connections and their rooms) per script run.
const CHUNK: usize = 512;

impl Inner {
    /// Starts a heartbeat in the background, unless the previous one is still queuing.
    pub(super) fn heartbeat(self: &Arc<Inner>) {
        if self.beating.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.beating.store(false, Ordering::Release);
            return;
        };
        let inner = self.clone();
        runtime.spawn(async move {
            inner.beat().await;
            inner.beating.store(false, Ordering::Release);
        });
    }

    /// Re-asserts every connection of this node, one job per shard, each a snapshot
    /// queued under its shard's lock (so ordered with the shard's operations).
    async fn beat(&self) {
        for shard in self.local.shards() {
            let permit = match tokio::time::timeout(self.timeout.get(), self.tx.reserve()).await {
                Ok(Ok(permit)) => permit,
                _ => {
                    tracing::warn!("presence heartbeat skipped: queue full");
                    return;
                }
            };
            let mut shard = shard.lock();
            if let Some(job) = self.beat_job(&mut shard) {
                permit.send(job);
            }
        }
    }

    fn beat_job(&self, shard: &mut Shard) -> Option<Job> {
        let forgotten = std::mem::take(&mut shard.forgotten);
        let mut cmds = Vec::new();
        for chunk in forgotten.chunks(CHUNK / 2) {
            let mut cmd = self.script("forget");
            cmd.arg(&self.inst);
            for (client, uid) in chunk {
                cmd.arg(&**client).arg(&**uid);
            }
            cmds.push(cmd);
        }
        let mut current: Option<(Cmd, usize)> = None;
        for (client, conn) in &shard.conns {
            let (cmd, size) = current.get_or_insert_with(|| {
                let mut cmd = self.script("beat");
                cmd.arg(&self.node)
                    .arg(&self.inst)
                    .arg(self.ttl_ms)
                    .arg(self.keep_ms);
                (cmd, 0)
            });
            cmd.arg(&**client)
                .arg(&*conn.uid)
                .arg(&*conn.user)
                .arg(conn.transport)
                .arg(if conn.device { "1" } else { "0" })
                .arg(conn.rooms.len());
            for room in &conn.rooms {
                cmd.arg(&**room);
            }
            *size += 1 + conn.rooms.len();
            if *size >= CHUNK
                && let Some((cmd, _)) = current.take()
            {
                cmds.push(cmd);
            }
        }
        if let Some((cmd, _)) = current {
            cmds.push(cmd);
        }
        (!cmds.is_empty()).then_some(Job {
            cmds,
            reply: None,
            removals: forgotten,
        })
    }
}
