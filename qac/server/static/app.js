// qac demo page: a WAI-ARIA combobox (list autocomplete, manual selection) over
// GET /v1/complete, the session kept in sessionStorage, and the retrieval results of
// each submitted query from GET /v1/search.
"use strict";
(function () {
  const DEBOUNCE_MS = 90;   // one request per pause in typing, not one per keystroke
  const K = 8;              // suggestions shown
  const RESULTS_K = 5;      // retrieval results shown after a submit

  const $ = (id) => document.getElementById(id);
  const form = $("search");
  const input = $("q");
  const list = $("suggestions");
  const box = input.closest(".box");
  const status = $("status");
  const errorBox = $("error");
  const history = $("history");
  const resultsSection = $("results-section");
  const resultsTitle = $("results-title");
  const results = $("results");
  const resultsNote = $("results-note");
  const debug = $("debug");

  // -- the session id: one per tab, kept across reloads ---------------------------------
  function newSessionId() {
    const bytes = new Uint8Array(16);
    crypto.getRandomValues(bytes);
    return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }
  let session = null;
  try {
    session = sessionStorage.getItem("qac-session");
    if (!session) {
      session = newSessionId();
      sessionStorage.setItem("qac-session", session);
    }
  } catch (_) {  // storage disabled: a session for this page view only
    session = session || newSessionId();
  }
  $("debug-session").textContent = session;

  // -- state -----------------------------------------------------------------------------
  let items = [];         // current suggestions: {text, score, source, highlight}
  let active = -1;        // index of the option with visual focus; -1: the text box
  let expanded = false;   // whether the list may show (it shows when it has options)
  let latest = 0;         // id of the newest request; older answers are dropped
  let controller = null;  // aborts the request in flight when a newer one starts
  let timer = 0;          // the pending debounced request
  let selectFirst = false;  // ArrowDown opened the list: its first option gets focus

  const optionId = (i) => "qac-option-" + i;

  function setError(text) {
    errorBox.textContent = text;
    errorBox.hidden = !text;
    box.classList.toggle("offline", Boolean(text));
    if (text) input.setAttribute("aria-describedby", "error");
    else input.removeAttribute("aria-describedby");
  }

  function announce(text) {
    if (status.textContent !== text) status.textContent = text;
  }

  // The text with the server's highlight spans ([start, end) offsets in code points,
  // as Python counts them; JS strings count UTF-16 units) in <mark>.
  function highlighted(raw, spans) {
    const frag = document.createDocumentFragment();
    const chars = Array.from(raw);
    const text = { length: chars.length, slice: (a, b) => chars.slice(a, b).join("") };
    let at = 0;
    const clean = (Array.isArray(spans) ? spans : [])
      .filter((s) => Array.isArray(s) && s.length === 2 && s[0] < s[1])
      .map(([a, b]) => [Math.max(0, a), Math.min(text.length, b)])
      .sort((x, y) => x[0] - y[0]);
    for (const [start, end] of clean) {
      if (start < at || start >= end) continue;  // overlapping or out of range
      if (start > at) frag.append(text.slice(at, start));
      const mark = document.createElement("mark");
      mark.textContent = text.slice(start, end);
      frag.append(mark);
      at = end;
    }
    if (at < text.length) frag.append(text.slice(at));
    return frag;
  }

  // debug details (sources, scores) exist only while the debug toggle is open
  function meta(text) {
    const span = document.createElement("span");
    span.className = "meta";
    span.textContent = text;
    return span;
  }

  function render() {
    const options = items.map((c, i) => {
      const li = document.createElement("li");
      li.id = optionId(i);
      li.className = "option";
      li.setAttribute("role", "option");
      li.setAttribute("aria-selected", String(i === active));
      const text = document.createElement("span");
      text.className = "text";
      text.append(highlighted(c.text, c.highlight));
      li.append(text);
      if (debug.open) li.append(meta(c.source + " " + Number(c.score).toPrecision(3)));
      // mousedown would blur the input (and close the list) before the click lands
      li.addEventListener("mousedown", (ev) => ev.preventDefault());
      li.addEventListener("click", () => submit(c.text));
      return li;
    });
    list.replaceChildren(...options);
    const shown = expanded && items.length > 0;
    list.hidden = !shown;
    input.setAttribute("aria-expanded", String(shown));
    if (shown && active >= 0) {
      input.setAttribute("aria-activedescendant", optionId(active));
      $(optionId(active)).scrollIntoView({ block: "nearest" });
    } else {
      input.removeAttribute("aria-activedescendant");
    }
  }

  function close() {
    expanded = false;
    active = -1;
    render();
  }

  function cancelPending() {
    clearTimeout(timer);
    latest++;
    if (controller) controller.abort();
    controller = null;
  }

  function describe(n) {
    if (!n) return "No suggestions.";
    const what = input.value.trim() ? "suggestions" : (history.children.length
      ? "suggested next searches" : "popular searches");
    return n + " " + what + ". Use Up and Down to choose, Enter to search.";
  }

  // -- suggestions -------------------------------------------------------------------------
  async function suggest() {
    cancelPending();
    const id = latest;
    const ctl = new AbortController();
    controller = ctl;
    const prefix = input.value;
    const url = "/v1/complete?" + new URLSearchParams({ q: prefix, session: session, k: K });
    const t0 = performance.now();
    let res, body;
    try {
      res = await fetch(url, { signal: ctl.signal, headers: { Accept: "application/json" } });
      body = await res.json();
    } catch (err) {
      if (ctl.signal.aborted || id !== latest) return;  // superseded: not an error
      controller = null;
      items = [];
      close();
      announce("");
      setError(err instanceof SyntaxError
        ? "Server error: the answer was not JSON."
        : "Connection error: the server cannot be reached. Suggestions come back when "
          + "it answers again.");
      return;
    }
    if (id !== latest) return;  // a newer keystroke already asked
    controller = null;
    if (!res.ok || !body || typeof body !== "object") {
      items = [];
      close();
      setError((body && body.error) || ("Server error " + res.status));
      return;
    }
    setError("");
    // a highlighted suggestion stays highlighted if the new list still has it
    // (an answer can land between ArrowDown and Enter)
    const kept = active >= 0 && items[active] ? items[active].text : null;
    items = Array.isArray(body.completions) ? body.completions : [];
    active = kept === null ? -1 : items.findIndex((c) => c.text === kept);
    if (selectFirst && items.length) active = 0;
    selectFirst = false;
    render();
    announce(expanded ? describe(items.length) : "");
    const took = Number(body.took_ms).toFixed(3);
    $("debug-timing").textContent = took + " ms in the server, "
      + (performance.now() - t0).toFixed(1) + " ms round trip, " + items.length
      + " for " + JSON.stringify(prefix);
  }

  function suggestSoon() {
    clearTimeout(timer);
    timer = setTimeout(suggest, DEBOUNCE_MS);
  }

  function open() {
    expanded = true;
    suggest();
  }

  // -- submitting a query: record it in the session, show its retrieval results ----------
  async function record(query) {
    try {
      const res = await fetch("/v1/sessions/" + encodeURIComponent(session) + "/queries", {
        method: "POST",
        headers: { "Content-Type": "application/json", Accept: "application/json" },
        body: JSON.stringify({ query: query }),
      });
      if (res.ok) return { ok: true };
      const body = await res.json().catch(() => ({}));
      return { ok: false, error: (body && body.error) || ("server error " + res.status) };
    } catch (_) {
      return { ok: false, offline: true };
    }
  }

  async function search(query) {
    try {
      const res = await fetch("/v1/search?" + new URLSearchParams({ q: query, k: RESULTS_K }),
                              { headers: { Accept: "application/json" } });
      const body = await res.json().catch(() => ({}));
      if (res.status === 404) return { off: true };
      if (!res.ok) return { error: (body && body.error) || ("server error " + res.status) };
      return { items: body && Array.isArray(body.items) ? body.items : [] };
    } catch (_) {
      return { offline: true };
    }
  }

  let shownResults = null;  // [query, found] of the results on show
  function showResults(query, found) {
    shownResults = [query, found];
    resultsSection.hidden = false;
    resultsTitle.textContent = "Results for “" + query + "”";
    results.replaceChildren(...(found.items || []).map((hit) => {
      const li = document.createElement("li");
      const id = String(hit.item);
      let label;
      if (/^https?:\/\//i.test(id)) {  // the demo's items are clicked URLs
        label = document.createElement("a");
        label.href = id;
        label.rel = "noopener noreferrer";
        label.target = "_blank";
      } else {
        label = document.createElement("span");
      }
      label.textContent = id;
      li.append(label);
      if (debug.open) li.append(meta(" " + Number(hit.score).toPrecision(3)));
      return li;
    }));
    let note = "";
    if (found.off) note = "This server has no retrieval model (qac serve --retrieval-dir).";
    else if (found.offline) note = "No results: the server cannot be reached.";
    else if (found.error) note = "No results: " + found.error + ".";
    else if (!found.items.length) note = "No items found.";
    resultsNote.textContent = note;
    resultsNote.hidden = !note;
  }

  let submitting = false;
  async function submit(text) {
    const query = text.trim();
    if (!query || submitting) return;
    submitting = true;
    cancelPending();
    close();
    input.value = query;
    try {
      const [rec, found] = await Promise.all([record(query), search(query)]);
      if (rec.offline && found.offline) {  // the text stays in the box for another try
        resultsSection.hidden = true;
        shownResults = null;
        setError("Connection error: the server cannot be reached, so “" + query
                 + "” was not searched. Press Enter to try again.");
        announce("");
        return;
      }
      showResults(query, found);
      if (!rec.ok) {
        setError("Not saved to your session: " + (rec.error || "the server cannot be reached")
                 + ". Press Enter to try again.");
        announce("");
        return;
      }
      setError("");
      const li = document.createElement("li");
      li.textContent = query;
      history.append(li);
      input.value = "";
      const n = (found.items || []).length;
      announce("Searched for " + query + ". " + (n ? n + " results." : "No results."));
    } finally {
      submitting = false;
    }
  }

  // -- events ------------------------------------------------------------------------------
  input.addEventListener("input", () => {
    expanded = true;
    active = -1;
    selectFirst = false;
    if (controller) controller.abort();  // its answer is for older text
    suggestSoon();
  });
  input.addEventListener("focus", open);
  input.addEventListener("click", () => { if (!expanded) open(); });
  input.addEventListener("blur", () => { cancelPending(); close(); announce(""); });

  input.addEventListener("keydown", (ev) => {
    const n = items.length;
    const shown = expanded && n > 0;
    switch (ev.key) {
      case "ArrowDown":
        ev.preventDefault();
        if (shown && !ev.altKey) {
          active = (active + 1) % n;
          render();
        } else if (!shown) {  // open, fresh; Alt+Down leaves the visual focus in the box
          selectFirst = !ev.altKey;
          open();
        }
        break;
      case "ArrowUp":
        ev.preventDefault();
        if (ev.altKey) close();
        else if (shown) {
          active = active <= 0 ? n - 1 : active - 1;
          render();
        }
        break;
      case "Enter":
        ev.preventDefault();
        submit(shown && active >= 0 ? items[active].text : input.value);
        break;
      case "Escape":
        if (shown) {
          ev.preventDefault();
          cancelPending();
          close();
          announce("");
        } else if (input.value) {
          ev.preventDefault();
          input.value = "";
          items = [];
        }
        break;
      case "Home":
      case "End":
      case "ArrowLeft":
      case "ArrowRight":
        if (active >= 0) {  // back to editing the text
          active = -1;
          render();
        }
        break;
      default:
    }
  });

  // the Search button, and the keyboard's "go" key where it submits the form
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    submit(input.value);
  });

  debug.addEventListener("toggle", () => {
    render();
    if (shownResults) showResults(...shownResults);
  });

  // autofocus may have run before this script attached the focus listener
  if (document.activeElement === input) open();
})();
