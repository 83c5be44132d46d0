-- Social identities belong to an issuer, not only to a provider's name in the
-- tenant: a provider re-pointed to another issuer (or kind) must never let its
-- users into accounts linked under the old one, where a colliding `sub` (a
-- small number, say) would otherwise match. The identity also keeps the
-- email the provider claimed, and users record whether their own email is
-- proven (social-login linking only enters accounts whose email is).

ALTER TABLE users ADD COLUMN email_verified boolean NOT NULL DEFAULT false;

ALTER TABLE user_identities ADD COLUMN issuer text NOT NULL DEFAULT '';
ALTER TABLE user_identities ADD COLUMN email text;

-- Existing identities belong to their provider's current issuer. The owner is
-- subject to the forced row-level security too, so lift it for the backfill.
ALTER TABLE user_identities NO FORCE ROW LEVEL SECURITY;
ALTER TABLE oauth_providers NO FORCE ROW LEVEL SECURITY;
UPDATE user_identities i
   SET issuer = p.kind || ':' || COALESCE(p.issuer, '')
  FROM oauth_providers p
 WHERE p.tenant_id = i.tenant_id AND p.name = i.provider;
ALTER TABLE user_identities FORCE ROW LEVEL SECURITY;
ALTER TABLE oauth_providers FORCE ROW LEVEL SECURITY;

ALTER TABLE user_identities DROP CONSTRAINT user_identities_pkey;
ALTER TABLE user_identities ADD PRIMARY KEY (tenant_id, provider, issuer, subject);
ALTER TABLE user_identities ALTER COLUMN issuer DROP DEFAULT;
