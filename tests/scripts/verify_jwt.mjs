#!/usr/bin/env node
// Verify an authd access token the way a Node.js resource server would, with
// the `jose` library (pinned in package.json, installed by scripts/test.sh).
//
//   node verify_jwt.mjs <jwks_url> <token> <issuer> <audience>
//
// A second independent verifier beside verify_jwt.py: jose is stricter about
// some things (it requires `typ` when asked, and rejects a JWK whose `alg` or
// `use` does not fit the token), so a token both accept is one "any standard
// JWT library" accepts (docs/api.md). Checks the signature against the remote
// JWKS (key chosen by `kid`), `alg` in ES256/EdDSA/RS256, `typ: at+jwt`
// (RFC 9068 §2.1), `iss`, `aud`, `exp`, `iat`.
//
// Prints the claims as one line of JSON and exits 0; on failure prints
// `CODE: message` on stderr and exits 1; a usage error exits 2.
import { createRemoteJWKSet, jwtVerify } from 'jose';

const ALGORITHMS = ['ES256', 'EdDSA', 'RS256'];

async function main(argv) {
  if (argv.length !== 4) {
    process.stderr.write('usage: verify_jwt.mjs <jwks_url> <token> <issuer> <audience>\n');
    return 2;
  }
  const [jwksUrl, token, issuer, audience] = argv;
  let url;
  try {
    url = new URL(jwksUrl);
  } catch (e) {
    process.stderr.write(`usage: not a URL: ${jwksUrl}\n`);
    return 2;
  }
  // A fresh key set per run, like a resource server that just started.
  const jwks = createRemoteJWKSet(url, { timeoutDuration: 10000 });
  try {
    const { payload } = await jwtVerify(token, jwks, {
      algorithms: ALGORITHMS,
      typ: 'at+jwt',
      issuer,
      audience,
      requiredClaims: ['sub', 'exp', 'iat'],
    });
    process.stdout.write(JSON.stringify(payload) + '\n');
    return 0;
  } catch (e) {
    process.stderr.write(`${e.code || e.name}: ${e.message}\n`);
    return 1;
  }
}

process.exitCode = await main(process.argv.slice(2));
