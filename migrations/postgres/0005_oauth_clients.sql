-- Single sign-on: each tenant is an OpenID provider. Its OAuth clients (a
-- confidential client's secret only as a keyed hash) and the consents its
-- users gave third-party clients, per scope set.
CREATE TABLE oauth_clients (
    tenant_id                 uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    client_id                 text NOT NULL,
    name                      text NOT NULL,
    secret_hash               text,
    redirect_uris             jsonb NOT NULL,
    post_logout_redirect_uris jsonb NOT NULL,
    public                    boolean NOT NULL,
    first_party               boolean NOT NULL,
    grant_types               jsonb NOT NULL,
    scopes                    jsonb NOT NULL,
    created_at                timestamptz NOT NULL,
    updated_at                timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, client_id)
);

CREATE TABLE oauth_consents (
    tenant_id   uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    user_id     uuid NOT NULL,
    client_id   text NOT NULL,
    -- The granted scopes, sorted and space-separated.
    scopes      text NOT NULL,
    granted_at  timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, user_id, client_id),
    FOREIGN KEY (tenant_id, user_id) REFERENCES users (tenant_id, id) ON DELETE CASCADE,
    FOREIGN KEY (tenant_id, client_id) REFERENCES oauth_clients (tenant_id, client_id) ON DELETE CASCADE
);

DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['oauth_clients', 'oauth_consents']
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
GRANT SELECT, INSERT, UPDATE, DELETE ON oauth_clients, oauth_consents TO authd_app;
