// The token an ICC page holds, and its renewal before it expires. Shared by the wall display and
// the tablet view; plain JavaScript served by the gateway, no build step.
(function () {
  'use strict';
  const REFRESH_LEAD_MS = 300000, REFRESH_RETRY_MS = 15000;

  // A JWT's claims, read without checking it (the gateway checks it; the page only needs the times).
  function claims(token) {
    try {
      const part = token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
      return JSON.parse(atob(part + '='.repeat((4 - part.length % 4) % 4)));
    } catch (_) { return {}; }
  }
  // When the token says it expires (its `exp` claim, in ms), to tell an expired token from a bad one.
  function expiry(token) {
    const exp = claims(token).exp;
    return typeof exp === 'number' ? exp * 1000 : null;
  }

  // A screen runs for days, its token for hours: swap it for a fresh one (POST /v1/token/refresh)
  // at 80 % of its lifetime or 5 minutes before expiry, whichever comes first, but not before half
  // its lifetime (a short token would be renewed over and over). `holder.token` is the token held
  // now: the fresh one replaces it, is kept in sessionStorage under `storageKey`, and is sent with
  // `send` in an `auth` message, which renews the open stream (if none is open, the next uses it).
  // Refused, the page keeps its token until the gateway closes the stream at its expiry and the
  // page asks to sign in. A failure of the gateway (unreachable, 5xx) is retried every 15 s while
  // the token lasts: the gateway may be restarting.
  function keepFresh(holder, storageKey, send) {
    let timer = null;
    function schedule(delayMs) {
      clearTimeout(timer);
      const { iat, exp } = claims(holder.token);
      if (typeof iat !== 'number' || typeof exp !== 'number' || exp <= iat) return;
      const lifetime = (exp - iat) * 1000;
      const lead = Math.max(0.2 * lifetime, Math.min(REFRESH_LEAD_MS, 0.5 * lifetime));
      const delay = delayMs !== undefined ? delayMs : exp * 1000 - lead - Date.now();
      timer = setTimeout(refresh, Math.max(0, delay));
    }
    async function refresh() {
      const old = holder.token;
      if (!old) return;
      let response;
      try {
        response = await fetch('/v1/token/refresh', { method: 'POST', headers: { Authorization: 'Bearer ' + old } });
      } catch (_) { response = null; }
      if (holder.token !== old) return;                 // signed in anew meanwhile
      if (response && response.ok) {
        holder.token = (await response.json()).token;
        sessionStorage.setItem(storageKey, holder.token);
        send({ type: 'auth', token: holder.token });
        schedule();
      } else if (!response || response.status >= 500) {
        const left = (expiry(old) || 0) - Date.now();
        if (left > REFRESH_RETRY_MS) schedule(REFRESH_RETRY_MS);
      }
    }
    return { schedule, stop: () => clearTimeout(timer) };
  }

  window.IccSession = Object.freeze({ claims, expiry, keepFresh });
})();
