-- The user layer: profiles and statuses, contacts, durable room memberships with
-- read markers, the offline-notification inbox and its durable webhook outbox, and
-- uploaded files with the rooms they were shared in.
CREATE TABLE users (
    id TEXT PRIMARY KEY,
    username TEXT NOT NULL,
    avatar TEXT,
    -- online, away, busy, or offline (invisible)
    status TEXT NOT NULL DEFAULT 'online',
    last_seen INTEGER
) WITHOUT ROWID;

CREATE TABLE contacts (
    user_id TEXT NOT NULL,
    contact_id TEXT NOT NULL,
    PRIMARY KEY (user_id, contact_id)
) WITHOUT ROWID;

CREATE TABLE memberships (
    room TEXT NOT NULL,
    user_id TEXT NOT NULL,
    joined_at INTEGER NOT NULL,
    last_read INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (room, user_id)
) WITHOUT ROWID;
CREATE INDEX memberships_user ON memberships (user_id, room);

-- One unread entry per (user, room); its count and preview are read from the room
-- (head and latest message) while unread, and frozen when it is read.
CREATE TABLE notifications (
    id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    room TEXT NOT NULL,
    type TEXT NOT NULL,
    -- The entry covers the room's messages from first_offset to last_offset (NULL: to
    -- the head, while the user is offline), plus base_count of earlier offline spells.
    first_offset INTEGER NOT NULL,
    last_offset INTEGER,
    base_count INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL,
    read INTEGER NOT NULL DEFAULT 0,
    count INTEGER,
    message TEXT,
    sender_id TEXT,
    sender_name TEXT,
    timestamp INTEGER
) WITHOUT ROWID;
CREATE UNIQUE INDEX notifications_unread ON notifications (user_id, room) WHERE read = 0;
CREATE INDEX notifications_user ON notifications (user_id, created_at);

CREATE TABLE pushes (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    body TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_at INTEGER NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE INDEX pushes_due ON pushes (next_at);

CREATE TABLE files (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    name TEXT NOT NULL,
    size INTEGER NOT NULL,
    type TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    shared INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE INDEX files_owner ON files (owner);
CREATE INDEX files_orphans ON files (shared, created_at);

CREATE TABLE file_rooms (
    file_id TEXT NOT NULL,
    room TEXT NOT NULL,
    PRIMARY KEY (file_id, room)
) WITHOUT ROWID;
