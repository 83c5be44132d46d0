#!/usr/bin/env node
// A relying party built on the certified `openid-client` library (v6, pinned
// in package.json, installed by scripts/test.sh), to show that an
// off-the-shelf OpenID Connect client can sign users in against authd's
// single sign-on endpoints (docs/api.md) with nothing authd-specific.
//
//   node oidc_rp.mjs <subcommand> --issuer URL --client-id ID
//                    [--client-secret S] [--auth basic|post|none] [options]
//
// The issuer is a tenant's, e.g. http://127.0.0.1:PORT/t/acme; its metadata is
// discovered at <issuer>/.well-known/openid-configuration. Plain http is
// allowed (allowInsecureRequests), and ID token signatures are checked
// against the JWKS (enableNonRepudiationChecks). Client authentication
// defaults to `basic` (client_secret_basic) when --client-secret is given and
// `none` (public client) otherwise; `post` is client_secret_post.
//
// Subcommands and what each prints:
//   start --redirect-uri U [--scope S] [--prompt P] [--max-age N] [--login-hint H]
//       {"url", "verifier", "state", "nonce"}: the authorization URL, with
//       PKCE (S256), state and nonce always. --scope defaults to
//       "openid email offline_access".
//   finish --callback-url URL --verifier V --state S --nonce N [--max-age N]
//       The redirect back from authd (code, state, iss) exchanged at the token
//       endpoint; the redirect_uri sent is the callback URL without its query.
//       {"access_token", "id_token", "refresh_token", "token_type",
//        "expires_in", "scope", "claims"} (claims: the verified ID token's)
//   refresh --refresh-token T [--scope S]
//       Same shape as finish; claims null when no ID token came back.
//   client-credentials [--scope S]
//       {"access_token", "token_type", "expires_in", "scope"}
//   introspect --token T [--hint access_token|refresh_token]
//       The introspection response.
//   revoke --token T [--hint access_token|refresh_token]
//       {"revoked": true}
//   userinfo --access-token T --subject SUB
//       The userinfo response (its `sub` must be SUB).
//   end-session --post-logout-redirect-uri U [--id-token-hint T] [--state S]
//       {"url"}: the RP-initiated logout URL.
//   discover
//       The discovered server metadata.
//
// Every subcommand prints exactly one JSON object on stdout, diagnostics on
// stderr. Exit 0 on success; 1 when the library (or the network) fails, with
//   {"error": <err.name>, "code": <err.code>, "message": <err.message>,
//    "cause": <the RFC 6749 `error` code the server answered, or null>,
//    "status": <HTTP status or null>, "error_description": <or null>,
//    "detail": <message of the underlying error, or null>}
// on stdout; 2 on a usage error (usage on stderr, nothing on stdout).
// Absent response members print as null. token_type is as the library
// returns it: lower-cased ("bearer").
//
// Options are `--name value` or `--name=value`; a value may start with `-`
// (base64url states, nonces, verifiers and tokens do). What openid-client 6
// insists on: the discovered `issuer` equals --issuer exactly (a trailing
// slash is a mismatch); when the metadata says
// authorization_response_iss_parameter_supported, the callback must carry
// `iss` (RFC 9207), even an error one, and it is checked before `state`;
// ID tokens must use an alg in id_token_signing_alg_values_supported (RS256
// when that is absent); client_secret_basic form-encodes the client id and
// secret before base64 (RFC 6749 §2.3.1: `_` becomes `%5F`).
import * as client from 'openid-client';

const USAGE = `usage: oidc_rp.mjs <subcommand> --issuer URL --client-id ID [--client-secret S] [--auth basic|post|none] [options]
  start --redirect-uri U [--scope S] [--prompt P] [--max-age N] [--login-hint H]
  finish --callback-url URL --verifier V --state S --nonce N [--max-age N]
  refresh --refresh-token T [--scope S]
  client-credentials [--scope S]
  introspect --token T [--hint access_token|refresh_token]
  revoke --token T [--hint access_token|refresh_token]
  userinfo --access-token T --subject SUB
  end-session --post-logout-redirect-uri U [--id-token-hint T] [--state S]
  discover
`;

const DEFAULT_SCOPE = 'openid email offline_access';
const HINTS = ['access_token', 'refresh_token'];

// Per subcommand: its own options (all strings) and which are required.
const SUBCOMMANDS = {
  start: { options: ['redirect-uri', 'scope', 'prompt', 'max-age', 'login-hint'], required: ['redirect-uri'] },
  finish: { options: ['callback-url', 'verifier', 'state', 'nonce', 'max-age'], required: ['callback-url', 'verifier', 'state', 'nonce'] },
  refresh: { options: ['refresh-token', 'scope'], required: ['refresh-token'] },
  'client-credentials': { options: ['scope'], required: [] },
  introspect: { options: ['token', 'hint'], required: ['token'] },
  revoke: { options: ['token', 'hint'], required: ['token'] },
  userinfo: { options: ['access-token', 'subject'], required: ['access-token', 'subject'] },
  'end-session': { options: ['post-logout-redirect-uri', 'id-token-hint', 'state'], required: ['post-logout-redirect-uri'] },
  discover: { options: [], required: [] },
};
const COMMON = ['issuer', 'client-id', 'client-secret', 'auth'];

class UsageError extends Error {}

function parseUrl(value, name) {
  try {
    return new URL(value);
  } catch {
    throw new UsageError(`--${name} is not a URL: ${value}`);
  }
}

function parseMaxAge(value) {
  if (value === undefined) return undefined;
  if (!/^\d+$/.test(value)) throw new UsageError(`--max-age must be a non-negative integer: ${value}`);
  return Number(value);
}

// Every option takes a value, as `--name value` or `--name=value`. The value
// is the next argument whatever it looks like: random states, nonces, PKCE
// verifiers and tokens are base64url and may start with `-`, which
// util.parseArgs would refuse as "ambiguous".
function parseOptions(args, known) {
  const values = {};
  for (let i = 0; i < args.length; i++) {
    const arg = args[i];
    if (!arg.startsWith('--')) throw new UsageError(`unexpected argument: ${arg}`);
    const eq = arg.indexOf('=');
    const name = eq === -1 ? arg.slice(2) : arg.slice(2, eq);
    if (!known.has(name)) throw new UsageError(`unknown option: --${name}`);
    if (Object.hasOwn(values, name)) throw new UsageError(`--${name} given twice`);
    if (eq !== -1) {
      values[name] = arg.slice(eq + 1);
    } else {
      if (i + 1 >= args.length) throw new UsageError(`--${name} needs a value`);
      values[name] = args[++i];
    }
  }
  return values;
}

function parseCli(argv) {
  const [sub, ...rest] = argv;
  const spec = SUBCOMMANDS[sub];
  if (!spec) throw new UsageError(sub === undefined ? 'missing subcommand' : `unknown subcommand: ${sub}`);
  const values = parseOptions(rest, new Set([...COMMON, ...spec.options]));
  for (const name of ['issuer', 'client-id', ...spec.required]) {
    if (values[name] === undefined || values[name] === '') throw new UsageError(`${sub}: --${name} is required`);
  }
  const issuer = parseUrl(values.issuer, 'issuer');
  const secret = values['client-secret'];
  const auth = values.auth ?? (secret !== undefined ? 'basic' : 'none');
  if (!['basic', 'post', 'none'].includes(auth)) throw new UsageError(`--auth must be basic, post or none: ${auth}`);
  if (auth !== 'none' && (secret === undefined || secret === '')) {
    throw new UsageError(`--auth ${auth} needs --client-secret`);
  }
  if (values.hint !== undefined && !HINTS.includes(values.hint)) {
    throw new UsageError(`--hint must be ${HINTS.join(' or ')}: ${values.hint}`);
  }
  for (const name of ['redirect-uri', 'callback-url', 'post-logout-redirect-uri']) {
    if (values[name] !== undefined) parseUrl(values[name], name);
  }
  const maxAge = parseMaxAge(values['max-age']);
  return { sub, values, issuer, clientId: values['client-id'], secret, auth, maxAge };
}

function clientAuth({ auth, secret }) {
  switch (auth) {
    case 'basic':
      return client.ClientSecretBasic(secret);
    case 'post':
      return client.ClientSecretPost(secret);
    default:
      return client.None();
  }
}

async function configure(cli) {
  const config = await client.discovery(cli.issuer, cli.clientId, undefined, clientAuth(cli), {
    execute: [client.allowInsecureRequests],
  });
  client.enableNonRepudiationChecks(config);
  return config;
}

function tokenSet(tokens) {
  return {
    access_token: tokens.access_token ?? null,
    id_token: tokens.id_token ?? null,
    refresh_token: tokens.refresh_token ?? null,
    token_type: tokens.token_type ?? null,
    expires_in: tokens.expires_in ?? null,
    scope: tokens.scope ?? null,
    claims: tokens.claims() ?? null,
  };
}

const RUN = {
  async start(config, { values, maxAge }) {
    const verifier = client.randomPKCECodeVerifier();
    const state = client.randomState();
    const nonce = client.randomNonce();
    const params = {
      redirect_uri: values['redirect-uri'],
      scope: values.scope ?? DEFAULT_SCOPE,
      code_challenge: await client.calculatePKCECodeChallenge(verifier),
      code_challenge_method: 'S256',
      state,
      nonce,
    };
    if (values.prompt !== undefined) params.prompt = values.prompt;
    if (maxAge !== undefined) params.max_age = String(maxAge);
    if (values['login-hint'] !== undefined) params.login_hint = values['login-hint'];
    const url = client.buildAuthorizationUrl(config, params);
    return { url: url.href, verifier, state, nonce };
  },

  async finish(config, { values, maxAge }) {
    const checks = {
      pkceCodeVerifier: values.verifier,
      expectedState: values.state,
      expectedNonce: values.nonce,
      idTokenExpected: true,
    };
    if (maxAge !== undefined) checks.maxAge = maxAge;
    const tokens = await client.authorizationCodeGrant(config, new URL(values['callback-url']), checks);
    return tokenSet(tokens);
  },

  async refresh(config, { values }) {
    const params = values.scope !== undefined ? { scope: values.scope } : undefined;
    return tokenSet(await client.refreshTokenGrant(config, values['refresh-token'], params));
  },

  async 'client-credentials'(config, { values }) {
    const params = values.scope !== undefined ? { scope: values.scope } : undefined;
    const tokens = await client.clientCredentialsGrant(config, params);
    return {
      access_token: tokens.access_token ?? null,
      token_type: tokens.token_type ?? null,
      expires_in: tokens.expires_in ?? null,
      scope: tokens.scope ?? null,
    };
  },

  async introspect(config, { values }) {
    const params = values.hint !== undefined ? { token_type_hint: values.hint } : undefined;
    return client.tokenIntrospection(config, values.token, params);
  },

  async revoke(config, { values }) {
    const params = values.hint !== undefined ? { token_type_hint: values.hint } : undefined;
    await client.tokenRevocation(config, values.token, params);
    return { revoked: true };
  },

  async userinfo(config, { values }) {
    return client.fetchUserInfo(config, values['access-token'], values.subject);
  },

  async 'end-session'(config, { values }) {
    const params = { post_logout_redirect_uri: values['post-logout-redirect-uri'] };
    if (values['id-token-hint'] !== undefined) params.id_token_hint = values['id-token-hint'];
    if (values.state !== undefined) params.state = values.state;
    return { url: client.buildEndSessionUrl(config, params).href };
  },

  async discover(config) {
    return config.serverMetadata();
  },
};

// The OAuth `error` code (and its description) behind a failure, wherever the
// library left it: ResponseBodyError and AuthorizationResponseError carry
// `error`; a WWW-Authenticate challenge (a 401 with `Basic realm=...` or
// `Bearer error=...`) keeps the response, whose body may still hold the JSON
// error; an unexpected status keeps the Response as `cause`.
async function oauthError(err) {
  const found = { error: null, description: err.error_description ?? null };
  if (typeof err.error === 'string') {
    found.error = err.error;
    return found;
  }
  const cause = err.cause;
  if (cause instanceof URLSearchParams) {
    found.error = cause.get('error');
    found.description ??= cause.get('error_description');
  } else if (Array.isArray(cause)) {
    const challenge = cause.find((c) => typeof c?.parameters?.error === 'string');
    if (challenge) {
      found.error = challenge.parameters.error;
      found.description ??= challenge.parameters.error_description ?? null;
    }
  } else if (cause && typeof cause === 'object' && typeof cause.error === 'string') {
    found.error = cause.error;
    found.description ??= cause.error_description ?? null;
  }
  const response = err.response ?? (cause instanceof Response ? cause : undefined);
  if (response instanceof Response && !response.bodyUsed) {
    try {
      const body = await response.json();
      if (typeof body?.error === 'string') {
        found.error ??= body.error;
        if (typeof body.error_description === 'string') found.description ??= body.error_description;
      }
    } catch {
      // Not JSON: nothing more to report.
    }
  }
  return found;
}

async function describeError(err) {
  const isObject = err !== null && typeof err === 'object';
  const cause = isObject ? err.cause : undefined;
  const response = isObject ? (err.response ?? (cause instanceof Response ? cause : undefined)) : undefined;
  const oauth = isObject ? await oauthError(err) : { error: null, description: null };
  return {
    error: err?.name ?? 'Error',
    code: err?.code ?? null,
    message: err?.message ?? String(err),
    cause: oauth.error,
    status: err?.status ?? (response instanceof Response ? response.status : null),
    error_description: oauth.description,
    detail: cause instanceof Error ? (cause.message || cause.code || cause.name) : null,
  };
}

async function main(argv) {
  let cli;
  try {
    cli = parseCli(argv);
  } catch (e) {
    if (!(e instanceof UsageError)) throw e;
    process.stderr.write(`oidc_rp: ${e.message}\n${USAGE}`);
    return 2;
  }
  try {
    const config = await configure(cli);
    const result = await RUN[cli.sub](config, cli);
    process.stdout.write(`${JSON.stringify(result)}\n`);
    return 0;
  } catch (e) {
    const out = await describeError(e);
    process.stderr.write(`oidc_rp ${cli.sub}: ${out.error}${out.code ? ` ${out.code}` : ''}: ${out.message}`
      + `${out.detail ? ` (${out.detail})` : ''}${out.cause ? ` [${out.cause}]` : ''}\n`);
    if (e?.stack) process.stderr.write(`${e.stack}\n`);
    process.stdout.write(`${JSON.stringify(out)}\n`);
    return 1;
  }
}

process.exitCode = await main(process.argv.slice(2));
