// The live view: polls the project's feed every second and lists what arrived, newest first.
// Everything is written with textContent: an event's properties never become markup.
"use strict";
(() => {
  const root = document.getElementById("live");
  const list = document.getElementById("events");
  const status = document.getElementById("live-status");
  const pause = document.getElementById("pause");
  const typeFilter = document.getElementById("filter-type");
  const nameFilter = document.getElementById("filter-name");
  const MAX_SHOWN = 500;
  const seen = new Set();
  let since = null;
  let paused = false;
  let timer = null;

  const el = (tag, cls, text) => {
    const node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  };

  function matches(li) {
    const type = typeFilter.value;
    const name = nameFilter.value.trim().toLowerCase();
    if (type && li.dataset.type !== type) return false;
    if (name && !li.dataset.name.toLowerCase().includes(name)) return false;
    return true;
  }

  function applyFilters() {
    for (const li of list.children) li.hidden = !matches(li);
  }

  function item(kind, name, when, summary, doc) {
    const li = el("li");
    li.dataset.type = kind;
    li.dataset.name = name || "";
    li.dataset.at = when;
    const details = el("details");
    const head = el("summary");
    head.append(el("span", kind === "refused" ? "type refused" : "type", kind));
    if (name) head.append(el("span", "name", name));
    for (const part of summary) if (part) head.append(el("span", "meta", part));
    head.append(el("time", null, when.replace("T", " ").slice(0, 23)));
    details.append(head, el("pre", "json", JSON.stringify(doc, null, 2)));
    li.append(details);
    li.hidden = !matches(li);
    return li;
  }

  function insert(li) {
    // Newest first, by received time: a late commit still lands in its place.
    let before = list.firstChild;
    while (before && before.dataset.at > li.dataset.at) before = before.nextSibling;
    list.insertBefore(li, before);
    while (list.children.length > MAX_SHOWN) list.lastChild.remove();
  }

  function show(body) {
    let added = 0;
    for (const ev of body.events) {
      const id = "e:" + ev.message_id;
      if (seen.has(id)) continue;
      seen.add(id);
      const who = ev.user_id ? "user " + ev.user_id : (ev.anonymous_id ? "anonymous " + ev.anonymous_id : "");
      const where = [ev.country, ev.region].filter(Boolean).join(" / ");
      insert(item(ev.type, ev.event, ev.received_at, [who, where], ev));
      added += 1;
    }
    for (const r of body.rejected) {
      const id = "r:" + r.received_at + r.code + (r.field || "") + (r.type || "");
      if (seen.has(id)) continue;
      seen.add(id);
      insert(item("refused", r.type ? r.type + " refused" : "", r.received_at, [r.code, r.reason], r));
      added += 1;
    }
    return added;
  }

  async function poll() {
    timer = null;
    if (paused) return;
    const url = root.dataset.feed + (since ? "?since=" + encodeURIComponent(since) : "");
    try {
      const response = await fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } });
      if (response.status === 401) {
        status.textContent = "Signed out.";
        window.location.assign("/console/sign-in?expired=1");
        return;
      }
      if (!response.ok) throw new Error(String(response.status));
      const body = await response.json();
      since = body.now;
      const added = show(body);
      status.textContent = "Live" + (added ? ": " + added + " new" : "") + " · " + list.children.length + " shown";
    } catch (error) {
      status.textContent = "Reconnecting…";
    }
    if (!paused) timer = setTimeout(poll, 1000);
  }

  pause.addEventListener("click", () => {
    paused = !paused;
    pause.setAttribute("aria-pressed", String(paused));
    pause.textContent = paused ? "Resume" : "Pause";
    status.textContent = paused ? "Paused" : "Resuming…";
    if (!paused && timer === null) poll();
  });
  typeFilter.addEventListener("change", applyFilters);
  nameFilter.addEventListener("input", applyFilters);
  poll();
})();
