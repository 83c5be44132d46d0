// The hosted sign-in page's passkey button: shown only where the browser
// has WebAuthn; the form above works without it. It asks authd for a
// usernameless ceremony, lets the browser pick a passkey, and posts the
// answer with the page's form (so the page signs in as with a password).
(() => {
  const form = document.getElementById("passkey-form");
  const button = document.getElementById("passkey");
  if (!form || !button || !window.PublicKeyCredential || !PublicKeyCredential.parseRequestOptionsFromJSON) return;
  button.hidden = false;
  button.addEventListener("click", async () => {
    const api = form.action.replace(/\/login\/passkey$/, "/graphql");
    const res = await fetch(api, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ query: "mutation { beginPasskeyLogin { challengeId options } }" }),
    });
    const b = (await res.json()).data.beginPasskeyLogin;
    const cred = await navigator.credentials.get({ publicKey: PublicKeyCredential.parseRequestOptionsFromJSON(b.options) });
    form.elements.challenge_id.value = b.challengeId;
    form.elements.credential.value = JSON.stringify(cred.toJSON());
    form.submit();
  });
})();
