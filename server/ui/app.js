// The Vitrine workbench page (server/workbench.py serves it). Catalog text only ever goes into the page through
// textContent and attributes set one by one: a product called "<script>…" shows as those characters.
"use strict";

const $ = (sel, root = document) => root.querySelector(sel);
const $$ = (sel, root = document) => Array.from(root.querySelectorAll(sel));
const K = 20;  // cards per page and column

const state = {
  csrf: $('meta[name="csrf-token"]').content,
  about: null,
  photo: "",          // the query photo, base64
  offset: 0,
  where: {},          // facet field -> selected values
  cols: {},           // "A"/"B" -> {config, request, response}
  seq: 0,             // the latest search; an older answer arriving late is dropped
};

function status(text) { $("#status").textContent = text || ""; }

async function api(path, body) {
  const init = body === undefined ? {} : {
    method: "POST", body: JSON.stringify(body),
    headers: {"content-type": "application/json", "x-csrf-token": state.csrf},
  };
  const resp = await fetch(path, {credentials: "same-origin", ...init});
  const out = await resp.json().catch(() => ({message: `HTTP ${resp.status}`}));
  if (!resp.ok) {
    const err = new Error(out.message || `HTTP ${resp.status}`);
    err.status = resp.status;
    throw err;
  }
  return out;
}

// ---- start: who am I, what can a column vary -----------------------------------------------------------------

async function start() {
  let about;
  try { about = await api("/ui/api/session"); } catch (e) { status(e.message); return; }
  state.about = about;
  state.csrf = about.csrf || state.csrf;
  $("#who").textContent = about.logged_in ? `${about.who} · ${about.tenant}${about.can_judge ? "" : " · look only"}` : "";
  $("#logout").hidden = !(about.needs_key && about.logged_in);
  if (!about.logged_in || (!about.needs_key && !sessionStorage.getItem("vitrine-named"))) {
    $("#login").hidden = false;
    $("#app").hidden = true;
    $("#key-label").hidden = !about.needs_key;
    $("#name-label").hidden = about.needs_key;
    $("#login-why").hidden = !about.needs_key;
    (about.needs_key ? $("#key") : $("#name")).focus();
    return;
  }
  $("#login").hidden = true;
  $("#app").hidden = false;
  $("#price-filter").hidden = !about.has_price;
  for (const col of $$(".column")) buildColumn(col);
  $("#q").focus();
}

function option(select, value, text) {
  const o = document.createElement("option");
  o.value = value;
  o.textContent = text;
  select.append(o);
}

function buildColumn(col) {
  if (col.firstElementChild) return;
  col.append($("#column-template").content.cloneNode(true));
  const a = state.about, name = col.dataset.col;
  $(".label", col).value = name;
  const target = $(".target", col);
  option(target, `tenant:${a.tenant}`, `tenant ${a.tenant}`);
  for (const t of a.tenants) if (t !== a.tenant) option(target, `tenant:${t}`, `tenant ${t}`);
  for (const b of a.compare) option(target, `bundle:${b}`, `bundle ${b}`);
  if (a.arms) { option(target, "arm:a", "experiment arm A"); option(target, "arm:b", "experiment arm B"); }
  const stages = $(".stages", col);
  option(stages, "", "default stages");
  for (const s of a.stages) option(stages, s, `stages: ${s}`);
  const fusion = $(".fusion", col);
  option(fusion, "", "default fusion");
  for (const f of a.fusion) option(fusion, f, f.replace("FUSION_", "").toLowerCase());
  const sources = $(".sources", col);
  for (const s of a.sources) {
    const label = document.createElement("label");
    const box = document.createElement("input");
    box.type = "checkbox"; box.className = "source"; box.value = s; box.checked = true;
    const weight = document.createElement("input");   // the fusion weight; empty = the server's
    weight.type = "number"; weight.className = "weight"; weight.min = "0"; weight.step = "any";
    weight.dataset.source = s;
    weight.placeholder = a.weights[s] !== undefined ? String(a.weights[s]) : "1";
    weight.title = `fusion weight of ${s} (empty: the server's)`;
    label.append(box, ` ${s} `, weight);
    sources.append(label);
  }
  for (const el of $$("select, input", $(".settings", col))) el.addEventListener("change", () => run());
}

// ---- searching -------------------------------------------------------------------------------------------------

function columnConfig(col) {
  const target = $(".target", col).value;
  const [kind, value] = target ? target.split(":") : ["", ""];
  const sources = $$(".source", col).filter(b => b.checked).map(b => b.value);
  const all = $$(".source", col).length;
  const weights = {};
  for (const w of $$(".weight", col)) if (w.value !== "" && !Number.isNaN(+w.value)) weights[w.dataset.source] = +w.value;
  return {
    label: $(".label", col).value || col.dataset.col,
    tenant: kind === "tenant" ? value : undefined,
    bundle: kind === "bundle" ? value : undefined,
    arm: kind === "arm" ? value : undefined,
    stages: $(".stages", col).value || undefined,
    fusion: $(".fusion", col).value || undefined,
    sources: sources.length < all ? sources : undefined,
    weights: Object.keys(weights).length ? weights : undefined,
  };
}

function searchRequest(config) {
  const text = $("#q").value.trim();
  // Every page asks for the ranking from the top (k = offset + K), so rank changes compare whole rankings and
  // nDCG@10 is the query's, whatever page is shown.
  const req = {text, k: state.offset + K, offset: 0,
               facets: state.about.facets.map(field => ({field, size: 8}))};
  if (state.photo) req.image = state.photo;
  const where = Object.entries(state.where).filter(([, v]) => v.length).map(([field, any_of]) => ({field, any_of}));
  const lo = parseFloat($("#price-min").value), hi = parseFloat($("#price-max").value);
  if (!Number.isNaN(lo) || !Number.isNaN(hi)) {
    const range = {field: "price"};
    if (!Number.isNaN(lo)) range.min = lo;
    if (!Number.isNaN(hi)) range.max = hi;
    where.push(range);
  }
  if (where.length) req.where = where;
  if (config.stages) req.stages = config.stages;
  if (config.fusion) req.fusion = config.fusion;
  if (config.sources) req.sources = config.sources;
  if (config.weights) req.weights = config.weights;
  return req;
}

function visibleColumns() { return $$(".column").filter(c => !c.hidden); }

async function run() {
  const text = $("#q").value.trim();
  if (!text && !state.photo && !Object.values(state.where).some(v => v.length)) { status("type a query or drop a photo"); return; }
  status("");
  const t0 = performance.now();
  const seq = ++state.seq;
  const cols = visibleColumns();
  let answers;
  try {
    answers = await Promise.all(cols.map(col => {
      const config = columnConfig(col);
      const column = {tenant: config.tenant, bundle: config.bundle, arm: config.arm};
      const request = searchRequest(config);
      return api("/ui/api/search", {column, request}).then(r => ({col, config, request, r}));
    }));
  } catch (e) { if (seq === state.seq) status(e.message); return; }
  if (seq !== state.seq) return;
  state.cols = {};
  for (const {col, config, request, r} of answers) state.cols[col.dataset.col] = {config, request, response: r};
  renderAll();
  const grid = $(".grid", cols[0]);
  grid.dataset.renderMs = (performance.now() - t0).toFixed(1);
  document.body.dataset.searches = String((+document.body.dataset.searches || 0) + 1);
}

// ---- rendering -------------------------------------------------------------------------------------------------

function renderAll() {
  const a = state.cols.A;
  if (a) renderFacets(a.response.facets || []);
  for (const col of visibleColumns()) renderColumn(col);
  const total = a ? a.response.total_candidates || 0 : 0;
  const shown = a ? Math.max(0, (a.response.hits || []).length - state.offset) : 0;
  $("#page").textContent = a ? `${state.offset + 1}–${state.offset + shown} of ${total}` : "";
  $("#prev").disabled = state.offset === 0;
  $("#next").disabled = !a || state.offset + K >= total;
}

function renderFacets(facets) {
  const box = $("#facets");
  box.replaceChildren();
  for (const f of facets) {
    if (!f.values || !f.values.length) continue;
    const h = document.createElement("h3");
    h.textContent = f.field;
    box.append(h);
    for (const v of f.values) {
      const label = document.createElement("label");
      const check = document.createElement("input");
      check.type = "checkbox";
      check.dataset.field = f.field;
      check.value = v.value;
      check.checked = !!v.selected;
      check.addEventListener("change", () => {
        const chosen = new Set(state.where[f.field] || []);
        check.checked ? chosen.add(v.value) : chosen.delete(v.value);
        state.where[f.field] = [...chosen];
        state.offset = 0;
        run();
      });
      label.append(check, ` ${v.value} (${v.count || 0})`);
      box.append(label);
    }
  }
}

function ndcgAt10(ids, judged) {
  // As ranking/metrics.py ndcg_at_k (and trec_eval): gain = grade, ideal from every judged item of the query.
  const dcg = gains => gains.reduce((s, g, i) => s + g / Math.log2(i + 2), 0);
  const gains = ids.slice(0, 10).map(id => Math.max(judged[id] || 0, 0));
  const ideal = Object.values(judged).filter(g => g > 0).sort((x, y) => y - x).slice(0, 10);
  const idcg = dcg(ideal);
  return idcg > 0 ? dcg(gains) / idcg : 0;
}

function showNdcg(col, ids, judged) {
  const el = $(".ndcg", col), graded = Object.keys(judged).length > 0, value = graded ? ndcgAt10(ids, judged) : 0;
  el.textContent = graded ? `nDCG@10 ${value.toFixed(4)}` : "not judged";
  el.dataset.value = graded ? value.toFixed(6) : "";
}

function renderColumn(col) {
  const name = col.dataset.col, entry = state.cols[name];
  const grid = $(".grid", col), gone = $(".gone", col);
  grid.replaceChildren();
  gone.replaceChildren();
  if (!entry) return;
  const r = entry.response, hits = r.hits || [];
  const ids = hits.map(h => h.id);     // the ranking from the top; this page is ids.slice(offset)
  const judged = r.judged || {};
  const base = name !== "A" && state.cols.A ? (state.cols.A.response.hits || []).map(h => h.id) : null;
  showNdcg(col, ids, judged);
  $(".meta", col).textContent = `${r.stages || ""} · ${(r.took_ms || 0).toFixed(1)} ms · ${r.bundle_version || ""}`;
  hits.slice(state.offset).forEach((hit, i) => grid.append(card(col, entry, hit, state.offset + i + 1, base)));
  if (base) {
    const missing = base.slice(state.offset).filter(id => !ids.includes(id));
    if (missing.length) gone.textContent = `gone from ${state.cols.A.config.label}: ${missing.join(", ")}`;
    gone.dataset.ids = missing.join(",");
  }
}

function card(col, entry, hit, rank, base) {
  const node = $("#card-template").content.firstElementChild.cloneNode(true);
  const fields = hit.fields_json ? JSON.parse(hit.fields_json) : {};
  const r = entry.response, config = entry.config;
  node.dataset.id = hit.id;
  $(".rank", node).textContent = String(rank);
  $(".title", node).textContent = fields.title || hit.id;
  $(".price", node).textContent = fields.price !== undefined && fields.price !== null ? `${Number(fields.price).toFixed(2)}` : "";
  $(".score", node).textContent = `score ${Number(hit.score || 0).toFixed(4)}`;
  const img = $(".photo", node);
  const q = new URLSearchParams({id: hit.id, tenant: r.tenant});
  if (config.bundle) q.set("bundle", config.bundle);
  img.addEventListener("error", () => { img.hidden = true; });
  img.src = `/ui/photo?${q}`;
  img.alt = fields.title || hit.id;
  const hl = (hit.highlights || [])[0];
  if (hl) snippet($(".snippet", node), hl);
  if (base) {
    const mark = $(".mark", node), before = base.indexOf(hit.id);
    const now = rank - 1;
    if (before < 0) { mark.textContent = "new"; mark.classList.add("new"); }
    else if (before > now) { mark.textContent = `▲${before - now}`; mark.classList.add("up"); }
    else if (before < now) { mark.textContent = `▼${now - before}`; mark.classList.add("down"); }
  }
  const mine = (r.mine || {})[hit.id];
  showGrade(node, mine);
  for (const b of $$(".grade", node)) {
    b.disabled = !state.about.can_judge;
    if (!state.about.can_judge) b.title = "grading needs a key with the judge scope";
    b.addEventListener("click", () => judge(col, hit.id, +b.dataset.grade));
  }
  $(".why", node).addEventListener("click", () => toggleExplain(node, hit, r, rank));
  return node;
}

function snippet(el, hl) {
  // The fragment as text, the matched words in <b> elements: never parsed as markup.
  const text = hl.fragment || "";
  let at = 0;
  (hl.starts || []).forEach((s, i) => {
    const e = hl.ends[i];
    el.append(text.slice(at, s));
    const b = document.createElement("b");
    b.textContent = text.slice(s, e);
    el.append(b);
    at = e;
  });
  el.append(text.slice(at));
}

function showGrade(node, grade) {
  node.classList.remove("g0", "g1", "g2");
  for (const b of $$(".grade", node)) b.classList.toggle("selected", grade !== undefined && +b.dataset.grade === grade);
  if (grade !== undefined) node.classList.add(`g${grade}`);
  node.dataset.grade = grade === undefined ? "" : String(grade);
}

function toggleExplain(node, hit, r, rank) {
  const pre = $(".explain", node);
  if (pre.hidden && !pre.textContent) {
    const lines = [hit.explanation || "(no explanation)"];
    const fused = (hit.sources || []).find(s => s.source === "fused");
    if (fused && r.stages && r.stages !== "first") {
      const moved = fused.rank - rank;
      lines.push(`second stage (${r.stages}): fused rank ${fused.rank} → rank ${rank}` +
                 (moved > 0 ? ` (up ${moved})` : moved < 0 ? ` (down ${-moved})` : " (unchanged)"));
    }
    for (const s of hit.sources || []) lines.push(`${s.source}: score ${Number(s.score || 0).toFixed(4)}, rank ${s.rank}`);
    for (const [k, v] of Object.entries(hit.contributions || {})) lines.push(`contribution ${k}: ${Number(v).toFixed(4)}`);
    for (const rule of hit.rules || []) lines.push(`rule: ${rule}`);
    if (hit.lexical_match === false) lines.push("no query word in its text (found by meaning)");
    lines.push(`stages ran: ${r.stages}; ${Object.entries(r.stage_ms || {}).map(([k, v]) => `${k} ${Number(v).toFixed(1)} ms`).join(", ")}`);
    pre.textContent = lines.join("\n");
  }
  pre.hidden = !pre.hidden;
}

// ---- judging ---------------------------------------------------------------------------------------------------

async function judge(col, item, grade) {
  const entry = state.cols[col.dataset.col];
  if (!entry) return;
  const r = entry.response;
  let out;
  try {
    // The query that showed the card (not what the box holds now), and the column's whole configuration.
    out = await api("/ui/api/judge", {tenant: r.tenant, text: entry.request.text, photo: r.photo, item, grade,
                                      config: {...entry.config, where: entry.request.where,
                                               bundle_version: r.bundle_version}});
  } catch (e) { status(e.message); return; }
  status("");
  // Every column showing this query on this tenant now has the new grades.
  for (const other of visibleColumns()) {
    const e = state.cols[other.dataset.col];
    if (!e || e.response.tenant !== r.tenant || e.response.qid !== out.qid) continue;
    e.response.mine = out.mine;
    e.response.judged = out.judged;
    for (const node of $$(".card", other)) showGrade(node, out.mine[node.dataset.id]);
    const ids = (e.response.hits || []).map(h => h.id);
    showNdcg(other, ids, out.judged);
  }
  document.body.dataset.judged = String((+document.body.dataset.judged || 0) + 1);
}

// ---- wiring ----------------------------------------------------------------------------------------------------

function setPhoto(file) {
  if (!file) return;
  if (!file.type.startsWith("image/")) { status(`${file.name} is not a photo`); return; }
  const reader = new FileReader();
  reader.onload = () => {
    const url = String(reader.result);
    state.photo = url.slice(url.indexOf(",") + 1);
    $("#photo-preview").src = url;
    $("#photo-preview").hidden = false;
    $("#drop-hint").hidden = true;
    $("#photo-clear").hidden = false;
    $("#q").placeholder = "the same but … (optional)";
    state.offset = 0;
    run();
  };
  reader.readAsDataURL(file);
}

function clearPhoto() {
  state.photo = "";
  $("#photo-preview").hidden = true;
  $("#photo-preview").removeAttribute("src");
  $("#drop-hint").hidden = false;
  $("#photo-clear").hidden = true;
  $("#q").placeholder = "search the catalog";
}

function wire() {
  $("#login-form").addEventListener("submit", async ev => {
    ev.preventDefault();
    try {
      const out = await api("/ui/api/login", state.about.needs_key ? {key: $("#key").value} : {name: $("#name").value});
      state.csrf = out.csrf;
      $("#key").value = "";
      sessionStorage.setItem("vitrine-named", "1");
      await start();
    } catch (e) { status(e.message); }
  });
  $("#logout").addEventListener("click", async () => {
    try { state.csrf = (await api("/ui/api/logout", {})).csrf; } catch (e) { status(e.message); }
    await start();
  });
  $("#search-form").addEventListener("submit", ev => { ev.preventDefault(); state.offset = 0; state.where = {}; run(); });
  const drop = $("#drop"), input = $("#photo-input");
  drop.addEventListener("click", () => input.click());
  drop.addEventListener("keydown", ev => { if (ev.key === "Enter" || ev.key === " ") input.click(); });
  input.addEventListener("change", () => setPhoto(input.files[0]));
  drop.addEventListener("dragover", ev => { ev.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", ev => {
    ev.preventDefault();
    drop.classList.remove("over");
    setPhoto(ev.dataTransfer.files[0]);
  });
  $("#photo-clear").addEventListener("click", () => { clearPhoto(); run(); });
  $("#compare").addEventListener("change", ev => {
    $('.column[data-col="B"]').hidden = !ev.target.checked;
    run();
  });
  for (const el of [$("#price-min"), $("#price-max")]) el.addEventListener("change", () => { state.offset = 0; run(); });
  $("#prev").addEventListener("click", () => { state.offset = Math.max(0, state.offset - K); run(); });
  $("#next").addEventListener("click", () => { state.offset += K; run(); });
  document.addEventListener("keydown", ev => {
    const node = document.activeElement;
    if (!node || !node.classList || !node.classList.contains("card")) return;
    const col = node.closest(".column");
    if (["0", "1", "2"].includes(ev.key)) { judge(col, node.dataset.id, +ev.key); ev.preventDefault(); }
    else if (ev.key === "j" || ev.key === "ArrowRight") { (node.nextElementSibling || node).focus(); ev.preventDefault(); }
    else if (ev.key === "k" || ev.key === "ArrowLeft") { (node.previousElementSibling || node).focus(); ev.preventDefault(); }
    else if (ev.key === "e") { $(".why", node).click(); ev.preventDefault(); }
  });
}

wire();
start();
