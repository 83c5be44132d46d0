-- authd: initial schema for the embedded SQLite store.
--
-- SQLite has no row-level security: the store's queries always filter by
-- tenant_id, and tenant-owned tables lead their primary key with it, as in
-- Postgres. Ids are UUID strings; times are unix microseconds.

CREATE TABLE tenants (
    id          TEXT PRIMARY KEY,
    slug        TEXT NOT NULL UNIQUE,
    name        TEXT NOT NULL,
    disabled    INTEGER NOT NULL DEFAULT 0,
    settings    TEXT NOT NULL DEFAULT '{}',
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
) STRICT;

CREATE TABLE platform_audit_events (
    id          TEXT PRIMARY KEY,
    at          INTEGER NOT NULL,
    type        TEXT NOT NULL,
    tenant_id   TEXT,
    tenant_slug TEXT,
    operator    TEXT,
    ip          TEXT,
    user_agent  TEXT,
    request_id  TEXT,
    detail      TEXT
) STRICT;
CREATE INDEX platform_audit_events_at ON platform_audit_events (at DESC, id DESC);

CREATE TABLE users (
    tenant_id           TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    id                  TEXT NOT NULL,
    email               TEXT,
    password_hash       TEXT,
    role                TEXT NOT NULL DEFAULT 'user' CHECK (role IN ('user', 'admin')),
    disabled            INTEGER NOT NULL DEFAULT 0,
    totp_secret_sealed  TEXT,
    totp_pending_sealed TEXT,
    totp_enabled        INTEGER NOT NULL DEFAULT 0,
    totp_last_step      INTEGER,
    created_at          INTEGER NOT NULL,
    updated_at          INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, id)
) STRICT;
CREATE UNIQUE INDEX users_email ON users (tenant_id, email) WHERE email IS NOT NULL;

CREATE TABLE signing_keys (
    tenant_id           TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    kid                 TEXT NOT NULL,
    algorithm           TEXT NOT NULL,
    private_key_sealed  TEXT NOT NULL,
    public_jwk          TEXT NOT NULL,
    created_at          INTEGER NOT NULL,
    activates_at        INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, kid)
) STRICT;

CREATE TABLE recovery_codes (
    tenant_id   TEXT NOT NULL,
    user_id     TEXT NOT NULL,
    code_hash   TEXT NOT NULL,
    used_at     INTEGER,
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, user_id, code_hash),
    FOREIGN KEY (tenant_id, user_id) REFERENCES users (tenant_id, id) ON DELETE CASCADE
) STRICT;

CREATE TABLE oauth_providers (
    tenant_id             TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    name                  TEXT NOT NULL,
    kind                  TEXT NOT NULL,
    display_name          TEXT NOT NULL,
    client_id             TEXT NOT NULL,
    client_secret_sealed  TEXT,
    issuer                TEXT,
    scopes                TEXT NOT NULL DEFAULT '[]',
    enabled               INTEGER NOT NULL DEFAULT 1,
    trust_email_verified  INTEGER NOT NULL DEFAULT 0,
    created_at            INTEGER NOT NULL,
    updated_at            INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, name)
) STRICT;

CREATE TABLE user_identities (
    tenant_id   TEXT NOT NULL,
    provider    TEXT NOT NULL,
    subject     TEXT NOT NULL,
    user_id     TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, provider, subject),
    FOREIGN KEY (tenant_id, user_id) REFERENCES users (tenant_id, id) ON DELETE CASCADE
) STRICT;

CREATE TABLE audit_events (
    tenant_id   TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    id          TEXT NOT NULL,
    at          INTEGER NOT NULL,
    type        TEXT NOT NULL,
    actor_id    TEXT,
    subject_id  TEXT,
    ip          TEXT,
    user_agent  TEXT,
    request_id  TEXT,
    detail      TEXT,
    PRIMARY KEY (tenant_id, id)
) STRICT;
CREATE INDEX audit_events_at ON audit_events (tenant_id, at DESC, id DESC);
CREATE INDEX audit_events_subject ON audit_events (tenant_id, subject_id, at DESC);

-- Append-only: no update ever changes an event; only the retention job and
-- tenant deletion (cascade) remove rows.
CREATE TRIGGER audit_events_no_update BEFORE UPDATE ON audit_events
BEGIN
    SELECT RAISE(ABORT, 'audit events are append-only');
END;
