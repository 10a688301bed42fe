// qac demo page: suggestions on every keystroke, session kept in sessionStorage.
"use strict";
(function () {
  const input = document.getElementById("q");
  const list = document.getElementById("suggestions");
  const status = document.getElementById("status");
  const history = document.getElementById("history");

  function newSessionId() {
    const bytes = new Uint8Array(16);
    crypto.getRandomValues(bytes);
    return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }
  let session = sessionStorage.getItem("qac-session");
  if (!session) {
    session = newSessionId();
    sessionStorage.setItem("qac-session", session);
  }
  document.getElementById("session").textContent = "session " + session;

  let items = [];      // current suggestions (strings)
  let selected = -1;   // index into items, -1: the typed text
  let latest = 0;      // id of the newest request; older answers are dropped

  function render(prefix) {
    list.replaceChildren();
    items.forEach((c, i) => {
      const li = document.createElement("li");
      li.setAttribute("role", "option");
      li.setAttribute("aria-selected", String(i === selected));
      li.dataset.index = String(i);
      const text = document.createElement("span");
      const p = prefix.trim().toLowerCase();
      if (p && c.text.startsWith(p)) {
        const typed = document.createElement("span");
        typed.className = "typed";
        typed.textContent = c.text.slice(0, p.length);
        text.append(typed, c.text.slice(p.length));
      } else {
        text.textContent = c.text;
      }
      const source = document.createElement("span");
      source.className = "source";
      source.textContent = c.source;
      source.title = "score " + c.score.toFixed(4);
      li.append(text, source);
      li.addEventListener("mousedown", (ev) => { ev.preventDefault(); submit(c.text); });
      list.append(li);
    });
    input.setAttribute("aria-expanded", String(items.length > 0));
  }

  async function suggest() {
    const id = ++latest;
    const prefix = input.value;
    const url = "/v1/complete?" + new URLSearchParams({ q: prefix, session: session, k: "8" });
    try {
      const res = await fetch(url);
      const body = await res.json();
      if (id !== latest) return;  // a newer keystroke already asked
      if (!res.ok) { status.textContent = body.error || res.statusText; return; }
      // a highlighted suggestion stays highlighted if the new list still has it
      // (an answer can land between ArrowDown and Enter)
      const kept = selected >= 0 ? items[selected].text : null;
      items = body.completions;
      selected = kept === null ? -1 : items.findIndex((c) => c.text === kept);
      render(prefix);
      status.textContent = items.length ? body.took_ms.toFixed(2) + " ms in the server" : "";
    } catch (err) {
      if (id === latest) status.textContent = "network error: " + err;
    }
  }

  async function submit(text) {
    const query = text.trim();
    if (!query) return;
    const res = await fetch("/v1/sessions/" + encodeURIComponent(session) + "/queries", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ query: query }),
    });
    if (!res.ok) {
      const body = await res.json().catch(() => ({}));
      status.textContent = body.error || res.statusText;
      return;
    }
    const li = document.createElement("li");
    li.textContent = query;
    history.append(li);
    input.value = "";
    items = [];
    selected = -1;
    render("");
    status.textContent = "submitted: next suggestions use it as the previous query";
    input.focus();
    suggest();
  }

  input.addEventListener("input", suggest);
  input.addEventListener("focus", () => { if (!items.length) suggest(); });
  input.addEventListener("keydown", (ev) => {
    if (ev.key === "ArrowDown" || ev.key === "ArrowUp") {
      if (!items.length) return;
      ev.preventDefault();
      const step = ev.key === "ArrowDown" ? 1 : -1;
      // cycle through -1 (the typed text) and the suggestions
      selected = ((selected + 1 + step + items.length + 1) % (items.length + 1)) - 1;
      render(input.value);
    } else if (ev.key === "Enter") {
      ev.preventDefault();
      submit(selected >= 0 ? items[selected].text : input.value);
    } else if (ev.key === "Escape") {
      items = [];
      selected = -1;
      render("");
    }
  });
})();
