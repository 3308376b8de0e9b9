// The wslogging web viewer: asks for a key, streams records over the WebSocket, and shows them.
//
// Log text is untrusted: it only ever reaches the page as textContent, never as HTML.
"use strict";
(() => {
  // Entries (record rows and markers) kept in the page, newest last; older ones are removed
  // from the page as new ones arrive. Download saves exactly these.
  const MAX_ROWS = 5000;
  // Records of history shown when the page first connects.
  const HISTORY = 200;
  // Reconnection backoff: from BACKOFF_MIN doubling to BACKOFF_MAX milliseconds, +-20%.
  const BACKOFF_MIN = 500;
  const BACKOFF_MAX = 10000;
  // Milliseconds between renderings at most: each one lays out the page again.
  const FLUSH_EVERY = 100;
  // Pixels from the bottom within which the view counts as "at the newest record".
  const STICKY = 24;
  const KEY_STORE = "wslogging.key";
  const LEVELS = [[50, "critical"], [40, "error"], [30, "warning"], [20, "info"], [0, "debug"]];
  const LEVEL_NAMES = { 10: "DEBUG", 20: "INFO", 30: "WARNING", 40: "ERROR", 50: "CRITICAL" };
  const GAP_REASONS = {
    history: "no longer in the server's history",
    slow_client: "this viewer fell behind",
    restart: "the server restarted",
  };

  const $ = (id) => document.getElementById(id);
  const body = document.body;
  const logEl = $("log");

  const state = {
    key: null,
    ws: null,
    // Bumped at every (re)connection and logout: callbacks of an older one are ignored.
    generation: 0,
    lastId: null,
    backoff: BACKOFF_MIN,
    timer: null,
    filter: { level: null, logger: [], grep: null, pid: [] },
    // The last filter the server accepted: restored if it refuses a new one, so that the
    // next connection's URL never carries a filter it would refuse.
    accepted: { level: null, logger: [], grep: null, pid: [] },
    paused: false,
    unseen: 0, // records received since Pause
    follow: true,
    received: 0,
    dropped: 0,
    unknownGaps: 0,
    entries: [], // in the page, oldest first: {kind: "log"|"gap"|"note", frame, text, el}
    pending: [], // received, not in the page yet (while paused, or until the next frame)
    flushScheduled: false,
    flushedAt: 0,
  };

  // -- connection ------------------------------------------------------------------------

  class Refused extends Error {}
  class Throttled extends Error {
    constructor(seconds) {
      super("too many failed key attempts from this address");
      this.seconds = seconds;
    }
  }

  // A header value holds bytes: send the key as UTF-8, which is what the server compares.
  const headerValue = (text) => String.fromCharCode(...new TextEncoder().encode(text));

  async function api(path, method) {
    const response = await fetch(new URL(path, location.href), {
      method,
      headers: { Authorization: `Bearer ${headerValue(state.key)}` },
      cache: "no-store",
    });
    if (response.status === 401) {
      throw new Refused(await detail(response));
    }
    if (response.status === 429) {
      throw new Throttled(Number(response.headers.get("Retry-After")) || 60);
    }
    if (!response.ok) {
      throw new Error(`the server answered ${response.status} ${await detail(response)}`);
    }
    return response.json();
  }

  async function detail(response) {
    try {
      return (await response.json()).detail || response.statusText;
    } catch {
      return response.statusText;
    }
  }

  function filterParams(params) {
    const { level, logger, grep, pid } = state.filter;
    if (level) params.set("level", level);
    for (const prefix of logger) params.append("logger", prefix);
    if (grep) params.set("grep", grep);
    for (const id of pid) params.append("pid", id);
    return params;
  }

  async function connect() {
    clearTimeout(state.timer);
    const generation = ++state.generation;
    const current = () => generation === state.generation;
    setConn("connecting", "Connecting…");
    let ticket;
    try {
      if (state.lastId === null) {
        // First connection: the newest records of history, then live from the last of them.
        const params = filterParams(new URLSearchParams({ limit: String(HISTORY) }));
        const page = await api(`api/logs?${params}`, "GET");
        if (!current()) return;
        for (const record of page.records) onLog(record);
        state.lastId = page.last_id;
      }
      // Tickets are single-use: every connection gets a fresh one.
      ticket = (await api("api/ticket", "POST")).ticket;
    } catch (error) {
      if (!current()) return;
      if (error instanceof Refused) {
        showLogin(`Wrong API key: the server refused it (${error.message}). Enter it again.`);
      } else if (error instanceof Throttled) {
        retry(`Refused for now: ${error.message}`, error.seconds * 1000);
      } else {
        retry(`Cannot reach the server (${error.message})`);
      }
      return;
    }
    if (!current()) return;
    const url = new URL("ws/logs", location.href);
    url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
    const params = filterParams(new URLSearchParams({ ticket }));
    if (state.lastId !== null) params.set("since", state.lastId);
    url.search = params.toString();
    const ws = new WebSocket(url);
    state.ws = ws;
    ws.onmessage = (event) => {
      if (current()) onFrame(JSON.parse(event.data));
    };
    ws.onclose = (event) => {
      if (!current()) return;
      state.ws = null;
      const why = event.reason ? `${event.code} ${event.reason}` : `${event.code}`;
      // 4401 (ticket refused, key revoked): the next ticket request tells whether the key is
      // still good, and shows the key form if not.
      retry(`Connection closed (${why})`);
    };
  }

  function retry(reason, delay) {
    if (delay === undefined) {
      delay = state.backoff * (0.8 + 0.4 * Math.random());
      state.backoff = Math.min(state.backoff * 2, BACKOFF_MAX);
    }
    setConn("retrying", `${reason}; reconnecting in ${(delay / 1000).toFixed(1)} s`);
    state.timer = setTimeout(connect, delay);
  }

  function disconnect() {
    state.generation++;
    clearTimeout(state.timer);
    if (state.ws) state.ws.close(1000);
    state.ws = null;
  }

  function setConn(conn, text) {
    body.dataset.conn = conn;
    $("status").textContent = text;
  }

  // -- frames ----------------------------------------------------------------------------

  function onFrame(frame) {
    switch (frame.type) {
      case "hello":
        state.backoff = BACKOFF_MIN;
        if (state.lastId === null) state.lastId = frame.last_id;
        setConn("live", `Live: ${frame.server}`);
        break;
      case "log":
        onLog(frame);
        break;
      case "gap":
        if (frame.missed === null || frame.missed === undefined) state.unknownGaps++;
        else state.dropped += frame.missed;
        add({ kind: "gap", frame, text: gapText(frame) });
        break;
      case "subscribed":
        body.dataset.filter = "applied";
        state.accepted = state.filter;
        // The server's own account of the filter: with several changes in flight, the one
        // this answer is for.
        note(`Filter applied by the server: ${describe(frame.filter)}`);
        break;
      case "error":
        if (body.dataset.filter === "pending") {
          // The one message this page sends that the server may refuse is a filter.
          body.dataset.filter = "refused";
          state.filter = state.accepted;
          note(`Filter refused by the server (${frame.detail}); the previous one stays`);
        } else {
          setConn("live", `Live; the server said: ${frame.detail}`);
        }
        break;
      default:
        break; // pong, and frame types added later
    }
  }

  function onLog(frame) {
    state.received++;
    if (state.paused) state.unseen++;
    state.lastId = frame.id;
    add({ kind: "log", frame });
  }

  function gapText(frame) {
    const count =
      frame.missed === null || frame.missed === undefined
        ? "an unknown number of records"
        : `${frame.missed} record${frame.missed === 1 ? "" : "s"}`;
    return `gap: ${count} missed (${GAP_REASONS[frame.reason] || frame.reason})`;
  }

  // A filter as the page keeps it or as the server echoes it (level a number there).
  function describe(filter) {
    const parts = [];
    const level = LEVEL_NAMES[filter.level] || filter.level;
    if (level) parts.push(`level ≥ ${level}`);
    if (filter.logger?.length) parts.push(`logger ${filter.logger.join(", ")}`);
    if (filter.category?.length) parts.push(`category ${filter.category.join(", ")}`);
    if (filter.grep) parts.push(`text "${filter.grep}"`);
    if (filter.pid?.length) parts.push(`pid ${filter.pid.join(", ")}`);
    for (const [key, value] of Object.entries(filter.fields || {})) parts.push(`${key}=${value}`);
    return parts.length ? parts.join(" · ") : "none (every record)";
  }

  function note(text) {
    add({ kind: "note", frame: null, text });
  }

  // -- rendering -------------------------------------------------------------------------

  function add(entry) {
    const pending = state.pending;
    pending.push(entry);
    // Only the newest MAX_ROWS can ever be shown; trimmed in bulk to stay cheap.
    if (pending.length > 2 * MAX_ROWS) pending.splice(0, pending.length - MAX_ROWS);
    if (!state.flushScheduled) {
      state.flushScheduled = true;
      // At the next frame, FLUSH_EVERY ms after the last rendering at the soonest. A hidden
      // tab gets no frames: it renders when shown again (pending keeps its bound meanwhile).
      const wait = Math.max(0, state.flushedAt + FLUSH_EVERY - performance.now());
      setTimeout(() => requestAnimationFrame(flush), wait);
    }
  }

  function flush() {
    state.flushScheduled = false;
    state.flushedAt = performance.now();
    if (!state.paused && state.pending.length) {
      let batch = state.pending;
      state.pending = [];
      if (batch.length > MAX_ROWS) batch = batch.slice(-MAX_ROWS);
      const entries = state.entries;
      const excess = entries.length + batch.length - MAX_ROWS;
      if (excess >= entries.length) {
        logEl.textContent = "";
        entries.length = 0;
      } else if (excess > 0) {
        const range = document.createRange();
        range.setStartBefore(entries[0].el);
        range.setEndAfter(entries[excess - 1].el);
        range.deleteContents();
        entries.splice(0, excess);
      }
      const fragment = document.createDocumentFragment();
      for (const entry of batch) {
        entry.el = render(entry);
        fragment.appendChild(entry.el);
        entries.push(entry);
      }
      logEl.appendChild(fragment);
      if (state.follow) logEl.scrollTop = logEl.scrollHeight;
    }
    showCounters();
  }

  function showCounters() {
    $("n-received").textContent = state.received.toLocaleString("en");
    $("n-dropped").textContent =
      state.dropped.toLocaleString("en") +
      (state.unknownGaps ? ` + ${state.unknownGaps} unknown` : "");
    $("n-shown").textContent = state.entries.length.toLocaleString("en");
    const pause = $("pause");
    pause.textContent = state.paused ? `Resume (${state.unseen.toLocaleString("en")} new)` : "Pause";
  }

  function span(className, text) {
    const el = document.createElement("span");
    el.className = className;
    el.textContent = text;
    return el;
  }

  function levelClass(levelno) {
    for (const [floor, name] of LEVELS) if (levelno >= floor) return name;
    return "debug";
  }

  const pad = (n, width = 2) => String(n).padStart(width, "0");

  function shortTime(iso) {
    const date = new Date(iso);
    if (Number.isNaN(date.getTime())) return String(iso);
    const hms = `${pad(date.getHours())}:${pad(date.getMinutes())}:${pad(date.getSeconds())}`;
    return `${hms}.${pad(date.getMilliseconds(), 3)}`;
  }

  function render(entry) {
    if (entry.kind !== "log") {
      const el = document.createElement("div");
      el.className = entry.kind === "gap" ? "marker gap" : "marker note";
      el.setAttribute("role", "separator");
      el.textContent = `— ${entry.text} —`;
      return el;
    }
    const frame = entry.frame;
    const el = document.createElement("div");
    el.className = `row ${levelClass(Number(frame.levelno) || 0)}${frame.exc ? " has-exc" : ""}`;
    el.tabIndex = 0;
    el.setAttribute("role", "button");
    el.setAttribute("aria-expanded", "false");
    el.dataset.id = frame.id;
    const time = span("t", shortTime(frame.time));
    time.title = frame.time;
    const logger = span("lg", frame.logger);
    logger.title = frame.logger;
    el.append(time, span("lv", frame.level), logger, span("m", frame.log));
    el.entry = entry;
    return el;
  }

  function details(frame) {
    const box = document.createElement("div");
    box.className = "details";
    const list = document.createElement("dl");
    const item = (name, value) => {
      const dt = document.createElement("dt");
      dt.textContent = name;
      const dd = document.createElement("dd");
      dd.textContent = typeof value === "string" ? value : JSON.stringify(value);
      list.append(dt, dd);
    };
    item("id", frame.id);
    item("time", frame.time);
    item("level", `${frame.level} (${frame.levelno})`);
    item("logger", frame.logger);
    item("category", frame.category);
    item("pid", frame.pid);
    for (const [name, value] of Object.entries(frame.fields || {})) item(`fields.${name}`, value);
    box.append(list);
    if (frame.exc) {
      const pre = document.createElement("pre");
      pre.className = "exc";
      pre.textContent = frame.exc;
      box.append(pre);
    }
    return box;
  }

  function toggle(row) {
    const open = row.getAttribute("aria-expanded") !== "true";
    row.setAttribute("aria-expanded", String(open));
    if (open) row.append(details(row.entry.frame));
    else row.querySelector(".details")?.remove();
  }

  // -- controls --------------------------------------------------------------------------

  logEl.addEventListener("click", (event) => {
    if (event.target.closest(".details")) return; // selecting text in the details
    const row = event.target.closest(".row");
    if (row) toggle(row);
  });

  logEl.addEventListener("keydown", (event) => {
    const row = event.target.closest(".row");
    if (!row || event.target !== row) return;
    const rows = () => logEl.querySelectorAll(".row");
    let next = null;
    if (event.key === "Enter" || event.key === " ") {
      toggle(row);
    } else if (event.key === "ArrowDown") {
      next = row.nextElementSibling;
      while (next && !next.classList.contains("row")) next = next.nextElementSibling;
    } else if (event.key === "ArrowUp") {
      next = row.previousElementSibling;
      while (next && !next.classList.contains("row")) next = next.previousElementSibling;
    } else if (event.key === "Home") {
      next = rows()[0];
    } else if (event.key === "End") {
      const all = rows();
      next = all[all.length - 1];
    } else {
      return;
    }
    event.preventDefault();
    if (next) next.focus();
  });

  logEl.addEventListener("scroll", () => {
    const atBottom = logEl.scrollHeight - logEl.scrollTop - logEl.clientHeight < STICKY;
    if (atBottom === state.follow) return;
    state.follow = atBottom;
    body.dataset.follow = String(atBottom);
    $("follow").hidden = atBottom;
  });

  $("follow").addEventListener("click", () => {
    state.follow = true;
    body.dataset.follow = "true";
    $("follow").hidden = true;
    logEl.scrollTop = logEl.scrollHeight;
  });

  $("pause").addEventListener("click", () => {
    state.paused = !state.paused;
    state.unseen = 0;
    body.dataset.paused = String(state.paused);
    $("pause").setAttribute("aria-pressed", String(state.paused));
    flush();
  });

  $("clear").addEventListener("click", () => {
    state.entries.length = 0;
    state.pending = [];
    state.unseen = 0;
    logEl.textContent = "";
    showCounters();
  });

  $("download").addEventListener("click", () => {
    const lines = state.entries.filter((e) => e.frame).map((e) => `${JSON.stringify(e.frame)}\n`);
    const url = URL.createObjectURL(new Blob(lines, { type: "application/x-ndjson" }));
    const link = document.createElement("a");
    link.href = url;
    link.download = `wslogging-${new Date().toISOString().replace(/[:.]/g, "-")}.jsonl`;
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60000);
  });

  function applyFilters() {
    const level = $("f-level").value || null;
    const logger = $("f-logger").value.split(/[\s,]+/).filter(Boolean);
    const grep = $("f-grep").value || null;
    // Worker processes: numbers as typed; the server says what it refuses.
    const pid = $("f-pid").value.split(/[\s,]+/).filter(Boolean)
      .map((text) => (/^\d+$/.test(text) ? Number(text) : text));
    state.filter = { level, logger, grep, pid };
    const ws = state.ws;
    if (ws && ws.readyState === WebSocket.OPEN) {
      body.dataset.filter = "pending";
      ws.send(JSON.stringify({ type: "subscribe", filter: state.filter }));
    } else {
      // Not connected: the next connection asks for it in its URL.
      note(`Filter (applied when connected): ${describe(state.filter)}`);
    }
  }

  $("filters").addEventListener("submit", (event) => {
    event.preventDefault();
    applyFilters();
  });
  $("f-level").addEventListener("change", applyFilters);

  $("login").addEventListener("submit", (event) => {
    event.preventDefault();
    const input = $("key");
    if (!input.value) return;
    state.key = input.value;
    input.value = "";
    sessionStorage.setItem(KEY_STORE, state.key);
    showLog();
    connect();
  });

  $("logout").addEventListener("click", () => {
    sessionStorage.removeItem(KEY_STORE);
    showLogin("");
  });

  function showLogin(message) {
    disconnect();
    state.key = null;
    sessionStorage.removeItem(KEY_STORE);
    const error = $("login-error");
    error.textContent = message;
    error.hidden = !message;
    body.dataset.view = "login";
    $("log-view").hidden = true;
    $("login-view").hidden = false;
    setConn(message ? "error" : "idle", message ? "Not connected: wrong API key" : "Not connected");
    $("key").focus();
  }

  function showLog() {
    body.dataset.view = "log";
    $("login-view").hidden = true;
    $("log-view").hidden = false;
  }

  state.key = sessionStorage.getItem(KEY_STORE);
  if (state.key) {
    showLog();
    connect();
  } else {
    showLogin("");
  }
})();
