// Bootstrap for authd's GraphiQL page (index.html).
//
// This file exists because the page is served with `script-src 'self'`: an
// inline <script> would be refused, so everything the page runs is a
// same-origin file. It expects window.React, window.ReactDOM and
// window.GraphiQL from the vendored UMD bundles loaded before it.
(function () {
  'use strict';

  var root = document.getElementById('graphiql');
  // The server writes the endpoint path into data-endpoint; fall back to the
  // page's own path, since authd serves GraphiQL on GET of the endpoint itself.
  var endpoint = (root && root.getAttribute('data-endpoint')) || window.location.pathname;

  // A relative path keeps every request on this origin, which is all that
  // `connect-src 'self'` allows anyway; refuse anything else loudly rather
  // than failing with an opaque CSP error.
  if (!/^\/(?!\/)/.test(endpoint)) {
    root.textContent = 'authd GraphiQL: data-endpoint must be a same-origin path, got ' + endpoint;
    return;
  }

  // One GraphQL operation per POST, as JSON (docs/api.md: batching is off).
  // `credentials: 'same-origin'` sends the tenant's cookies, so a browser that
  // logged in in cookie mode can use the page without pasting a token; a
  // bearer token goes in GraphiQL's Headers tab instead.
  function fetcher(graphQLParams, opts) {
    var headers = { Accept: 'application/json' };
    var extra = (opts && opts.headers) || {};
    Object.keys(extra).forEach(function (name) {
      headers[name] = String(extra[name]);
    });
    headers['Content-Type'] = 'application/json';
    return fetch(endpoint, {
      method: 'POST',
      credentials: 'same-origin',
      headers: headers,
      body: JSON.stringify(graphQLParams),
    }).then(function (response) {
      return response.text().then(function (text) {
        try {
          return JSON.parse(text);
        } catch (e) {
          // A proxy error page or an empty 5xx: show it as a GraphQL error
          // instead of GraphiQL's unhelpful "Unexpected token <".
          return {
            errors: [{ message: 'HTTP ' + response.status + ' (not JSON): ' + text.slice(0, 500) }],
          };
        }
      });
    });
  }

  // Keep each endpoint's tabs apart (one browser, several tenants), and keep
  // them in localStorage under a prefix so they never collide with an app
  // that shares this origin's storage.
  var prefix = 'authd-graphiql:' + endpoint + ':';

  // Bearer tokens must never reach localStorage, where any script that ever
  // runs on the auth origin could read them. shouldPersistHeaders: false
  // covers the tabs, but GraphiQL 3's query history saves each run's headers
  // regardless, so every value is scrubbed of `headers` before it is stored.
  function withoutHeaders(key, value) {
    if (/(^|:)headers$/.test(key)) return null;
    if (typeof value !== 'string' || value.indexOf('"headers"') === -1) return value;
    try {
      return JSON.stringify(JSON.parse(value, function (k, v) { return k === 'headers' ? null : v; }));
    } catch (e) {
      return null; // cannot tell what it holds: do not store it
    }
  }

  var storage = {
    getItem: function (key) { return window.localStorage.getItem(prefix + key); },
    setItem: function (key, value) {
      var safe = withoutHeaders(key, value);
      if (safe === null) window.localStorage.removeItem(prefix + key);
      else window.localStorage.setItem(prefix + key, safe);
    },
    removeItem: function (key) { window.localStorage.removeItem(prefix + key); },
    get length() { return ownKeys().length; },
    clear: function () { ownKeys().forEach(function (key) { window.localStorage.removeItem(key); }); },
  };
  function ownKeys() {
    var keys = [];
    for (var i = 0; i < window.localStorage.length; i += 1) {
      var key = window.localStorage.key(i);
      if (key && key.indexOf(prefix) === 0) keys.push(key);
    }
    return keys;
  }
  var storageWorks = true;
  try {
    window.localStorage.getItem(prefix);
  } catch (e) {
    // Storage disabled (private mode, sandboxed frame): run without it.
    storageWorks = false;
  }

  var defaultQuery = [
    '# authd GraphQL endpoint: ' + endpoint,
    '#',
    '# To call as a user or operator, open Headers below',
    '# and add: { "Authorization": "Bearer <token>" }',
    '# (headers are not saved in this browser).',
    '',
    '{',
    '  __typename',
    '}',
    '',
  ].join('\n');

  ReactDOM.createRoot(root).render(
    React.createElement(GraphiQL, {
      fetcher: fetcher,
      defaultQuery: defaultQuery,
      isHeadersEditorEnabled: true,
      // Bearer tokens must not outlive the tab in localStorage.
      shouldPersistHeaders: false,
      storage: storageWorks ? storage : null,
    })
  );
})();
