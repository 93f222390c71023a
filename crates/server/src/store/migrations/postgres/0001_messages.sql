-- Room messages. Ids compare bytewise (COLLATE "C"), as in SQLite: pages of ids and
-- the order rooms are locked in are the same on every node whatever the locale.
-- `size` (the payload's bytes) rides in the primary key's index, so counting a gap's
-- bytes is an index-only scan that reads no payload.
CREATE TABLE messages (
    room TEXT COLLATE "C" NOT NULL,
    seq BIGINT NOT NULL,
    size INTEGER NOT NULL,
    id TEXT NOT NULL,
    ts BIGINT NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (room, seq) INCLUDE (size)
);
