-- Which credentials each target refers to (also inside `spec`), so the credentials service can
-- ask which targets use a credential before it is deleted. Targets written before this table
-- existed cannot refer to a credential that exists: the credentials service came after it.
CREATE TABLE target_credentials (
    target_id     TEXT NOT NULL REFERENCES targets (id) ON DELETE CASCADE,
    credential_id TEXT NOT NULL,
    PRIMARY KEY (target_id, credential_id)
);

CREATE INDEX target_credentials_by_credential ON target_credentials (credential_id, target_id);
