"use strict";
// The web shell page's script (templates/shell.html), a static file so that the
// page's Content-Security-Policy allows no inline script. It talks to the same HTTP
// API as every other client: POST /jobs to submit, GET /jobs/<id>/events
// (server-sent events, read with fetch so that a token can be sent) for the live
// output, POST /jobs/<id>/cancel, GET /jobs, GET /tools and GET /tools/<name>.
// Every request goes through send(): the one place that sets headers.
const $ = (id) => document.getElementById(id);
const TERMINAL = ["succeeded", "failed", "timed_out", "cancelled", "rejected"];
let current = null;  // {id, job, controller}

const tokenInput = $("token");
tokenInput.value = localStorage.getItem("ocho.token") || "";
tokenInput.addEventListener("change", () => {
  localStorage.setItem("ocho.token", tokenInput.value.trim());
  showError("");
  refreshTools(); refreshJobs();
});

// The one fetch of the page.
function send(method, path, options) {
  const opts = options || {};
  // A header no cross-site form can send: a gateway without tokens takes forms with it.
  const headers = Object.assign({"X-Ocho-Client": "web"}, opts.headers || {});
  const token = tokenInput.value.trim();
  if (token) headers["Authorization"] = "Bearer " + token;
  return fetch(path, {method, headers, body: opts.body, signal: opts.signal});
}

async function api(method, path, body) {
  const response = await send(method, path, {body});
  let data = null;
  try { data = await response.json(); } catch (e) { data = null; }
  if (!response.ok) {
    const message = (data && data.error) || (response.status + " " + response.statusText);
    const error = new Error(response.status === 401 ? message + " (enter a token above)" : message);
    error.status = response.status;
    throw error;
  }
  return data;
}

function showError(message) { $("error").textContent = message || ""; }
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// A word as a shell would need it typed (Python's shlex.quote): `grep 'zoo*'`.
function quote(word) {
  if (word === "") return "''";
  if (/^[A-Za-z0-9@%+=:,./_-]+$/.test(word)) return word;
  return "'" + word.replace(/'/g, "'\"'\"'") + "'";
}

function wordsOf(job) { return [job.tool || "?"].concat(job.args || []).map(quote); }
function commandOf(job) { return wordsOf(job).join(" "); }

// Control characters and bidi overrides of a tool's output, shown rather than obeyed.
const CONTROL = /[\u0000-\u0008\u000b-\u001f\u007f-\u009f\u202a-\u202e\u2066-\u2069]/g;
function visible(c) {
  const code = c.charCodeAt(0);
  return code < 0x100 ? "\\x" + code.toString(16).padStart(2, "0")
                      : "\\u" + code.toString(16).padStart(4, "0");
}

function showJob(job) {
  const state = $("state");
  state.textContent = job.state;
  state.className = "state " + job.state;
  const parts = [job.id.slice(0, 8) + "…  " + commandOf(job)];
  if (job.exit_code !== null && job.exit_code !== undefined) parts.push("exit " + job.exit_code);
  if (job.ms !== null && job.ms !== undefined) parts.push(job.ms + " ms");
  if (job.attempt > 1) parts.push("attempt " + job.attempt);
  if (job.truncated) parts.push("output truncated");
  if (job.reason) parts.push(job.reason);
  $("meta").textContent = parts.join(" · ");
  $("cancel").disabled = TERMINAL.includes(job.state);
  for (const row of document.querySelectorAll("tr.job")) {
    row.classList.toggle("current", row.dataset.id === job.id);
  }
}

// No job on show: after a refused line, or while a tool's help is shown.
function clearJob(label) {
  if (current) current.controller.abort();
  current = null;
  history.replaceState(null, "", location.pathname);
  const state = $("state");
  state.textContent = label;
  state.className = "state";
  $("meta").textContent = "";
  clearOutput();
  $("cancel").disabled = true;
  for (const row of document.querySelectorAll("tr.job.current")) row.classList.remove("current");
}

// A "\r" that ends a piece of output may be the first half of a "\r\n" split across two
// events: it waits, per stream, for that stream's next piece or the end of the output.
let heldCR = {};

function append(text, stream) {
  text = (heldCR[stream] || "") + text;
  heldCR[stream] = "";
  if (text.endsWith("\r")) { heldCR[stream] = "\r"; text = text.slice(0, -1); }
  show(text, stream);
}

function flushHeld() {
  const held = heldCR;
  heldCR = {};
  for (const stream of Object.keys(held)) if (held[stream]) show(held[stream], stream);
}

function clearOutput() {
  $("output").textContent = "";
  heldCR = {};
}

function show(text, stream) {
  const out = $("output");
  const atBottom = out.scrollHeight - out.scrollTop - out.clientHeight < 40;
  const pieces = text.replace(/\r\n/g, "\n").split(CONTROL);
  const controls = text.replace(/\r\n/g, "\n").match(CONTROL) || [];
  pieces.forEach((piece, i) => {
    if (piece) addSpan(out, piece, stream);
    if (i < controls.length) addSpan(out, visible(controls[i]), "escape");
  });
  if (atBottom) out.scrollTop = out.scrollHeight;
}

function addSpan(out, text, kind) {
  if (kind === "stdout") { out.appendChild(document.createTextNode(text)); return; }
  const span = document.createElement("span");
  span.className = kind;
  span.textContent = text;
  out.appendChild(span);
}

// Follow a job: its output over server-sent events, resuming from the last event id
// if the stream breaks, and its state from GET /jobs/<id>.
async function follow(id) {
  if (current) current.controller.abort();
  const controller = new AbortController();
  const mine = {id, job: null, controller};
  current = mine;
  history.replaceState(null, "", "?job=" + encodeURIComponent(id));  // a link to this job
  clearOutput();
  showError("");
  pollState(mine);
  let lastId = null;
  while (!controller.signal.aborted) {
    try {
      const extra = lastId === null ? {} : {"Last-Event-ID": lastId};
      const response = await send("GET", "/jobs/" + encodeURIComponent(id) + "/events",
                                  {headers: extra, signal: controller.signal});
      if (response.status === 503) { await tail(mine, lastId || 0); return; }
      if (!response.ok) {
        let data = null; try { data = await response.json(); } catch (e) { /* not JSON */ }
        showError((data && data.error) || ("events: " + response.status));
        return;
      }
      if (await readEvents(mine, response, (eventId) => { lastId = eventId; })) return;
    } catch (e) {
      if (controller.signal.aborted) return;
    }
    await sleep(2000);  // the stream broke: resume where it was
  }
}

// Read one event stream; true once the job finished.
async function readEvents(mine, response, seen) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const {value, done} = await reader.read();
    if (done) return false;
    buffer += decoder.decode(value, {stream: true}).replace(/\r\n?/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = parseEvent(buffer.slice(0, end));
      buffer = buffer.slice(end + 2);
      if (event.id !== null) seen(event.id);
      if (event.type === "output") {
        const d = JSON.parse(event.data);
        append(d.data, d.stream);
        markRunning(mine);
      }
      else if (event.type === "attempt") { clearOutput(); }
      else if (event.type === "finished") { finish(mine, JSON.parse(event.data)); return true; }
    }
  }
}

// Output means the tool runs, whatever the last poll said.
function markRunning(mine) {
  const state = $("state");
  if (current !== mine || state.textContent !== "queued") return;
  state.textContent = "running";
  state.className = "state running";
}

function parseEvent(block) {
  const event = {id: null, type: "message", data: ""};
  const data = [];
  for (const line of block.split("\n")) {
    if (!line || line.startsWith(":")) continue;
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "id") event.id = value;
    else if (field === "event") event.type = value;
    else if (field === "data") data.push(value);
  }
  event.data = data.join("\n");
  return event;
}

// When the gateway has no stream to spare: tail GET /jobs/<id>/output instead.
async function tail(mine, offset) {
  while (!mine.controller.signal.aborted) {
    try {
      const out = await api("GET", "/jobs/" + encodeURIComponent(mine.id) + "/output?offset=" + offset);
      if (out.data) append(out.data, "stdout");
      offset = out.next_offset;
      if (out.finished) { finish(mine, await api("GET", "/jobs/" + encodeURIComponent(mine.id))); return; }
    } catch (e) { showError(e.message); }
    await sleep(1000);
  }
}

async function pollState(mine) {
  while (current === mine && !(mine.job && TERMINAL.includes(mine.job.state))) {
    try {
      const job = await api("GET", "/jobs/" + encodeURIComponent(mine.id));
      if (current !== mine || (mine.job && TERMINAL.includes(mine.job.state))) return;
      mine.job = job; showJob(job);
    } catch (e) { if (e.status === 404 || e.status === 401) { showError(e.message); return; } }
    await sleep(1500);
  }
}

function finish(mine, job) {
  mine.job = job;
  if (current === mine) {
    flushHeld();
    showJob(job);
    if (!$("output").textContent) {
      // Say so rather than leave an empty box (a job cancelled before it wrote anything).
      addSpan($("output"), "(no output: the job ended " + job.state +
              (job.reason ? ", " + job.reason : "") + ")\n", "ocho");
    }
  }
  refreshJobs();
}

$("run").addEventListener("submit", async (event) => {
  event.preventDefault();
  const line = $("line").value.trim();
  if (!line) return;
  const form = new FormData();
  form.append("line", line);
  for (const file of $("files").files) form.append(file.name, file, file.name);
  $("submit").disabled = true;
  showError("");
  try {
    const job = await api("POST", "/jobs", form);
    $("files").value = "";  // the files went with this job; the next one sends its own
    showJob(job);
    refreshJobs();
    follow(job.id);
  } catch (e) {
    clearJob("refused");  // nothing ran: the previous job's state and output go
    showError(e.message);
  } finally {
    $("submit").disabled = false;
  }
});

$("cancel").addEventListener("click", async () => {
  if (!current) return;
  try { showJob(await api("POST", "/jobs/" + encodeURIComponent(current.id) + "/cancel")); }
  catch (e) { showError(e.message); }
});

// Local date and time, the date first: `2026-12-01 14:03:22`.
function when(iso) {
  const date = new Date(iso);
  if (isNaN(date)) return iso || "";
  const two = (n) => String(n).padStart(2, "0");
  return date.getFullYear() + "-" + two(date.getMonth() + 1) + "-" + two(date.getDate()) +
         " " + two(date.getHours()) + ":" + two(date.getMinutes()) + ":" + two(date.getSeconds());
}

function commandCell(job) {
  const cell = document.createElement("td");
  cell.className = "cmd";
  cell.title = commandOf(job);
  wordsOf(job).forEach((word, i) => {
    if (i) cell.appendChild(document.createTextNode(" "));
    const span = document.createElement("span");
    span.className = "word";
    span.textContent = word;
    cell.appendChild(span);
  });
  const created = document.createElement("div");
  created.className = "when";
  created.textContent = when(job.created_at);
  created.title = job.created_at;
  cell.appendChild(created);
  return cell;
}

async function refreshJobs() {
  try {
    const page = await api("GET", "/jobs?limit=25");
    const body = $("jobs");
    body.textContent = "";
    for (const job of page.jobs) {
      const row = document.createElement("tr");
      row.className = "job" + (current && current.id === job.id ? " current" : "");
      row.dataset.id = job.id;
      const state = document.createElement("td");
      const badge = document.createElement("span"); badge.className = "state " + job.state; badge.textContent = job.state;
      state.appendChild(badge);
      state.className = "badge";
      row.append(commandCell(job), state);
      row.addEventListener("click", () => { showJob(job); follow(job.id); });
      body.appendChild(row);
    }
  } catch (e) { showError(e.message); }
}

// A tool's link: its name in the line, its --help in the output.
async function showHelp(name) {
  $("line").value = name + " ";
  $("line").focus();
  try {
    const help = await api("GET", "/tools/" + encodeURIComponent(name));
    clearJob("help: " + name);
    show(help.help, "stdout");
  } catch (e) { showError(e.message); }
}

async function refreshTools() {
  try {
    const catalog = await api("GET", "/tools");
    const box = $("tools");
    box.textContent = "tools: ";
    for (const tool of catalog.tools) {
      const link = document.createElement("a");
      link.textContent = tool.name; link.title = tool.summary; link.href = "#";
      link.addEventListener("click", (event) => { event.preventDefault(); showHelp(tool.name); });
      box.appendChild(link);
    }
  } catch (e) { showError(e.message); }
}

refreshTools();
refreshJobs();
setInterval(refreshJobs, 5000);
const linked = new URLSearchParams(location.search).get("job");
if (linked) follow(linked);
