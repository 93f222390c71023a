//! Presence of a cluster in Redis, node by node: two `RedisPresence` sharing one Redis
//! (and one key prefix) are two nodes of one cluster.
//!
//! Needs Redis 7 at 127.0.0.1:6379 (nothing kept on disk) and `redis-server` on the
//! PATH: each test uses its own random key prefix and deletes its keys at the end, and
//! the tests that stop Redis start their own private `redis-server` on a free port.

use std::collections::{BTreeSet, HashMap};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use switchboard::presence::{
    Device, Presence, PresenceError, RedisPresence, RedisPresenceOptions, RoomCounts,
};
use switchboard_protocol::UserInfo;

const SHARED: &str = "redis://127.0.0.1:6379/";

/// A cluster's Redis, seen through one key prefix of its own.
struct Cluster {
    prefix: String,
    conn: ConnectionManager,
}

impl Cluster {
    async fn shared() -> Cluster {
        Cluster::at(SHARED.to_string()).await
    }

    async fn at(url: String) -> Cluster {
        let client = redis::Client::open(url.as_str()).unwrap();
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_millis(500)))
            .set_response_timeout(Some(Duration::from_secs(5)))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(200));
        let conn = ConnectionManager::new_with_config(client, config)
            .await
            .expect("Redis runs (see this file's doc)");
        Cluster {
            prefix: format!("sbtest:{:016x}:", rand::random::<u64>()),
            conn,
        }
    }

    /// A node of the cluster, with the default expiry (three heartbeats of 25 s).
    fn node(&self, id: &str) -> RedisPresence {
        self.node_with(id, Duration::from_secs(75))
    }

    fn node_with(&self, id: &str, ttl: Duration) -> RedisPresence {
        RedisPresence::new(
            self.conn.clone(),
            RedisPresenceOptions {
                prefix: self.prefix.clone(),
                node_id: id.into(),
                ttl,
                heartbeat: ttl / 3,
            },
        )
    }

    async fn keys(&self) -> Vec<String> {
        let mut conn = self.conn.clone();
        let mut keys = Vec::new();
        let mut cursor = 0u64;
        loop {
            let (next, page): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(format!("{}*", self.prefix))
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut conn)
                .await
                .unwrap();
            keys.extend(page);
            if next == 0 {
                return keys;
            }
            cursor = next;
        }
    }

    /// Deletes every key of this prefix.
    async fn clean(&self) {
        let mut conn = self.conn.clone();
        for chunk in self.keys().await.chunks(500) {
            let _: () = redis::cmd("DEL")
                .arg(chunk)
                .query_async(&mut conn)
                .await
                .unwrap();
        }
    }
}

fn user(id: &str) -> UserInfo {
    UserInfo {
        id: id.into(),
        username: id.to_uppercase(),
        avatar: None,
    }
}

/// A connection: its id and its user, borrowed as a presence `Device`.
struct Conn {
    id: Arc<str>,
    user: UserInfo,
}

impl Conn {
    fn new(id: &str, user_id: &str) -> Conn {
        Conn {
            id: id.into(),
            user: user(user_id),
        }
    }

    fn device(&self) -> Device<'_> {
        Device {
            client_id: &self.id,
            user: &self.user,
            transport: "websocket",
        }
    }
}

fn counts(users: u64, connections: u64) -> RoomCounts {
    RoomCounts { users, connections }
}

/// Every member of `room`, page by page.
async fn all_members(p: &RedisPresence, room: &str, limit: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let page = p.members(room, cursor.as_deref(), limit).await.unwrap();
        assert!(page.members.len() <= limit);
        out.extend(page.members.into_iter().map(|m| m.id));
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => return out,
        }
    }
}

#[tokio::test]
async fn two_nodes_agree_on_devices_rooms_and_members() {
    let cluster = Cluster::shared().await;
    let (a, b) = (cluster.node("a"), cluster.node("b"));
    let alice_a = Conn::new("alice-on-a", "alice");
    let alice_b = Conn::new("alice-on-b", "alice");
    let bob_b = Conn::new("bob-on-b", "bob");

    assert_eq!(a.connect(alice_a.device()).await.unwrap(), 1);
    assert_eq!(
        b.connect(alice_b.device()).await.unwrap(),
        2,
        "alice's devices on both nodes, this one included"
    );
    assert_eq!(b.connect(bob_b.device()).await.unwrap(), 1);
    for node in [&a, &b] {
        assert_eq!(node.devices("alice").await.unwrap(), 2);
        let ids: BTreeSet<_> = node
            .device_ids("alice")
            .await
            .unwrap()
            .into_iter()
            .collect();
        assert_eq!(
            ids,
            BTreeSet::from(["alice-on-a".into(), "alice-on-b".into()])
        );
        assert_eq!(node.devices("carol").await.unwrap(), 0);
    }

    assert_eq!(
        a.join("hall", alice_a.device()).await.unwrap(),
        counts(1, 1)
    );
    assert_eq!(
        b.join("hall", alice_b.device()).await.unwrap(),
        counts(1, 2)
    );
    assert_eq!(b.join("hall", bob_b.device()).await.unwrap(), counts(2, 3));
    assert_eq!(
        a.join("hall", alice_a.device()).await.unwrap(),
        counts(2, 3),
        "joining twice changes nothing"
    );
    for node in [&a, &b] {
        assert_eq!(node.counts("hall").await.unwrap(), counts(2, 3));
        let page = node.members("hall", None, 10).await.unwrap();
        assert_eq!(page.next_cursor, None);
        let ids: Vec<_> = page.members.iter().map(|m| m.id.as_str()).collect();
        assert_eq!(ids, ["alice", "bob"], "by user id, alice once");
        assert_eq!(page.members[0].username, "ALICE");
        assert!(page.members.iter().all(|m| m.joined_at > 0));
        assert!(page.members.iter().all(|m| m.status == "online"));

        let peers = node.peers("hall", "alice-on-a", 10).await.unwrap();
        let peer_ids: BTreeSet<_> = peers.iter().map(|p| &*p.client_id).collect();
        assert_eq!(peer_ids, BTreeSet::from(["alice-on-b", "bob-on-b"]));
        let bob = peers.iter().find(|p| &*p.client_id == "bob-on-b").unwrap();
        assert_eq!(bob.user, user("bob"));
        assert_eq!(node.peers("hall", "x", 1).await.unwrap().len(), 1);

        assert!(node.has_user("hall", "bob").await.unwrap());
        assert!(!node.has_user("hall", "carol").await.unwrap());
        assert!(!node.has_user("lobby", "bob").await.unwrap());
        let rooms: Vec<Arc<str>> = vec!["lobby".into(), "hall".into()];
        assert!(node.in_any("alice-on-a", &rooms).await.unwrap());
        assert!(!node.in_any("alice-on-a", &rooms[..1]).await.unwrap());
        assert!(!node.in_any("nobody", &rooms).await.unwrap());
        let listed = node.rooms().await.unwrap();
        assert_eq!(listed, vec![("hall".to_string(), counts(2, 3))]);
    }

    // Alice leaves from one device: still a member through the other.
    a.leave("hall", alice_a.device());
    assert_eq!(a.counts("hall").await.unwrap(), counts(2, 2));
    assert!(b.has_user("hall", "alice").await.unwrap());
    b.leave("hall", alice_b.device());
    assert_eq!(b.counts("hall").await.unwrap(), counts(1, 1));
    assert!(!a.has_user("hall", "alice").await.unwrap());
    let ids = all_members(&a, "hall", 10).await;
    assert_eq!(ids, ["bob"]);

    a.disconnect(alice_a.device());
    assert_eq!(a.devices("alice").await.unwrap(), 1);
    b.leave("hall", bob_b.device());
    b.disconnect(bob_b.device());
    b.disconnect(alice_b.device());
    assert_eq!(b.devices("alice").await.unwrap(), 0);
    assert!(
        b.rooms().await.unwrap().is_empty(),
        "empty rooms are forgotten"
    );
    assert!(a.rooms().await.unwrap().is_empty());
    assert_eq!(
        cluster.keys().await,
        Vec::<String>::new(),
        "nothing left behind"
    );
    cluster.clean().await;
}

/// A client that reconnects to another node with its connection id before the first
/// node saw it close: the first node's late removals leave the new connection alone.
#[tokio::test]
async fn a_connection_moved_to_another_node_outlives_the_old_nodes_removal() {
    let cluster = Cluster::shared().await;
    let (a, b) = (cluster.node("a"), cluster.node("b"));
    let alice = Conn::new("alice-1", "alice");
    a.connect(alice.device()).await.unwrap();
    a.join("hall", alice.device()).await.unwrap();
    a.join("kitchen", alice.device()).await.unwrap();

    assert_eq!(
        b.connect(alice.device()).await.unwrap(),
        1,
        "the same device"
    );
    b.join("hall", alice.device()).await.unwrap();
    a.leave("hall", alice.device());
    a.leave("kitchen", alice.device());
    a.disconnect(alice.device());
    assert_eq!(b.devices("alice").await.unwrap(), 1);
    assert_eq!(b.counts("hall").await.unwrap(), counts(1, 1));

    // Its new node's heartbeat drops what only the old one had.
    assert_eq!(b.counts("kitchen").await.unwrap(), counts(1, 1));
    b.heartbeat();
    let deadline = Instant::now() + Duration::from_secs(5);
    while b.counts("kitchen").await.unwrap() != counts(0, 0) {
        assert!(
            Instant::now() < deadline,
            "the heartbeat leaves the kitchen"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(a.counts("hall").await.unwrap(), counts(1, 1));
    cluster.clean().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_are_paged_by_cursor_across_nodes() {
    let cluster = Cluster::shared().await;
    let (a, b) = (cluster.node("a"), cluster.node("b"));
    let conns: Vec<Conn> = (0..300)
        .map(|i| Conn::new(&format!("c{i}"), &format!("user{i:03}")))
        .collect();
    // Half the users on each node, and every tenth with a second device on the other.
    join_all(conns.iter().enumerate().map(|(i, c)| {
        let node = if i % 2 == 0 { &a } else { &b };
        async move { node.join("big", c.device()).await.unwrap() }
    }))
    .await;
    let seconds: Vec<Conn> = (0..300)
        .step_by(10)
        .map(|i| Conn::new(&format!("second{i}"), &format!("user{i:03}")))
        .collect();
    for c in &seconds {
        b.join("big", c.device()).await.unwrap();
    }
    assert_eq!(a.counts("big").await.unwrap(), counts(300, 330));

    let expected: Vec<String> = (0..300).map(|i| format!("user{i:03}")).collect();
    for (node, limit) in [(&a, 64), (&b, 7), (&a, 300), (&b, 1000)] {
        assert_eq!(
            all_members(node, "big", limit).await,
            expected,
            "limit {limit}"
        );
    }
    let page = a.members("big", Some("user149"), 3).await.unwrap();
    let ids: Vec<_> = page.members.iter().map(|m| m.id.as_str()).collect();
    assert_eq!(ids, ["user150", "user151", "user152"]);
    assert_eq!(page.next_cursor.as_deref(), Some("user152"));
    let last = b.members("big", Some("user298"), 3).await.unwrap();
    assert_eq!(last.members.len(), 1);
    assert_eq!(last.next_cursor, None);
    assert!(a.members("big", None, 0).await.unwrap().members.is_empty());
    cluster.clean().await;
}

/// A node that stops heartbeating (it died) loses its entries within its TTL, and the
/// live nodes reap each of its devices exactly once between them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_nodes_devices_expire_and_are_reaped_once() {
    let cluster = Cluster::shared().await;
    let ttl = Duration::from_secs(1);
    // Long enough to fill its rooms on a busy machine before they expire.
    let dead_ttl = Duration::from_secs(3);
    let dead = cluster.node_with("dead", dead_ttl);
    let live = Arc::new(cluster.node_with("live", ttl));
    let other = Arc::new(cluster.node_with("other", ttl));
    // The live ones heartbeat four times per TTL; the dead one never does.
    let beats = {
        let (live, other) = (live.clone(), other.clone());
        tokio::spawn(async move {
            loop {
                live.heartbeat();
                other.heartbeat();
                tokio::time::sleep(ttl / 4).await;
            }
        })
    };

    let alice_live = Conn::new("alice-live", "alice");
    live.connect(alice_live.device()).await.unwrap();
    live.join("hall", alice_live.device()).await.unwrap();
    let alice_dead = Conn::new("alice-dead", "alice");
    let ghosts: Vec<Conn> = (0..300)
        .map(|i| Conn::new(&format!("ghost{i}"), &format!("ghost{i}")))
        .collect();
    dead.connect(alice_dead.device()).await.unwrap();
    dead.join("hall", alice_dead.device()).await.unwrap();
    dead.join("kitchen", alice_dead.device()).await.unwrap();
    join_all(ghosts.iter().map(|g| async {
        dead.connect(g.device()).await.unwrap();
        dead.join("hall", g.device()).await.unwrap();
    }))
    .await;
    assert_eq!(live.counts("hall").await.unwrap(), counts(301, 302));
    assert_eq!(live.devices("alice").await.unwrap(), 2);

    tokio::time::sleep(dead_ttl + ttl / 2).await;
    // Expired, not reaped yet: already not counted.
    assert_eq!(live.counts("hall").await.unwrap(), counts(1, 1));
    assert_eq!(other.counts("kitchen").await.unwrap(), counts(0, 0));
    assert_eq!(live.devices("alice").await.unwrap(), 1);
    assert_eq!(live.devices("ghost7").await.unwrap(), 0);
    assert_eq!(all_members(&other, "hall", 50).await, ["alice"]);
    assert_eq!(live.peers("hall", "x", 10).await.unwrap().len(), 1);
    assert!(!live.has_user("hall", "ghost7").await.unwrap());

    // Two nodes reap at once: every dead device comes back once in total.
    let (r1, r2) = tokio::join!(live.reap(), other.reap());
    let reaped: Vec<_> = r1.unwrap().into_iter().chain(r2.unwrap()).collect();
    assert_eq!(reaped.len(), 301);
    let by_id: HashMap<&str, _> = reaped.iter().map(|r| (&*r.client_id, r)).collect();
    assert_eq!(by_id.len(), 301, "no device twice");
    let alice = by_id["alice-dead"];
    assert!(!alice.last, "alice still has a device on the live node");
    assert_eq!(alice.user, user("alice"));
    assert_eq!(alice.transport, "websocket");
    let rooms: BTreeSet<_> = alice.rooms.iter().map(String::as_str).collect();
    assert_eq!(rooms, BTreeSet::from(["hall", "kitchen"]));
    let ghost = by_id["ghost7"];
    assert!(ghost.last);
    assert_eq!(ghost.rooms, ["hall"]);
    assert!(live.reap().await.unwrap().is_empty(), "nothing twice");

    // The live node kept alice alive all along, and the reaped ones are gone.
    assert_eq!(other.counts("hall").await.unwrap(), counts(1, 1));
    assert_eq!(other.devices("alice").await.unwrap(), 1);
    let listed = other.rooms().await.unwrap();
    assert_eq!(listed, vec![("hall".to_string(), counts(1, 1))]);
    beats.abort();
    cluster.clean().await;
}

/// Many joins and leaves at once, from two nodes and many tasks: the counts end exact,
/// and a leave followed at once by a re-join of the same connection ends joined.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_joins_and_leaves_end_exact() {
    let cluster = Cluster::shared().await;
    let nodes = [Arc::new(cluster.node("a")), Arc::new(cluster.node("b"))];
    // 100 users with two connections each, one per node.
    let tasks = (0..200).map(|i| {
        let node = nodes[i % 2].clone();
        tokio::spawn(async move {
            let c = Conn::new(&format!("c{i}"), &format!("u{}", i / 2));
            node.connect(c.device()).await.unwrap();
            for round in 0..10 {
                node.join("stay", c.device()).await.unwrap();
                node.join("churn", c.device()).await.unwrap();
                node.leave("stay", c.device());
                if round % 3 == 0 {
                    node.leave("churn", c.device());
                }
            }
            // Leaves not awaited, then the last word: in "stay", out of "churn".
            node.join("stay", c.device()).await.unwrap();
            node.leave("churn", c.device());
            c
        })
    });
    let conns: Vec<Conn> = join_all(tasks)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    for node in &nodes {
        assert_eq!(node.counts("stay").await.unwrap(), counts(100, 200));
    }
    for node in &nodes {
        assert_eq!(node.counts("churn").await.unwrap(), counts(0, 0));
    }
    assert_eq!(all_members(&nodes[0], "stay", 33).await.len(), 100);

    // Half the users leave from both devices, concurrently.
    let leaves = conns.iter().enumerate().filter(|(i, _)| i / 2 % 2 == 0);
    join_all(leaves.map(|(i, c)| {
        let node = nodes[i % 2].clone();
        async move {
            node.leave("stay", c.device());
            node.disconnect(c.device());
            node.devices("u0").await.unwrap()
        }
    }))
    .await;
    for node in &nodes {
        assert_eq!(node.counts("stay").await.unwrap(), counts(50, 100));
    }
    cluster.clean().await;
}

/// A private `redis-server` on a free port, killed when dropped.
struct PrivateRedis {
    port: u16,
    child: Option<Child>,
}

impl PrivateRedis {
    async fn start() -> PrivateRedis {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut redis = PrivateRedis { port, child: None };
        redis.restart().await;
        redis
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    async fn restart(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is on the PATH");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .is_err()
        {
            assert!(Instant::now() < deadline, "redis-server starts");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    async fn reset_stats(&self, conn: &mut ConnectionManager) {
        let _: () = redis::cmd("CONFIG")
            .arg("RESETSTAT")
            .query_async(conn)
            .await
            .unwrap();
    }

    /// Calls of every command since the last reset, `INFO` and `CONFIG` aside.
    async fn calls(&self, conn: &mut ConnectionManager) -> u64 {
        let info: String = redis::cmd("INFO")
            .arg("commandstats")
            .query_async(conn)
            .await
            .unwrap();
        info.lines()
            .filter_map(|l| l.strip_prefix("cmdstat_"))
            .filter(|l| !l.starts_with("info") && !l.starts_with("config"))
            .filter_map(|l| {
                l.split("calls=")
                    .nth(1)?
                    .split(',')
                    .next()?
                    .parse::<u64>()
                    .ok()
            })
            .sum()
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Redis gone: answers fail within the timeout, never hang; removals made meanwhile are
/// not undone when it comes back, and the heartbeat re-asserts the node's entries in
/// the new (empty) Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_fails_fast_and_recovers() {
    let mut server = PrivateRedis::start().await;
    let cluster = Cluster::at(server.url()).await;
    let timeout = Duration::from_millis(500);
    let node = cluster.node("a").with_timeout(timeout);
    let alice = Conn::new("alice-1", "alice");
    let bob = Conn::new("bob-1", "bob");
    node.connect(alice.device()).await.unwrap();
    node.connect(bob.device()).await.unwrap();
    node.join("hall", alice.device()).await.unwrap();
    node.join("hall", bob.device()).await.unwrap();
    node.join("kitchen", bob.device()).await.unwrap();

    server.kill();
    for _ in 0..3 {
        let started = Instant::now();
        let err = node.counts("hall").await.unwrap_err();
        assert!(matches!(err, PresenceError::Unavailable(_)));
        assert!(started.elapsed() < timeout * 3, "{:?}", started.elapsed());
    }
    let carol = Conn::new("carol-1", "carol");
    let started = Instant::now();
    assert!(node.connect(carol.device()).await.is_err());
    assert!(node.join("hall", carol.device()).await.is_err());
    assert!(started.elapsed() < timeout * 5);
    // Meanwhile bob leaves the kitchen and alice closes.
    node.leave("kitchen", bob.device());
    node.leave("hall", alice.device());
    node.disconnect(alice.device());
    node.heartbeat();
    tokio::time::sleep(timeout).await;

    // Back, empty: the heartbeat brings back what this node has, and only that.
    server.restart().await;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        node.heartbeat();
        tokio::time::sleep(Duration::from_millis(200)).await;
        if let Ok(c) = node.counts("hall").await
            && c == counts(1, 1)
        {
            break;
        }
        assert!(Instant::now() < deadline, "presence recovers");
    }
    assert!(node.has_user("hall", "bob").await.unwrap());
    assert!(!node.has_user("hall", "alice").await.unwrap());
    assert!(
        !node.has_user("hall", "carol").await.unwrap(),
        "a failed join undone"
    );
    assert_eq!(node.counts("kitchen").await.unwrap(), counts(0, 0));
    assert_eq!(node.devices("alice").await.unwrap(), 0);
    assert_eq!(node.devices("carol").await.unwrap(), 0);
    assert_eq!(node.devices("bob").await.unwrap(), 1);
    assert_eq!(node.local_connections(), 1);
}

/// A removal whose Redis call failed is retried by the next heartbeat, so a node
/// re-asserting its entries never keeps a connection that left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removals_lost_while_redis_refuses_writes_are_retried() {
    let server = PrivateRedis::start().await;
    let cluster = Cluster::at(server.url()).await;
    let node = cluster.node("a");
    let other = cluster.node("b");
    let alice = Conn::new("alice-1", "alice");
    let bob = Conn::new("bob-1", "bob");
    for c in [&alice, &bob] {
        node.connect(c.device()).await.unwrap();
        node.join("hall", c.device()).await.unwrap();
    }

    // Redis refuses every write (it wants a replica it does not have).
    let mut admin = cluster.conn.clone();
    set_config(&mut admin, "min-replicas-to-write", "1").await;
    node.leave("hall", alice.device());
    node.disconnect(alice.device());
    assert!(node.join("kitchen", bob.device()).await.is_err());
    assert_eq!(
        other.counts("hall").await.unwrap(),
        counts(2, 2),
        "the removal did not reach Redis"
    );
    node.heartbeat();
    tokio::time::sleep(Duration::from_millis(200)).await;

    set_config(&mut admin, "min-replicas-to-write", "0").await;
    node.heartbeat();
    let deadline = Instant::now() + Duration::from_secs(5);
    while other.counts("hall").await.unwrap() != counts(1, 1) {
        assert!(
            Instant::now() < deadline,
            "the heartbeat retries the removal"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(other.devices("alice").await.unwrap(), 0);
    assert!(!other.has_user("kitchen", "bob").await.unwrap());
    assert_eq!(node.local_connections(), 1);
    node.leave("hall", bob.device());
    node.disconnect(bob.device());
    assert_eq!(node.devices("bob").await.unwrap(), 0);
    assert_eq!(
        cluster.keys().await,
        Vec::<String>::new(),
        "nothing left behind"
    );
}

async fn set_config(conn: &mut ConnectionManager, name: &str, value: &str) {
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg(name)
        .arg(value)
        .query_async(conn)
        .await
        .unwrap();
}

/// Filling a room costs the same Redis work per join, whatever its size: no per-member
/// work (counted with `INFO commandstats` on a private Redis, script calls included).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_costs_the_same_in_a_room_of_any_size() {
    let server = PrivateRedis::start().await;
    let cluster = Cluster::at(server.url()).await;
    let node = cluster.node("a");
    let mut admin = cluster.conn.clone();
    let conns: Vec<Conn> = (0..1000)
        .map(|i| Conn::new(&format!("c{i}"), &format!("u{i}")))
        .collect();
    // Loads the script first.
    let warm = Conn::new("warm", "warm");
    node.join("elsewhere", warm.device()).await.unwrap();

    server.reset_stats(&mut admin).await;
    for c in &conns[..100] {
        node.join("hall", c.device()).await.unwrap();
    }
    let first = server.calls(&mut admin).await;
    server.reset_stats(&mut admin).await;
    for c in &conns[100..] {
        node.join("hall", c.device()).await.unwrap();
    }
    let next = server.calls(&mut admin).await;
    assert!(first <= 100 * 30, "{first} commands for 100 joins");
    assert_eq!(
        next,
        first * 9,
        "the 1000th join costs what the 1st does ({first} per 100 joins)"
    );
    assert_eq!(node.counts("hall").await.unwrap(), counts(1000, 1000));

    server.reset_stats(&mut admin).await;
    for c in &conns[..100] {
        node.leave("hall", c.device());
    }
    assert_eq!(node.counts("hall").await.unwrap(), counts(900, 900));
    let leaves = server.calls(&mut admin).await;
    assert!(leaves <= 100 * 20, "{leaves} commands for 100 leaves");
}
