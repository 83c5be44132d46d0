-- authd: initial schema for Postgres.
--
-- Run by `authd migrate` as the owner role. The service runs as `authd_app`,
-- a role that owns nothing and lacks BYPASSRLS; every tenant-owned table is
-- guarded by row-level security on the transaction-local `app.tenant_id`.

-- The application role. Roles are cluster-wide and several databases (one per
-- test) may migrate at once, so a concurrent creation is not an error.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'authd_app') THEN
        CREATE ROLE authd_app NOLOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE NOINHERIT;
    END IF;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
    NULL;
END
$$;

-- The owner must be able to `SET ROLE authd_app` (a superuser always can).
DO $$
BEGIN
    EXECUTE format('GRANT authd_app TO %I', current_user);
EXCEPTION WHEN OTHERS THEN
    NULL;
END
$$;

-- Platform tables: not tenant-owned, read by the platform API and by tenant
-- routing before any tenant is known.
CREATE TABLE tenants (
    id          uuid PRIMARY KEY,
    slug        text NOT NULL UNIQUE,
    name        text NOT NULL,
    disabled    boolean NOT NULL DEFAULT false,
    settings    jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at  timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL
);

-- Operator actions; keeps no foreign key so it survives deleteTenant.
CREATE TABLE platform_audit_events (
    id          uuid PRIMARY KEY,
    at          timestamptz NOT NULL,
    type        text NOT NULL,
    tenant_id   uuid,
    tenant_slug text,
    operator    text,
    ip          text,
    user_agent  text,
    request_id  text,
    detail      jsonb
);
CREATE INDEX platform_audit_events_at ON platform_audit_events (at DESC, id DESC);

-- Tenant-owned tables: tenant_id leads every primary key (partitionable by
-- tenant, e.g. with Citus), and every row goes when its tenant goes.
CREATE TABLE users (
    tenant_id           uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    id                  uuid NOT NULL,
    email               text,
    password_hash       text,
    role                text NOT NULL DEFAULT 'user' CHECK (role IN ('user', 'admin')),
    disabled            boolean NOT NULL DEFAULT false,
    totp_secret_sealed  text,
    totp_pending_sealed text,
    totp_enabled        boolean NOT NULL DEFAULT false,
    totp_last_step      bigint,
    created_at          timestamptz NOT NULL,
    updated_at          timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, id)
);
CREATE UNIQUE INDEX users_email ON users (tenant_id, email) WHERE email IS NOT NULL;

CREATE TABLE signing_keys (
    tenant_id           uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    kid                 text NOT NULL,
    algorithm           text NOT NULL,
    private_key_sealed  text NOT NULL,
    public_jwk          jsonb NOT NULL,
    created_at          timestamptz NOT NULL,
    activates_at        timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, kid)
);

CREATE TABLE recovery_codes (
    tenant_id   uuid NOT NULL,
    user_id     uuid NOT NULL,
    code_hash   text NOT NULL,
    used_at     timestamptz,
    created_at  timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, user_id, code_hash),
    FOREIGN KEY (tenant_id, user_id) REFERENCES users (tenant_id, id) ON DELETE CASCADE
);

CREATE TABLE oauth_providers (
    tenant_id             uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    name                  text NOT NULL,
    kind                  text NOT NULL,
    display_name          text NOT NULL,
    client_id             text NOT NULL,
    client_secret_sealed  text,
    issuer                text,
    scopes                jsonb NOT NULL DEFAULT '[]'::jsonb,
    enabled               boolean NOT NULL DEFAULT true,
    trust_email_verified  boolean NOT NULL DEFAULT false,
    created_at            timestamptz NOT NULL,
    updated_at            timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, name)
);

CREATE TABLE user_identities (
    tenant_id   uuid NOT NULL,
    provider    text NOT NULL,
    subject     text NOT NULL,
    user_id     uuid NOT NULL,
    created_at  timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, provider, subject),
    FOREIGN KEY (tenant_id, user_id) REFERENCES users (tenant_id, id) ON DELETE CASCADE
);

CREATE TABLE audit_events (
    tenant_id   uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    id          uuid NOT NULL,
    at          timestamptz NOT NULL,
    type        text NOT NULL,
    actor_id    uuid,
    subject_id  uuid,
    ip          text,
    user_agent  text,
    request_id  text,
    detail      jsonb,
    PRIMARY KEY (tenant_id, id)
);
CREATE INDEX audit_events_at ON audit_events (tenant_id, at DESC, id DESC);
CREATE INDEX audit_events_subject ON audit_events (tenant_id, subject_id, at DESC);

-- Row-level security on every tenant-owned table. With no tenant set,
-- NULLIF(...) is NULL, the comparison is never true: no row is visible and
-- WITH CHECK accepts no write. FORCE applies the policy to the owner too.
DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['users', 'signing_keys', 'recovery_codes', 'oauth_providers',
                             'user_identities', 'audit_events']
    LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format(
            'CREATE POLICY tenant_isolation ON %I
                 USING (tenant_id = NULLIF(current_setting(''app.tenant_id'', true), '''')::uuid)
                 WITH CHECK (tenant_id = NULLIF(current_setting(''app.tenant_id'', true), '''')::uuid)',
            t);
    END LOOP;
END
$$;

-- Least privilege for the application role.
GRANT USAGE ON SCHEMA public TO authd_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON tenants TO authd_app;
GRANT SELECT, INSERT ON platform_audit_events TO authd_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON users, signing_keys, recovery_codes, oauth_providers,
    user_identities TO authd_app;
-- The audit log is append-only for the service.
GRANT SELECT, INSERT ON audit_events TO authd_app;

-- Retention is the only way events leave (besides tenant deletion): a
-- function owned by the migration role, limited to the transaction's own
-- tenant (it refuses any other, so the service cannot purge a tenant it is
-- not acting for) and to events older than the given time.
CREATE FUNCTION authd_purge_audit_events(p_tenant uuid, p_before timestamptz)
RETURNS bigint
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = public, pg_temp
AS $$
DECLARE
    n bigint;
BEGIN
    IF p_tenant IS DISTINCT FROM NULLIF(current_setting('app.tenant_id', true), '')::uuid THEN
        RAISE EXCEPTION 'authd_purge_audit_events: tenant % is not the transaction''s tenant', p_tenant
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    DELETE FROM audit_events WHERE tenant_id = p_tenant AND at < p_before;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END
$$;
REVOKE ALL ON FUNCTION authd_purge_audit_events(uuid, timestamptz) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION authd_purge_audit_events(uuid, timestamptz) TO authd_app;
