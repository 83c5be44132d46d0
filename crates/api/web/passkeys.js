// The browser side of passkeys against authd's GraphQL API: register a
// passkey for a signed-in user, then sign in with it, with or without an email.
// Options and credentials are WebAuthn Level 3 JSON, so the browser's
// parse*OptionsFromJSON and toJSON() do all the encoding.
const api = new URL("../graphql", location.href).href; // /t/{tenant}/graphql
const $ = (id) => document.getElementById(id);
const RESULT = "__typename ... on AuthTokens { accessToken user { email } } ... on MfaChallenge { challengeId }";
let accessToken = null;

async function gql(query, variables = {}) {
  const headers = { "Content-Type": "application/json" };
  if (accessToken) headers.Authorization = `Bearer ${accessToken}`;
  const res = await fetch(api, { method: "POST", headers, body: JSON.stringify({ query, variables }) });
  const body = await res.json();
  if (body.errors) throw new Error(body.errors[0].extensions?.code ?? body.errors[0].message);
  return body.data;
}

const show = (v) => { $("out").textContent = typeof v === "string" ? v : JSON.stringify(v); };
const run = (f) => () => { show(""); f().catch((e) => show(`error: ${e.message}`)); };

$("password-login").onclick = run(async () => {
  const input = { email: $("email").value, password: $("password").value };
  const { login } = await gql(`mutation($i: LoginInput!) { login(input: $i) { ${RESULT} } }`, { i: input });
  accessToken = login.accessToken ?? null;
  show(login);
});

$("register").onclick = run(async () => {
  const { beginPasskeyRegistration: b } = await gql("mutation { beginPasskeyRegistration { challengeId options } }");
  const cred = await navigator.credentials.create({ publicKey: PublicKeyCredential.parseCreationOptionsFromJSON(b.options) });
  const { finishPasskeyRegistration: p } = await gql(
    "mutation($c: String!, $k: JSON!) { finishPasskeyRegistration(challengeId: $c, credential: $k, name: \"This browser\") { id name } }",
    { c: b.challengeId, k: cred.toJSON() });
  show(p);
});

async function passkeyLogin(email) {
  const { beginPasskeyLogin: b } = await gql("mutation($e: String) { beginPasskeyLogin(email: $e) { challengeId options } }", { e: email });
  const cred = await navigator.credentials.get({ publicKey: PublicKeyCredential.parseRequestOptionsFromJSON(b.options) });
  const { finishPasskeyLogin: r } = await gql(
    `mutation($c: String!, $k: JSON!) { finishPasskeyLogin(challengeId: $c, credential: $k) { ${RESULT} } }`,
    { c: b.challengeId, k: cred.toJSON() });
  accessToken = r.accessToken ?? accessToken;
  show(r);
}

$("login-email").onclick = run(() => passkeyLogin($("email").value));
$("login-usernameless").onclick = run(() => passkeyLogin(null));
