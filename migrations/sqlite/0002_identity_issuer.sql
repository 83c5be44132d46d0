-- Social identities belong to an issuer, not only to a provider's name in the
-- tenant: a provider re-pointed to another issuer (or kind) must never let its
-- users into accounts linked under the old one, where a colliding `sub` (a
-- small number, say) would otherwise match. The identity also keeps the
-- email the provider claimed, and users record whether their own email is
-- proven (social-login linking only enters accounts whose email is).

ALTER TABLE users ADD COLUMN email_verified INTEGER NOT NULL DEFAULT 0;

CREATE TABLE user_identities_v2 (
    tenant_id   TEXT NOT NULL,
    provider    TEXT NOT NULL,
    issuer      TEXT NOT NULL,
    subject     TEXT NOT NULL,
    user_id     TEXT NOT NULL,
    email       TEXT,
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, provider, issuer, subject),
    FOREIGN KEY (tenant_id, user_id) REFERENCES users (tenant_id, id) ON DELETE CASCADE
) STRICT;

-- Existing identities belong to their provider's current issuer.
INSERT INTO user_identities_v2 (tenant_id, provider, issuer, subject, user_id, email, created_at)
SELECT i.tenant_id, i.provider,
       COALESCE((SELECT p.kind || ':' || COALESCE(p.issuer, '') FROM oauth_providers p
                  WHERE p.tenant_id = i.tenant_id AND p.name = i.provider), ''),
       i.subject, i.user_id, NULL, i.created_at
  FROM user_identities i;

DROP TABLE user_identities;
ALTER TABLE user_identities_v2 RENAME TO user_identities;
