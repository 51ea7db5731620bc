/* The live worklist: a REST snapshot kept current by WebSocket events, re-sorted on every change.
   Events carry a sequence number; a gap means something was missed, so the page reloads the snapshot.
   AI output is advisory everywhere on this page: wording says "AI advisory", never a diagnosis. */
(function () {
  "use strict";

  const config = JSON.parse(document.getElementById("worklist-config").textContent);
  const LABELS = { ich: "ICH", lvo: "LVO" };
  const NAMES = { ich: "intracranial hemorrhage", lvo: "large-vessel occlusion" };
  const state = {
    items: new Map(),
    order: [],
    seq: null,
    selectedId: null,
    openedId: null,
    detail: null,
    filters: { status: "open", finding: "", modality: "", department: "", mine: false },
    socket: null,
    open: false,
    everOpened: false,
    lastSeen: 0,
    beatSeconds: 5,
    behind: 0,
    catchUpTimer: null,
    retry: 0,
    loading: null,
    sound: localStorage.getItem("worklist.sound") !== "off",
    // Desktop alerts are opt-in: off until the user turns them on (which asks the browser's permission once).
    notify: localStorage.getItem("worklist.notify") === "on",
    audio: null,
    alerted: new Set(),
  };
  const $ = (id) => document.getElementById(id);
  const STALE_BEATS = 2.5; // no beat for this many intervals: the page is no longer live
  const DEAD_BEATS = 6; // no message at all for this many: reconnect
  const CATCH_UP_GRACE_MS = 1000;
  const BADGE = {
    connecting: ["Connecting…", "Opening the live connection"],
    live: ["Live", "Updates arrive as they happen"],
    reconnecting: ["Reconnecting…", "The live connection dropped; retrying. The list may be out of date."],
    stale: ["Not live: updates paused", "The connection is open but updates stopped arriving. The list may be out of date."],
  };

  // ---- helpers ---------------------------------------------------------------------------------------------
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = value;
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value === true ? "" : value);
    }
    for (const child of children.flat()) {
      if (child !== null && child !== undefined && child !== false) node.append(child);
    }
    return node;
  }

  function csrfToken() {
    const match = document.cookie.match(/(?:^|;\s*)csrftoken=([^;]+)/);
    return match ? decodeURIComponent(match[1]) : "";
  }

  async function api(path, options) {
    const response = await fetch(config.api + path, {
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRFToken": csrfToken() },
      ...options,
    });
    const body = response.headers.get("Content-Type")?.includes("json") ? await response.json() : null;
    if (!response.ok) {
      const message = body?.error?.message || `Request failed (${response.status})`;
      throw Object.assign(new Error(message), { status: response.status, code: body?.error?.code });
    }
    return body;
  }

  function waited(item) {
    const end = item.reported_at ? Date.parse(item.reported_at) : Date.now();
    const minutes = Math.max(0, Math.floor((end - Date.parse(item.received_at)) / 60000));
    if (minutes < 60) return `${minutes} min`;
    const hours = Math.floor(minutes / 60);
    return hours < 48 ? `${hours} h ${minutes % 60} min` : `${Math.floor(hours / 24)} d`;
  }

  function findingText(f) {
    const name = LABELS[f.finding] || f.finding.toUpperCase();
    const score = f.score.toFixed(2);
    const threshold = f.threshold.toFixed(2);
    const text = f.positive
      ? `Suspected ${name} — AI advisory, score ${score} ≥ ${threshold}`
      : `${name} not flagged — AI advisory, score ${score} < ${threshold}`;
    return f.in_validated_range === false ? `${text} · outside the validated range (does not raise priority)` : text;
  }

  function findingClass(base, f) {
    return `${base} ${f.positive ? "pos" : "neg"}${f.in_validated_range === false ? " unvalidated" : ""}`;
  }

  // Patient and order context from the DICOM headers; absent on older servers, so every part is optional.
  function ageSex(item) {
    const age = item.patient_age === null || item.patient_age === undefined ? "" : String(item.patient_age);
    return [age, item.patient_sex || ""].filter(Boolean).join(" ");
  }

  function patientLine(item) {
    return [item.patient_id && `MRN ${item.patient_id}`, ageSex(item)].filter(Boolean).join(" · ");
  }

  function studyWhen(item) {
    if (!item.study_datetime) return "";
    const when = new Date(item.study_datetime);
    const sameDay = when.toDateString() === new Date().toDateString();
    const time = when.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
    return sameDay ? time : `${when.toLocaleDateString([], { day: "numeric", month: "short" })} ${time}`;
  }

  function orderLine(item) {
    const place = item.department || item.institution || "";
    return [place, item.referring_physician && `ref. ${item.referring_physician}`].filter(Boolean).join(" · ");
  }

  function starving(item) {
    return item.status === "waiting" && Date.now() > Date.parse(item.starving_at);
  }

  // ---- ordering and filtering (mirrors worklist.priority and the API's ORDER BY) --------------------------
  function compare(a, b) {
    return (
      starving(b) - starving(a) ||
      b.sort_key - a.sort_key ||
      Date.parse(a.received_at) - Date.parse(b.received_at) ||
      a.id - b.id
    );
  }

  function matches(item) {
    const f = state.filters;
    const statuses = f.status === "open" ? ["waiting", "in_progress"] : [f.status];
    if (!statuses.includes(item.status)) return false;
    if (f.finding && !item.findings.some((x) => x.finding === f.finding && x.positive)) return false;
    if (f.modality && !item.modality.toUpperCase().includes(f.modality.toUpperCase())) return false;
    if (f.department && (item.department || "").toLowerCase() !== f.department.toLowerCase()) return false;
    if (f.mine && item.claimed_by !== config.username) return false;
    return true;
  }

  function resort() {
    state.order = [...state.items.values()].sort(compare);
    state.order.forEach((item, n) => (item.rank = n + 1));
  }

  // ---- snapshot and live events ----------------------------------------------------------------------------
  function query() {
    const f = state.filters;
    const params = new URLSearchParams({ status: f.status, limit: config.page_size });
    if (f.finding) params.set("finding", f.finding);
    if (f.modality) params.set("modality", f.modality);
    if (f.department) params.set("department", f.department);
    if (f.mine) params.set("claimed_by", "me");
    return `worklist/?${params}`;
  }

  // ``view``: the filters changed, so items come and go without anything having been missed.
  async function loadSnapshot({ view = false } = {}) {
    if (state.loading) return state.loading;
    state.loading = (async () => {
      try {
        const resync = state.seq !== null && !view;
        const previous = state.items;
        const body = await api(query());
        state.items = new Map(body.results.map((item) => [item.id, item]));
        state.seq = body.seq;
        resort();
        render();
        // Events missed while the path was down must still alert, or a critical study could arrive silently.
        if (resync) alertMissed(previous);
        for (const item of body.results) if (item.acknowledged || !item.critical) state.alerted.add(item.id);
      } catch (err) {
        toast(err.message);
      } finally {
        state.loading = null;
      }
    })();
    return state.loading;
  }

  // The badge tells the truth: "live" only while beats (which travel the server's event path) keep arriving.
  function connect() {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const socket = new WebSocket(`${scheme}://${location.host}${config.ws_path}`);
    state.socket = socket;
    state.open = false;
    socket.onopen = () => {
      state.retry = 0;
      state.open = true;
      state.everOpened = true;
      state.lastSeen = Date.now();
      updateBadge();
    };
    socket.onmessage = (message) => {
      state.lastSeen = Date.now();
      updateBadge();
      onEvent(JSON.parse(message.data));
    };
    socket.onclose = () => {
      if (state.socket !== socket) return;
      state.open = false;
      updateBadge();
      // Backoff with jitter, capped low enough that a page catches up soon after a short outage.
      const delay = Math.min(10000, 500 * 2 ** state.retry++) * (0.75 + Math.random() / 2);
      setTimeout(connect, delay);
    };
  }

  function liveness() {
    if (!state.everOpened && !state.open) return "connecting";
    if (!state.open) return "reconnecting";
    const quiet = Date.now() - state.lastSeen;
    return quiet > STALE_BEATS * state.beatSeconds * 1000 ? "stale" : "live";
  }

  function watchLiveness() {
    updateBadge();
    // A socket silent for much longer than "stale" is likely half-open: drop it and let onclose reconnect.
    const quiet = Date.now() - state.lastSeen;
    if (state.open && quiet > DEAD_BEATS * state.beatSeconds * 1000) state.socket.close();
  }

  async function onEvent(event) {
    if (event.type === "hello") {
      // Whatever happened while disconnected, the snapshot is the truth.
      if (event.beat_seconds) state.beatSeconds = event.beat_seconds;
      await loadSnapshot();
      return;
    }
    if (event.type === "beat") {
      catchUp(event.seq);
      return;
    }
    if (event.type !== "item") return;
    if (state.loading) await state.loading;
    if (state.seq !== null && event.seq <= state.seq) return; // already in the snapshot
    if (state.seq === null || event.seq !== state.seq + 1) {
      await loadSnapshot();
      return;
    }
    state.seq = event.seq;
    applyItem(event.item);
  }

  // A beat's seq ahead of ours means events were lost on the way (say, published while the event path was down).
  // An event committed just before the beat may still be in flight behind it, so give it a moment first.
  function catchUp(seq) {
    if (state.seq === null || seq <= state.seq) return;
    state.behind = Math.max(state.behind, seq);
    if (state.catchUpTimer) return;
    state.catchUpTimer = setTimeout(async () => {
      state.catchUpTimer = null;
      if (state.loading) await state.loading;
      if (state.seq < state.behind) await loadSnapshot();
    }, CATCH_UP_GRACE_MS);
  }

  function applyItem(item) {
    const previous = state.items.get(item.id);
    if (matches(item)) state.items.set(item.id, item);
    else state.items.delete(item.id);
    resort();
    render();
    if (state.items.has(item.id) && item.critical && !item.acknowledged && !state.alerted.has(item.id)) {
      state.alerted.add(item.id);
      raiseAlert(item);
    }
    if (previous && !previous.escalated && item.escalated) raiseAlert(item, true);
  }

  // ---- alerts ----------------------------------------------------------------------------------------------
  function alertMissed(previous) {
    for (const item of state.order) {
      const before = previous.get(item.id);
      const critical = item.critical && !item.acknowledged && !state.alerted.has(item.id);
      if (critical && !before?.critical) {
        state.alerted.add(item.id);
        raiseAlert(item);
      } else if (before && !before.escalated && item.escalated && !item.acknowledged) {
        raiseAlert(item, true);
      }
    }
  }

  function raiseAlert(item, escalated) {
    const positive = item.findings.filter((f) => f.positive).map(findingText).join("; ");
    const prefix = escalated ? "Unacknowledged — escalated" : "New critical study";
    const alert = $("alert");
    alert.replaceChildren(
      el("strong", { text: `${prefix}: ` }),
      el("span", { text: `${positive} · rank ${item.rank} · ${item.study_description || item.accession_number}` }),
      el("button", { type: "button", text: "Show", onclick: () => select(item.id, true) }),
      el("button", { type: "button", text: "Dismiss", onclick: () => (alert.hidden = true) })
    );
    alert.hidden = false;
    alert.classList.remove("flash");
    void alert.offsetWidth; // restart the animation
    alert.classList.add("flash");
    beep();
    if (!escalated) notifyDesktop(item);
  }

  // Only while the page is in the background: in front, the banner and the sound already say it. The text names
  // the finding and the study, never the patient: desktop notifications show on lock screens and in shared rooms.
  function notifyDesktop(item) {
    if (!state.notify || !document.hidden || !("Notification" in window)) return;
    if (window.Notification.permission !== "granted") return;
    const findings = item.findings.filter((f) => f.positive).map((f) => LABELS[f.finding] || f.finding.toUpperCase());
    const note = new window.Notification("New critical study — AI advisory", {
      body: `Suspected ${findings.join(", ")} · rank ${item.rank} · ${item.study_description || item.accession_number}`,
      tag: `worklist-critical-${item.id}`,
    });
    note.onclick = () => {
      window.focus();
      select(item.id, true);
      note.close();
    };
  }

  async function setNotify(on) {
    const supported = "Notification" in window;
    if (on && supported && window.Notification.permission === "default") {
      on = (await window.Notification.requestPermission()) === "granted";
    }
    if (on && (!supported || window.Notification.permission !== "granted")) {
      toast("Desktop alerts are blocked for this site in the browser's settings.");
      on = false;
    }
    state.notify = on;
    localStorage.setItem("worklist.notify", on ? "on" : "off");
    showNotify();
  }

  function showNotify() {
    const button = $("notify-toggle");
    const supported = "Notification" in window;
    const on = state.notify && supported && window.Notification.permission === "granted";
    button.textContent = on ? "Desktop alerts on" : "Desktop alerts off";
    button.setAttribute("aria-pressed", String(on));
    button.disabled = !supported;
    if (!supported) button.title = "This browser has no desktop notifications";
  }

  function beep() {
    if (!state.sound) return;
    try {
      state.audio = state.audio || new (window.AudioContext || window.webkitAudioContext)();
      const ctx = state.audio;
      [0, 0.25].forEach((offset) => {
        const osc = ctx.createOscillator();
        const gain = ctx.createGain();
        osc.frequency.value = 880;
        gain.gain.setValueAtTime(0.0001, ctx.currentTime + offset);
        gain.gain.exponentialRampToValueAtTime(0.3, ctx.currentTime + offset + 0.02);
        gain.gain.exponentialRampToValueAtTime(0.0001, ctx.currentTime + offset + 0.18);
        osc.connect(gain).connect(ctx.destination);
        osc.start(ctx.currentTime + offset);
        osc.stop(ctx.currentTime + offset + 0.2);
      });
    } catch (err) {
      /* no audio device: the visual alert stands */
    }
  }

  function setSound(on) {
    state.sound = on;
    localStorage.setItem("worklist.sound", on ? "on" : "off");
    const button = $("sound-toggle");
    button.textContent = on ? "Sound on" : "Sound off";
    button.setAttribute("aria-pressed", String(on));
  }

  function updateBadge() {
    const now = liveness();
    const node = $("connection");
    if (node.dataset.state === now) return;
    const [text, title] = BADGE[now];
    node.dataset.state = now;
    node.className = `conn conn-${now}`;
    node.textContent = text;
    node.title = title;
  }

  let toastTimer = null;
  function toast(text) {
    let node = $("toast");
    if (!node) node = document.body.appendChild(el("div", { id: "toast", class: "toast", role: "status" }));
    node.textContent = text;
    node.hidden = false;
    clearTimeout(toastTimer);
    toastTimer = setTimeout(() => (node.hidden = true), 5000);
  }

  // ---- rendering -------------------------------------------------------------------------------------------
  function render() {
    const rows = state.order.map(renderRow);
    rememberDepartments();
    $("rows").replaceChildren(...rows);
    $("empty").hidden = rows.length > 0;
    if (state.selectedId === null && state.order.length) state.selectedId = state.order[0].id;
    if (state.selectedId !== null && !state.items.has(state.selectedId)) state.selectedId = state.order[0]?.id ?? null;
    highlight();
    renderDetail();
  }

  function renderRow(item) {
    const findings = item.findings.length
      ? item.findings.map((f) =>
          el("div", { class: findingClass("finding", f), text: findingText(f) })
        )
      : [el("span", { class: "muted", text: "No AI result yet" })];
    const badges = [];
    if (item.starving) badges.push(el("span", { class: "badge starving", text: "waited past cap" }));
    if (item.pinned) badges.push(el("span", { class: "badge pinned", text: "pinned" }));
    if (item.escalated && !item.acknowledged) badges.push(el("span", { class: "badge escalated", text: "escalated" }));
    if (item.critical && !item.acknowledged) badges.push(el("span", { class: "badge unack", text: "not acknowledged" }));
    if (item.critical && item.acknowledged) badges.push(el("span", { class: "badge ack", text: "acknowledged" }));
    const status =
      item.status === "in_progress" ? `Claimed by ${item.claimed_by}` : item.status === "reported" ? "Reported" : "Waiting";
    return el(
      "tr",
      {
        "data-id": item.id,
        "data-uid": item.study_instance_uid,
        class: ["row", item.critical ? "critical" : "", item.status === "in_progress" ? "claimed" : ""].join(" "),
        onclick: () => select(item.id, true),
      },
      el("td", { class: "rank", text: String(item.rank) }),
      el("td", {}, el("span", { class: `prio prio-${item.priority}`, text: item.priority.toUpperCase() }), ...badges),
      el(
        "td",
        { class: "patient" },
        el("div", { class: "pname", text: item.patient_name || "—" }),
        el("div", { class: "muted small", text: patientLine(item) })
      ),
      el("td", {}, ...findings),
      el(
        "td",
        { class: "thumb" },
        item.key_image_url
          ? el("img", {
              src: item.key_image_url,
              alt: "Key image thumbnail; heatmap overlay is AI output (advisory)",
              title: "Key image · heatmap overlay is AI output (advisory)",
              loading: "lazy",
              width: "48",
              height: "48",
            })
          : el("span", { class: "muted", text: "—" })
      ),
      el(
        "td",
        { class: "study" },
        el("div", { text: item.study_description || "—" }),
        el("div", { class: "muted small", text: [item.modality, `Acc ${item.accession_number || "—"}`, studyWhen(item)].filter(Boolean).join(" · ") }),
        orderLine(item) && el("div", { class: "muted small order", text: orderLine(item) })
      ),
      el("td", { class: item.starving ? "waiting starving" : "waiting", text: waited(item) }),
      el("td", { class: "status", text: status })
    );
  }

  const departments = new Set();
  function rememberDepartments() {
    const before = departments.size;
    for (const item of state.order) if (item.department) departments.add(item.department);
    if (departments.size === before) return;
    $("departments").replaceChildren(...[...departments].sort().map((name) => el("option", { value: name })));
  }

  function highlight() {
    for (const row of $("rows").children) {
      const on = Number(row.dataset.id) === state.selectedId;
      row.classList.toggle("selected", on);
      row.setAttribute("aria-selected", String(on));
    }
  }

  function selectedItem() {
    return state.items.get(state.selectedId) || null;
  }

  function select(id, open) {
    state.selectedId = id;
    highlight();
    $("rows").querySelector(`tr[data-id="${id}"]`)?.scrollIntoView({ block: "nearest" });
    if (open) openDetail();
    else if (state.openedId !== id) {
      state.detail = null;
      renderDetail();
    }
  }

  async function openDetail() {
    const item = selectedItem();
    if (!item) return;
    try {
      state.detail = await api(`studies/${item.study_instance_uid}/`); // audited as a view
      state.openedId = item.id;
      renderDetail();
    } catch (err) {
      toast(err.message);
    }
  }

  function renderDetail() {
    const panel = $("detail");
    const item = selectedItem();
    if (!item) {
      panel.replaceChildren(el("p", { class: "muted", text: "No study selected." }));
      return;
    }
    const detail = state.openedId === item.id ? state.detail : null;
    const verdicts = new Map((detail?.findings || []).map((f) => [f.id, f.my_verdict]));
    const mine = item.claimed_by === config.username;
    const actions = el(
      "div",
      { class: "actions" },
      item.status === "waiting" && el("button", { type: "button", "data-action": "claim", text: "Claim (c)", onclick: () => act("claim") }),
      mine && item.status === "in_progress" && el("button", { type: "button", "data-action": "release", text: "Release (r)", onclick: () => act("release") }),
      item.critical && !item.acknowledged && el("button", { type: "button", class: "warn", "data-action": "acknowledge", text: "Acknowledge (a)", onclick: () => act("acknowledge") }),
      item.status !== "reported" && (mine || !item.claimed_by) && el("button", { type: "button", "data-action": "report", text: "Mark reported (d)", onclick: () => act("report") }),
      item.viewer_url && el("a", { class: "button", href: item.viewer_url, target: "_blank", rel: "noopener", text: "Open in viewer (v)" })
    );
    const pin = el(
      "select",
      { "aria-label": "Pin priority", onchange: (e) => pinLevel(e.target.value) },
      el("option", { value: "", text: item.pinned ? "Unpin (rule decides)" : "Rule decides" }),
      ...["routine", "high", "asap", "stat", "critical"].map((label, level) =>
        el("option", { value: String(level), text: `Pin: ${label}`, selected: item.pinned && item.priority_level === level })
      )
    );
    const findings = item.findings.map((f) =>
      el(
        "div",
        { class: findingClass("dfinding", f) },
        el("div", { class: "ftext", text: findingText(f) }),
        f.in_validated_range === false &&
          el("div", {
            class: "muted small unvalidated-reasons",
            text: `Outside the model's validated range: ${(f.input_check_reasons || []).join("; ")}`,
          }),
        el("div", { class: "muted small", text: `${f.model} ${f.model_version} · ${NAMES[f.finding] || f.finding}` }),
        f.key_image_url &&
          el(
            "figure",
            { class: "keyimg" },
            el("img", { src: f.key_image_url, alt: `Key image with AI heatmap for ${LABELS[f.finding] || f.finding}`, loading: "lazy" }),
            el("figcaption", { text: "Key image · heatmap overlay is AI output (advisory)" })
          ),
        el(
          "div",
          { class: "feedback", role: "group", "aria-label": "Your feedback on this AI finding" },
          ...["agree", "disagree", "unsure"].map((verdict) =>
            el("button", {
              type: "button",
              "data-verdict": verdict,
              "aria-pressed": String(verdicts.get(f.id) === verdict),
              class: verdicts.get(f.id) === verdict ? "chosen" : "",
              text: verdict[0].toUpperCase() + verdict.slice(1),
              onclick: () => feedback(f.id, verdict),
            })
          )
        )
      )
    );
    const series = detail
      ? el("ul", { class: "series small" }, ...detail.series.map((s) => el("li", { text: `${s.modality} ${s.description || ""} · ${s.instance_count ?? "?"} images${s.routed_model ? ` → ${s.routed_model.toUpperCase()}` : ""}` })))
      : el("p", { class: "muted small", text: "Enter opens the study (series, your feedback)." });
    const parts = [
      el("h2", { text: `#${item.rank} ${item.study_description || "Study"}` }),
      (item.patient_name || item.patient_id) &&
        el("p", { class: "dpatient" }, el("strong", { text: item.patient_name || "—" }), el("span", { class: "muted", text: ` ${patientLine(item)}` })),
      el("p", { class: "muted small", text: [`Acc ${item.accession_number || "—"}`, item.study_datetime && `acquired ${studyWhen(item)}`, `received ${new Date(item.received_at).toLocaleTimeString()}`, `waiting ${waited(item)}`].filter(Boolean).join(" · ") }),
      orderLine(item) && el("p", { class: "muted small", text: [item.department, item.institution, item.referring_physician && `referred by ${item.referring_physician}`].filter(Boolean).join(" · ") }),
      actions,
      el("label", { class: "small" }, "Priority ", pin),
      el("p", { class: "advisory", text: "AI findings are advisory: they order the list, they are not a diagnosis." }),
      ...(findings.length ? findings : [el("p", { class: "muted", text: "No AI result yet." })]),
      series,
    ];
    panel.replaceChildren(...parts.filter(Boolean));
  }

  // ---- actions ---------------------------------------------------------------------------------------------
  async function act(action) {
    const item = selectedItem();
    if (!item) return;
    try {
      const updated = await api(`studies/${item.study_instance_uid}/${action}/`, { method: "POST" });
      state.items.has(updated.id) && state.items.set(updated.id, { ...updated, rank: item.rank });
      if (!matches(updated)) state.items.delete(updated.id);
      resort();
      render();
      renderDetail();
    } catch (err) {
      toast(err.message);
    }
  }

  async function pinLevel(value) {
    const item = selectedItem();
    if (!item) return;
    try {
      await api(`studies/${item.study_instance_uid}/pin/`, {
        method: "POST",
        body: JSON.stringify({ level: value === "" ? null : Number(value) }),
      });
    } catch (err) {
      toast(err.message);
    }
  }

  async function feedback(resultId, verdict) {
    try {
      await api(`results/${resultId}/feedback/`, { method: "POST", body: JSON.stringify({ verdict }) });
      if (state.detail) {
        const f = state.detail.findings.find((x) => x.id === resultId);
        if (f) f.my_verdict = verdict;
      } else {
        await openDetail();
      }
      renderDetail();
      toast(`Feedback recorded: ${verdict}`);
    } catch (err) {
      toast(err.message);
    }
  }

  // ---- keyboard and controls -------------------------------------------------------------------------------
  function move(step) {
    if (!state.order.length) return;
    const index = state.order.findIndex((item) => item.id === state.selectedId);
    const next = Math.min(state.order.length - 1, Math.max(0, index + step));
    select(state.order[next].id, false);
  }

  function onKey(event) {
    if (event.target.closest("input, select, textarea") || event.ctrlKey || event.metaKey || event.altKey) {
      if (event.key === "Escape") event.target.blur();
      return;
    }
    const item = selectedItem();
    const keys = {
      j: () => move(1),
      ArrowDown: () => move(1),
      k: () => move(-1),
      ArrowUp: () => move(-1),
      Enter: () => openDetail(),
      c: () => act("claim"),
      r: () => act("release"),
      a: () => act("acknowledge"),
      d: () => act("report"),
      m: () => setSound(!state.sound),
      v: () => item?.viewer_url && window.open(item.viewer_url, "_blank", "noopener"),
      "/": () => $("f-status").focus(),
      1: () => item?.findings[0] && feedback(item.findings[0].id, "agree"),
      2: () => item?.findings[0] && feedback(item.findings[0].id, "disagree"),
      3: () => item?.findings[0] && feedback(item.findings[0].id, "unsure"),
    };
    const handler = keys[event.key];
    if (handler) {
      event.preventDefault();
      handler();
    }
  }

  function bindFilters() {
    for (const input of document.querySelectorAll("[data-filter]")) {
      input.addEventListener("change", () => {
        const key = input.dataset.filter;
        state.filters[key] = input.type === "checkbox" ? input.checked : input.value.trim();
        state.detail = null;
        loadSnapshot({ view: true });
      });
    }
  }

  function start() {
    setSound(state.sound);
    $("sound-toggle").addEventListener("click", () => setSound(!state.sound));
    showNotify();
    $("notify-toggle").addEventListener("click", () => setNotify(!state.notify));
    document.addEventListener("keydown", onKey);
    bindFilters();
    const wanted = Number(new URLSearchParams(location.search).get("item"));
    loadSnapshot().then(() => wanted && state.items.has(wanted) && select(wanted, true));
    connect();
    setInterval(watchLiveness, 1000);
    // Waiting times and the starving tier move with the clock, without any event.
    setInterval(() => {
      resort();
      render();
    }, 15000);
  }

  document.addEventListener("DOMContentLoaded", start);
})();
