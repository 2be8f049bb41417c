// tokenflow web page: one EventSource per column on /api/stream, one <span> per token.
// Plain ES module, no dependencies: the server serves this file as it is.

const MAX_COLUMNS = 4;
const TOP_N = 5; // alternatives asked for and shown on hover
// Settings the page sets itself, so they never appear as a strategy's control.
const PAGE_FIELDS = new Set(["strategy", "max_new_tokens", "logprobs", "top_logprobs", "n", "stream", "trace"]);
// First columns a person sees: deterministic, nucleus sampling, beam.
const PREFERRED = ["greedy", "top_p", "beam", "sample"];

const $ = (selector, root = document) => root.querySelector(selector);
const apiKey = new URLSearchParams(location.search).get("api_key");
const authHeaders = apiKey ? { Authorization: `Bearer ${apiKey}` } : {};

let catalogue = null; // {strategies, params, processors}, from GET /strategies
const columns = [];
let lastRun = null; // {prompt, chat}: what Regenerate runs again

// -- small DOM helpers (textContent only: model output is never parsed as HTML) --
function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === "class") el.className = value;
    else if (key === "style") el.style.cssText = value;
    else if (key in el) el[key] = value;
    else el.setAttribute(key, value);
  }
  for (const child of children) el.append(child);
  return el;
}

/** Whitespace made visible, for a token shown on its own. */
function visible(text) {
  return text.replace(/ /g, "\u2423").replace(/\n/g, "\u23ce").replace(/\t/g, "\u21e5");
}

function percent(p) {
  return p >= 0.1 ? `${(p * 100).toFixed(1)}%` : `${(p * 100).toPrecision(2)}%`;
}

// -- the catalogue: controls are generated from whatever GET /strategies says --
/** Normalise GET /strategies: ``params`` may map a field to a spec object
 * ({type, default, min, max, help, ...}) or to its help text alone. */
async function loadCatalogue() {
  const res = await fetch("/strategies", { headers: authHeaders });
  if (!res.ok) throw new Error(`GET /strategies: HTTP ${res.status}`);
  const body = await res.json();
  const params = {};
  for (const [name, spec] of Object.entries(body.params || {})) {
    params[name] = typeof spec === "string" ? { help: spec } : { ...spec };
  }
  const strategies = (body.strategies || []).map((s) => {
    // A strategy reads its own params, the fields named like its transforms, and its defaults.
    const named = [...(s.params || []), ...(s.transforms || []), ...Object.keys(s.defaults || {})];
    const fields = [...new Set(named)].filter((f) => f in params && !PAGE_FIELDS.has(f));
    return { ...s, defaults: s.defaults || {}, fields };
  });
  return { strategies, params, processors: body.processors || [] };
}

/** One labelled input for a SamplingParams field; ``read()`` gives the value to send,
 * or null while it still shows the default (the server then applies its own). */
function paramControl(name, spec, shownDefault) {
  const type = String(spec.type || "");
  const range = [spec.min != null ? `min ${spec.min}` : "", spec.max != null ? `max ${spec.max}` : ""]
    .filter(Boolean).join(", ");
  const title = [spec.help, range, type && `type ${type}`].filter(Boolean).join(" · ");
  const label = h("label", { class: "param", title }, name);
  let input;
  if (type === "bool") {
    input = h("input", { type: "checkbox", name, checked: shownDefault === true });
  } else if (type === "int" || type === "float") {
    input = h("input", { type: "number", name, step: type === "int" ? "1" : "any" });
    if (spec.min != null) input.min = spec.min;
    if (spec.max != null) input.max = spec.max;
    if (shownDefault != null) input.value = shownDefault;
    else input.placeholder = "auto";
  } else {
    input = h("input", { type: "text", name });
    // Structured settings travel as JSON, lists as comma-separated values.
    const structured = type.startsWith("dict") || type.startsWith("list[list");
    input.placeholder = structured ? "JSON" : type.startsWith("list") ? "a,b" : "default";
    if (Array.isArray(shownDefault) && !structured) input.value = shownDefault.join(",");
    else if (shownDefault != null && typeof shownDefault !== "object") input.value = String(shownDefault);
  }
  label.append(input);
  const initial = input.type === "checkbox" ? input.checked : input.value;
  const read = () => {
    const now = input.type === "checkbox" ? input.checked : input.value.trim();
    if (now === initial || now === "") return null;
    return String(now);
  };
  return { label, read };
}

// -- one column: a strategy, its settings, its stream --------------------------
class Column {
  constructor(strategyName) {
    this.el = $("#column-template").content.firstElementChild.cloneNode(true);
    this.select = $(".strategy", this.el);
    for (const s of catalogue.strategies) {
      const label = s.description ? `${s.name} \u2014 ${s.description}` : s.name;
      this.select.append(h("option", { value: s.name }, label));
    }
    this.select.value = strategyName;
    this.select.addEventListener("change", () => this.renderParams());
    $(".remove", this.el).addEventListener("click", () => removeColumn(this));
    this.output = $(".output", this.el);
    this.tokens = [];
    this.es = null;
    this.renderParams();
  }

  get strategy() {
    return catalogue.strategies.find((s) => s.name === this.select.value);
  }

  renderParams() {
    const s = this.strategy;
    $(".chain", this.el).textContent = s.chain || "";
    $(".chain", this.el).title = s.reference || "";
    const own = $(".params", this.el);
    const more = $(".params-more", this.el);
    own.replaceChildren();
    more.replaceChildren();
    this.controls = [];
    for (const name of s.fields) {
      const spec = catalogue.params[name];
      const c = paramControl(name, spec, name in s.defaults ? s.defaults[name] : spec.default);
      own.append(c.label);
      this.controls.push([name, c]);
    }
    // Everything else a request may set (penalties, stop strings, ...), folded away.
    for (const [name, spec] of Object.entries(catalogue.params)) {
      if (PAGE_FIELDS.has(name) || s.fields.includes(name)) continue;
      const c = paramControl(name, spec, spec.default);
      more.append(c.label);
      this.controls.push([name, c]);
    }
    $(".more", this.el).hidden = more.childElementCount === 0;
  }

  /** Query parameters for this column's settings (only those changed from the default). */
  settings() {
    const out = [["strategy", this.strategy.name]];
    for (const [name, control] of this.controls) {
      const value = control.read();
      if (value !== null) out.push([name, value]);
    }
    return out;
  }

  get running() {
    return this.es !== null;
  }

  setState(state, status) {
    this.el.dataset.state = state;
    $(".status", this.el).textContent = status || state;
    updateButtons();
  }

  start(run, common, withAlternatives = true) {
    if (this.running && this.streamId) this.cancelOnServer(); // a new run replaces the old one
    this.close();
    this.run = run;
    this.common = common;
    this.tokens = [];
    this.output.replaceChildren();
    this.streamId = null;
    this.lastSeq = -1;
    this.stopRequested = false;
    this.firstAt = this.lastAt = null;
    $(".error", this.el).hidden = true;
    for (const sel of [".ttft", ".rate"]) $(sel, this.el).textContent = "\u2013";
    $(".count", this.el).textContent = "0";
    $(".stats", this.el).title = "";

    if (this.fork) this.showShared();
    const q = new URLSearchParams({ prompt: run.prompt, chat: String(run.chat) });
    if (this.fork) q.set("prefix_ids", this.fork.tokens.map((t) => t.token_id).join(","));
    for (const [k, v] of [...common, ...this.settings()]) q.append(k, v);
    // Ask for alternatives under whichever name this server's settings use.
    this.alternativesField = null;
    if (withAlternatives) {
      this.alternativesField = ["logprobs", "top_logprobs"].find((f) => f in catalogue.params) || null;
      if (this.alternativesField) q.set(this.alternativesField, TOP_N);
      // the trace goes with the alternatives: a strategy that refuses them (beam) refuses it too
      if (this.alternativesField && $("#trace").checked) q.set("trace", "1");
    }
    if (apiKey) q.set("api_key", apiKey); // EventSource cannot send headers
    this.url = `/api/stream?${q}`;
    this.startedAt = performance.now();
    const es = new EventSource(this.url);
    this.es = es;
    es.addEventListener("token", (e) => this.accept(e) && this.onToken(JSON.parse(e.data)));
    es.addEventListener("done", (e) => this.accept(e) && this.onDone(JSON.parse(e.data)));
    // "error" is both the server's named error event (it has data) and a dropped connection.
    es.addEventListener("error", (e) => (e.data !== undefined ? this.accept(e) && this.onServerError(e) : this.onDrop(es)));
    es.addEventListener("open", () => {
      if (this.el.dataset.state === "reconnecting") this.setState("running", "streaming (resumed)");
    });
    this.setState("running", "waiting for the first token");
  }

  /** A fork's column: the shared prefix (greyed) and the chosen token, then what streams. */
  showShared() {
    for (const data of this.fork.tokens) {
      const i = this.tokens.push(data) - 1;
      const last = i === this.fork.tokens.length - 1;
      const span = h("span", { class: last ? "tok fork" : "tok shared", title: last ? "the fork's token" : "" },
        data.text || "");
      span.dataset.i = i;
      span.dataset.id = data.token_id;
      shade(span, data);
      this.output.append(span);
    }
  }

  /** Ids are "<stream>.<seq>": remember the stream, and never apply an event twice
   * (a resumed stream starts after Last-Event-ID, this is only a guard). */
  accept(e) {
    const cut = e.lastEventId.lastIndexOf(".");
    if (cut > 0) {
      this.streamId = e.lastEventId.slice(0, cut);
      const seq = Number(e.lastEventId.slice(cut + 1));
      if (seq <= this.lastSeq) return false;
      this.lastSeq = seq;
    }
    if (this.stopRequested) {
      this.stop(); // Stop was pressed before the stream had an id to cancel
      return false;
    }
    return true;
  }

  onToken(data) {
    const now = performance.now();
    if (this.firstAt === null) {
      this.firstAt = now;
      $(".ttft", this.el).textContent = `${Math.round(now - this.startedAt)} ms`;
      this.setState("running", "streaming");
    }
    this.lastAt = now;
    data.t = (now - this.startedAt) / 1000; // seconds from the column's start (the export's pace)
    const i = this.tokens.push(data) - 1;
    const span = h("span", { class: "tok" }, data.text);
    span.dataset.i = i;
    span.dataset.id = data.token_id;
    shade(span, data);
    this.output.append(span);
    markDivergence();
    const n = this.tokens.length - (this.fork ? this.fork.tokens.length : 0); // the shared prefix is not this stream's
    $(".count", this.el).textContent = String(n);
    if (n > 1) {
      $(".rate", this.el).textContent = ((n - 1) / ((this.lastAt - this.firstAt) / 1000)).toFixed(1);
    }
  }

  onDone(stats) {
    this.close(); // or the browser would reconnect when the server ends the response
    const server = [
      stats.ttft_ms != null && `server TTFT ${stats.ttft_ms} ms`,
      stats.tokens_per_s != null && `${stats.tokens_per_s} tok/s`,
      stats.queue_ms != null && `queued ${stats.queue_ms} ms`,
    ].filter(Boolean).join(", ");
    $(".stats", this.el).title = server;
    this.setState("done", `done \u00b7 ${stats.finish_reason || "?"}`);
  }

  onServerError(e) {
    this.close();
    let message = e.data;
    try {
      message = JSON.parse(e.data).error.message;
    } catch {
      /* not JSON: show it as it came */
    }
    this.fail(message);
  }

  onDrop(es) {
    if (es !== this.es) return;
    if (es.readyState === EventSource.CONNECTING) {
      // The browser retries by itself and sends Last-Event-ID; the server resumes after it.
      this.setState("reconnecting", "connection lost, reconnecting\u2026");
      return;
    }
    this.close();
    this.explainFailure();
  }

  /** EventSource hides the body of a failed response: fetch it once to show why. */
  async explainFailure() {
    let url = this.url;
    if (this.streamId) url += `&last_event_id=${encodeURIComponent(`${this.streamId}.${this.lastSeq}`)}`;
    const abort = new AbortController();
    let message = "the connection closed";
    let param = null;
    try {
      const res = await fetch(url, { signal: abort.signal, headers: authHeaders });
      if (!res.ok) {
        const body = await res.json().catch(() => null);
        message = body?.error?.message || `HTTP ${res.status}`;
        param = body?.error?.param ?? null;
      }
    } catch {
      message = "the server cannot be reached";
    } finally {
      abort.abort();
    }
    if (param !== null && param === this.alternativesField) {
      // This strategy cannot report alternatives (beam search, say): run it without them.
      this.start(this.run, this.common, false);
      return;
    }
    this.fail(message);
  }

  fail(message) {
    const box = $(".error", this.el);
    box.textContent = message;
    box.hidden = false;
    this.setState("error", "error");
  }

  /** Stop button: close the EventSource and tell the server to cancel now
   * (a bare close would keep the stream resumable for the grace period). */
  stop() {
    if (!this.es) return;
    if (!this.streamId) {
      this.stopRequested = true;
      this.setState("running", "stopping\u2026");
      return;
    }
    this.close();
    this.cancelOnServer();
    this.setState("stopped", "stopped");
  }

  cancelOnServer() {
    fetch(`/api/stream/${encodeURIComponent(this.streamId)}/cancel`, { method: "POST", headers: authHeaders })
      .catch(() => {});
  }

  close() {
    if (this.es) this.es.close();
    this.es = null;
  }
}

// -- page-level actions -------------------------------------------------------
function pickStrategy() {
  const used = new Set(columns.map((c) => c.strategy.name));
  const names = catalogue.strategies.map((s) => s.name);
  return [...PREFERRED, ...names].find((n) => names.includes(n) && !used.has(n)) || names[0];
}

function addColumn() {
  if (columns.length >= MAX_COLUMNS) return;
  const column = new Column(pickStrategy());
  columns.push(column);
  $("#columns").append(column.el);
  layout();
}

function removeColumn(column) {
  if (columns.length <= 1) return;
  column.stop();
  columns.splice(columns.indexOf(column), 1);
  column.el.remove();
  layout();
}

function layout() {
  $("#columns").style.setProperty("--n", columns.length);
  $("#add-column").disabled = columns.length >= MAX_COLUMNS;
  for (const c of columns) $(".remove", c.el).hidden = columns.length <= 1;
  updateButtons();
}

/** The run as a `tokenflow replay` recording (JSON Lines): a header with the prompt and
 * each column's settings, then each column's own tokens with their time and trace. */
function exportRun() {
  const label = (i) => `c${i}`;
  const header = {
    type: "header", version: 1, command: "page", started_at: new Date().toISOString(),
    prompt: lastRun.prompt, chat: lastRun.chat,
    streams: Object.fromEntries(columns.map((c, i) => [label(i), `column ${i + 1}: ${$(".chain", c.el).textContent}`])),
    columns: Object.fromEntries(columns.map((c, i) => [label(i), {
      settings: Object.fromEntries([...commonSettings(), ...c.settings()]),
      prefix_ids: c.fork ? c.fork.tokens.map((t) => t.token_id) : [],
    }])),
  };
  const lines = [header];
  columns.forEach((c, i) => {
    const own = c.fork ? c.tokens.slice(c.fork.tokens.length) : c.tokens;
    for (const t of own) {
      lines.push({ type: "token", t: t.t ?? 0, stream: label(i), token_id: t.token_id, text: t.text, logprob: t.logprob,
        index: t.index, top_logprobs: t.top_logprobs ?? [], trace: t.trace ?? null });
    }
  });
  lines.sort((a, b) => (a.type === "header" ? -1 : b.type === "header" ? 1 : a.t - b.t));
  const blob = new Blob([lines.map((l) => JSON.stringify(l)).join("\n") + "\n"], { type: "application/x-ndjson" });
  const a = h("a", { href: URL.createObjectURL(blob), download: "tokenflow-run.jsonl" });
  document.body.append(a);
  a.click();
  a.remove();
}

function updateButtons() {
  $("#export").disabled = lastRun === null || !columns.some((c) => c.tokens.length);
  const anyRunning = columns.some((c) => c.running);
  $("#stop").disabled = !anyRunning;
  $("#regenerate").disabled = lastRun === null;
}

function commonSettings() {
  const input = $("#common input[name=max_new_tokens]");
  return input && input.value ? [["max_new_tokens", input.value]] : [];
}

function run(again = false) {
  if (!catalogue) return;
  if (!again) {
    const prompt = $("#prompt").value;
    if (prompt === "") return $("#prompt").focus();
    lastRun = { prompt, chat: document.querySelector("input[name=format]:checked").value === "chat" };
  }
  const common = commonSettings();
  for (const c of columns) c.start(lastRun, common);
}

function stopAll() {
  for (const c of columns) c.stop();
}

// -- research: colour by, the trace, where columns part ----------------------------
/** A token's colour value --p in [0, 1] under the chosen "colour by". */
function shade(span, data) {
  const mode = $("#colour-by").value;
  const t = data.trace;
  let p = data.logprob != null ? Math.exp(data.logprob) : null;
  if (mode === "processed" && t && t.processed_logprob != null) p = Math.exp(t.processed_logprob);
  if (mode === "certainty") p = t && t.entropy != null ? Math.exp(-t.entropy) : null;
  if (p == null) span.style.removeProperty("--p");
  else span.style.setProperty("--p", p.toFixed(4));
}

function recolour() {
  for (const c of columns) c.output.querySelectorAll(".tok").forEach((s) => shade(s, c.tokens[Number(s.dataset.i)]));
}

/** Mark, in each column, the first token where it differs from the first column
 * (under one seed the columns share their noise: that is where the strategies part). */
function markDivergence() {
  for (const c of columns) c.output.querySelectorAll(".tok.diverge").forEach((s) => s.classList.remove("diverge"));
  const base = columns[0];
  if (!base) return;
  for (const c of columns.slice(1)) {
    const n = Math.min(base.tokens.length, c.tokens.length);
    let at = -1;
    for (let i = 0; i < n; i++) {
      if (base.tokens[i].token_id !== c.tokens[i].token_id) { at = i; break; }
    }
    if (at < 0) continue;
    for (const col of [base, c]) {
      const span = col.output.querySelector(`.tok[data-i="${at}"]`);
      if (span) {
        span.classList.add("diverge");
        span.dataset.diverge = String(at);
      }
    }
  }
}

function traceView(t) {
  const num = (v, d = 3) => (v == null ? "\u2013" : v.toFixed(d));
  const head = h("div", {}, `entropy ${num(t.entropy, 2)} \u00b7 rank ${t.rank} \u00b7 margin ${num(t.margin)}`
    + ` \u00b7 processed logprob ${num(t.processed_logprob)}`);
  const rows = t.links.map((l) => h("tr", { class: "link" }, h("td", {}, l.name), h("td", { class: "num" }, `kept ${l.kept}`),
    h("td", { class: "num" }, `removed ${percent(l.removed_mass)}`),
    h("td", { class: "num" }, l.logit_shift == null ? "chosen removed" : l.logit_shift ? `shift ${num(l.logit_shift, 2)}` : "")));
  return h("div", { class: "trace" }, head, rows.length ? h("table", {}, ...rows) : h("div", { class: "muted" }, "no link ran"));
}

/** A new column that continues ``src`` from its first ``i`` tokens with ``alt`` as token
 * ``i`` (``prefix_ids`` on /api/stream), with the same strategy and settings. */
function forkFrom(src, i, alt) {
  if (columns.length >= MAX_COLUMNS || !lastRun) return;
  const col = new Column(src.select.value);
  for (const input of src.el.querySelectorAll(".params input, .params-more input")) {
    const mine = col.el.querySelector(`input[name="${input.name}"]`);
    if (mine && input.type === "checkbox") mine.checked = input.checked;
    else if (mine) mine.value = input.value;
  }
  const fromTokens = src.tokens.slice(0, i).map((t) => ({ ...t }));
  col.fork = { tokens: [...fromTokens, { token_id: alt.id, text: alt.text ?? "", logprob: alt.logprob, index: i }] };
  col.el.dataset.fork = String(i);
  $(".chain", col.el).textContent = `fork of column ${columns.indexOf(src) + 1} at token ${i} \u00b7 ${$(".chain", col.el).textContent}`;
  columns.push(col);
  $("#columns").append(col.el);
  layout();
  $("#tooltip").hidden = true;
  col.start(lastRun, commonSettings());
}

let hideTimer = null;
function hideTooltipSoon() {
  clearTimeout(hideTimer);
  hideTimer = setTimeout(() => ($("#tooltip").hidden = true), 300); // time to reach the tooltip and click
}

// -- hover: a token's logprob and its alternatives ---------------------------------
function alternatives(top) {
  if (!top) return [];
  const list = Array.isArray(top) ? top : Object.entries(top).map(([text, logprob]) => ({ text, logprob }));
  return list.map((a) => (Array.isArray(a)
    ? { id: a[0], text: null, logprob: a[1] }
    : { id: a.token_id ?? a.id ?? null, text: a.text ?? a.token ?? null, logprob: a.logprob }));
}

function showTooltip(span) {
  clearTimeout(hideTimer);
  const column = columns.find((c) => c.output.contains(span));
  const data = column && column.tokens[Number(span.dataset.i)];
  if (!data) return;
  const tip = $("#tooltip");
  const head = h("div", { class: "head" },
    data.text ? h("code", {}, visible(data.text)) : h("i", {}, "(text held back)"),
    ` id ${data.token_id}`);
  if (data.logprob != null) {
    head.append(` \u00b7 logprob ${data.logprob.toFixed(3)} \u00b7 p ${percent(Math.exp(data.logprob))}`);
  }
  const alts = alternatives(data.top_logprobs).slice(0, TOP_N);
  // Bars are scaled to the most likely alternative, so a flat distribution still shows its shape.
  const pMax = Math.max(...alts.map((a) => Math.exp(a.logprob)), 1e-9);
  const body = alts.length
    ? h("table", {}, ...alts.map((a) => {
      const p = Math.exp(a.logprob);
      const row = h("tr", { class: "alt" },
        h("td", {}, h("code", {}, a.text != null ? visible(a.text) : `#${a.id}`)),
        h("td", { class: "num" }, percent(p)),
        h("td", { class: "num" }, a.logprob.toFixed(2)),
        h("td", { class: "bar-cell" }, h("i", { style: `width:${Math.max(2, (p / pMax) * 100)}%` })));
      if (a.id === data.token_id) row.classList.add("chosen");
      else if (a.id != null && columns.length < MAX_COLUMNS) {
        row.classList.add("forkable");
        row.title = "continue from here with this token, in a new column";
        row.addEventListener("click", () => forkFrom(column, Number(span.dataset.i), a));
      }
      return row;
    }))
    : h("div", { class: "muted" }, "no alternatives in this stream");
  tip.replaceChildren(head, body);
  if (data.trace) tip.append(traceView(data.trace));
  tip.hidden = false;
  const rect = span.getBoundingClientRect();
  const below = rect.bottom + 6 + tip.offsetHeight < innerHeight;
  tip.style.left = `${Math.min(rect.left, innerWidth - tip.offsetWidth - 8)}px`;
  tip.style.top = `${below ? rect.bottom + 6 : rect.top - tip.offsetHeight - 6}px`;
}

// -- start-up -------------------------------------------------------------------
async function watchHealth() {
  const el = $("#health");
  try {
    const res = await fetch("/health");
    const body = await res.json();
    if (body.status === "ready") {
      el.textContent = `${body.model} \u00b7 ${body.device} \u00b7 ${body.dtype} \u00b7 context ${body.context_length}`;
      return;
    }
    el.textContent = body.status === "loading" ? "model loading\u2026" : `model failed: ${body.error}`;
    if (body.status === "error") return;
  } catch {
    el.textContent = "server unreachable, retrying\u2026";
  }
  setTimeout(watchHealth, 1000);
}

async function main() {
  watchHealth();
  try {
    catalogue = await loadCatalogue();
  } catch (err) {
    $("#health").textContent = String(err);
    return;
  }
  const maxSpec = catalogue.params.max_new_tokens;
  if (maxSpec) {
    const c = paramControl("max_new_tokens", maxSpec, maxSpec.default ?? 128);
    c.label.firstChild.textContent = "max tokens ";
    $("#common").append(c.label);
  }
  addColumn();
  $("#run").addEventListener("click", () => run());
  $("#regenerate").addEventListener("click", () => run(true));
  $("#stop").addEventListener("click", stopAll);
  $("#add-column").addEventListener("click", addColumn);
  $("#export").addEventListener("click", exportRun);
  $("#colour").addEventListener("change", (e) => $("#columns").classList.toggle("colour", e.target.checked));
  $("#colour-by").addEventListener("change", recolour);
  $("#prompt").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) run();
  });
  const columnsEl = $("#columns");
  columnsEl.addEventListener("mouseover", (e) => e.target.classList.contains("tok") && showTooltip(e.target));
  columnsEl.addEventListener("mouseout", (e) => e.target.classList.contains("tok") && hideTooltipSoon());
  $("#tooltip").addEventListener("mouseenter", () => clearTimeout(hideTimer));
  $("#tooltip").addEventListener("mouseleave", hideTooltipSoon);
  // Leaving the page stops its generations rather than leaving them to the grace period.
  addEventListener("pagehide", () => {
    for (const c of columns) {
      if (c.running && c.streamId) navigator.sendBeacon(`/api/stream/${encodeURIComponent(c.streamId)}/cancel`);
    }
  });
  document.body.dataset.ready = "true";
}

main();
