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
  // A record link (?around=ID) shows up to AROUND_BEFORE records before it (from as many ids
  // before it, or AROUND_MS earlier for stream ids) and up to AROUND_LIMIT from it on.
  const AROUND_BEFORE = 100;
  const AROUND_MS = 5000;
  const AROUND_LIMIT = 1000;
  // Field columns at most; the chart's window in seconds (one bar a second).
  const MAX_COLUMNS = 8;
  const CHART_SECONDS = 300;
  // Per string: style changes rendered as spans at most (the rest is shown as plain text).
  const MAX_STYLED = 256;
  // Longest parameter text of an SGR sequence honoured (longer ones are dropped unread).
  const MAX_SGR = 64;
  const LEVELS = [[50, "critical"], [40, "error"], [30, "warning"], [20, "info"], [0, "debug"]];
  const LEVEL_NAMES = { 10: "DEBUG", 20: "INFO", 30: "WARNING", 40: "ERROR", 50: "CRITICAL" };
  const GAP_REASONS = {
    history: "no longer in the server's history",
    slow_client: "this viewer fell behind",
    restart: "the server restarted",
    overflow: "the app logged faster than the server took records",
    source: "lost before they reached this server",
  };

  function noFilter() {
    return { level: null, logger: [], category: [], grep: null, pid: [], fields: {} };
  }

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
    filter: noFilter(),
    // The last filter the server accepted: restored if it refuses a new one, so that the
    // next connection's URL never carries a filter it would refuse.
    accepted: noFilter(),
    columns: [], // field names shown as columns
    around: null, // a record link's id, until its page of history is loaded
    linked: null, // the id a record link opened the view at (kept in the URL until a change)
    scrollTo: null, // the id of a record to bring into view once it is rendered
    lastRow: null, // the row that last had the focus (where "next error" starts)
    newSince: 0, // records added below the view while it does not follow
    lastMs: null, // the time of the newest record, for a gap's place on the chart
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
    if (response.status === 400) {
      throw new BadRequest(await detail(response));
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

  class BadRequest extends Error {}

  // The filter as the API's query parameters (also the page's own URL: see writeUrl).
  function filterParams(params, filter = state.filter) {
    const { level, logger, category, grep, pid, fields } = filter;
    if (level) params.set("level", level);
    for (const prefix of logger) params.append("logger", prefix);
    for (const name of category) params.append("category", name);
    if (grep) params.set("grep", grep);
    for (const id of pid) params.append("pid", id);
    for (const [key, value] of Object.entries(fields)) params.append(`field.${key}`, value);
    return params;
  }

  async function connect() {
    clearTimeout(state.timer);
    const generation = ++state.generation;
    const current = () => generation === state.generation;
    setConn("connecting", "Connecting…");
    let ticket;
    try {
      if (state.lastId === null && state.around !== null) {
        await openAround(current);
      } else if (state.lastId === null) {
        // First connection: the newest records of history, then live from the last of them.
        const params = filterParams(new URLSearchParams({ limit: String(HISTORY) }));
        const page = await api(`api/logs?${params}`, "GET");
        if (!current()) return;
        showPage(page.records, page.gaps);
        state.lastId = page.last_id;
      }
      // Tickets are single-use: every connection gets a fresh one.
      ticket = (await api("api/ticket", "POST")).ticket;
    } catch (error) {
      if (!current()) return;
      if (error instanceof Refused) {
        showLogin(`Wrong API key: the server refused it (${error.message}). Enter it again.`);
      } else if (error instanceof BadRequest && state.lastId === null) {
        // A link with a filter the server refuses: say so, and show every record instead.
        warn(`Filter refused by the server (${error.message}); showing every record`);
        state.filter = state.accepted = noFilter();
        state.around = null;
        fillForm();
        writeUrl();
        connect();
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

  // A record link: the records around it from history, the view kept at it, and a notice
  // when the server no longer has it. Ids are opaque to the page but for their two forms
  // (numbers, and Redis stream ids "ms-seq"), which give the id just before the record
  // and a starting point some way before it. Nothing is shown out of order: the records
  // before it are shown only when their page reaches it.
  async function openAround(current) {
    const target = state.around;
    const key = idKey(target);
    const page = async (since) => {
      const params = filterParams(new URLSearchParams({ since, limit: String(AROUND_LIMIT) }));
      return api(`api/logs?${params}`, "GET");
    };
    let records = [];
    let gaps = [];
    let found = false;
    let after = null;
    if (key) {
      after = await page(idText(previousKey(key)));
      found = !after.gap && after.records.length > 0 && after.records[0].id === target;
      records = after.records;
      gaps = after.gaps || [];
    }
    if (found) {
      const before = await page(idText(earlierKey(key)));
      const reached = idKey(String(before.last_id));
      if (reached && compareKeys(reached, previousKey(key)) >= 0) {
        const older = (items) =>
          items.filter((item) => {
            const k = idKey(String(item.id));
            return k && compareKeys(k, key) < 0;
          });
        const shown = older(before.records).slice(-AROUND_BEFORE);
        records = shown.concat(records);
        if (shown.length) {
          const first = idKey(String(shown[0].id));
          const inside = older(before.gaps || []).filter(
            (gap) => compareKeys(idKey(String(gap.id)), first) > 0
          );
          gaps = inside.concat(gaps);
        }
      }
    }
    if (!current()) return;
    state.around = null;
    if (!found) {
      warn(
        after?.gap?.reason === "history"
          ? `Record ${target} is no longer in the server's history: ` +
              "showing the oldest records it still has"
          : `Record ${target} is not in this server's history (from an earlier run of ` +
              "the server, or not matched by the filter)"
      );
    }
    if (!after) {
      // Not an id at all: the newest records, as without a link.
      const params = filterParams(new URLSearchParams({ limit: String(HISTORY) }));
      after = await api(`api/logs?${params}`, "GET");
      if (!current()) return;
      records = after.records;
      gaps = after.gaps || [];
    }
    showPage(records, gaps);
    state.lastId = after.last_id;
    if (found) {
      state.linked = state.scrollTo = target;
      setFollow(false);
    }
    writeUrl();
  }

  // A page of history: its records, and the gaps that stand among them (servers that keep
  // gaps in history list them apart, each with its id), in the order of their ids.
  function showPage(records, gaps) {
    const items = records.map((record) => ({ record }));
    for (const gap of gaps || []) {
      const key = idKey(String(gap.id));
      let at = -1;
      if (key) {
        at = items.findIndex((item) => {
          const k = idKey(String((item.record || item.gap).id));
          return k && compareKeys(k, key) > 0;
        });
      }
      items.splice(at < 0 ? items.length : at, 0, { gap });
    }
    for (const item of items) {
      if (item.record) onLog(item.record);
      else onFrame({ ...item.gap, type: "gap" });
    }
  }

  // An id's ordering key: [n, 0] for a number, [ms, seq] for a stream id; null for others.
  function idKey(text) {
    if (/^\d{1,30}$/.test(text)) return [BigInt(text), 0n];
    const stream = /^(\d{1,20})-(\d{1,20})$/.exec(text);
    return stream ? [BigInt(stream[1]), BigInt(stream[2]), true] : null;
  }

  const idText = (key) => (key[2] ? `${key[0]}-${key[1]}` : String(key[0]));

  function compareKeys(a, b) {
    if (a[0] !== b[0]) return a[0] < b[0] ? -1 : 1;
    return a[1] === b[1] ? 0 : a[1] < b[1] ? -1 : 1;
  }

  // The id just before ``key`` (a stream's sequence numbers are 64-bit).
  function previousKey(key) {
    if (!key[2]) return [key[0] > 0n ? key[0] - 1n : 0n, 0n];
    if (key[1] > 0n) return [key[0], key[1] - 1n, true];
    return [key[0] > 0n ? key[0] - 1n : 0n, 2n ** 64n - 1n, true];
  }

  // Some way before ``key``: AROUND_BEFORE ids, or AROUND_MS for a stream id.
  function earlierKey(key) {
    const back = BigInt(key[2] ? AROUND_MS : AROUND_BEFORE + 1);
    return [key[0] > back ? key[0] - back : 0n, 0n, key[2]];
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
        // A gap that stands in the stream has an id: resuming after it is not told it again.
        if (frame.id !== null && frame.id !== undefined) state.lastId = String(frame.id);
        if (frame.missed === null || frame.missed === undefined) state.unknownGaps++;
        else state.dropped += frame.missed;
        chart.gap(state.lastMs ?? Date.now());
        add({ kind: "gap", frame, text: gapText(frame) });
        break;
      case "position":
        // Every record up to here was sent or did not match: resume after it.
        if (frame.last_id !== null && frame.last_id !== undefined) {
          state.lastId = String(frame.last_id);
        }
        break;
      case "subscribed":
        body.dataset.filter = "applied";
        state.accepted = state.filter;
        writeUrl();
        // The server's own account of the filter: with several changes in flight, the one
        // this answer is for.
        note(`Filter applied by the server: ${describe(frame.filter)}`);
        break;
      case "error":
        if (body.dataset.filter === "pending") {
          // The one message this page sends that the server may refuse is a filter.
          body.dataset.filter = "refused";
          state.filter = state.accepted;
          writeUrl();
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
    const ms = Date.parse(frame.time);
    if (!Number.isNaN(ms)) {
      state.lastMs = ms;
      chart.count(ms, Number(frame.levelno) || 0);
    }
    add({ kind: "log", frame, ms });
  }

  function gapText(frame) {
    const count =
      frame.missed === null || frame.missed === undefined
        ? "an unknown number of records"
        : `${frame.missed} record${frame.missed === 1 ? "" : "s"}`;
    const reason = Object.hasOwn(GAP_REASONS, frame.reason) ? GAP_REASONS[frame.reason] : null;
    let levels = "";
    if (frame.levels && typeof frame.levels === "object") {
      const counts = Object.entries(frame.levels).map(([level, n]) => `${n} ${level}`);
      if (counts.length) levels = `: ${counts.join(", ")}`;
    }
    return `gap: ${count} missed (${reason || String(frame.reason)}${levels})`;
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

  // Something the user asked for did not happen as asked: a row in the log and the notice.
  function warn(text) {
    add({ kind: "warn", frame: null, text });
    say(text);
  }

  // A short notice next to the toolbar (copied, no further error, ...).
  function say(text) {
    $("notice").textContent = text;
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
      let added = 0;
      let target = null;
      for (const entry of batch) {
        entry.el = render(entry);
        fragment.appendChild(entry.el);
        entries.push(entry);
        if (entry.kind !== "log") continue;
        added++;
        if (entry.frame.id === state.scrollTo) target = entry.el;
      }
      logEl.appendChild(fragment);
      if (target) {
        state.scrollTo = null;
        target.dataset.target = "true";
        reveal(target);
      } else if (state.follow) {
        logEl.scrollTop = logEl.scrollHeight;
      } else {
        state.newSince += added;
      }
    }
    showCounters();
  }

  // Bring a row into view and give it the focus; the view stops following the stream.
  function reveal(row) {
    setFollow(false);
    row.scrollIntoView({ block: "center" });
    row.focus({ preventScroll: true });
  }

  function setFollow(follow) {
    state.follow = follow;
    body.dataset.follow = String(follow);
    if (follow) state.newSince = 0;
    $("follow").hidden = follow;
  }

  function showCounters() {
    $("n-received").textContent = state.received.toLocaleString("en");
    $("n-dropped").textContent =
      state.dropped.toLocaleString("en") +
      (state.unknownGaps ? ` + ${state.unknownGaps} unknown` : "");
    $("n-shown").textContent = state.entries.length.toLocaleString("en");
    const pause = $("pause");
    pause.textContent = state.paused ? `Resume (${state.unseen.toLocaleString("en")} new)` : "Pause";
    const n = state.newSince;
    $("follow").textContent = n
      ? `${n.toLocaleString("en")} new record${n === 1 ? "" : "s"} — jump to latest`
      : "Jump to latest";
  }

  // -- the app's own colours (ANSI SGR) ----------------------------------------------------
  //
  // Log text may carry terminal escape sequences: dev servers colour their messages. SGR
  // colour, bold, dim, italic and underline become classes on spans (colours from the page's
  // palette, so they stay readable in both themes); every other escape sequence (cursor
  // movement, OSC titles, hyperlinks and clipboard writes, DCS, ...) is dropped, and any other
  // control character (BEL, a lone CR, bidi overrides and marks) is shown as an escape, as
  // `wslogging tail` shows it. One pass over the text, no regular expression but the test for
  // whether there is anything to do; at most MAX_STYLED spans per string.

  // C0 but tab and newline, DEL, C1, and the bidi controls and marks.
  const CONTROL = /[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]/;
  const ESC = 0x1b;
  const BEL = 0x07;
  const C1_CSI = 0x9b;
  const C1_ST = 0x9c;
  const C1_OSC = 0x9d;
  const C1_STRINGS = [0x90, 0x98, 0x9e, 0x9f]; // DCS, SOS, PM, APC: up to ST, like OSC
  const PLAIN = { fg: -1, bg: -1, bold: false, dim: false, italic: false, underline: false };

  // Set ``el``'s content to ``text`` with its SGR styles applied; returns ``el``.
  function styled(el, text) {
    text = String(text ?? "");
    if (!CONTROL.test(text)) {
      el.textContent = text;
      return el;
    }
    el.textContent = "";
    let style = PLAIN;
    let spans = 0;
    let run = ""; // text in the current style, not yet in the page
    const put = () => {
      if (!run) return;
      if (style === PLAIN || spans >= MAX_STYLED) {
        el.append(run);
      } else {
        spans++;
        el.append(span(styleClass(style), run));
      }
      run = "";
    };
    let noEnd = text.length; // no string terminator at or after this index (found once)
    const n = text.length;
    let start = 0;
    let i = 0;
    while (i < n) {
      const c = text.charCodeAt(i);
      let seq = -1; // where the control sequence at i ends (exclusive), if there is one
      let csi = -1; // where a CSI's parameters start
      let str = -1; // where a string sequence's payload starts
      if (c === ESC) {
        const next = text.charCodeAt(i + 1);
        if (next === 0x5b) csi = i + 2; // [
        else if (next === 0x5d || next === 0x50 || next === 0x58 || next === 0x5e || next === 0x5f)
          str = i + 2; // ] P X ^ _
        else {
          // ESC, intermediates, a final byte (ESC ( B, ESC c, ...); or a lone ESC.
          let j = i + 1;
          while (j < n && text.charCodeAt(j) >= 0x20 && text.charCodeAt(j) <= 0x2f) j++;
          const final = text.charCodeAt(j);
          seq = final >= 0x30 && final <= 0x7e ? j + 1 : j;
        }
      } else if (c === C1_CSI) {
        csi = i + 1;
      } else if (c === C1_OSC || C1_STRINGS.includes(c)) {
        str = i + 1;
      }
      if (csi >= 0) {
        let j = csi;
        while (j < n && text.charCodeAt(j) >= 0x30 && text.charCodeAt(j) <= 0x3f) j++;
        const params = j;
        while (j < n && text.charCodeAt(j) >= 0x20 && text.charCodeAt(j) <= 0x2f) j++;
        const final = text.charCodeAt(j);
        if (final >= 0x40 && final <= 0x7e) {
          seq = j + 1;
          if (c === ESC && final === 0x6d && params === j && params - csi <= MAX_SGR) {
            const next = sgr(style, text.slice(csi, params));
            if (next !== style) {
              run += text.slice(start, i);
              put();
              style = next;
              start = seq;
              i = seq;
              continue;
            }
          }
        } else {
          seq = j; // malformed: drop what was read
        }
      } else if (str >= 0) {
        // Up to BEL, ESC \ or ST; unterminated, only the introducer is dropped.
        seq = str;
        if (str < noEnd) {
          let j = str;
          while (j < n) {
            const d = text.charCodeAt(j);
            if (d === BEL || d === C1_ST) {
              seq = j + 1;
              break;
            }
            if (d === ESC && text.charCodeAt(j + 1) === 0x5c) {
              seq = j + 2;
              break;
            }
            j++;
          }
          if (j >= n) noEnd = str;
        }
      }
      if (seq >= 0) {
        run += text.slice(start, i);
        start = i = seq;
        continue;
      }
      if (c === 0x0d && text.charCodeAt(i + 1) === 0x0a) {
        run += text.slice(start, i); // CR LF: a line break
        start = ++i;
        continue;
      }
      if ((c < 0x20 && c !== 0x09 && c !== 0x0a) || CONTROL.test(text[i])) {
        run += text.slice(start, i);
        put();
        el.append(span("ctl", escapeText(c)));
        start = ++i;
        continue;
      }
      i++;
    }
    run += text.slice(start);
    put();
    return el;
  }

  // A control character as Python writes it (as `wslogging tail` shows it): \r, \x07, \u202e.
  function escapeText(c) {
    if (c === 0x0d) return "\\r";
    const hex = c.toString(16).padStart(c > 0xff ? 4 : 2, "0");
    return c > 0xff ? `\\u${hex}` : `\\x${hex}`;
  }

  // The style after an SGR sequence with parameters ``params`` (digits and semicolons).
  function sgr(style, params) {
    if (!/^[0-9;]*$/.test(params)) return style; // colon forms and private modes: ignored
    const codes = params.split(";").map((code) => (code === "" ? 0 : Number(code)));
    const next = { ...style };
    for (let k = 0; k < codes.length; k++) {
      const code = codes[k];
      if (code === 0) Object.assign(next, PLAIN);
      else if (code === 1) next.bold = true;
      else if (code === 2) next.dim = true;
      else if (code === 3) next.italic = true;
      else if (code === 4) next.underline = true;
      else if (code === 22) next.bold = next.dim = false;
      else if (code === 23) next.italic = false;
      else if (code === 24) next.underline = false;
      else if (code >= 30 && code <= 37) next.fg = code - 30;
      else if (code >= 90 && code <= 97) next.fg = code - 90;
      else if (code === 39) next.fg = -1;
      else if (code >= 40 && code <= 47) next.bg = code - 40;
      else if (code >= 100 && code <= 107) next.bg = code - 100;
      else if (code === 49) next.bg = -1;
      else if (code === 38 || code === 48) {
        // 256 colours (5;n) or RGB (2;r;g;b), shown as the nearest of the page's eight.
        let colour = -1;
        if (codes[k + 1] === 5) {
          colour = paletteIndex(codes[k + 2]);
          k += 2;
        } else if (codes[k + 1] === 2) {
          colour = nearest(codes[k + 2], codes[k + 3], codes[k + 4]);
          k += 4;
        }
        if (code === 38) next.fg = colour;
        else next.bg = colour;
      }
    }
    const same = Object.keys(PLAIN).every((key) => next[key] === style[key]);
    if (same) return style;
    return Object.keys(PLAIN).every((key) => next[key] === PLAIN[key]) ? PLAIN : next;
  }

  function paletteIndex(n) {
    if (!(n >= 0 && n <= 255)) return -1;
    if (n < 16) return n % 8;
    if (n >= 232) return n < 244 ? 0 : 7; // greys
    const level = (v) => (v ? 55 + 40 * v : 0);
    const cube = n - 16;
    return nearest(level(Math.floor(cube / 36)), level(Math.floor(cube / 6) % 6), level(cube % 6));
  }

  // The nearest of black, red, green, yellow, blue, magenta, cyan, white (ANSI order).
  function nearest(r, g, b) {
    if (![r, g, b].every((v) => v >= 0 && v <= 255)) return -1;
    const top = Math.max(r, g, b);
    if (top < 64) return 0;
    const on = (v) => (v >= top * 0.6 ? 1 : 0);
    return on(r) | (on(g) << 1) | (on(b) << 2);
  }

  function styleClass(style) {
    const names = ["sgr"];
    if (style.bg >= 0) names.push(`ab${style.bg}`); // text in the page's background colour
    else if (style.fg >= 0) names.push(`af${style.fg}`);
    if (style.bold) names.push("a-bold");
    if (style.dim && style.fg < 0 && style.bg < 0) names.push("a-dim");
    if (style.italic) names.push("a-italic");
    if (style.underline) names.push("a-underline");
    return names.join(" ");
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
      el.className = `marker ${entry.kind}`;
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
    const logger = styled(span("lg", ""), frame.logger);
    logger.title = frame.logger;
    el.append(time, styled(span("lv", ""), frame.level), logger);
    const fields = frame.fields || {};
    for (const name of state.columns) {
      const cell = span("c", "");
      if (Object.hasOwn(fields, name)) {
        const value = fieldText(fields[name]);
        styled(cell, value);
        cell.title = `fields.${name}: ${value}`;
      }
      el.append(cell);
    }
    el.append(styled(span("m", ""), frame.log));
    el.entry = entry;
    return el;
  }

  const fieldText = (value) => (typeof value === "string" ? value : JSON.stringify(value));

  function details(frame) {
    const box = document.createElement("div");
    box.className = "details";
    const list = document.createElement("dl");
    const item = (name, value) => {
      const dt = document.createElement("dt");
      dt.textContent = name;
      const dd = document.createElement("dd");
      styled(dd, fieldText(value));
      list.append(dt, dd);
    };
    item("id", frame.id);
    item("time", frame.time);
    item("level", `${frame.level} (${frame.levelno})`);
    item("logger", frame.logger);
    item("category", frame.category);
    item("pid", frame.pid);
    const fields = Object.entries(frame.fields || {});
    for (const [name, value] of fields) item(`fields.${name}`, value);
    const actions = document.createElement("p");
    actions.className = "actions";
    actions.append(button("Copy JSON", "copy-json"), " ", button("Copy link", "copy-link"));
    if (fields.length) actions.append(" Columns:");
    for (const [name] of fields) {
      const toggle = button(name, "column");
      toggle.dataset.field = name;
      toggle.title = `Show fields.${name} as a column`;
      toggle.setAttribute("aria-pressed", String(state.columns.includes(name)));
      actions.append(" ", toggle);
    }
    box.append(list, actions);
    if (frame.exc) {
      const pre = document.createElement("pre");
      pre.className = "exc";
      box.append(styled(pre, frame.exc));
    }
    return box;
  }

  function button(text, action) {
    const el = document.createElement("button");
    el.type = "button";
    el.textContent = text;
    el.dataset.action = action;
    return el;
  }

  function toggle(row) {
    const open = row.getAttribute("aria-expanded") !== "true";
    row.setAttribute("aria-expanded", String(open));
    if (open) row.append(details(row.entry.frame));
    else row.querySelector(".details")?.remove();
  }

  // -- the chart: records per second by level --------------------------------------------
  //
  // One bar a second over the last CHART_SECONDS, by the records' own time, stacked by level;
  // a gap is a mark at the second of the record before it. Counting is O(1) a record into a
  // fixed ring; drawing, once a second, is O(CHART_SECONDS).

  const chart = (() => {
    const canvas = $("chart");
    const seconds = new Float64Array(CHART_SECONDS); // the second each slot holds
    const counts = new Uint32Array(CHART_SECONDS * LEVELS.length);
    const gaps = new Uint8Array(CHART_SECONDS);
    let newest = 0; // the newest second counted
    let colours = null;
    let drawn = 0; // the right edge of the last drawing, for clicks

    const slot = (second) => {
      const i = ((second % CHART_SECONDS) + CHART_SECONDS) % CHART_SECONDS;
      if (seconds[i] !== second) {
        seconds[i] = second;
        counts.fill(0, i * LEVELS.length, (i + 1) * LEVELS.length);
        gaps[i] = 0;
      }
      return i;
    };
    const right = () => Math.max(Math.floor(Date.now() / 1000), newest);
    const inWindow = (second) => second > right() - CHART_SECONDS;

    function count(ms, levelno) {
      const second = Math.floor(ms / 1000);
      newest = Math.max(newest, second);
      if (!inWindow(second)) return;
      const level = LEVELS.findIndex(([floor]) => levelno >= floor);
      counts[slot(second) * LEVELS.length + (level < 0 ? LEVELS.length - 1 : level)]++;
    }

    function gap(ms) {
      const second = Math.floor(ms / 1000);
      if (inWindow(second)) gaps[slot(second)] = 1;
    }

    function readColours() {
      const css = getComputedStyle(document.documentElement);
      const v = (name) => css.getPropertyValue(name).trim();
      colours = {
        levels: [v("--critical-bg"), v("--error"), v("--warning"), v("--info"), v("--debug")],
        gap: v("--gap"),
        text: v("--muted"),
        axis: v("--border"),
      };
    }

    function draw() {
      if (canvas.offsetParent === null) return; // not shown
      if (!colours) readColours();
      const ratio = window.devicePixelRatio || 1;
      const width = Math.round(canvas.clientWidth * ratio);
      const height = Math.round(canvas.clientHeight * ratio);
      if (canvas.width !== width || canvas.height !== height) {
        canvas.width = width;
        canvas.height = height;
      }
      const ctx = canvas.getContext("2d");
      ctx.clearRect(0, 0, width, height);
      drawn = right();
      canvas.dataset.right = String(drawn); // the newest second drawn, for tests
      const first = drawn - CHART_SECONDS + 1;
      let top = 1;
      for (let second = first; second <= drawn; second++) {
        const i = slot(second);
        let total = 0;
        for (let l = 0; l < LEVELS.length; l++) total += counts[i * LEVELS.length + l];
        top = Math.max(top, total);
      }
      const bar = width / CHART_SECONDS;
      const base = height - 1;
      const scale = (height - 14 * ratio) / top;
      for (let second = first; second <= drawn; second++) {
        const i = slot(second);
        const x = (second - first) * bar;
        let y = base;
        // Lowest level at the bottom: debug, info, ..., critical on top.
        for (let l = LEVELS.length - 1; l >= 0; l--) {
          const n = counts[i * LEVELS.length + l];
          if (!n) continue;
          const h = Math.max(1, n * scale);
          ctx.fillStyle = colours.levels[l];
          ctx.fillRect(x, y - h, Math.max(1, bar - (bar > 3 ? 1 : 0)), h);
          y -= h;
        }
        if (gaps[i]) {
          ctx.fillStyle = colours.gap;
          ctx.fillRect(x, 0, Math.max(2, bar), height);
        }
      }
      ctx.fillStyle = colours.axis;
      ctx.fillRect(0, base, width, 1);
      ctx.fillStyle = colours.text;
      ctx.font = `${11 * ratio}px system-ui, sans-serif`;
      ctx.textBaseline = "top";
      ctx.textAlign = "left";
      ctx.fillText(`${top.toLocaleString("en")}/s`, 2 * ratio, 1);
      ctx.textAlign = "right";
      ctx.fillText(`last ${CHART_SECONDS / 60} min`, width - 2 * ratio, 1);
    }

    // The second under a point of the canvas, from the last drawing.
    function secondAt(clientX) {
      const box = canvas.getBoundingClientRect();
      const fraction = Math.min(Math.max((clientX - box.left) / box.width, 0), 0.9999);
      return drawn - CHART_SECONDS + 1 + Math.floor(fraction * CHART_SECONDS);
    }

    function describeSecond(second) {
      const i = slot(second);
      const parts = LEVELS.map(([, name], l) => [name, counts[i * LEVELS.length + l]])
        .filter(([, n]) => n)
        .map(([name, n]) => `${n} ${name}`);
      const when = shortTime(new Date(second * 1000).toISOString()).slice(0, 8);
      return `${when}: ${parts.length ? parts.join(", ") : "no records"}${gaps[i] ? ", gap" : ""}`;
    }

    canvas.addEventListener("click", (event) => jumpToSecond(secondAt(event.clientX)));
    canvas.addEventListener("mousemove", (event) => {
      canvas.title = `${describeSecond(secondAt(event.clientX))} (click to scroll there)`;
    });
    matchMedia("(prefers-color-scheme: dark)").addEventListener("change", () => {
      colours = null;
      draw();
    });
    setInterval(() => requestAnimationFrame(draw), 1000);
    return { count, gap, draw, secondAt };
  })();

  // Scroll to the first record of ``second`` or after it (the chart's bars).
  function jumpToSecond(second) {
    const from = second * 1000;
    const entry = state.entries.find((e) => e.kind === "log" && e.ms >= from);
    const when = shortTime(new Date(from).toISOString()).slice(0, 8);
    if (!entry) {
      say(`No record from ${when} on is in the page`);
      return;
    }
    const oldest = state.entries.find((e) => e.kind === "log");
    if (entry === oldest && oldest.ms >= from + 1000) {
      const since = shortTime(new Date(oldest.ms).toISOString());
      say(`The records of ${when} are no longer in the page; the oldest shown is from ${since}`);
    } else {
      say(`Records from ${when}`);
    }
    reveal(entry.el);
  }

  // -- finding errors ---------------------------------------------------------------------

  // The row to search from: the focused one, else the last one focused (before a button
  // took the focus), else the first in view.
  function currentRow() {
    const focused = document.activeElement?.closest?.("#log .row");
    if (focused) return focused;
    if (state.lastRow?.isConnected) return state.lastRow;
    const top = logEl.getBoundingClientRect().top;
    return state.entries.find((e) => e.kind === "log" && e.el.getBoundingClientRect().bottom > top)
      ?.el;
  }

  function findError(step) {
    const entries = state.entries;
    const row = currentRow();
    let i = row ? entries.indexOf(row.entry) : step > 0 ? -1 : entries.length;
    for (i += step; i >= 0 && i < entries.length; i += step) {
      const entry = entries[i];
      if (entry.kind === "log" && (Number(entry.frame.levelno) || 0) >= 40) {
        say("");
        reveal(entry.el);
        return;
      }
    }
    say(step > 0 ? "No later error in the page" : "No earlier error in the page");
  }

  // -- controls --------------------------------------------------------------------------

  logEl.addEventListener("click", (event) => {
    const action = event.target.closest("button[data-action]");
    if (action) {
      const frame = action.closest(".row").entry.frame;
      if (action.dataset.action === "copy-json") {
        copy(JSON.stringify(frame, null, 2), `Copied record ${frame.id} as JSON`);
      } else if (action.dataset.action === "copy-link") {
        copy(recordLink(frame.id), `Copied a link to record ${frame.id}`);
      } else if (action.dataset.action === "column") {
        const name = action.dataset.field;
        const shown = state.columns.includes(name);
        setColumns(shown ? state.columns.filter((c) => c !== name) : [...state.columns, name]);
      }
      return;
    }
    if (event.target.closest(".details")) return; // selecting text in the details
    const row = event.target.closest(".row");
    if (row) toggle(row);
  });

  // The page's URL for the view as it is, opened at record ``id``: filters, columns, around.
  function recordLink(id) {
    const url = new URL(location.href);
    url.search = viewParams(id).toString();
    url.hash = "";
    return url.href;
  }

  async function copy(text, done) {
    try {
      await navigator.clipboard.writeText(text);
    } catch {
      // No clipboard API (a page served over plain http to another host): the old way.
      const area = document.createElement("textarea");
      area.value = text;
      area.setAttribute("readonly", "");
      area.className = "offscreen";
      document.body.append(area);
      area.select();
      const copied = document.execCommand("copy");
      area.remove();
      if (!copied) {
        say("Copying was refused by the browser");
        return;
      }
    }
    say(done);
  }

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

  logEl.addEventListener("focusin", (event) => {
    const row = event.target.closest(".row");
    if (row) state.lastRow = row;
  });

  logEl.addEventListener("scroll", () => {
    const atBottom = logEl.scrollHeight - logEl.scrollTop - logEl.clientHeight < STICKY;
    if (atBottom === state.follow) return;
    setFollow(atBottom);
    showCounters();
  });

  $("follow").addEventListener("click", () => {
    setFollow(true);
    showCounters();
    logEl.scrollTop = logEl.scrollHeight;
  });

  $("next-error").addEventListener("click", () => findError(1));
  $("prev-error").addEventListener("click", () => findError(-1));

  // Keys anywhere but in a text field: n / p (or N) next / previous error, / the text filter,
  // G the latest record.
  document.addEventListener("keydown", (event) => {
    if (body.dataset.view !== "log" || event.ctrlKey || event.metaKey || event.altKey) return;
    if (event.target.closest("input, select, textarea")) return;
    if (event.key === "n") findError(1);
    else if (event.key === "p" || event.key === "N") findError(-1);
    else if (event.key === "/") $("f-grep").focus();
    else if (event.key === "G") $("follow").click();
    else return;
    event.preventDefault();
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

  const words = (text) => text.split(/[\s,]+/).filter(Boolean);
  // Worker processes: numbers as typed; the server says what it refuses.
  const pids = (list) => list.map((text) => (/^\d+$/.test(text) ? Number(text) : text));

  function applyFilters() {
    const level = $("f-level").value || null;
    const logger = words($("f-logger").value);
    const grep = $("f-grep").value || null;
    const pid = pids(words($("f-pid").value));
    const fieldInput = $("f-field");
    let fields = state.filter.fields;
    // As shown (from a link, say): kept as is, values with commas or spaces included.
    if (fieldInput.value !== fieldInput.dataset.shown) {
      fields = {};
      for (const pair of fieldInput.value.split(",").map((p) => p.trim()).filter(Boolean)) {
        const at = pair.indexOf("=");
        if (at < 1) {
          note(`Field filter not applied: "${pair}" is not key=value`);
          return;
        }
        fields[pair.slice(0, at).trim()] = pair.slice(at + 1).trim();
      }
    }
    // Category has no field of its own: kept from the link that set it.
    state.filter = { level, logger, category: state.filter.category, grep, pid, fields };
    state.linked = null;
    writeUrl();
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

  $("columns").addEventListener("submit", (event) => {
    event.preventDefault();
    setColumns(words($("f-columns").value).map((name) => name.replace(/^fields\./, "")));
  });

  // Show ``names`` (field names) as columns: every row is built again, and the URL says so.
  function setColumns(names) {
    state.columns = [...new Set(names)].slice(0, MAX_COLUMNS);
    $("f-columns").value = state.columns.join(", ");
    const template = ["7.5em", "5.5em", "minmax(6em, 14em)"]
      .concat(state.columns.map(() => "minmax(3em, 12em)"), ["minmax(0, 1fr)"])
      .join(" ");
    $("log-view").style.setProperty("--row-columns", template);
    const head = $("columns-head");
    head.textContent = "";
    head.hidden = !state.columns.length;
    for (const text of ["time", "level", "logger", ...state.columns, "message"]) {
      head.append(span("h", text));
    }
    for (const entry of state.entries) {
      if (entry.kind !== "log") continue;
      const open = entry.el.getAttribute("aria-expanded") === "true";
      const el = render(entry);
      entry.el.replaceWith(el);
      entry.el = el;
      if (open) toggle(el);
    }
    writeUrl();
  }

  // -- the view in the URL ----------------------------------------------------------------
  //
  // The page's query string holds the view: the API's filter parameters (level, logger,
  // category, grep, pid, field.<key>), columns, and around (a record link). The key never.

  function viewParams(around = state.linked ?? state.around) {
    const params = filterParams(new URLSearchParams());
    if (state.columns.length) params.set("columns", state.columns.join(","));
    if (around !== null) params.set("around", around);
    return params;
  }

  function writeUrl() {
    const query = viewParams().toString();
    history.replaceState(null, "", query ? `?${query}` : location.pathname);
  }

  function readUrl() {
    const query = new URLSearchParams(location.search);
    const filter = noFilter();
    const level = query.get("level");
    if (level) filter.level = LEVEL_NAMES[level] || level.toUpperCase();
    filter.logger = query.getAll("logger").flatMap(words);
    filter.category = query.getAll("category").filter(Boolean);
    filter.grep = query.get("grep") || null;
    filter.pid = pids(query.getAll("pid").flatMap(words));
    for (const [name, value] of query) {
      if (name.startsWith("field.") && name.length > 6) filter.fields[name.slice(6)] = value;
    }
    state.filter = state.accepted = filter;
    state.around = query.get("around") || null;
    const columns = (query.get("columns") || "").split(",").map((c) => c.trim());
    setColumns(columns.filter(Boolean));
  }

  // The form shows the filter in force.
  function fillForm() {
    const { level, logger, grep, pid, fields } = state.filter;
    const select = $("f-level");
    if (level && ![...select.options].some((option) => option.value === level)) {
      select.append(new Option(level, level));
    }
    select.value = level || "";
    $("f-logger").value = logger.join(", ");
    $("f-grep").value = grep || "";
    $("f-pid").value = pid.join(", ");
    const text = Object.entries(fields).map(([key, value]) => `${key}=${value}`).join(", ");
    $("f-field").value = $("f-field").dataset.shown = text;
  }

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

  readUrl();
  fillForm();
  writeUrl(); // anything else in the address (an access_token, say) is dropped from it
  state.key = sessionStorage.getItem(KEY_STORE);
  if (state.key) {
    showLog();
    connect();
  } else {
    showLogin("");
  }
})();
