-- Each room's head: the last offset given out. Every node takes a block of offsets by
-- bumping it inside its commit transaction, so its row lock orders the room's writers.
-- It is updated on every commit (never its key): free space in each page keeps those
-- updates HOT.
CREATE TABLE rooms (
    room TEXT COLLATE "C" PRIMARY KEY,
    head BIGINT NOT NULL
) WITH (fillfactor = 70);

-- The history's epoch, made once for the database and shared by every node.
CREATE TABLE meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

-- Idempotency keys of recent sends. The primary key is what keeps one key from being
-- stored twice when two nodes take it at once.
CREATE TABLE dedupe (
    scope TEXT COLLATE "C" NOT NULL,
    key TEXT COLLATE "C" NOT NULL,
    room TEXT NOT NULL,
    id TEXT NOT NULL,
    seq BIGINT NOT NULL,
    ts BIGINT NOT NULL,
    PRIMARY KEY (scope, key)
);
CREATE INDEX dedupe_ts ON dedupe (ts);
