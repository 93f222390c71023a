-- The user layer: profiles and statuses, contacts, durable room memberships with
-- read markers, the offline-notification inbox and its durable webhook outbox, and
-- uploaded files with the rooms they were shared in.
CREATE TABLE users (
    id TEXT COLLATE "C" PRIMARY KEY,
    username TEXT NOT NULL,
    avatar TEXT,
    -- online, away, busy, or offline (invisible)
    status TEXT NOT NULL DEFAULT 'online',
    last_seen BIGINT
);

CREATE TABLE contacts (
    user_id TEXT COLLATE "C" NOT NULL,
    contact_id TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (user_id, contact_id)
);

CREATE TABLE memberships (
    room TEXT COLLATE "C" NOT NULL,
    user_id TEXT COLLATE "C" NOT NULL,
    joined_at BIGINT NOT NULL,
    last_read BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (room, user_id)
);
CREATE INDEX memberships_user ON memberships (user_id, room) INCLUDE (last_read);

-- One unread entry per (user, room); its count and preview are read from the room
-- (head and latest message) while unread, and frozen when it is read.
CREATE TABLE notifications (
    id TEXT PRIMARY KEY,
    user_id TEXT COLLATE "C" NOT NULL,
    room TEXT COLLATE "C" NOT NULL,
    type TEXT NOT NULL,
    -- The entry covers the room's messages from first_offset to last_offset (NULL: to
    -- the head, while the user is offline), plus base_count of earlier offline spells.
    first_offset BIGINT NOT NULL,
    last_offset BIGINT,
    base_count BIGINT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL,
    read BOOLEAN NOT NULL DEFAULT false,
    count BIGINT,
    message TEXT,
    sender_id TEXT,
    sender_name TEXT,
    timestamp BIGINT
);
CREATE UNIQUE INDEX notifications_unread ON notifications (user_id, room) WHERE NOT read;
CREATE INDEX notifications_user ON notifications (user_id, created_at);

CREATE TABLE pushes (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    body TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_at BIGINT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX pushes_due ON pushes (next_at, id);

CREATE TABLE files (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    name TEXT NOT NULL,
    size BIGINT NOT NULL,
    type TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    shared BOOLEAN NOT NULL DEFAULT false
);
CREATE INDEX files_owner ON files (owner) INCLUDE (size);
CREATE INDEX files_orphans ON files (created_at) WHERE NOT shared;

CREATE TABLE file_rooms (
    file_id TEXT NOT NULL,
    room TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (file_id, room)
);
