-- Passkeys (WebAuthn credentials). `credential` is webauthn-rs's serialized
-- credential (public key, counter, flags, registration policy); the columns
-- beside it are what queries and the API read. A credential id is unique in
-- its tenant (the same authenticator may hold a passkey for another tenant).
CREATE TABLE passkeys (
    tenant_id      uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    id             uuid NOT NULL,
    user_id        uuid NOT NULL,
    credential_id  text NOT NULL,
    name           text NOT NULL,
    credential     text NOT NULL,
    sign_count     bigint NOT NULL DEFAULT 0,
    backup_eligible boolean NOT NULL DEFAULT false,
    backup_state   boolean NOT NULL DEFAULT false,
    created_at     timestamptz NOT NULL,
    last_used_at   timestamptz,
    PRIMARY KEY (tenant_id, id),
    FOREIGN KEY (tenant_id, user_id) REFERENCES users (tenant_id, id) ON DELETE CASCADE
);
CREATE UNIQUE INDEX passkeys_credential ON passkeys (tenant_id, credential_id);
CREATE INDEX passkeys_user ON passkeys (tenant_id, user_id);

ALTER TABLE passkeys ENABLE ROW LEVEL SECURITY;
ALTER TABLE passkeys FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON passkeys
    USING (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid)
    WITH CHECK (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid);
GRANT SELECT, INSERT, UPDATE, DELETE ON passkeys TO authd_app;
