-- Each message's payload size, before the payload so that counting a gap's bytes reads
-- no payload; each room's head, so that a position is read without a message; the
-- history's epoch; idempotency keys of recent sends.
CREATE TABLE messages_v2 (
    room TEXT NOT NULL,
    seq INTEGER NOT NULL,
    size INTEGER NOT NULL,
    id TEXT NOT NULL,
    ts INTEGER NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (room, seq)
) WITHOUT ROWID;
INSERT INTO messages_v2 (room, seq, size, id, ts, data)
    SELECT room, seq, length(CAST(data AS BLOB)), id, ts, data FROM messages;
DROP TABLE messages;
ALTER TABLE messages_v2 RENAME TO messages;

CREATE TABLE rooms (
    room TEXT PRIMARY KEY,
    head INTEGER NOT NULL
) WITHOUT ROWID;
INSERT INTO rooms (room, head) SELECT room, MAX(seq) FROM messages GROUP BY room;

CREATE TABLE meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;

CREATE TABLE dedupe (
    scope TEXT NOT NULL,
    key TEXT NOT NULL,
    room TEXT NOT NULL,
    id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    ts INTEGER NOT NULL,
    PRIMARY KEY (scope, key)
) WITHOUT ROWID;
CREATE INDEX dedupe_ts ON dedupe (ts);
