-- Passkeys (WebAuthn credentials); see the Postgres migration of the same name.
CREATE TABLE passkeys (
    tenant_id       TEXT NOT NULL,
    id              TEXT NOT NULL,
    user_id         TEXT NOT NULL,
    credential_id   TEXT NOT NULL,
    name            TEXT NOT NULL,
    credential      TEXT NOT NULL,
    sign_count      INTEGER NOT NULL DEFAULT 0,
    backup_eligible INTEGER NOT NULL DEFAULT 0,
    backup_state    INTEGER NOT NULL DEFAULT 0,
    created_at      INTEGER NOT NULL,
    last_used_at    INTEGER,
    PRIMARY KEY (tenant_id, id),
    FOREIGN KEY (tenant_id, user_id) REFERENCES users (tenant_id, id) ON DELETE CASCADE
) STRICT;
CREATE UNIQUE INDEX passkeys_credential ON passkeys (tenant_id, credential_id);
CREATE INDEX passkeys_user ON passkeys (tenant_id, user_id);
