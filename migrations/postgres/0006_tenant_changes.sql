-- The change feed: every change to a tenant's record, settings, signing keys
-- or OAuth providers bumps its `updated_at` in the same transaction, and each
-- replica asks once per interval which tenants changed since it last looked.
CREATE INDEX tenants_updated_at ON tenants (updated_at);
