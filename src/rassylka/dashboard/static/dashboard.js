// Rassylka's dashboard: what every page shares. The page's own scripts call the JSON API
// with rassylka.api(), which sends the CSRF token the server checks (docs/dashboard.md).
"use strict";
window.rassylka = {
  csrfToken() {
    const meta = document.querySelector('meta[name="csrf-token"]');
    return meta ? meta.content : "";
  },
  async api(method, path, body) {
    const headers = { "X-CSRF-Token": this.csrfToken() };
    if (body !== undefined && !(body instanceof FormData)) headers["Content-Type"] = "application/json";
    const response = await fetch(path, {
      method, headers, credentials: "same-origin",
      body: body === undefined ? undefined : (body instanceof FormData ? body : JSON.stringify(body)),
    });
    let payload = null;
    try { payload = await response.json(); } catch (_) { /* not JSON */ }
    return { ok: response.ok, status: response.status, payload };
  },
};
