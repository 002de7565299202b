CREATE TABLE users (
    id            TEXT PRIMARY KEY,
    username      TEXT NOT NULL UNIQUE,
    email         TEXT NOT NULL,
    display_name  TEXT NOT NULL,
    role          BIGINT NOT NULL,
    disabled      BIGINT NOT NULL DEFAULT 0,
    password_hash TEXT,
    create_time   BIGINT NOT NULL,
    update_time   BIGINT NOT NULL
);

-- Encoded opsconductor.user.v1.NotificationPreferences: read and replaced whole.
CREATE TABLE notification_preferences (
    user_id     TEXT PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    body        BLOB NOT NULL,
    update_time BIGINT NOT NULL
);
