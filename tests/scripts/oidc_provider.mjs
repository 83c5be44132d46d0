// A real OpenID Provider for the social-login tests: the certified
// `oidc-provider` package with one static confidential client and its
// development login/consent forms (any login, any password; the login
// becomes the subject).
//
// Usage: node oidc_provider.mjs '<json config>'
//   { "clientId", "clientSecret", "redirectUris": [...],
//     "accounts": { "<login>": { "email", "email_verified" } },
//     "mode": "normal" | "tamper_signature" | "wrong_nonce" | "wrong_audience" | "foreign_key"
//             | "hmac_client_secret" | "expired" | "foreign_azp" }
// `POST /__rotate` rotates the signing key: from then on ID tokens are
// signed by a new key (kid `test-key-2`), published in the JWKS with the old.
// Prints one line `{"issuer": "http://127.0.0.1:<port>"}` once listening.
// `mode` rewrites the ID token the token endpoint answers, to play an
// attacker or a broken provider.

import http from 'node:http';
import Provider from 'oidc-provider';
import * as jose from 'jose';

const cfg = JSON.parse(process.argv[2] ?? '{}');
const mode = cfg.mode ?? 'normal';
const accounts = cfg.accounts ?? {};

const { privateKey } = await jose.generateKeyPair('RS256', { extractable: true });
const signingJwk = { ...(await jose.exportJWK(privateKey)), kid: 'test-key-1', alg: 'RS256', use: 'sig' };
const { privateKey: foreignKey } = await jose.generateKeyPair('RS256', { extractable: true });
const { privateKey: nextKey, publicKey: nextPublic } = await jose.generateKeyPair('RS256', { extractable: true });
const nextJwk = { ...(await jose.exportJWK(nextPublic)), kid: 'test-key-2', alg: 'RS256', use: 'sig' };
let rotated = false;

const server = http.createServer();
await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
const issuer = `http://127.0.0.1:${server.address().port}`;

const provider = new Provider(issuer, {
  clients: [{
    client_id: cfg.clientId,
    client_secret: cfg.clientSecret,
    redirect_uris: cfg.redirectUris,
    grant_types: ['authorization_code'],
    response_types: ['code'],
    token_endpoint_auth_method: 'client_secret_basic',
  }],
  jwks: { keys: [signingJwk] },
  cookies: { keys: ['authd-test-cookie-key'] },
  // Claims in the ID token itself (as Google does), not only from userinfo.
  conformIdTokenClaims: false,
  claims: { openid: ['sub'], email: ['email', 'email_verified'] },
  features: { devInteractions: { enabled: true } },
  async findAccount(ctx, id) {
    const a = accounts[id] ?? { email: `${id}@example.com`, email_verified: true };
    return {
      accountId: id,
      async claims() {
        return { sub: id, email: a.email, email_verified: a.email_verified };
      },
    };
  },
});
provider.proxy = false;

async function resign(token, change, key, kid = 'test-key-1') {
  const claims = jose.decodeJwt(token);
  change(claims);
  return new jose.SignJWT(claims).setProtectedHeader({ alg: 'RS256', kid }).sign(key);
}

provider.use(async (ctx, next) => {
  if (ctx.path === '/__rotate' && ctx.method === 'POST') {
    rotated = true;
    ctx.body = 'rotated';
    return;
  }
  await next();
  if (rotated && ctx.path === '/jwks' && ctx.body && ctx.body.keys) {
    ctx.body = { keys: [...ctx.body.keys, nextJwk] };
  }
  if (rotated && ctx.path === '/token' && ctx.body && ctx.body.id_token) {
    ctx.body.id_token = await resign(ctx.body.id_token, () => {}, nextKey, 'test-key-2');
  }
  if (ctx.path !== '/token' || mode === 'normal' || !ctx.body || !ctx.body.id_token) return;
  const token = ctx.body.id_token;
  if (mode === 'tamper_signature') {
    // Same signature, other claims: the email of someone else.
    const [h, , s] = token.split('.');
    const claims = jose.decodeJwt(token);
    claims.email = 'victim@example.com';
    const p = Buffer.from(JSON.stringify(claims)).toString('base64url');
    ctx.body.id_token = `${h}.${p}.${s}`;
  } else if (mode === 'wrong_nonce') {
    ctx.body.id_token = await resign(token, (c) => { c.nonce = 'not-the-nonce-authd-sent'; }, privateKey);
  } else if (mode === 'wrong_audience') {
    ctx.body.id_token = await resign(token, (c) => { c.aud = 'another-client'; }, privateKey);
  } else if (mode === 'foreign_key') {
    ctx.body.id_token = await resign(token, () => {}, foreignKey);
  } else if (mode === 'hmac_client_secret') {
    // HS256 keyed by the client secret, which the client knows too: an
    // ID token anyone holding the secret could have made.
    const claims = jose.decodeJwt(token);
    ctx.body.id_token = await new jose.SignJWT(claims)
      .setProtectedHeader({ alg: 'HS256', kid: 'test-key-1' })
      .sign(new TextEncoder().encode(cfg.clientSecret));
  } else if (mode === 'expired') {
    // Expired two minutes ago: beyond any clock-skew leeway.
    const now = Math.floor(Date.now() / 1000);
    ctx.body.id_token = await resign(token, (c) => { c.iat = now - 600; c.exp = now - 120; }, privateKey);
  } else if (mode === 'foreign_azp') {
    // Our audience, but authorized for another client.
    ctx.body.id_token = await resign(token, (c) => { c.azp = 'another-client'; }, privateKey);
  }
});

server.on('request', provider.callback());
process.stdout.write(`${JSON.stringify({ issuer })}\n`);
