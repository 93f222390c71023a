//! File bytes in PostgreSQL as a cluster sees them: two nodes on one database, each with
//! its own pool and storage. What one node uploads the other reads, whole and by range;
//! an upload is invisible until committed and leaves nothing when dropped; nodes that
//! start together create the tables once; a link one node signs, the other verifies.
//!
//! Needs PostgreSQL at 127.0.0.1:5432 (user `postgres`, trust auth, database `test`);
//! each test works in a database of its own, dropped at its end.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{FutureExt, StreamExt};
use sha2::{Digest, Sha256};
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::{AssertSqlSafe, Connection, PgConnection};
use switchboard::files::{
    FileStorage, Files, LinkError, NewUpload, PostgresStorage, shared_url_key,
};
use switchboard::metrics::Metrics;
use switchboard::store::{SqliteOptions, SqliteStore, Store};

const ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/test";
const WAIT: Duration = Duration::from_secs(10);
const CHUNK: u64 = PostgresStorage::CHUNK as u64;

/// A database of one's own, dropped with the guard.
struct TestDb {
    name: String,
}

impl TestDb {
    async fn create() -> TestDb {
        let name = format!("sb_{}", uuid::Uuid::new_v4().simple());
        let mut admin = PgConnection::connect(ADMIN_URL)
            .await
            .expect("PostgreSQL at 127.0.0.1:5432, database test");
        sqlx::query(AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut admin)
            .await
            .expect("CREATE DATABASE");
        let _ = admin.close().await;
        TestDb { name }
    }

    /// A node's own pool.
    async fn pool(&self) -> PgPool {
        PgPoolOptions::new()
            .max_connections(4)
            .connect(&format!("postgres://postgres@127.0.0.1:5432/{}", self.name))
            .await
            .expect("connect to the test database")
    }

    /// A node: its pool and its storage.
    async fn node(&self) -> (PgPool, PostgresStorage) {
        let pool = self.pool().await;
        let storage = PostgresStorage::open(pool.clone()).await.expect("open");
        (pool, storage)
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        // Drop cannot await on the test's runtime: a thread with a runtime of its own.
        let name = self.name.clone();
        let dropped = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                let mut admin = PgConnection::connect(ADMIN_URL).await?;
                sqlx::query(AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                )))
                .execute(&mut admin)
                .await?;
                admin.close().await
            })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("dropping test database {} failed", self.name);
        }
    }
}

/// The byte at offset `i` of every test file: no period that divides the chunk size,
/// so a chunk read from the wrong place shows.
fn byte_at(i: u64) -> u8 {
    (i % 251) as u8 ^ (i / 251) as u8
}

fn bytes(start: u64, end: u64) -> Vec<u8> {
    (start..end).map(byte_at).collect()
}

fn new_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// Uploads `size` bytes of the test pattern, made and written `piece` bytes at a time.
async fn put(storage: &dyn FileStorage, id: &str, size: u64, piece: u64) {
    let mut upload = storage.create(id).await.expect("create");
    let mut at = 0;
    while at < size {
        let end = (at + piece).min(size);
        upload.write(&bytes(at, end)).await.expect("write");
        at = end;
    }
    upload.commit().await.expect("commit");
}

/// Reads a range whole, checking that it came in pieces of at most a chunk.
async fn read(storage: &dyn FileStorage, id: &str, start: u64, len: u64) -> Vec<u8> {
    let mut stream = storage.open(id, start, len).await.expect("open");
    let mut out = Vec::new();
    while let Some(piece) = stream.next().await {
        let piece = piece.expect("read");
        assert!(!piece.is_empty() && piece.len() as u64 <= CHUNK);
        out.extend_from_slice(&piece);
    }
    out
}

async fn count(pool: &PgPool, table: &str, id: &str) -> i64 {
    sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT count(*) FROM {table} WHERE id = $1"
    )))
    .bind(id)
    .fetch_one(pool)
    .await
    .expect("count")
}

/// Waits until file `id` has no blob and no chunk left.
async fn gone(pool: &PgPool, id: &str) {
    tokio::time::timeout(WAIT, async {
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        loop {
            tick.tick().await;
            if count(pool, "file_chunks", id).await == 0 && count(pool, "file_blobs", id).await == 0
            {
                return;
            }
        }
    })
    .await
    .expect("the upload's rows are removed");
}

async fn is_missing(storage: &PostgresStorage, id: &str) -> bool {
    match storage.open(id, 0, 1).await {
        Err(e) => e.kind() == std::io::ErrorKind::NotFound,
        Ok(_) => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_uploaded_on_one_node_is_read_on_the_other_whole_and_by_range() {
    let db = TestDb::create().await;
    let (_pool1, node1) = db.node().await;
    let (_pool2, node2) = db.node().await;

    // Three chunks and a partial one, written in pieces that straddle chunk boundaries.
    let size = 3 * CHUNK + 1234;
    let id = new_id();
    put(&node1, &id, size, 100_003).await;

    assert_eq!(read(&node2, &id, 0, size).await, bytes(0, size));
    let ranges = [
        (0, 1),
        (CHUNK - 1, 2), // the last byte of a chunk and the first of the next
        (CHUNK, CHUNK), // exactly one chunk
        (CHUNK - 10, 2 * CHUNK + 20), // three chunks, partly
        (3 * CHUNK, 1234), // the last, partial chunk
        (3 * CHUNK + 1000, 234), // the end of the last chunk
        (17, size - 17), // all but the start
    ];
    for (start, len) in ranges {
        assert_eq!(
            read(&node2, &id, start, len).await,
            bytes(start, start + len),
            "range {start}+{len}"
        );
    }
    // Past the end: what there is, like a file.
    assert_eq!(
        read(&node2, &id, size - 5, 100).await,
        bytes(size - 5, size)
    );
    assert!(read(&node2, &id, size, 10).await.is_empty());
    assert!(read(&node2, &id, size + 10, 10).await.is_empty());
    assert!(read(&node2, &id, 5, 0).await.is_empty());

    // Node 1 reads it too, and an empty file is a file.
    assert_eq!(read(&node1, &id, 0, size).await, bytes(0, size));
    let empty = new_id();
    put(&node2, &empty, 0, 1).await;
    assert!(read(&node1, &empty, 0, 10).await.is_empty());

    assert!(is_missing(&node2, &new_id()).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_file_is_written_and_read_a_chunk_at_a_time() {
    let db = TestDb::create().await;
    let (pool1, node1) = db.node().await;
    let (_pool2, node2) = db.node().await;

    let size = 8 * 1024 * 1024 + 77;
    let piece = 64 * 1024;
    let id = new_id();
    let mut upload = node1.create(&id).await.unwrap();
    let mut written = Sha256::new();
    let mut at = 0;
    while at < size {
        let end = (at + piece).min(size);
        let part = bytes(at, end);
        written.update(&part);
        upload.write(&part).await.unwrap();
        at = end;
        if at == 4 * CHUNK + 1 {
            // Full chunks are in the database already, and nobody can read them yet.
            assert_eq!(count(&pool1, "file_chunks", &id).await, 4);
            assert!(is_missing(&node2, &id).await);
        }
    }
    assert!(is_missing(&node2, &id).await);
    upload.commit().await.unwrap();
    assert_eq!(
        count(&pool1, "file_chunks", &id).await as u64,
        size.div_ceil(CHUNK)
    );

    // Hashed as it streams: never whole in memory here either.
    let mut stream = node2.open(&id, 0, size).await.unwrap();
    let mut read = Sha256::new();
    let (mut total, mut pieces) = (0u64, 0);
    while let Some(part) = stream.next().await {
        let part = part.unwrap();
        assert!(part.len() as u64 <= CHUNK);
        let expected: Bytes = bytes(total, total + part.len() as u64).into();
        assert_eq!(part, expected, "at {total}");
        read.update(&part);
        total += part.len() as u64;
        pieces += 1;
    }
    assert_eq!(total, size);
    assert_eq!(pieces, size.div_ceil(CHUNK));
    assert_eq!(read.finalize(), written.finalize());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_dropped_before_its_commit_is_never_read_and_leaves_nothing() {
    let db = TestDb::create().await;
    let (pool1, node1) = db.node().await;
    let (_pool2, node2) = db.node().await;

    // Dropped between writes, with two chunks stored and half of one buffered.
    let id = new_id();
    let mut upload = node1.create(&id).await.unwrap();
    upload
        .write(&bytes(0, 2 * CHUNK + CHUNK / 2))
        .await
        .unwrap();
    assert_eq!(count(&pool1, "file_chunks", &id).await, 2);
    assert!(is_missing(&node2, &id).await);
    drop(upload);
    gone(&pool1, &id).await;
    assert!(is_missing(&node2, &id).await);

    // Dropped while a chunk's insert is in flight: the insert lands, then goes.
    let id = new_id();
    let mut upload = node1.create(&id).await.unwrap();
    upload.write(&bytes(0, CHUNK - 10)).await.unwrap();
    let more = bytes(CHUNK - 10, 3 * CHUNK);
    let _ = upload.write(&more).now_or_never();
    drop(upload);
    gone(&pool1, &id).await;
    assert!(is_missing(&node2, &id).await);

    // A node that died mid-upload: another node's sweep removes what it left.
    let id = new_id();
    let mut upload = node1.create(&id).await.unwrap();
    upload.write(&bytes(0, CHUNK + 1)).await.unwrap();
    std::mem::forget(upload);
    assert!(is_missing(&node2, &id).await);
    assert_eq!(
        node2
            .sweep_abandoned(Duration::from_secs(3600))
            .await
            .unwrap(),
        0
    );
    assert_eq!(count(&pool1, "file_chunks", &id).await, 1);
    assert_eq!(node2.sweep_abandoned(Duration::ZERO).await.unwrap(), 1);
    assert_eq!(count(&pool1, "file_chunks", &id).await, 0);
    assert_eq!(count(&pool1, "file_blobs", &id).await, 0);

    // A committed upload is kept, and its id cannot be taken again.
    let id = new_id();
    put(&node1, &id, CHUNK + 5, CHUNK).await;
    assert_eq!(read(&node2, &id, 0, CHUNK + 5).await, bytes(0, CHUNK + 5));
    let again = node2.create(&id).await.err().expect("the id is taken");
    assert_eq!(again.kind(), std::io::ErrorKind::AlreadyExists);
    assert_eq!(read(&node2, &id, 0, CHUNK + 5).await, bytes(0, CHUNK + 5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_deleted_on_one_node_is_gone_on_every_node() {
    let db = TestDb::create().await;
    let (pool1, node1) = db.node().await;
    let (_pool2, node2) = db.node().await;

    let id = new_id();
    let keep = new_id();
    put(&node1, &id, 2 * CHUNK + 1, 50_000).await;
    put(&node1, &keep, 10, 10).await;
    node2.delete(&id).await.unwrap();
    assert!(is_missing(&node1, &id).await);
    assert!(is_missing(&node2, &id).await);
    assert_eq!(count(&pool1, "file_chunks", &id).await, 0);
    assert_eq!(count(&pool1, "file_blobs", &id).await, 0);
    // Deleting what is gone, or never was, is no error; other files stay.
    node1.delete(&id).await.unwrap();
    node1.delete("no-such-file").await.unwrap();
    assert_eq!(read(&node2, &keep, 0, 10).await, bytes(0, 10));

    // A file deleted while an upload of it runs is not committed.
    let id = new_id();
    let mut upload = node1.create(&id).await.unwrap();
    upload.write(&bytes(0, CHUNK + 1)).await.unwrap();
    node2.delete(&id).await.unwrap();
    assert!(upload.commit().await.is_err());
    gone(&pool1, &id).await;
    assert!(is_missing(&node2, &id).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_starting_together_create_the_tables_once() {
    for _ in 0..3 {
        let db = TestDb::create().await;
        let mut pools = Vec::new();
        for _ in 0..4 {
            pools.push(db.pool().await);
        }
        let opened = futures_util::future::join_all(
            pools.iter().map(|pool| PostgresStorage::open(pool.clone())),
        );
        let keys = futures_util::future::join_all(pools.iter().map(shared_url_key));
        let (opened, keys) = tokio::join!(opened, keys);
        let nodes: Vec<PostgresStorage> = opened
            .into_iter()
            .map(|s| s.expect("every node opens"))
            .collect();
        let keys: Vec<Vec<u8>> = keys.into_iter().map(|k| k.expect("a key")).collect();
        assert!(keys.iter().all(|k| k == &keys[0] && k.len() == 32));

        let id = new_id();
        put(&nodes[0], &id, CHUNK + 3, CHUNK).await;
        for node in &nodes {
            assert_eq!(read(node, &id, 0, CHUNK + 3).await, bytes(0, CHUNK + 3));
        }
    }
}

/// The commits a store reports; nothing here appends messages, it only stays open.
type CommitLog = tokio::sync::mpsc::Receiver<Vec<switchboard::store::Commit>>;

/// A SQLite store for file records: the nodes share it, as they would the cluster's
/// PostgreSQL store.
async fn metadata_store(dir: &std::path::Path) -> (Arc<dyn Store>, CommitLog) {
    let (commits, log) = tokio::sync::mpsc::channel(64);
    let options = SqliteOptions {
        dir: dir.to_path_buf(),
        synchronous_full: false,
        dedupe_window: Duration::from_secs(60),
    };
    let store = SqliteStore::open(&options, commits, Arc::new(Metrics::new()))
        .await
        .expect("sqlite store");
    (Arc::new(store), log)
}

/// The `expires` and `sig` of a signed link.
fn link_parts(url: &str) -> (u64, String) {
    let query = url.split_once('?').expect("a query").1;
    let mut expires = None;
    let mut sig = None;
    for pair in query.split('&') {
        match pair.split_once('=') {
            Some(("expires", v)) => expires = v.parse().ok(),
            Some(("sig", v)) => sig = Some(v.to_string()),
            _ => {}
        }
    }
    (expires.expect("expires"), sig.expect("sig"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_signed_on_one_node_verifies_on_the_other() {
    let db = TestDb::create().await;
    let (pool1, pool2) = (db.pool().await, db.pool().await);
    let (key1, key2) = tokio::join!(shared_url_key(&pool1), shared_url_key(&pool2));
    let (key1, key2) = (key1.unwrap(), key2.unwrap());
    assert_eq!(key1, key2);
    assert_eq!(key1.len(), 32);
    assert_eq!(shared_url_key(&pool2).await.unwrap(), key1, "made once");

    let dir = tempfile::tempdir().unwrap();
    let (store, _log) = metadata_store(dir.path()).await;
    let config = switchboard::config::FilesConfig::default();
    let files = |pool: &PgPool, key: Vec<u8>| {
        let pool = pool.clone();
        let store = store.clone();
        let config = config.clone();
        async move {
            let storage = PostgresStorage::open(pool).await.unwrap();
            Files::open_with(Arc::new(storage), key, &config, store)
        }
    };
    let node1 = files(&pool1, key1).await;
    let node2 = files(&pool2, key2).await;

    // Uploaded through node 1 (checked, hashed, recorded), served by node 2.
    let content = bytes(0, CHUNK + 4321);
    let body = futures_util::stream::iter(
        content
            .chunks(100_000)
            .map(|c| Ok::<_, std::io::Error>(Bytes::copy_from_slice(c)))
            .collect::<Vec<_>>(),
    );
    let new = NewUpload {
        owner: "alice".into(),
        name: "notes.txt".into(),
        declared: Some("text/plain".into()),
    };
    let record = node1.upload(new, None, body).await.expect("upload");
    assert_eq!(record.size, content.len() as u64);

    let url = node1.view(&record, false).url;
    let (expires, sig) = link_parts(&url);
    assert_eq!(node2.verify(&record.id, expires, &sig), Ok(()));
    assert_eq!(node1.verify(&record.id, expires, &sig), Ok(()));
    assert_eq!(
        node2.verify(&new_id(), expires, &sig),
        Err(LinkError::Invalid)
    );
    assert_eq!(
        node2.verify(&record.id, expires + 1, &sig),
        Err(LinkError::Invalid)
    );
    let stranger = files(&pool2, vec![7; 32]).await;
    assert_eq!(
        stranger.verify(&record.id, expires, &sig),
        Err(LinkError::Invalid)
    );

    let mut stream = node2.read(&record.id, 0, record.size).await.unwrap();
    let mut served = Vec::new();
    while let Some(part) = stream.next().await {
        served.extend_from_slice(&part.unwrap());
    }
    assert_eq!(served, content);
    assert_eq!(record.sha256, hex::encode(Sha256::digest(&content)));
}
