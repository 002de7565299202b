-- The hash of the key the executor made for its claim: a claim repeated after a lost answer
-- gets a new lease token only with the same key, never for knowing the executor's id alone.
ALTER TABLE runs ADD COLUMN claim_hash TEXT NOT NULL DEFAULT '';
