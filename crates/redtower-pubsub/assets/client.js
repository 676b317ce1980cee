// redtower-pubsub browser helper: an EventSource that comes back.
//
//   const stream = subscribe("/events/news", {
//     onEvent: (data, id) => render(data),     // every event, parsed from JSON
//     onResync: () => location.reload(),       // events were lost: reload state
//     onRevoked: () => showLoggedOut(),        // access ended: the stream stops for good
//   });
//   // later: stream.close();
//
// `lastEventId` resumes a stream a previous page saw up to (kept, say, in sessionStorage):
// the events after it are replayed from the channel's history first.
//
// A native EventSource reconnects by itself after network errors and resumes with
// Last-Event-ID, but gives up for good on any non-200 answer (a 502 from a proxy during a
// deploy, a 503 while Redis is down). This helper recreates it with a growing, jittered delay.
// A 403 also closes it: recreate stops after `maxAttempts` failed opens in a row.
export function subscribe(url, { onEvent, onResync, onRevoked, onOpen, maxAttempts = Infinity, lastEventId: resumeFrom = null } = {}) {
  let source = null;
  let attempts = 0;
  let closed = false;
  let timer = null;
  let lastEventId = resumeFrom;

  const open = () => {
    if (closed) return;
    // Resume where the previous EventSource stopped (a new one does not send Last-Event-ID).
    let target = url;
    if (lastEventId) {
      target += (url.includes("?") ? "&" : "?") + "last_event_id=" + encodeURIComponent(lastEventId);
    }
    source = new EventSource(target, { withCredentials: true });
    source.onopen = () => {
      attempts = 0;
      if (onOpen) onOpen();
    };
    source.onmessage = (e) => {
      lastEventId = e.lastEventId || lastEventId;
      let data = e.data;
      try { data = JSON.parse(e.data); } catch (_) { /* not JSON: pass the text */ }
      if (onEvent) onEvent(data, e.lastEventId);
    };
    source.addEventListener("resync", (e) => {
      lastEventId = e.lastEventId || null;
      if (onResync) onResync(JSON.parse(e.data));
      else window.location.reload();
    });
    source.addEventListener("revoked", () => {
      // Access ended (logged out, revoked, expired): stop for good.
      closed = true;
      source.close();
      if (onRevoked) onRevoked();
    });
    source.onerror = () => {
      if (source.readyState !== EventSource.CLOSED) return; // the browser retries by itself
      source.close();
      attempts += 1;
      if (attempts > maxAttempts) return;
      const delay = Math.min(30000, 1000 * 2 ** Math.min(attempts, 5)) * (0.5 + Math.random());
      timer = setTimeout(open, delay);
    };
  };

  open();
  return {
    close() {
      closed = true;
      clearTimeout(timer);
      if (source) source.close();
    },
  };
}
