// leukoedge workstation page: plain JavaScript, no build step, talks only to this server.
//
// Dropped files (or picked ones: the same code) are queued; a few workers send them to
// POST /v1/classify in batches that fit the server's limits (GET /v1/model), at most
// CONCURRENCY requests at a time. Results are kept in memory; the grid shows one page of
// classified cells at a time, with small thumbnails made on demand, so thousands of
// cells never become thousands of full-size images in the page.
"use strict";
(() => {
  const PAGE_SIZE = 120;          // cells drawn at once
  const CONCURRENCY = 3;          // requests in flight
  const MAX_PER_REQUEST = 16;     // images per request (also capped by the server's limit)
  const THUMB_PX = 128;           // thumbnail width
  const RENDER_EVERY_MS = 250;    // redraw at most this often while results arrive
  const IMAGE_EXT = new Set(["bmp", "dib", "png", "jpg", "jpeg", "jpe", "tif", "tiff", "gif",
    "webp", "ppm", "pgm", "pbm", "pnm", "tga"]);

  const $ = (id) => document.getElementById(id);
  const state = {
    limits: { max_images: 64, max_request_bytes: 16 * 1024 * 1024 },
    labels: ["hem", "all"],
    items: [],        // {index, path, file, row: null | result row}
    queue: [],        // items waiting to be sent
    active: 0,        // workers running
    page: 0,
    // the rows' columns and CSV format, from the server (GET /v1/model: rows); until it
    // answers, the columns of the first answer's keys
    rows: { columns: null, decimals: {}, text_columns: [] },
    columns: null,    // CSV columns, from the first answer's keys
    token: sessionStorage.getItem("leukoedge-token") || "",
    thumbs: new Map(),  // item index -> blob: URL of its thumbnail (or "" when none)
    thumbQueue: [],
    thumbBusy: false,
    renderTimer: 0,
    patientsSeen: "",
    heatmaps: false,  // the model has a heatmap output (GET /v1/model: heatmaps)
    heatBusy: false,  // a request for the maps of cells classified without them
  };
  // What a test or a person measuring the page reads (window.leukoedge).
  const stats = {
    state: "idle", total: 0, done: 0, errors: 0, requests: 0, retries: 0,
    startedAt: 0, elapsedMs: 0, maxStallMs: 0, longTasks: 0, longestTaskMs: 0,
    csv: () => csvText(), rows: () => state.items.filter((it) => it.row).map((it) => it.row),
  };
  window.leukoedge = stats;

  // ---- responsiveness: the longest gap of a 50 ms heartbeat while a run is going ----
  let beat = performance.now();
  setInterval(() => {
    const now = performance.now();
    if (stats.state === "running") stats.maxStallMs = Math.max(stats.maxStallMs, now - beat - 50);
    beat = now;
  }, 50);
  if (window.PerformanceObserver && PerformanceObserver.supportedEntryTypes &&
      PerformanceObserver.supportedEntryTypes.includes("longtask")) {
    new PerformanceObserver((list) => {
      if (stats.state !== "running") return;
      for (const e of list.getEntries()) {
        if (e.startTime < stats.startedAt) continue;  // before the run (e.g. the file picker)
        stats.longTasks += 1;
        stats.longestTaskMs = Math.max(stats.longestTaskMs, e.duration);
      }
    }).observe({ type: "longtask", buffered: false });
  }

  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
  const authHeaders = () => (state.token ? { Authorization: "Bearer " + state.token } : {});
  const fmt = (x, n) => (typeof x === "number" && isFinite(x) ? x.toFixed(n) : "");
  const callOf = (row) => (row.error || !row.label ? "error" : row.label.toLowerCase());
  const callText = (call) => (call === "error" ? "error" : call.toUpperCase());
  function mib(bytes) { return (bytes / 1048576).toFixed(1) + " MiB"; }

  // ---- the model ----
  async function loadModel() {
    let resp;
    try {
      resp = await fetch("/v1/model", { headers: authHeaders() });
    } catch (e) {
      $("model").textContent = "Model: the server does not answer.";
      return;
    }
    if (resp.status === 401) { needToken(); return; }
    if (!resp.ok) { $("model").textContent = "Model: unavailable (HTTP " + resp.status + ")."; return; }
    const info = await resp.json();
    if (info.limits) state.limits = info.limits;
    const spec = info.spec || {};
    if (Array.isArray(spec.labels)) state.labels = spec.labels;
    state.heatmaps = info.heatmaps === true;
    if (info.rows && Array.isArray(info.rows.columns)) state.rows = info.rows;
    render();
    $("model").textContent = "Model: " + info.model + " (" + (spec.architecture || "?") + ", " +
      (spec.input_size || "?") + " px, threshold " + (spec.threshold ?? "?") + ") on " +
      info.provider + ", leukoedge " + info.version + ".";
  }

  function needToken() {
    $("token-box").hidden = false;
    $("status").textContent = "This server needs an access token: enter it, then retry.";
    $("token").focus();
  }

  // ---- gathering files (drop, folder drop, pickers) ----
  const isImage = (name) => IMAGE_EXT.has((name.split(".").pop() || "").toLowerCase());

  function entryFile(entry) { return new Promise((resolve, reject) => entry.file(resolve, reject)); }
  function readSome(reader) { return new Promise((resolve, reject) => reader.readEntries(resolve, reject)); }

  async function walk(entry, out) {
    if (entry.isFile) {
      if (isImage(entry.name) && !entry.name.startsWith(".")) {
        out.push({ file: await entryFile(entry), path: entry.fullPath.replace(/^\//, "") });
      }
    } else if (entry.isDirectory) {
      const reader = entry.createReader();
      for (;;) {
        const some = await readSome(reader);
        if (!some.length) break;
        for (const e of some) await walk(e, out);
      }
    }
  }

  async function fromDrop(dt) {
    // the entries must be taken while the event is being handled
    const entries = [...(dt.items || [])].filter((i) => i.kind === "file")
      .map((i) => (i.webkitGetAsEntry ? i.webkitGetAsEntry() : null));
    if (!entries.length || entries.some((e) => !e)) {
      return [...dt.files].map((f) => ({ file: f, path: f.name }));
    }
    const out = [];
    for (const e of entries) {
      if (e.isFile) out.push({ file: await entryFile(e), path: e.name });  // asked for: sent
      else {
        const inFolder = [];
        await walk(e, inFolder);
        inFolder.sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
        out.push(...inFolder);
      }
    }
    return out;
  }

  function fromInput(input, folder) {
    let picked = [...input.files].map((f) => ({ file: f, path: f.webkitRelativePath || f.name }));
    if (folder) {
      picked = picked.filter((p) => isImage(p.file.name) && !p.file.name.startsWith("."));
      picked.sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
    }
    input.value = "";
    return picked;
  }

  // ---- sending ----
  function add(picked) {
    if (!picked.length) { $("status").textContent = "No image files in what was dropped."; return; }
    if (stats.state !== "running") {
      stats.startedAt = performance.now();
      beat = stats.startedAt;  // the heartbeat counts from here, not from before the drop
      stats.maxStallMs = 0;
      stats.longTasks = 0;
      stats.longestTaskMs = 0;
    }
    for (const p of picked) {
      const item = { index: state.items.length, path: p.path, file: p.file, row: null };
      state.items.push(item);
      state.queue.push(item);
    }
    stats.total = state.items.length;
    start();
  }

  function start() {
    if (!state.queue.length) return;
    stats.state = "running";
    $("cancel").disabled = false;
    $("clear").disabled = true;
    while (state.active < CONCURRENCY && state.queue.length) {
      state.active += 1;
      worker().finally(() => {
        state.active -= 1;
        if (state.active === 0) finished();
      });
    }
    scheduleRender();
  }

  function finished() {
    stats.elapsedMs = performance.now() - stats.startedAt;
    stats.state = state.queue.length ? "stopped" : "done";
    $("cancel").disabled = true;
    $("clear").disabled = false;
    render();
  }

  function nextBatch() {
    const maxN = Math.max(1, Math.min(MAX_PER_REQUEST, state.limits.max_images));
    const maxBytes = state.limits.max_request_bytes - 64 * 1024;  // room for the form's own bytes
    const batch = [];
    let bytes = 0;
    while (state.queue.length && batch.length < maxN) {
      const item = state.queue[0];
      const size = item.file.size + 512 + 3 * item.file.name.length;
      if (size > maxBytes) {
        state.queue.shift();
        finish(item, errorRow(item, item.path + ": larger than this server accepts in one request (" +
          mib(item.file.size) + "; the limit is " + mib(state.limits.max_request_bytes) + ")"));
        continue;
      }
      if (batch.length && bytes + size > maxBytes) break;
      batch.push(state.queue.shift());
      bytes += size;
    }
    return batch;
  }

  async function worker() {
    while (stats.state === "running") {
      const batch = nextBatch();
      if (!batch.length) return;
      await send(batch);
    }
  }

  async function send(batch) {
    for (let attempt = 0; ; attempt++) {
      const form = new FormData();
      for (const item of batch) form.append("image", item.file, item.file.name);
      let resp;
      try {
        stats.requests += 1;
        resp = await fetch(classifyUrl(), { method: "POST", body: form, headers: authHeaders() });
      } catch (e) {
        if (attempt < 3) { stats.retries += 1; await sleep(500 * (attempt + 1)); continue; }
        failBatch(batch, "the server did not answer (" + e.message + ")");
        return;
      }
      if ((resp.status === 429 || resp.status === 503) && attempt < 120) {
        stats.retries += 1;
        await sleep(1000 * (Number(resp.headers.get("Retry-After")) || 1));
        continue;
      }
      if (resp.status === 401) {
        state.queue.unshift(...batch);
        stats.state = "stopped";
        needToken();
        return;
      }
      let body = null;
      try { body = await resp.json(); } catch (e) { body = null; }
      if (!resp.ok) {
        failBatch(batch, (body && body.error) || "the server answered HTTP " + resp.status);
        return;
      }
      const rows = body && body.results;
      if (!Array.isArray(rows) || rows.length !== batch.length) {
        failBatch(batch, "the server's answer did not have one result per image");
        return;
      }
      rows.forEach((row, k) => finish(batch[k], row));
      return;
    }
  }

  // the maps are asked for only while the switch is on (the server computes none otherwise)
  function classifyUrl() {
    return "/v1/classify" + (state.heatmaps && $("heat").checked ? "?heatmaps=1" : "");
  }

  // cells on the page classified while the switch was off: fetch their maps, one request
  // at a time; a cell is asked for once
  async function pumpHeat(slice) {
    if (state.heatBusy || !state.heatmaps || !$("heat").checked) return;
    const want = slice.filter((it) => it.row && !it.row.error && !heatmapSrc(it.row) && !it.heatAsked);
    if (!want.length) return;
    state.heatBusy = true;
    try {
      const maxN = Math.max(1, Math.min(MAX_PER_REQUEST, state.limits.max_images));
      for (let i = 0; i < want.length; i += maxN) {
        const batch = want.slice(i, i + maxN);
        const form = new FormData();
        for (const it of batch) { it.heatAsked = true; form.append("image", it.file, it.file.name); }
        let body = null;
        try {
          const resp = await fetch("/v1/classify?heatmaps=1", { method: "POST", body: form, headers: authHeaders() });
          if (resp.ok) body = await resp.json();
        } catch (e) {
          body = null;
        }
        const rows = body && body.results;
        if (!Array.isArray(rows) || rows.length !== batch.length) continue;
        rows.forEach((r, k) => { if (typeof r.heatmap === "string") batch[k].row.heatmap = r.heatmap; });
        scheduleRender();
      }
    } finally {
      state.heatBusy = false;
    }
  }

  function errorRow(item, message) {
    const row = { name: item.file.name };
    for (const c of state.rows.columns || state.columns || []) if (c !== "path") row[c] = null;
    row.error = message;
    return row;
  }

  function failBatch(batch, message) {
    for (const item of batch) finish(item, errorRow(item, item.path + ": " + message));
  }

  function finish(item, row) {
    if (!state.columns && !row.error) {
      state.columns = ["path", ...Object.keys(row).filter((k) => k !== "name" && k !== "path")];
    }
    item.row = row;
    stats.done += 1;
    if (callOf(row) === "error") stats.errors += 1;
    scheduleRender();
  }

  // ---- filtering, sorting, drawing ----
  function scheduleRender() {
    if (state.renderTimer) return;
    state.renderTimer = setTimeout(() => { state.renderTimer = 0; render(); }, RENDER_EVERY_MS);
  }

  function filters() {
    const num = (id, dflt) => { const v = parseFloat($(id).value); return isNaN(v) ? dflt : v; };
    return { call: $("f-call").value, min: num("f-min", 0), max: num("f-max", 1),
      patient: $("f-patient").value, sort: $("sort").value };
  }

  function visible() {
    const f = filters();
    const probFiltered = f.min > 0 || f.max < 1;
    const out = state.items.filter((it) => {
      if (!it.row) return false;
      const call = callOf(it.row);
      if (f.call && call !== f.call) return false;
      if (f.patient && (it.row.patient || "unknown") !== f.patient) return false;
      if (probFiltered) {
        const p = it.row.prob_all;
        if (typeof p !== "number" || p < f.min || p > f.max) return false;
      }
      return true;
    });
    const byName = (a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0);
    const prob = (it) => (typeof it.row.prob_all === "number" ? it.row.prob_all : -1);
    if (f.sort === "prob-desc") out.sort((a, b) => prob(b) - prob(a) || a.index - b.index);
    else if (f.sort === "prob-asc") out.sort((a, b) => prob(a) - prob(b) || a.index - b.index);
    else if (f.sort === "name") out.sort(byName);
    else if (f.sort === "patient") {
      out.sort((a, b) => (a.row.patient || "~").localeCompare(b.row.patient || "~") || byName(a, b));
    }
    return out;
  }

  function render() {
    const shown = visible();
    const pages = Math.max(1, Math.ceil(shown.length / PAGE_SIZE));
    state.page = Math.min(state.page, pages - 1);
    const first = state.page * PAGE_SIZE;
    const slice = shown.slice(first, first + PAGE_SIZE);
    drawGrid(slice);
    $("page-info").textContent = shown.length
      ? "Cells " + (first + 1) + "–" + (first + slice.length) + " of " + shown.length +
        " shown (page " + (state.page + 1) + " of " + pages + ")"
      : "No cell to show.";
    $("prev").disabled = state.page === 0;
    $("next").disabled = state.page >= pages - 1;
    drawPatients();
    drawStatus();
    const any = stats.done > 0;
    $("download").disabled = !any;
    const heat = state.heatmaps || state.items.some((it) => it.row && heatmapSrc(it.row));
    $("heat").disabled = !heat;
    $("heat-why").textContent = heat ? "" : "(this model has no heatmap output; " +
      "export one with 'leukoedge export --cam')";
  }

  function drawStatus() {
    const secs = ((stats.state === "running" ? performance.now() - stats.startedAt : stats.elapsedMs) / 1000);
    $("progress").max = Math.max(1, stats.total);
    $("progress").value = stats.done;
    const errs = stats.errors ? " (" + stats.errors + " not classified)" : "";
    let text;
    if (!stats.total) text = "No cells yet.";
    else if (stats.state === "running") text = "Classifying: " + stats.done + " of " + stats.total + " cells" + errs + ", " + secs.toFixed(1) + " s.";
    else if (stats.state === "stopped") text = "Stopped: " + stats.done + " of " + stats.total + " cells classified" + errs + ".";
    else text = "Done: " + stats.done + " cells classified" + errs + " in " + secs.toFixed(1) + " s.";
    $("status").textContent = text;
    const calls = { all: 0, hem: 0, error: 0 };
    for (const it of state.items) if (it.row) calls[callOf(it.row)] += 1;
    $("counts").textContent = stats.done
      ? "Called ALL: " + calls.all + ", HEM: " + calls.hem + ", errors: " + calls.error + "."
      : "";
  }

  function heatmapSrc(row) {
    const h = row.heatmap;
    if (typeof h !== "string") return "";
    if (h.startsWith("data:image/") || (h.startsWith("/") && !h.startsWith("//"))) return h;
    return "";  // a file name on the server's side: nothing the page can show
  }

  function drawGrid(slice) {
    const grid = $("grid");
    const showHeat = $("heat").checked;
    const frag = document.createDocumentFragment();
    for (const it of slice) {
      const row = it.row;
      const call = callOf(row);
      const li = document.createElement("li");
      li.className = "cell " + call;
      li.dataset.path = it.path;
      li.dataset.name = row.name;
      li.dataset.label = call === "error" ? "" : row.label;
      li.dataset.prob = typeof row.prob_all === "number" ? String(row.prob_all) : "";
      li.dataset.patient = row.patient || "";
      const thumb = document.createElement("div");
      thumb.className = "thumb";
      const img = document.createElement("img");
      img.alt = "";
      img.decoding = "async";
      const url = state.thumbs.get(it.index);
      if (url) img.src = url;
      else if (url === undefined) state.thumbQueue.push(it);
      img.dataset.index = String(it.index);
      thumb.appendChild(img);
      const heat = heatmapSrc(row);
      if (showHeat && heat) {
        const h = document.createElement("img");
        h.className = "heat";
        h.alt = "heatmap";
        h.src = heat;
        thumb.appendChild(h);
      }
      li.appendChild(thumb);
      const line = document.createElement("div");
      const strong = document.createElement("span");
      strong.className = "call";
      strong.textContent = callText(call);
      line.appendChild(strong);
      if (call !== "error") line.append(" P(ALL) " + fmt(row.prob_all, 3));
      if (typeof row.drift === "number") line.append(", drift " + fmt(row.drift, 2));
      li.appendChild(line);
      const name = document.createElement("div");
      name.className = "name";
      name.textContent = it.path;
      li.appendChild(name);
      if (row.patient) {
        const p = document.createElement("div");
        p.textContent = "patient " + row.patient;
        li.appendChild(p);
      }
      if (row.error) {
        const e = document.createElement("div");
        e.className = "err";
        e.textContent = row.error;
        li.appendChild(e);
      }
      li.setAttribute("aria-label", callText(call) + (call === "error" ? "" : ", P(ALL) " + fmt(row.prob_all, 3)) + ", " + it.path);
      frag.appendChild(li);
    }
    grid.replaceChildren(frag);
    pumpThumbs();
    if (showHeat) pumpHeat(slice);
  }

  // thumbnails: one at a time, small, only for cells on the page being shown
  async function pumpThumbs() {
    if (state.thumbBusy) return;
    state.thumbBusy = true;
    try {
      while (state.thumbQueue.length) {
        const it = state.thumbQueue.shift();
        if (state.thumbs.has(it.index)) continue;
        const img = $("grid").querySelector('img[data-index="' + it.index + '"]');
        if (!img) continue;  // no longer on the page
        let url = "";
        try {
          const bmp = await createImageBitmap(it.file, { resizeWidth: THUMB_PX, resizeQuality: "medium" });
          const canvas = document.createElement("canvas");
          canvas.width = bmp.width;
          canvas.height = bmp.height;
          canvas.getContext("2d").drawImage(bmp, 0, 0);
          bmp.close();
          const blob = await new Promise((resolve) => canvas.toBlob(resolve, "image/jpeg", 0.85));
          if (blob) url = URL.createObjectURL(blob);
        } catch (e) {
          url = "";  // a format the browser cannot draw: the cell shows no picture
        }
        state.thumbs.set(it.index, url);
        if (url) {
          const now = $("grid").querySelector('img[data-index="' + it.index + '"]');
          if (now) now.src = url;
        }
      }
    } finally {
      state.thumbBusy = false;
    }
  }

  function patientTable() {
    const groups = new Map();
    for (const it of state.items) {
      if (!it.row) continue;
      const pid = it.row.patient || "unknown";
      let g = groups.get(pid);
      if (!g) { g = { pid, n: 0, nAll: 0, probSum: 0, errors: 0 }; groups.set(pid, g); }
      if (callOf(it.row) === "error") { g.errors += 1; continue; }
      g.n += 1;
      if (callOf(it.row) === state.labels[1]) g.nAll += 1;
      g.probSum += it.row.prob_all;
    }
    return [...groups.values()].sort((a, b) => (a.pid === "unknown") - (b.pid === "unknown") ||
      a.pid.localeCompare(b.pid, undefined, { numeric: true }));
  }

  function drawPatients() {
    const table = patientTable();
    const ids = table.map((g) => g.pid).join("\n");
    if (ids !== state.patientsSeen) {  // keep the patient filter's choices current
      state.patientsSeen = ids;
      const sel = $("f-patient");
      const keep = sel.value;
      const opts = [new Option("any", "")];
      for (const g of table) opts.push(new Option(g.pid, g.pid));
      sel.replaceChildren(...opts);
      sel.value = table.some((g) => g.pid === keep) ? keep : "";
    }
    if ($("patients-view").hidden) return;
    // the calls come from the server (POST /v1/patients: leukoedge.patient, the same
    // summary as classify --patients-out), never from a vote computed here
    const rows = [];
    for (const it of state.items) {
      if (!it.row) continue;
      rows.push({ patient: it.row.patient, label: it.row.label, prob_all: it.row.prob_all,
        error: it.row.error, drift: typeof it.row.drift === "number" ? it.row.drift : null });
    }
    const key = state.items.length + ":" + rows.length + ":" + table.length;
    if (key === state.patientsAsked) return;
    state.patientsAsked = key;
    askPatients(rows, key);
  }

  async function askPatients(rows, key) {
    let data = null;
    let problem = "";
    try {
      const resp = await fetch("/v1/patients", { method: "POST", body: JSON.stringify({ rows }),
        headers: Object.assign({ "Content-Type": "application/json" }, authHeaders()) });
      data = await resp.json();
      if (!resp.ok) problem = (data && data.error) || ("HTTP " + resp.status);
    } catch (e) {
      problem = "the server did not answer";
    }
    if (key !== state.patientsAsked) return;  // newer rows were asked about meanwhile
    const body = $("patients").tBodies[0];
    if (problem) {
      state.patientsAsked = "";
      const tr = document.createElement("tr");
      const td = document.createElement("td");
      td.colSpan = 10;
      td.textContent = "No patient summary: " + problem;
      tr.appendChild(td);
      body.replaceChildren(tr);
      return;
    }
    const frag = document.createDocumentFragment();
    for (const g of data.patients) {
      const tr = document.createElement("tr");
      tr.dataset.patient = g.patient;
      tr.dataset.call = g.call;
      tr.dataset.summary = JSON.stringify(g);
      const share = g.share_all === null ? "" : (100 * g.share_all).toFixed(1) + " % (" +
        (100 * g.share_all_low).toFixed(0) + "-" + (100 * g.share_all_high).toFixed(0) + " %)";
      const cells = [g.patient, String(g.cells), String(g.errors), String(g.called_all), share,
        g.mean_prob_all === null ? "" : g.mean_prob_all.toFixed(3),
        g.drift === null ? "" : g.drift.toFixed(2)];
      cells.forEach((text, k) => {
        const td = document.createElement(k === 0 ? "th" : "td");
        if (k === 0) td.scope = "row"; else td.className = "num";
        td.textContent = text;
        tr.appendChild(td);
      });
      const v = document.createElement("td");
      if (g.call !== "none") {
        const tag = document.createElement("span");
        tag.className = "tag " + g.call.toLowerCase();
        tag.textContent = g.call;
        v.appendChild(tag);
      } else v.textContent = "none";
      tr.appendChild(v);
      const why = document.createElement("td");
      why.textContent = g.reason;
      tr.appendChild(why);
      const act = document.createElement("td");
      const b = document.createElement("button");
      b.type = "button";
      b.textContent = "Show cells";
      b.setAttribute("aria-label", "Show the cells of " + g.patient);
      b.addEventListener("click", () => {
        $("f-patient").value = g.patient;
        $("view").value = "cells";
        applyView();
        $("cells-title").focus();
      });
      act.appendChild(b);
      tr.appendChild(act);
      frag.appendChild(tr);
    }
    body.replaceChildren(frag);
  }

  // ---- CSV, in classify's columns and number format ----
  // text columns whose first character a spreadsheet would read as a formula get it as
  // \xNN, as classify's CSV does (leukoedge.output.csv_safe); numbers are never touched
  function csvSafe(s) {
    return /^[=+\-@\t\r]/.test(s) ? "\\x" + s.charCodeAt(0).toString(16).padStart(2, "0") + s.slice(1) : s;
  }

  function csvField(column, v) {
    let s;
    if (v === null || v === undefined) s = "";
    else if (typeof v === "number") {
      const decimals = state.rows.decimals[column];
      s = decimals === undefined ? String(v) : fmt(v, decimals);
    } else s = String(v);
    if (column === "heatmap" && s.startsWith("data:")) s = "";  // a picture, not a file name
    if (state.rows.text_columns.includes(column)) s = csvSafe(s);
    return /[",\r\n]/.test(s) ? '"' + s.replace(/"/g, '""') + '"' : s;
  }

  function csvText() {
    const cols = state.rows.columns || state.columns || ["path"];
    const lines = [cols.join(",")];
    for (const it of state.items) {
      if (!it.row) continue;
      lines.push(cols.map((c) => csvField(c, c === "path" ? it.path : it.row[c])).join(","));
    }
    return lines.join("\n") + "\n";
  }

  function download() {
    const blob = new Blob([csvText()], { type: "text/csv" });
    const a = document.createElement("a");
    a.href = URL.createObjectURL(blob);
    a.download = "leukoedge-results.csv";
    document.body.appendChild(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(a.href), 10000);
  }

  function clearAll() {
    for (const url of state.thumbs.values()) if (url) URL.revokeObjectURL(url);
    state.thumbs.clear();
    state.items = [];
    state.queue = [];
    state.columns = null;
    state.page = 0;
    Object.assign(stats, { state: "idle", total: 0, done: 0, errors: 0, requests: 0, retries: 0,
      elapsedMs: 0, maxStallMs: 0, longTasks: 0, longestTaskMs: 0 });
    render();
  }

  function applyView() {
    const patients = $("view").value === "patients";
    $("patients-view").hidden = !patients;
    $("cells-view").hidden = patients;
    render();
  }

  // ---- wiring ----
  function init() {
    const drop = $("drop");
    ["dragenter", "dragover"].forEach((t) => drop.addEventListener(t, (e) => {
      e.preventDefault();
      drop.classList.add("over");
    }));
    ["dragleave", "drop"].forEach((t) => drop.addEventListener(t, () => drop.classList.remove("over")));
    drop.addEventListener("drop", (e) => {
      e.preventDefault();
      fromDrop(e.dataTransfer).then(add, (err) => {
        $("status").textContent = "Could not read what was dropped: " + err.message;
      });
    });
    // a drop outside the zone must not make the browser open the image instead of the page
    window.addEventListener("dragover", (e) => e.preventDefault());
    window.addEventListener("drop", (e) => e.preventDefault());
    drop.addEventListener("keydown", (e) => {
      if (e.target === drop && (e.key === "Enter" || e.key === " ")) { e.preventDefault(); $("files").click(); }
    });
    $("files").addEventListener("change", (e) => add(fromInput(e.target, false)));
    $("folder").addEventListener("change", (e) => add(fromInput(e.target, true)));
    $("cancel").addEventListener("click", () => {
      if (stats.state === "running") stats.state = "stopped";  // workers stop after their request
    });
    $("clear").addEventListener("click", clearAll);
    $("download").addEventListener("click", download);
    $("token-retry").addEventListener("click", () => {
      state.token = $("token").value.trim();
      sessionStorage.setItem("leukoedge-token", state.token);
      $("token-box").hidden = true;
      loadModel();
      start();
    });
    for (const id of ["f-call", "f-min", "f-max", "f-patient", "sort", "heat"]) {
      for (const type of ["input", "change"]) {
        $(id).addEventListener(type, () => { state.page = 0; render(); });
      }
    }
    $("view").addEventListener("change", applyView);
    $("prev").addEventListener("click", () => { state.page -= 1; render(); });
    $("next").addEventListener("click", () => { state.page += 1; render(); });
    $("cells-title").tabIndex = -1;
    loadModel();
    render();
  }

  init();
})();
