//! The PostgreSQL store against a real PostgreSQL: it does what the SQLite store does,
//! and what a cluster needs besides: two stores ("nodes") on one database write the
//! same rooms with offsets unique and without gaps, store an idempotency key once,
//! never deadlock, and answer (never hang) when the database goes away.
//!
//! Needs PostgreSQL at 127.0.0.1:5432 with trust auth for user `postgres` and a
//! database `test` (`SWITCHBOARD_TEST_POSTGRES` overrides that URL). Each test makes a
//! database of its own and drops it when it ends, so tests run side by side.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{WAIT, eventually, free_port};
use parking_lot::Mutex;
use serde_json::{Value, json};
use sqlx::{Connection, PgConnection};
use switchboard::metrics::Metrics;
use switchboard::store::{
    Commit, Committed, Completion, DedupeKey, Draft, FileRecord, NewEntry, PostgresOptions,
    PostgresStore, Store, StoreError, UserStore, WriteOp, WriteOutcome,
};
use switchboard_protocol::{HistoryRange, UserInfo, now_millis};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{mpsc, oneshot};

/// The longest any test may take.
const LIMIT: Duration = Duration::from_secs(90);

fn admin_url() -> String {
    std::env::var("SWITCHBOARD_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// Runs a test body, failing it if it takes longer than `LIMIT`.
async fn bounded(body: impl Future<Output = ()>) {
    tokio::time::timeout(LIMIT, body)
        .await
        .expect("the test finished in time");
}

/// Awaits `f`, failing if it takes longer than `WAIT`: nothing here may hang.
async fn soon<T>(what: &str, f: impl Future<Output = T>) -> T {
    match tokio::time::timeout(WAIT, f).await {
        Ok(v) => v,
        Err(_) => panic!("{what} did not finish within {WAIT:?}"),
    }
}

/// A database of the test's own, dropped (with whatever is still connected to it)
/// when the test ends, even by a panic.
struct Db {
    name: String,
}

impl Db {
    async fn create() -> Db {
        let name = format!("sb_{}", uuid::Uuid::new_v4().simple());
        let mut admin = PgConnection::connect(&admin_url())
            .await
            .expect("PostgreSQL runs at 127.0.0.1:5432 (see this file's doc)");
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut admin)
            .await
            .unwrap();
        Db { name }
    }

    /// The database's URL, through `host:port` if given.
    fn url_via(&self, addr: Option<SocketAddr>) -> String {
        let admin = admin_url();
        let (base, _) = admin.rsplit_once('/').unwrap();
        match addr {
            None => format!("{base}/{}", self.name),
            Some(addr) => {
                let (scheme_user, _) = base.rsplit_once('@').unwrap();
                format!("{scheme_user}@{addr}/{}", self.name)
            }
        }
    }

    fn url(&self) -> String {
        self.url_via(None)
    }

    async fn connect(&self) -> PgConnection {
        PgConnection::connect(&self.url()).await.unwrap()
    }

    /// Runs one statement on a connection of its own.
    async fn execute(&self, sql: &str) {
        let mut conn = self.connect().await;
        sqlx::query(sqlx::AssertSqlSafe(sql.to_string()))
            .execute(&mut conn)
            .await
            .unwrap();
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        let drop = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        // Drop cannot await: a thread of its own runs the statement to the end.
        let done = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                if let Ok(mut admin) = PgConnection::connect(&admin_url()).await {
                    let _ = sqlx::query(sqlx::AssertSqlSafe(drop))
                        .execute(&mut admin)
                        .await;
                }
            });
        });
        let _ = done.join();
    }
}

/// One node: its store, and what its commit log gave, in order.
struct Node {
    store: Arc<PostgresStore>,
    /// (room, offset) of each message stored, in commit-log order.
    log: Arc<Mutex<Vec<(String, u64)>>>,
    hub: tokio::task::JoinHandle<()>,
}

impl Node {
    async fn open(db: &Db) -> Node {
        Node::open_with(db, None, false, |_| {}).await
    }

    /// Opens a store on `db` (through `via` if given). With `check`, whoever reads the
    /// commit log checks, before it hears of a batch, that every offset of its rooms up
    /// to the batch's is committed (on a connection of its own).
    async fn open_with(
        db: &Db,
        via: Option<SocketAddr>,
        check: bool,
        tweak: impl FnOnce(&mut PostgresOptions),
    ) -> Node {
        let mut opts = PostgresOptions::new(db.url_via(via));
        opts.max_connections = 4;
        opts.acquire_timeout = Duration::from_secs(1);
        tweak(&mut opts);
        let (commits, mut rx) = mpsc::channel::<Vec<Commit>>(64);
        let store = PostgresStore::open(&opts, commits, Arc::new(Metrics::new()))
            .await
            .expect("the store opens");
        let log: Arc<Mutex<Vec<(String, u64)>>> = Arc::default();
        let mut checker = if check {
            Some(db.connect().await)
        } else {
            None
        };
        let l = log.clone();
        // Stands in for the hub: reads the commit log and answers each sender.
        let hub = tokio::spawn(async move {
            while let Some(batch) = rx.recv().await {
                let mut highest: BTreeMap<String, u64> = BTreeMap::new();
                for c in &batch {
                    if let Ok(m) = &c.result
                        && !m.duplicate
                    {
                        l.lock().push((m.room.to_string(), m.position.offset));
                        let top = highest.entry(m.room.to_string()).or_default();
                        *top = (*top).max(m.position.offset);
                    }
                }
                if let Some(conn) = &mut checker {
                    for (room, top) in highest {
                        let (n, max): (i64, Option<i64>) = sqlx::query_as(
                            "SELECT COUNT(*), MAX(seq) FROM messages WHERE room = $1 AND seq <= $2",
                        )
                        .bind(&room)
                        .bind(top as i64)
                        .fetch_one(&mut *conn)
                        .await
                        .unwrap();
                        assert_eq!(
                            (n as u64, max.map(|m| m as u64)),
                            (top, Some(top)),
                            "offset {top} of {room} is committed, and so is every one before it"
                        );
                    }
                }
                for c in batch {
                    c.done.complete(c.result);
                }
            }
        });
        Node {
            store: Arc::new(store),
            log,
            hub,
        }
    }

    /// Queues `d`; the answer comes once the commit log has it.
    async fn send(&self, d: Draft) -> oneshot::Receiver<Result<Committed, StoreError>> {
        let (tx, rx) = oneshot::channel();
        self.store
            .append(
                d,
                Completion::new(move |r| {
                    let _ = tx.send(r);
                }),
            )
            .await;
        rx
    }

    async fn append(&self, d: Draft) -> Result<Committed, StoreError> {
        let answer = self.send(d).await;
        soon("an append", answer).await.expect("answered")
    }

    async fn write(&self, op: WriteOp) -> WriteOutcome {
        soon("a write", self.store.write(op)).await.unwrap()
    }

    /// Closes the store and waits for the commit log's reader (failing if it did).
    async fn close(self) {
        soon("close", self.store.close()).await;
        soon("the commit log's end", self.hub).await.unwrap();
    }
}

fn alice() -> UserInfo {
    UserInfo {
        id: "alice".into(),
        username: "Alice".into(),
        avatar: None,
    }
}

fn draft(room: &str, content: impl Into<Value>) -> Draft {
    Draft {
        id: uuid::Uuid::now_v7().to_string(),
        room: room.into(),
        sender: alice(),
        content: content.into(),
        kind: "text".into(),
        metadata: json!({}),
        timestamp: now_millis(),
        dedupe: None,
        recipient: None,
        origin: None,
    }
}

fn keyed(room: &str, scope: &str, key: &str) -> Draft {
    let mut d = draft(room, key);
    d.dedupe = Some(DedupeKey {
        scope: scope.into(),
        key: key.into(),
    });
    d
}

/// Appends `drafts` through `node` with up to `window` in flight; the answers in order.
async fn append_all(
    node: &Node,
    drafts: impl IntoIterator<Item = Draft>,
    window: usize,
) -> Vec<Result<Committed, StoreError>> {
    let mut pending = std::collections::VecDeque::new();
    let mut answers = Vec::new();
    for d in drafts {
        if pending.len() >= window {
            let rx: oneshot::Receiver<_> = pending.pop_front().unwrap();
            answers.push(soon("an append", rx).await.expect("answered"));
        }
        pending.push_back(node.send(d).await);
    }
    for rx in pending {
        answers.push(soon("an append", rx).await.expect("answered"));
    }
    answers
}

fn offsets(page: &switchboard::store::Page) -> Vec<u64> {
    page.messages.iter().map(|m| m.offset).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_get_offsets_and_read_back_as_in_sqlite() {
    bounded(async {
        let db = Db::create().await;
        let node = Node::open(&db).await;
        let store = &node.store;
        let head = store.head("general").await.unwrap();
        assert_eq!(head.offset, 0);
        assert_eq!(head.epoch.len(), 16);
        let mut sent = Vec::new();
        for i in 1..=10u64 {
            // Multi-byte text: sizes are bytes.
            let c = node
                .append(draft("general", format!("é{i}")))
                .await
                .unwrap();
            assert_eq!(c.position.offset, i);
            assert_eq!(c.position.epoch, head.epoch);
            assert!(!c.duplicate);
            let payload: Value = serde_json::from_str(c.payload.as_str()).unwrap();
            assert_eq!(payload["offset"], i);
            assert_eq!(payload["roomId"], "general");
            assert_eq!(payload["content"], format!("é{i}"));
            sent.push(c);
        }
        assert_eq!(store.head("general").await.unwrap().offset, 10);
        assert_eq!(store.head("elsewhere").await.unwrap().offset, 0);

        let read = |range, limit| store.read("general", range, limit, usize::MAX);
        assert_eq!(
            offsets(&read(HistoryRange::Latest, 3).await.unwrap()),
            [8, 9, 10]
        );
        assert_eq!(
            offsets(&read(HistoryRange::Before(5), 2).await.unwrap()),
            [3, 4]
        );
        assert_eq!(
            offsets(&read(HistoryRange::Since(7), 10).await.unwrap()),
            [8, 9, 10]
        );
        let between = HistoryRange::Between {
            since: 2,
            before: 6,
        };
        assert_eq!(offsets(&read(between, 10).await.unwrap()), [3, 4, 5]);
        assert_eq!(offsets(&read(between, 2).await.unwrap()), [3, 4]);
        let all = read(HistoryRange::Since(0), 100).await.unwrap();
        assert!(!all.truncated);
        for (m, c) in all.messages.iter().zip(&sent) {
            assert_eq!(
                m.data,
                c.payload.as_str(),
                "the stored payload is the committed one"
            );
        }

        // The byte bound: at least one message, and `truncated` when it cut.
        let size = |o: u64| all.messages[o as usize - 1].data.len();
        let one = store
            .read("general", HistoryRange::Latest, 10, 1)
            .await
            .unwrap();
        assert_eq!((offsets(&one), one.truncated), (vec![10], true));
        let two = store
            .read("general", HistoryRange::Since(0), 10, size(1) + size(2))
            .await
            .unwrap();
        assert_eq!((offsets(&two), two.truncated), (vec![1, 2], true));

        // A gap counts messages and payload bytes, up to max + 1 messages.
        let gap = store.gap("general", 2, 10, 100).await.unwrap();
        assert_eq!(gap.messages, 8);
        assert_eq!(gap.bytes, (3..=10).map(size).sum::<usize>() as u64);
        assert_eq!(store.gap("general", 2, 10, 3).await.unwrap().messages, 4);
        assert_eq!(store.gap("general", 10, 20, 3).await.unwrap().messages, 0);

        let replayed: Vec<u64> =
            futures_util::TryStreamExt::try_collect::<Vec<_>>(store.replay("general", 3, 7))
                .await
                .unwrap()
                .iter()
                .map(|m| m.offset)
                .collect();
        assert_eq!(replayed, [4, 5, 6, 7]);

        // A private message is stored as one, and routed.
        let mut private = draft("dm:alice:bob", "psst");
        private.recipient = Some("bob".into());
        private.origin = Some("conn-1".into());
        let c = node.append(private).await.unwrap();
        let route = c.private.unwrap();
        assert_eq!(
            (route.sender.as_str(), route.recipient.as_str()),
            ("alice", "bob")
        );
        assert_eq!(route.origin.as_deref(), Some("conn-1"));
        let payload: Value = serde_json::from_str(c.payload.as_str()).unwrap();
        assert_eq!(payload["recipient"], "bob");

        let stats = store.stats();
        assert_eq!(stats.messages, 11);
        assert!(stats.commits >= 1 && stats.commits <= 11);
        assert!(store.is_healthy());
        let epoch = head.epoch.clone();
        node.close().await;

        // Reopened, the history goes on: same epoch, the next offset.
        let node = Node::open(&db).await;
        let c = node.append(draft("general", "again")).await.unwrap();
        assert_eq!(c.position.offset, 11);
        assert_eq!(c.position.epoch, epoch);
        node.close().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_commits_what_is_queued_and_refuses_what_comes_after() {
    bounded(async {
        let db = Db::create().await;
        let node = Node::open(&db).await;
        let mut answers = Vec::new();
        for i in 0..500 {
            answers.push(node.send(draft("general", i)).await);
        }
        soon("close", node.store.close()).await;
        let mut offsets = Vec::new();
        for rx in answers {
            offsets.push(rx.await.unwrap().unwrap().position.offset);
        }
        assert_eq!(offsets, (1..=500).collect::<Vec<_>>());
        let late = node.send(draft("general", "late")).await;
        assert!(matches!(late.await.unwrap(), Err(StoreError::Closed)));
        assert!(matches!(
            node.store
                .write(WriteOp::SetStatus {
                    user: "alice".into(),
                    status: "away".into()
                })
                .await,
            Err(StoreError::Closed)
        ));
        assert!(!node.store.is_healthy());
        soon("the commit log's end", node.hub).await.unwrap();
    })
    .await;
}

/// Two nodes open the same fresh database at once: migrations run once, and both
/// have the one epoch.
async fn two_nodes(db: &Db, check: bool) -> (Node, Node) {
    tokio::join!(
        Node::open_with(db, None, check, |_| {}),
        Node::open_with(db, None, check, |_| {})
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_writing_one_room_give_every_offset_once_in_commit_order() {
    bounded(async {
        let db = Db::create().await;
        let (a, b) = two_nodes(&db, true).await;
        assert_eq!(
            a.store.head("r").await.unwrap().epoch,
            b.store.head("r").await.unwrap().epoch
        );
        const PER_APPENDER: usize = 1000;
        let drafts =
            |who: usize| (0..PER_APPENDER).map(move |i| draft("room", format!("{who}-{i}")));
        let (r0, r1, r2, r3) = tokio::join!(
            append_all(&a, drafts(0), 64),
            append_all(&b, drafts(1), 64),
            append_all(&a, drafts(2), 64),
            append_all(&b, drafts(3), 64)
        );
        let n = (4 * PER_APPENDER) as u64;
        let mut by_offset: HashMap<u64, Committed> = HashMap::new();
        for c in [r0, r1, r2, r3].into_iter().flatten() {
            let c = c.expect("every append is stored");
            let offset = c.position.offset;
            assert!(
                by_offset.insert(offset, c).is_none(),
                "offset {offset} twice"
            );
        }
        assert_eq!(
            by_offset.keys().copied().collect::<HashSet<_>>(),
            (1..=n).collect::<HashSet<_>>(),
            "every offset 1..={n} once"
        );
        assert_eq!(a.store.head("room").await.unwrap().offset, n);
        // Every committed message reads back as committed.
        let page = b
            .store
            .read("room", HistoryRange::Since(0), n as u32, usize::MAX)
            .await
            .unwrap();
        assert_eq!(page.messages.len() as u64, n);
        for m in &page.messages {
            assert_eq!(m.data, by_offset[&m.offset].payload.as_str());
        }
        // Each node's commit log is in its commit order: ascending per room.
        for node in [&a, &b] {
            let log = node.log.lock().clone();
            assert_eq!(log.len(), 2 * PER_APPENDER);
            assert!(
                log.windows(2).all(|w| w[0].1 < w[1].1),
                "a node's commit log ascends"
            );
        }
        a.close().await;
        b.close().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_of_many_rooms_in_opposite_orders_never_deadlock() {
    bounded(async {
        let db = Db::create().await;
        // A deadlock would stall both writers for a minute, not be broken after a
        // second: the appends would then time out, and the test fail.
        db.execute(&format!(
            "ALTER DATABASE {} SET deadlock_timeout = '60s'",
            db.name
        ))
        .await;
        let (a, b) = two_nodes(&db, false).await;
        // Locking a room's head takes a while, so that two batches' bumps overlap.
        db.execute(
            "CREATE FUNCTION slow() RETURNS trigger LANGUAGE plpgsql AS \
             $$ BEGIN PERFORM pg_sleep(0.001); RETURN NEW; END $$",
        )
        .await;
        db.execute(
            "CREATE TRIGGER slow BEFORE UPDATE ON rooms FOR EACH ROW EXECUTE FUNCTION slow()",
        )
        .await;
        const ROOMS: usize = 8;
        const PER_APPENDER: usize = 1200;
        let drafts = |reverse: bool, who: usize| {
            (0..PER_APPENDER).map(move |i| {
                let r = if reverse {
                    ROOMS - 1 - i % ROOMS
                } else {
                    i % ROOMS
                };
                draft(&format!("room-{r}"), format!("{who}-{i}"))
            })
        };
        let started = Instant::now();
        let answers = tokio::join!(
            append_all(&a, drafts(false, 0), 32),
            append_all(&b, drafts(true, 1), 32),
            append_all(&a, drafts(true, 2), 32),
            append_all(&b, drafts(false, 3), 32)
        );
        let mut per_room: HashMap<String, Vec<u64>> = HashMap::new();
        for c in [answers.0, answers.1, answers.2, answers.3]
            .into_iter()
            .flatten()
        {
            let c = c.expect("every append is stored");
            per_room
                .entry(c.room.to_string())
                .or_default()
                .push(c.position.offset);
        }
        assert_eq!(per_room.len(), ROOMS);
        for (room, mut got) in per_room {
            got.sort();
            let n = got.len() as u64;
            assert_eq!(
                got,
                (1..=n).collect::<Vec<_>>(),
                "{room}: every offset once"
            );
            assert_eq!(a.store.head(&room).await.unwrap().offset, n);
        }
        let stats = (a.store.stats(), b.store.stats());
        eprintln!(
            "{} messages in {} + {} commits, {:?}",
            4 * PER_APPENDER,
            stats.0.commits,
            stats.1.commits,
            started.elapsed()
        );
        a.close().await;
        b.close().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_sent_to_two_nodes_at_once_is_stored_once() {
    bounded(async {
        let db = Db::create().await;
        let (a, b) = two_nodes(&db, false).await;
        const KEYS: usize = 400;
        let key = |i: usize| format!("k{i}");
        let (from_a, from_b) = tokio::join!(
            append_all(&a, (0..KEYS).map(|i| keyed("room", "alice", &key(i))), 64),
            append_all(&b, (0..KEYS).map(|i| keyed("room", "alice", &key(i))), 64)
        );
        let mut stored = 0;
        let (mut duplicates, mut refused) = (0, 0);
        for (x, y) in from_a.into_iter().zip(from_b) {
            let outcomes: Vec<Committed> = [x, y]
                .into_iter()
                .filter_map(|r| match r {
                    Ok(c) => Some(c),
                    Err(StoreError::Rejected(_)) => {
                        refused += 1;
                        None
                    }
                    Err(e) => panic!("unexpected {e}"),
                })
                .collect();
            let originals: Vec<&Committed> = outcomes.iter().filter(|c| !c.duplicate).collect();
            assert_eq!(originals.len(), 1, "one of the two stored it");
            for c in outcomes.iter().filter(|c| c.duplicate) {
                duplicates += 1;
                assert_eq!(c.position, originals[0].position, "the original's position");
                assert_eq!(c.id, originals[0].id, "the original's id");
            }
            stored += 1;
        }
        assert_eq!(stored, KEYS);
        let mut conn = db.connect().await;
        let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM messages")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        assert_eq!(rows as usize, KEYS, "each key stored once");
        assert_eq!(a.store.head("room").await.unwrap().offset, KEYS as u64);
        assert_eq!(duplicates + refused, KEYS);
        eprintln!("{duplicates} answered as duplicates, {refused} refused");

        // On one node, in one batch: the repeat answers the original.
        let answers = append_all(
            &a,
            [
                keyed("room", "bob", "same"),
                keyed("room", "bob", "same"),
                keyed("room", "carol", "same"),
            ],
            3,
        )
        .await;
        let [x, y, z] = [&answers[0], &answers[1], &answers[2]].map(|r| r.as_ref().unwrap());
        assert!(
            !x.duplicate && y.duplicate && !z.duplicate,
            "keys are per scope"
        );
        assert_eq!(y.position, x.position);
        assert!(y.payload.is_empty());
        a.close().await;
        b.close().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_past_its_window_is_a_new_message() {
    bounded(async {
        let db = Db::create().await;
        let node = Node::open_with(&db, None, false, |o| {
            o.dedupe_window = Duration::from_millis(300)
        })
        .await;
        let first = node.append(keyed("room", "alice", "k")).await.unwrap();
        let again = node.append(keyed("room", "alice", "k")).await.unwrap();
        assert!(again.duplicate);
        let mut conn = db.connect().await;
        let stored_at: i64 = sqlx::query_scalar("SELECT ts FROM dedupe")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        eventually("the window passes", || async {
            now_millis() > stored_at as u64 + 300
        })
        .await;
        let later = node.append(keyed("room", "alice", "k")).await.unwrap();
        assert!(!later.duplicate);
        assert_eq!(later.position.offset, first.position.offset + 1);
        let seq: i64 = sqlx::query_scalar("SELECT seq FROM dedupe")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        assert_eq!(seq, 2, "the key now names the new message");
        node.close().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_another_node_is_committing_is_answered_as_its_duplicate() {
    bounded(async {
        let db = Db::create().await;
        let node = Node::open(&db).await;
        // The other node: a transaction that stored key `k` (in another room) and
        // has not committed yet.
        let mut other = db.connect().await;
        let mut tx = other.begin().await.unwrap();
        for sql in [
            "INSERT INTO rooms (room, head) VALUES ('other', 1)",
            "INSERT INTO messages (room, seq, size, id, ts, data) \
             VALUES ('other', 1, 2, 'theirs', 0, '{}')",
        ] {
            sqlx::query(sql).execute(&mut *tx).await.unwrap();
        }
        sqlx::query(
            "INSERT INTO dedupe (scope, key, room, id, seq, ts) \
             VALUES ('alice', 'k', 'other', 'theirs', 1, $1)",
        )
        .bind(now_millis() as i64)
        .execute(&mut *tx)
        .await
        .unwrap();
        // This node's batch with the same key waits for that commit...
        let answer = node.send(keyed("room", "alice", "k")).await;
        eventually("the writer waits on the key", || async {
            let mut conn = db.connect().await;
            let waiting: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM pg_stat_activity WHERE datname = current_database() \
                 AND application_name = 'switchboard' AND wait_event_type = 'Lock'",
            )
            .fetch_one(&mut conn)
            .await
            .unwrap();
            waiting > 0
        })
        .await;
        tx.commit().await.unwrap();
        // ... then answers the other node's message, marked duplicate.
        let c = soon("the append", answer).await.unwrap().unwrap();
        assert!(c.duplicate);
        assert_eq!(
            (c.id.as_str(), &*c.room, c.position.offset),
            ("theirs", "other", 1)
        );
        // Its bump of `room` was rolled back with its first try: no offset is lost.
        assert_eq!(node.store.head("room").await.unwrap().offset, 0);
        let next = node.append(draft("room", "next")).await.unwrap();
        assert_eq!(next.position.offset, 1);
        node.close().await;
    })
    .await;
}

fn upsert(id: &str, username: &str, avatar: Option<&str>) -> WriteOp {
    WriteOp::UpsertUser {
        id: id.into(),
        username: username.into(),
        avatar: avatar.map(Into::into),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn profiles_statuses_and_contacts() {
    bounded(async {
        let db = Db::create().await;
        let node = Node::open(&db).await;
        let store = &node.store;
        // As in SQLite, a profile answers `Changed(true)`: nobody waits on the figure.
        for op in [
            upsert("alice", "Alice", None),
            upsert("alice", "Alice", None),
            upsert("alice", "Alice", Some("a.png")),
        ] {
            assert_eq!(node.write(op).await, WriteOutcome::Changed(true));
        }
        let a = store.user("alice").await.unwrap().unwrap();
        assert_eq!(
            (a.username.as_str(), a.avatar.as_deref(), a.status.as_str()),
            ("Alice", Some("a.png"), "online")
        );
        assert_eq!(a.last_seen, None);
        assert_eq!(store.user("nobody").await.unwrap(), None);

        // Held writes: a user twice takes its last profile; a write queued later is
        // applied after them.
        store.write_later(upsert("bob", "Bobby", None));
        store.write_later(upsert("carol", "Carol", None));
        store.write_later(upsert("bob", "Bob", Some("b.png")));
        node.write(WriteOp::SetLastSeen {
            user: "bob".into(),
            at: 1234,
        })
        .await;
        let b = store.user("bob").await.unwrap().unwrap();
        assert_eq!(
            (b.username.as_str(), b.avatar.as_deref()),
            ("Bob", Some("b.png"))
        );
        assert_eq!(b.last_seen, Some(1234));

        // A status of a user never seen makes it, named by its id.
        node.write(WriteOp::SetStatus {
            user: "dave".into(),
            status: "busy".into(),
        })
        .await;
        node.write(WriteOp::SetStatus {
            user: "alice".into(),
            status: "offline".into(),
        })
        .await;
        let d = store.user("dave").await.unwrap().unwrap();
        assert_eq!((d.username.as_str(), d.status.as_str()), ("dave", "busy"));
        assert_eq!(
            store.user("alice").await.unwrap().unwrap().status,
            "offline"
        );
        let mut found: Vec<String> = store
            .users(&["alice".into(), "dave".into(), "zed".into()])
            .await
            .unwrap()
            .into_iter()
            .map(|u| u.id)
            .collect();
        found.sort();
        assert_eq!(found, ["alice", "dave"]);

        // Contacts are replaced, not merged.
        let replace = |user: &str, contacts: &[&str]| WriteOp::ReplaceContacts {
            user: user.into(),
            contacts: contacts.iter().map(|c| c.to_string()).collect(),
        };
        node.write(replace("alice", &["carol", "bob", "carol"]))
            .await;
        assert_eq!(store.contacts("alice").await.unwrap(), ["bob", "carol"]);
        assert!(store.lists_contact("alice", "bob").await.unwrap());
        assert!(!store.lists_contact("bob", "alice").await.unwrap());
        node.write(replace("alice", &["dave"])).await;
        assert_eq!(store.contacts("alice").await.unwrap(), ["dave"]);
        node.write(replace("bob", &[])).await;
        assert!(store.contacts("bob").await.unwrap().is_empty());
        let (with_contacts, with_unread) = store.interesting_users().await.unwrap();
        assert_eq!(with_contacts, ["alice"]);
        assert!(with_unread.is_empty());
        node.close().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memberships_markers_and_pages() {
    bounded(async {
        let db = Db::create().await;
        let node = Node::open(&db).await;
        let store = &node.store;
        let add = |room: &str, user: &str| WriteOp::AddMember {
            room: room.into(),
            user: user.into(),
            at: 100,
        };
        assert_eq!(
            node.write(add("r", "alice")).await,
            WriteOutcome::Changed(true)
        );
        assert_eq!(
            node.write(add("r", "alice")).await,
            WriteOutcome::Changed(false)
        );
        for user in ["bob", "carol", "Zed"] {
            node.write(add("r", user)).await;
        }
        node.write(add("s", "alice")).await;
        node.write(add("t", "alice")).await;
        node.write(add("s", "dave")).await;
        node.write(upsert("bob", "Bob", Some("b.png"))).await;
        assert_eq!(store.membership("r", "alice").await.unwrap(), Some(0));
        assert_eq!(store.membership("r", "dave").await.unwrap(), None);

        let mark = |user: &str, offset| WriteOp::MarkRead {
            room: "r".into(),
            user: user.into(),
            offset,
        };
        assert_eq!(node.write(mark("alice", 5)).await, WriteOutcome::Marker(5));
        assert_eq!(
            node.write(mark("alice", 3)).await,
            WriteOutcome::Marker(5),
            "never backwards"
        );
        assert!(matches!(
            store.write(mark("dave", 1)).await,
            Err(StoreError::Rejected(_))
        ));
        assert_eq!(store.membership("r", "alice").await.unwrap(), Some(5));

        // Pages in byte order of ids, with the profile where there is one.
        let page = store.members("r", None, 2).await.unwrap();
        let ids: Vec<&str> = page.iter().map(|m| m.user_id.as_str()).collect();
        assert_eq!(ids, ["Zed", "alice"]);
        assert_eq!(page[0].joined_at, 100);
        let page = store.members("r", Some("alice"), 10).await.unwrap();
        let ids: Vec<&str> = page.iter().map(|m| m.user_id.as_str()).collect();
        assert_eq!(ids, ["bob", "carol"]);
        assert_eq!(
            (page[0].username.as_deref(), page[0].avatar.as_deref()),
            (Some("Bob"), Some("b.png"))
        );
        assert_eq!(page[0].status.as_deref(), Some("online"));
        assert_eq!(page[1].username, None);
        assert_eq!(store.member_count("r", 100).await.unwrap(), 4);
        assert_eq!(
            store.member_count("r", 2).await.unwrap(),
            3,
            "counts cap + 1"
        );
        assert_eq!(
            store.rooms_of("alice", None, 2).await.unwrap(),
            [("r".to_string(), 5), ("s".to_string(), 0)]
        );
        assert_eq!(
            store.rooms_of("alice", Some("s"), 2).await.unwrap(),
            [("t".to_string(), 0)]
        );
        assert!(store.share_a_room("alice", "dave").await.unwrap());
        assert!(!store.share_a_room("bob", "dave").await.unwrap());

        let remove = WriteOp::RemoveMember {
            room: "r".into(),
            user: "bob".into(),
        };
        assert_eq!(
            node.write(remove.clone()).await,
            WriteOutcome::Changed(true)
        );
        assert_eq!(node.write(remove).await, WriteOutcome::Changed(false));
        assert_eq!(store.membership("r", "bob").await.unwrap(), None);
        node.close().await;
    })
    .await;
}

fn entry(id: &str, user: &str, push: bool) -> NewEntry {
    NewEntry {
        id: id.into(),
        user: user.into(),
        push: push
            .then(|| json!({"userId": user, "notification": {"id": id, "count": 1}}).to_string()),
    }
}

fn notify(room: &str, first_offset: u64, entries: Vec<NewEntry>) -> WriteOp {
    WriteOp::Notify {
        room: room.into(),
        kind: "message".into(),
        first_offset,
        at: 1000,
        entries,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notification_entries_count_from_the_room_until_read() {
    bounded(async {
        let db = Db::create().await;
        let node = Node::open(&db).await;
        let store = &node.store;
        for i in 1..=3 {
            node.append(draft("r", format!("hello {i}"))).await.unwrap();
        }
        let opened = node
            .write(notify(
                "r",
                2,
                vec![entry("n1", "bob", true), entry("c1", "carol", false)],
            ))
            .await;
        assert_eq!(
            opened,
            WriteOutcome::Opened(vec![
                ("n1".into(), "bob".into()),
                ("c1".into(), "carol".into())
            ])
        );
        // While unread, the count and preview come from the room.
        let inbox = store.notifications("bob", false, 10).await.unwrap();
        assert_eq!(inbox.len(), 1);
        let n = &inbox[0];
        assert_eq!(
            (n.id.as_str(), n.room.as_str(), n.kind.as_str()),
            ("n1", "r", "message")
        );
        assert_eq!((n.count, n.message.as_str(), n.read), (2, "hello 3", false));
        assert_eq!(
            (n.sender_id.as_str(), n.sender_name.as_str()),
            ("alice", "Alice")
        );
        assert!(n.timestamp > 0);
        // One unread entry per user and room.
        assert_eq!(
            node.write(notify("r", 3, vec![entry("n2", "bob", true)]))
                .await,
            WriteOutcome::Opened(vec![])
        );
        let (_, unread) = store.interesting_users().await.unwrap();
        assert_eq!(
            unread.iter().collect::<HashSet<_>>(),
            HashSet::from([&"bob".to_string(), &"carol".to_string()])
        );

        // The push is queued, retried, then done.
        let due = store.due_pushes(now_millis(), 10).await.unwrap();
        assert_eq!(due.len(), 1);
        let push: Value = serde_json::from_str(&due[0].body).unwrap();
        assert_eq!(push["notification"]["id"], "n1");
        let later = now_millis() + 60_000;
        node.write(WriteOp::PushAttempted {
            id: due[0].id,
            attempts: 1,
            retry_at: Some(later),
        })
        .await;
        assert!(store.due_pushes(now_millis(), 10).await.unwrap().is_empty());
        let retried = store.due_pushes(later, 10).await.unwrap();
        assert_eq!((retried[0].id, retried[0].attempts), (due[0].id, 1));
        node.write(WriteOp::PushAttempted {
            id: due[0].id,
            attempts: 2,
            retry_at: None,
        })
        .await;
        assert!(store.due_pushes(later, 10).await.unwrap().is_empty());

        // Bob comes back: the entry stops at the head; what comes now is no news.
        assert_eq!(
            node.write(WriteOp::FreezeNotifications { user: "bob".into() })
                .await,
            WriteOutcome::Changed(true)
        );
        node.append(draft("r", "hello 4")).await.unwrap();
        let n = &store.notifications("bob", false, 10).await.unwrap()[0];
        assert_eq!((n.count, n.message.as_str()), (2, "hello 3"));

        // He leaves again: the entry takes the new spell on, pushed with its count.
        assert_eq!(
            node.write(notify("r", 5, vec![entry("n3", "bob", true)]))
                .await,
            WriteOutcome::Opened(vec![("n3".into(), "bob".into())])
        );
        let due = store.due_pushes(now_millis(), 10).await.unwrap();
        let push: Value = serde_json::from_str(&due[0].body).unwrap();
        assert_eq!(push["notification"]["id"], "n1", "the entry it reopened");
        assert_eq!(push["notification"]["count"], 3);
        node.append(draft("r", "hello 5")).await.unwrap();
        node.append(draft("r", "hello 6")).await.unwrap();
        let n = &store.notifications("bob", true, 10).await.unwrap()[0];
        assert_eq!(
            (n.id.as_str(), n.count, n.message.as_str()),
            ("n1", 4, "hello 6")
        );

        // Read, it keeps what it showed then.
        let read = |user: &str, ids: Option<Vec<String>>| WriteOp::ReadNotifications {
            user: user.into(),
            ids,
        };
        assert_eq!(
            node.write(read("bob", Some(vec![]))).await,
            WriteOutcome::Count(0)
        );
        assert_eq!(
            node.write(read("bob", Some(vec!["n1".into(), "c1".into()])))
                .await,
            WriteOutcome::Count(1),
            "only bob's own"
        );
        node.append(draft("r", "hello 7")).await.unwrap();
        assert!(
            store
                .notifications("bob", true, 10)
                .await
                .unwrap()
                .is_empty()
        );
        let n = &store.notifications("bob", false, 10).await.unwrap()[0];
        assert_eq!((n.count, n.message.as_str(), n.read), (4, "hello 6", true));
        assert_eq!(
            node.write(read("carol", None)).await,
            WriteOutcome::Count(1)
        );
        assert_eq!(
            node.write(read("carol", None)).await,
            WriteOutcome::Count(0)
        );
        let (_, unread) = store.interesting_users().await.unwrap();
        assert!(unread.is_empty());

        // A new message after reading opens a new entry.
        assert_eq!(
            node.write(notify("r", 8, vec![entry("n4", "bob", false)]))
                .await,
            WriteOutcome::Opened(vec![("n4".into(), "bob".into())])
        );
        let inbox = store.notifications("bob", false, 10).await.unwrap();
        assert_eq!(inbox.len(), 2);

        // A private message's preview: its first hundred characters.
        let mut private = draft("dm", "é".repeat(150));
        private.recipient = Some("carol".into());
        let c = node.append(private).await.unwrap();
        node.write(notify(
            "dm",
            c.position.offset,
            vec![entry("p1", "carol", false)],
        ))
        .await;
        let n = &store.notifications("carol", true, 10).await.unwrap()[0];
        assert_eq!(n.message, "é".repeat(100));
        assert_eq!(n.count, 1);
        node.close().await;
    })
    .await;
}

fn file(id: &str, owner: &str, size: u64, created_at: u64) -> FileRecord {
    FileRecord {
        id: id.into(),
        owner: owner.into(),
        name: format!("{id}.png"),
        size,
        kind: "image/png".into(),
        sha256: "00".repeat(32),
        created_at,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_quotas_shares_and_orphans() {
    bounded(async {
        let db = Db::create().await;
        let node = Node::open(&db).await;
        let store = &node.store;
        let insert = |f: FileRecord, quota: Option<u64>| WriteOp::InsertFile { file: f, quota };
        assert_eq!(
            node.write(insert(file("f1", "alice", 600, 10), Some(1000)))
                .await,
            WriteOutcome::Changed(true)
        );
        assert_eq!(
            node.write(insert(file("f2", "alice", 500, 20), Some(1000)))
                .await,
            WriteOutcome::Changed(false),
            "over the quota"
        );
        assert_eq!(
            node.write(insert(file("f3", "alice", 400, 30), Some(1000)))
                .await,
            WriteOutcome::Changed(true)
        );
        node.write(insert(file("f4", "alice", 5000, 40), None))
            .await;
        node.write(insert(file("b1", "bob", 900, 50), Some(1000)))
            .await;
        assert_eq!(store.usage("alice").await.unwrap(), 6000);
        assert_eq!(store.usage("nobody").await.unwrap(), 0);
        assert_eq!(
            store.file("f1").await.unwrap(),
            Some(file("f1", "alice", 600, 10))
        );
        assert_eq!(store.file("f2").await.unwrap(), None);

        let share = |f: &str, room: &str| WriteOp::ShareFile {
            file: f.into(),
            room: room.into(),
        };
        assert_eq!(
            node.write(share("f1", "r")).await,
            WriteOutcome::Changed(true)
        );
        assert_eq!(
            node.write(share("f1", "r")).await,
            WriteOutcome::Changed(true)
        );
        assert_eq!(
            node.write(share("f1", "q")).await,
            WriteOutcome::Changed(true)
        );
        assert_eq!(
            node.write(share("gone", "r")).await,
            WriteOutcome::Changed(false)
        );
        assert_eq!(store.file_rooms("f1").await.unwrap(), ["q", "r"]);

        let orphans: Vec<String> = store
            .orphan_files(45, 10)
            .await
            .unwrap()
            .into_iter()
            .map(|f| f.id)
            .collect();
        assert_eq!(orphans, ["f3", "f4"]);
        let delete = |id: &str| WriteOp::DeleteOrphanFile { id: id.into() };
        assert_eq!(node.write(delete("f1")).await, WriteOutcome::Changed(false));
        assert_eq!(node.write(delete("f3")).await, WriteOutcome::Changed(true));
        assert_eq!(store.file("f3").await.unwrap(), None);
        assert!(store.file("f1").await.unwrap().is_some());
        node.close().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_then_write_stays_right_with_two_nodes_writing_at_once() {
    bounded(async {
        let db = Db::create().await;
        let (a, b) = two_nodes(&db, false).await;
        let nodes = [&a, &b];

        // Uploads of one owner on both nodes: exactly the quota's worth is kept.
        let uploads = (0..40).map(|i| {
            let node = nodes[i % 2];
            node.write(WriteOp::InsertFile {
                file: file(&format!("f{i}"), "alice", 1000, i as u64),
                quota: Some(10_000),
            })
        });
        let kept = futures_util::future::join_all(uploads)
            .await
            .into_iter()
            .filter(|o| *o == WriteOutcome::Changed(true))
            .count();
        assert_eq!(kept, 10);
        assert_eq!(a.store.usage("alice").await.unwrap(), 10_000);

        // Read markers from both nodes: each answer covers its own offset, and the
        // marker ends at the highest.
        for node in nodes {
            node.write(WriteOp::AddMember {
                room: "r".into(),
                user: "alice".into(),
                at: 1,
            })
            .await;
        }
        let offset_of = |i: u64| (i * 7919) % 1000;
        let top = (0..200).map(offset_of).max().unwrap();
        let marks = (0..200u64).map(|i| {
            let offset = offset_of(i);
            let node = nodes[i as usize % 2];
            async move {
                let marker = node
                    .write(WriteOp::MarkRead {
                        room: "r".into(),
                        user: "alice".into(),
                        offset,
                    })
                    .await;
                (offset, marker)
            }
        });
        for (offset, marker) in futures_util::future::join_all(marks).await {
            let WriteOutcome::Marker(m) = marker else {
                panic!("{marker:?}")
            };
            assert!(m >= offset);
        }
        assert_eq!(a.store.membership("r", "alice").await.unwrap(), Some(top));

        // Both nodes open bob's entry in one room at once: one entry.
        let notes = (0..20).map(|i| {
            nodes[i % 2].write(notify("r", 1, vec![entry(&format!("e{i}"), "bob", true)]))
        });
        let opened: usize = futures_util::future::join_all(notes)
            .await
            .into_iter()
            .map(|o| match o {
                WriteOutcome::Opened(v) => v.len(),
                other => panic!("{other:?}"),
            })
            .sum();
        assert_eq!(opened, 1);
        assert_eq!(
            b.store.notifications("bob", true, 10).await.unwrap().len(),
            1
        );
        assert_eq!(b.store.due_pushes(now_millis(), 10).await.unwrap().len(), 1);

        // Both nodes replace carol's contacts at once: one list wins, whole.
        let lists: [Vec<String>; 2] = [
            (0..20).map(|i| format!("x{i:02}")).collect(),
            (0..20).map(|i| format!("y{i:02}")).collect(),
        ];
        for _ in 0..10 {
            let replaces = (0..2).map(|i| {
                nodes[i].write(WriteOp::ReplaceContacts {
                    user: "carol".into(),
                    contacts: lists[i].clone(),
                })
            });
            futures_util::future::join_all(replaces).await;
            let contacts = a.store.contacts("carol").await.unwrap();
            assert!(contacts == lists[0] || contacts == lists[1], "{contacts:?}");
        }
        a.close().await;
        b.close().await;
    })
    .await;
}

/// A TCP relay to PostgreSQL that can be stopped (its port then refuses connections,
/// and the connections through it are cut) and started again on the same port: the
/// database going away, as a node sees it, without touching the shared server.
struct Relay {
    addr: SocketAddr,
    running: Mutex<Option<(oneshot::Sender<()>, tokio::task::JoinHandle<()>)>>,
}

impl Relay {
    async fn start() -> Relay {
        let relay = Relay {
            addr: SocketAddr::from(([127, 0, 0, 1], free_port())),
            running: Mutex::new(None),
        };
        relay.resume().await;
        relay
    }

    async fn resume(&self) {
        let socket = TcpSocket::new_v4().unwrap();
        socket.set_reuseaddr(true).unwrap();
        socket.bind(self.addr).unwrap();
        let listener = socket.listen(64).unwrap();
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(relay(listener, postgres_addr(), stopped));
        *self.running.lock() = Some((stop, task));
    }

    /// Returns once the port is closed and every relayed connection is cut.
    async fn stop(&self) {
        let running = self.running.lock().take();
        if let Some((stop, task)) = running {
            let _ = stop.send(());
            task.await.unwrap();
        }
    }
}

fn postgres_addr() -> String {
    let admin = admin_url();
    let after_at = admin.rsplit_once('@').unwrap().1;
    after_at.split('/').next().unwrap().to_string()
}

async fn relay(listener: TcpListener, target: String, mut stopped: oneshot::Receiver<()>) {
    let mut conns = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            _ = &mut stopped => break,
            accepted = listener.accept() => {
                let Ok((mut inbound, _)) = accepted else { continue };
                let target = target.clone();
                conns.spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        }
        while conns.try_join_next().is_some() {}
    }
    drop(listener);
    conns.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_that_goes_away_is_answered_fast_and_found_again() {
    bounded(async {
        let db = Db::create().await;
        let relay = Relay::start().await;
        let node = Node::open_with(&db, Some(relay.addr), false, |_| {}).await;
        assert_eq!(
            node.append(draft("r", "before"))
                .await
                .unwrap()
                .position
                .offset,
            1
        );
        assert!(node.store.is_healthy());

        relay.stop().await;
        let started = Instant::now();
        let refused = node.append(draft("r", "while down")).await;
        assert!(
            matches!(refused, Err(StoreError::Unavailable(_))),
            "{refused:?}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        assert!(!node.store.is_healthy());
        // While it is down, every queued draft and write is answered at once.
        let started = Instant::now();
        let answers = append_all(&node, (0..200).map(|i| draft("r", i)), 200).await;
        assert!(
            answers
                .iter()
                .all(|r| matches!(r, Err(StoreError::Unavailable(_))))
        );
        let write = node
            .store
            .write(WriteOp::SetStatus {
                user: "alice".into(),
                status: "away".into(),
            })
            .await;
        assert!(matches!(write, Err(StoreError::Unavailable(_))));
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        let read = soon("a read", node.store.head("r")).await;
        assert!(matches!(read, Err(StoreError::Unavailable(_))));

        // Back: healthy again without traffic, and the history goes on without a gap.
        relay.resume().await;
        eventually("the store is healthy again", || async {
            node.store.is_healthy()
        })
        .await;
        assert_eq!(
            node.append(draft("r", "after"))
                .await
                .unwrap()
                .position
                .offset,
            2
        );
        assert_eq!(node.store.head("r").await.unwrap().offset, 2);
        node.close().await;

        // A store opened on a closed port says so, in about the acquire timeout.
        relay.stop().await;
        let (commits, _log) = mpsc::channel(1);
        let mut opts = PostgresOptions::new(db.url_via(Some(relay.addr)));
        opts.acquire_timeout = Duration::from_millis(500);
        let started = Instant::now();
        let opened = PostgresStore::open(&opts, commits, Arc::new(Metrics::new())).await;
        assert!(matches!(opened, Err(StoreError::Unavailable(_))));
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_killed_under_load_fail_some_appends_and_none_hangs() {
    bounded(async {
        let db = Db::create().await;
        let node = Arc::new(Node::open(&db).await);
        // Each batch's insert takes a while, so the kills find the writer busy.
        db.execute(
            "CREATE FUNCTION slow() RETURNS trigger LANGUAGE plpgsql AS \
             $$ BEGIN PERFORM pg_sleep(0.005); RETURN NULL; END $$",
        )
        .await;
        db.execute("CREATE TRIGGER slow AFTER INSERT ON messages FOR EACH STATEMENT EXECUTE FUNCTION slow()")
            .await;
        let (stop, mut stopped) = oneshot::channel::<()>();
        let failures = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let appender = {
            let node = node.clone();
            let failures = failures.clone();
            tokio::spawn(async move {
                let mut answers = Vec::new();
                let mut i = 0;
                while stopped.try_recv().is_err() {
                    let got = append_all(&node, (i..i + 16).map(|j| draft("r", j)), 16).await;
                    let failed = got.iter().filter(|r| r.is_err()).count();
                    failures.fetch_add(failed, std::sync::atomic::Ordering::Relaxed);
                    answers.extend(got);
                    i += 16;
                }
                answers
            })
        };
        let mut admin = db.connect().await;
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut kills = 0;
        while failures.load(std::sync::atomic::Ordering::Relaxed) == 0 {
            assert!(Instant::now() < deadline, "a kill failed an append");
            sqlx::query(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE datname = current_database() AND pid <> pg_backend_pid()",
            )
            .execute(&mut admin)
            .await
            .unwrap();
            kills += 1;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let down = Instant::now();
        eventually("the store is healthy again", || async {
            node.store.is_healthy()
        })
        .await;
        let recovered = down.elapsed();
        let after = node.append(draft("r", "after")).await;
        assert!(after.is_ok(), "{after:?}");
        stop.send(()).unwrap();
        let answers = soon("the appender", appender).await.unwrap();
        let failed = answers.iter().filter(|r| r.is_err()).count();
        for r in &answers {
            assert!(
                matches!(r, Ok(_) | Err(StoreError::Unavailable(_))),
                "{r:?}"
            );
        }
        // The history has no gap, and holds every append answered as stored (an
        // append cut at its commit may be stored though answered unavailable).
        let mut conn = db.connect().await;
        let stored: Vec<i64> = sqlx::query_scalar("SELECT seq FROM messages WHERE room = 'r' ORDER BY seq")
            .fetch_all(&mut conn)
            .await
            .unwrap();
        assert_eq!(stored, (1..=stored.len() as i64).collect::<Vec<_>>());
        let stored: HashSet<u64> = stored.into_iter().map(|s| s as u64).collect();
        for c in answers.iter().flatten() {
            assert!(stored.contains(&c.position.offset));
        }
        eprintln!(
            "{kills} kills; {} appends, {failed} failed; healthy again within {recovered:?}",
            answers.len()
        );
        Arc::into_inner(node).unwrap().close().await;
    })
    .await;
}
