-- Email links (verification, password reset, magic link, email change) and
-- the mail outbox.
--
-- A link is stored only as a keyed hash of its token. A user has at most one
-- live link of each kind: the primary key makes a new one replace the old.
CREATE TABLE email_links (
    tenant_id      uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    user_id        uuid NOT NULL,
    -- verification, password_reset, magic_link or email_change
    kind           text NOT NULL,
    token_hash     text NOT NULL,
    -- The address the link proves (the account's at the time, or the new
    -- address of an email change).
    email          text NOT NULL,
    -- A magic link's PKCE S256 challenge of the app that asked for it.
    code_challenge text,
    created_at     timestamptz NOT NULL,
    expires_at     timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, user_id, kind),
    FOREIGN KEY (tenant_id, user_id) REFERENCES users (tenant_id, id) ON DELETE CASCADE
);
CREATE UNIQUE INDEX email_links_token ON email_links (tenant_id, token_hash);

ALTER TABLE email_links ENABLE ROW LEVEL SECURITY;
ALTER TABLE email_links FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON email_links
    USING (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid)
    WITH CHECK (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid);
GRANT SELECT, INSERT, UPDATE, DELETE ON email_links TO authd_app;

-- Mail waiting for delivery. Rows are written in the transaction of the
-- change that asks for the mail, claimed by one sender at a time
-- (`FOR UPDATE SKIP LOCKED`, then a lease in `claimed_until`), and deleted
-- once the relay accepted the message. The message itself (which holds a
-- live link) is sealed under the master key, bound to its tenant and row, so
-- this table is not tenant-filtered: every replica's sender works through
-- every tenant's mail, and a dump of it shows no link.
CREATE TABLE mail_outbox (
    id             uuid PRIMARY KEY,
    tenant_id      uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    kind           text NOT NULL,
    message_sealed text NOT NULL,
    created_at     timestamptz NOT NULL,
    attempts       integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL,
    claimed_until  timestamptz,
    last_error     text,
    failed_at      timestamptz
);
CREATE INDEX mail_outbox_due ON mail_outbox (next_attempt_at) WHERE failed_at IS NULL;
GRANT SELECT, INSERT, UPDATE, DELETE ON mail_outbox TO authd_app;
