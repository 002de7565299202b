-- The whole target (labels, credential references ...) is kept encoded in `spec`; the columns
-- beside it exist to filter, order and enforce uniqueness.
CREATE TABLE targets (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    os          BIGINT NOT NULL,
    spec        BLOB NOT NULL,
    create_time BIGINT NOT NULL,
    update_time BIGINT NOT NULL
);

CREATE TABLE target_tags (
    target_id TEXT NOT NULL REFERENCES targets (id) ON DELETE CASCADE,
    tag       TEXT NOT NULL,
    PRIMARY KEY (target_id, tag)
);

CREATE INDEX target_tags_by_tag ON target_tags (tag, target_id);
