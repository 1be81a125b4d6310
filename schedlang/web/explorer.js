// The schedlang explorer's page script: it sends the editor's text and the controls' values to
// the local server (schedlang/serve.py) and shows what comes back. No framework, no build step.
"use strict";
const $ = (id) => document.getElementById(id);
const state = { name: "explorer.sched", builtins: {}, ops: [], seq: 0, timer: 0 };

async function post(path, data) {
  const r = await fetch(path, { method: "POST", headers: { "Content-Type": "application/json" },
                                body: JSON.stringify(data) });
  return r;
}

function request(extra) {
  const params = {};
  for (const input of document.querySelectorAll("#controls input")) params[input.dataset.param] = input.value;
  return { text: $("editor").value, name: state.name, params, ...extra };
}

function esc(s) {
  return String(s).replace(/[&<>"]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" })[c]);
}
function fmt(x) { return Number.isInteger(x) ? String(x) : Number(x.toPrecision(6)).toString(); }
function pct(x) { return (x * 100).toFixed(2) + "%"; }

function gutter(badLine) {
  const n = $("editor").value.split("\n").length;
  const lines = [];
  for (let i = 1; i <= n; i++) lines.push(i === badLine ? `<span class="bad">${i}</span>` : String(i));
  $("gutter").innerHTML = lines.join("\n");
  $("gutter").scrollTop = $("editor").scrollTop;
}

function showError(err) {
  $("error").hidden = false;
  $("error").textContent = err.rendered;
  $("picture").classList.add("stale");
  gutter(err.line);
  for (const input of document.querySelectorAll("#controls input")) {
    input.classList.toggle("bad", input.dataset.param === err.control);
  }
}

function rankTable(ranks) {
  const head = "<tr><th>rank</th><th>busy</th><th>span</th><th>idle</th><th>peak memory</th></tr>";
  return head + ranks.map((r) => `<tr><td>${r.rank}</td><td>${fmt(r.busy)}</td><td>${fmt(r.span)}</td>` +
                                 `<td>${fmt(r.idle)}</td><td>${fmt(r.peak_memory)}</td></tr>`).join("");
}

function showView(v) {
  $("error").hidden = true;
  gutter(0);
  for (const input of document.querySelectorAll("#controls input")) {
    const p = input.dataset.param;
    input.classList.remove("bad");
    input.disabled = !(p in v.params);
    const value = v.params[p];
    input.placeholder = !(p in v.params) ? "not declared" : Array.isArray(value) ? value.join(", ") : String(value);
  }
  $("ignored").hidden = v.ignored.length === 0;
  $("ignored").textContent = `not declared by this program, left out: ${v.ignored.join(", ")}`;
  $("warnings").hidden = v.warnings.length === 0;
  $("warnings").textContent = v.warnings.join("\n");
  $("stats").innerHTML = `bubble rate <b id="bubble">${pct(v.bubble_rate)}</b> &nbsp; makespan ${fmt(v.makespan)}` +
    ` &nbsp; cost ${fmt(v.cost)} &nbsp; ${v.num_ranks} ranks, ${v.num_stages} stages, ` +
    `${v.num_microbatches} microbatches, ${v.num_ops} ops (orders: ${v.origin})`;
  $("picture").innerHTML = v.svg;
  $("picture").classList.remove("stale");
  $("ranks").innerHTML = rankTable(v.ranks);
  state.ops = v.ops;
}

async function refresh() {
  const seq = ++state.seq;
  const r = await post("/api/view", request({}));
  const v = await r.json();
  if (seq !== state.seq) return; // a newer edit is on its way
  if (v.ok) showView(v); else showError(v.error);
  document.body.dataset.updates = String(Number(document.body.dataset.updates || 0) + 1);
}

function soon() { clearTimeout(state.timer); state.timer = setTimeout(refresh, 250); }

function hover(ev) {
  const box = $("hover");
  const k = ev.target.dataset ? ev.target.dataset.op : undefined;
  if (k === undefined || !state.ops[k]) { box.hidden = true; return; }
  const o = state.ops[k];
  box.textContent = `${o.name}  rank ${o.rank}\nstart ${fmt(o.start)}  end ${fmt(o.end)}\n` +
                    `memory ${o.mem >= 0 ? "+" : ""}${fmt(o.mem)} → ${fmt(o.mem_after)}`;
  box.hidden = false;
  box.style.left = ev.clientX + 12 + "px";
  box.style.top = ev.clientY + 12 + "px";
}

async function download(fmt) {
  const r = await post("/api/download/" + fmt, request({}));
  if (!r.ok) { showError({ rendered: await r.text() }); return; }
  const name = (r.headers.get("Content-Disposition") || "").match(/filename="(.*)"/);
  const a = document.createElement("a");
  a.href = URL.createObjectURL(await r.blob());
  a.download = name ? name[1] : "schedule." + fmt;
  a.click();
  URL.revokeObjectURL(a.href);
}

async function compare() {
  const others = [...document.querySelectorAll("#compare-choices input:checked")].map((c) => c.value);
  $("compare-pictures").classList.add("stale");
  const res = await (await post("/api/compare", request({ others }))).json();
  const head = "<tr><th>program</th><th>bubble rate</th><th>makespan</th><th>cost</th><th>peak memory</th></tr>";
  $("compare-table").innerHTML = head + res.rows.map((r) => r.ok
    ? `<tr><td>${esc(r.program)}</td><td>${pct(r.bubble_rate)}</td><td>${fmt(r.makespan)}</td><td>${fmt(r.cost)}</td>` +
      `<td>${r.peak_memory.map(fmt).join(" ")}</td></tr>`
    : `<tr><td>${esc(r.program)}</td><td colspan="4" class="note">${esc(r.error.message)}</td></tr>`).join("");
  $("compare-pictures").innerHTML = res.rows.filter((r) => r.ok).map((r) => r.svg).join("");
  $("compare-pictures").classList.remove("stale");
}

async function optimize() {
  const budget = Number($("budget").value);
  const t0 = Date.now();
  const status = $("optimize-status");
  const tick = setInterval(() => {
    status.textContent = `optimizing: ${((Date.now() - t0) / 1000).toFixed(0)} s of a ${budget} s budget`;
  }, 250);
  $("optimize-run").disabled = true;
  try {
    const res = await (await post("/api/optimize", request({ time_limit: budget }))).json();
    if (!res.ok) { status.textContent = ""; showError(res.error); return; }
    const rep = res.report;
    status.textContent = `${rep.status}: ${rep.objective_name} ${fmt(rep.objective)}, bound ${fmt(rep.bound)}, ` +
                         `gap ${pct(rep.gap)} after ${rep.time.toFixed(1)} s of ${budget} s`;
    $("optimize-result").innerHTML = `<p>bubble rate <b>${pct(res.bubble_rate)}</b>, makespan ${fmt(res.makespan)}` +
      ` (warm start ${rep.warm_start}: ${fmt(rep.warm_objective)}) <button id="use-optimized" type="button">` +
      `put the optimized program in the editor</button></p>${res.svg}`;
    $("use-optimized").onclick = () => {
      $("editor").value = res.sched;
      $("builtin").value = "";
      for (const input of document.querySelectorAll("#controls input")) input.value = "";
      refresh();
    };
  } finally {
    clearInterval(tick);
    $("optimize-run").disabled = false;
  }
}

async function start() {
  const s = await (await fetch("/api/start")).json();
  state.name = s.name;
  state.builtins = s.builtins;
  $("editor").value = s.text;
  for (const name of Object.keys(s.builtins)) {
    $("builtin").add(new Option(name, name));
    $("compare-choices").insertAdjacentHTML("beforeend",
      `<label><input type="checkbox" value="${name}">${name}</label>`);
  }
  for (const [param, label] of s.controls) {
    $("controls").insertAdjacentHTML("beforeend",
      `<label>${label}<input data-param="${param}" id="control-${param}" autocomplete="off"></label>`);
  }
  for (const fmtName of s.downloads) {
    const b = document.createElement("button");
    b.type = "button";
    b.textContent = fmtName;
    b.onclick = () => download(fmtName);
    $("downloads").append(b);
  }
  $("budget").max = s.max_optimize_seconds;
  $("editor").addEventListener("input", () => { gutter(0); soon(); });
  $("editor").addEventListener("scroll", () => { $("gutter").scrollTop = $("editor").scrollTop; });
  $("controls").addEventListener("input", soon);
  $("builtin").addEventListener("change", () => {
    if ($("builtin").value) { $("editor").value = state.builtins[$("builtin").value]; refresh(); }
  });
  $("picture").addEventListener("mousemove", hover);
  $("picture").addEventListener("mouseleave", () => { $("hover").hidden = true; });
  $("compare-run").onclick = compare;
  $("optimize-run").onclick = optimize;
  await refresh();
}

start();
